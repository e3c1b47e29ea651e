//! Reruns (SPEC §7): a new run of the same version and params that keeps the
//! recorded outputs of tasks that succeeded, and runs the rest again.

use std::collections::BTreeSet;

use super::{RunState, TaskStatus};
use crate::log::ReusedTask;

/// Where a rerun starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunFrom {
    /// Every task that did not succeed, and everything downstream of it.
    Failed,
    /// This task and everything downstream of it.
    Task(String),
}

impl RerunFrom {
    pub fn parse(text: &str) -> Self {
        match text {
            "" | "failed" => RerunFrom::Failed,
            task => RerunFrom::Task(task.to_string()),
        }
    }
}

/// The tasks of `source` a rerun keeps. Downstream of a rerun task means
/// reachable by any `after` edge, so a recovery task that ran because of a
/// failure runs again only if the failure happens again.
pub fn plan(source: &RunState, from: &RerunFrom) -> Result<Vec<ReusedTask>, String> {
    if !source.status.is_terminal() {
        return Err(format!(
            "run {} is still {}: cancel it or wait for it to end before rerunning",
            source.id, source.status
        ));
    }
    let workflow = &source.workflow;
    let mut again: BTreeSet<usize> = BTreeSet::new();
    match from {
        RerunFrom::Failed => {
            again.extend(
                source
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.status != TaskStatus::Succeeded)
                    .map(|(i, _)| i),
            );
            if again.is_empty() {
                return Err(format!(
                    "run {} has no failed task to rerun from; name a task with {{\"from\": \"<task>\"}}",
                    source.id
                ));
            }
        }
        RerunFrom::Task(id) => {
            let i = workflow
                .task_index(id)
                .ok_or_else(|| format!("workflow `{}` has no task `{id}`", workflow.name))?;
            again.insert(i);
        }
    }
    let mut stack: Vec<usize> = again.iter().copied().collect();
    while let Some(i) = stack.pop() {
        for &next in &workflow.tasks[i].dependents {
            if again.insert(next) {
                stack.push(next);
            }
        }
    }
    Ok(source
        .tasks
        .iter()
        .enumerate()
        .filter(|(i, t)| !again.contains(i) && t.status == TaskStatus::Succeeded)
        .map(|(i, t)| ReusedTask {
            task: workflow.tasks[i].id.clone(),
            output: t.output.clone(),
            stdout: t.stdout.clone(),
        })
        .collect())
}
