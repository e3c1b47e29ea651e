//! A workflow's DAG as inline SVG, laid out by `layout-rs` (Sugiyama-style
//! ranks, as Graphviz's dot). Each task is a `<g class="task"
//! data-task="ID">` and each edge a `<g class="edge on-…">`, so the
//! stylesheet colours them by status and the run page's script recolours
//! them live.

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::spec::{DepOn, Dependencies, Workflow};

/// Escapes text for an attribute value inside double quotes.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of `workflow`'s graph; `status` gives each task's class (its
/// status on the run page). `None` when the layout fails (the page then
/// shows the task table alone).
pub fn svg(workflow: &Workflow, status: impl Fn(&str) -> Option<String>) -> Option<String> {
    // The layout library is not ours: a panic in it must not reach the
    // request (the task table still shows the graph's content).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render(workflow, &status))).ok()
}

fn render(workflow: &Workflow, status: &dyn Fn(&str) -> Option<String>) -> String {
    let mut graph = VisualGraph::new(Orientation::TopToBottom);
    let look = StyleAttr::new(Color::fast("black"), 2, Some(Color::fast("white")), 6, 14);
    let nodes: Vec<_> = workflow
        .tasks
        .iter()
        .map(|task| {
            let when = if task.when.is_some() { " · when" } else { "" };
            let label = format!("{} ({}){when}", task.id, task.kind);
            let width = 24.0 + 8.0 * label.chars().count() as f64;
            let class = status(&task.id).map_or("task".to_string(), |s| format!("task s-{s}"));
            let properties = format!(
                "class=\"{}\" data-task=\"{}\"",
                attr(&class),
                attr(&task.id)
            );
            graph.add_node(Element::create_with_properties(
                ShapeKind::new_box(&label),
                look.clone(),
                Orientation::TopToBottom,
                Point::new(width, 40.0),
                properties,
            ))
        })
        .collect();
    for (to, task) in workflow.tasks.iter().enumerate() {
        let any = matches!(task.after, Dependencies::Any(_));
        for dep in task.after.deps() {
            let on = dep.on.as_str();
            let label = if any {
                format!("{on} (any)")
            } else {
                on.to_string()
            };
            let line = match dep.on {
                DepOn::Success => layout::core::style::LineStyleKind::Normal,
                DepOn::Failure => layout::core::style::LineStyleKind::Dashed,
                DepOn::Completion => layout::core::style::LineStyleKind::Dotted,
            };
            let arrow = Arrow::with_properties(
                LineEndKind::None,
                LineEndKind::Arrow,
                line,
                &label,
                &StyleAttr::simple(),
                format!("class=\"edge on-{on}\""),
                &None,
                &None,
            );
            graph.add_edge(arrow, nodes[dep.task], nodes[to]);
        }
    }
    let mut writer = SVGWriter::new();
    graph.do_it(false, false, false, &mut writer);
    let svg = writer.finalize();
    // Inline in HTML: no XML declaration.
    match svg.find("<svg") {
        Some(start) => svg[start..].to_string(),
        None => svg,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tasks_and_edges_carry_their_ids_and_kinds_of_edge() {
        let text = serde_json::json!({"name": "w", "tasks": [
            {"id": "extract", "noop": {}},
            {"id": "load", "after": ["extract"], "noop": {}},
            {"id": "alert", "after": {"any": ["load:failure", "extract:failure"]}, "noop": {}},
        ]})
        .to_string();
        let workflow = Workflow::parse(std::path::Path::new("w.json"), text.as_bytes()).unwrap();
        let svg = svg(&workflow, |id| (id == "load").then(|| "failed".to_string())).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("data-task=\"extract\""));
        assert!(svg.contains("class=\"task s-failed\" data-task=\"load\""));
        assert!(svg.contains("class=\"edge on-failure\""));
        assert!(svg.contains("failure (any)"));
    }
}
