//! A workflow's DAG rendered for people: Mermaid (the API and docs) and
//! Graphviz DOT. Failure edges are dashed, completion edges bold; `any`
//! joins are labelled.

use std::fmt::Write;

use super::{DepOn, Dependencies, Workflow};

fn edge_label(after: &Dependencies, on: DepOn) -> String {
    let mode = match after {
        Dependencies::Any(_) => " (any)",
        _ => "",
    };
    format!("{}{mode}", on.as_str())
}

/// Mermaid flowchart: dashed edges for failure, dotted-thick for completion.
pub fn mermaid(workflow: &Workflow) -> String {
    let mut out = String::from("flowchart TD\n");
    for task in &workflow.tasks {
        let _ = writeln!(out, "    {}[\"{} ({})\"]", task.id, task.id, task.kind);
    }
    for task in &workflow.tasks {
        for dep in task.after.deps() {
            let from = &workflow.tasks[dep.task].id;
            let arrow = match dep.on {
                DepOn::Success => "-->",
                DepOn::Failure => "-.->",
                DepOn::Completion => "==>",
            };
            let label = edge_label(&task.after, dep.on);
            let _ = writeln!(out, "    {from} {arrow}|{label}| {}", task.id);
        }
    }
    out
}

/// Graphviz dot.
pub fn dot(workflow: &Workflow) -> String {
    let mut out = format!("digraph \"{}\" {{\n    rankdir=TB;\n", workflow.name);
    for task in &workflow.tasks {
        let _ = writeln!(
            out,
            "    \"{}\" [label=\"{}\\n({})\"];",
            task.id, task.id, task.kind
        );
    }
    for task in &workflow.tasks {
        for dep in task.after.deps() {
            let from = &workflow.tasks[dep.task].id;
            let style = match dep.on {
                DepOn::Success => "solid",
                DepOn::Failure => "dashed",
                DepOn::Completion => "bold",
            };
            let label = edge_label(&task.after, dep.on);
            let _ = writeln!(
                out,
                "    \"{from}\" -> \"{}\" [label=\"{label}\", style={style}];",
                task.id
            );
        }
    }
    out.push_str("}\n");
    out
}
