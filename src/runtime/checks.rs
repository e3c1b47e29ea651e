//! Checks: the runtime's side of the `check` task. What an attempt
//! observes is recorded (`check_observed`) only when it differs from the
//! task's last recorded observation, so polling for hours adds a record per
//! change; a `run` condition looks the upstream run up in the run index.

#[allow(unused_imports)]
use super::*;

use crate::executors::check::{CheckHost, FoundRun, RUN_SCAN, Window};
use crate::executors::workflow::BoxFuture;

/// What `check` attempts talk to: the engine thread, and the log's run index.
#[derive(Debug, Clone)]
pub(super) struct RuntimeChecks {
    pub(super) handle: RuntimeHandle,
}

impl CheckHost for RuntimeChecks {
    fn observe(&self, run_id: RunId, task: Arc<str>, attempt: u32, observation: Value) {
        let _ = self.handle.send(Input::Observed {
            run_id,
            task,
            attempt,
            observation,
        });
    }

    fn find_run(
        &self,
        workflow: String,
        logical_times: Window,
        statuses: Vec<RunStatus>,
    ) -> BoxFuture<Result<Option<FoundRun>, String>> {
        let log = self.handle.log().clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || find_run(&log, &workflow, logical_times, &statuses))
                .await
                .map_err(|e| format!("looking the run up failed: {e}"))?
        })
    }
}

/// The fields of a stored run summary a `run` condition reads.
#[derive(serde::Deserialize)]
struct Summary {
    id: RunId,
    status: RunStatus,
    #[serde(default)]
    logical_time: Option<String>,
    #[serde(default)]
    vars: Map<String, Value>,
    #[serde(default)]
    ended_at: Option<String>,
}

/// The newest ended run of `workflow` with a logical time in the window
/// and one of `statuses`, through the run index (newest first, stopping at the first
/// match; at most [`RUN_SCAN`] runs of each status are looked at).
fn find_run(
    log: &Log,
    workflow: &str,
    (from, until): Window,
    statuses: &[RunStatus],
) -> Result<Option<FoundRun>, String> {
    let mut newest: Option<FoundRun> = None;
    for status in statuses {
        let found = log
            .find_ended_run(workflow, *status, RUN_SCAN, |bytes| {
                serde_json::from_slice::<Timed>(bytes)
                    .ok()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t.logical_time?).ok())
                    .is_some_and(|at| (from..until).contains(&at.timestamp_millis()))
            })
            .map_err(|e| e.to_string())?;
        let Some(summary) = found.and_then(|bytes| serde_json::from_slice::<Summary>(&bytes).ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|n| n.run_id < summary.id) {
            newest = Some(FoundRun {
                run_id: summary.id,
                status: summary.status,
                vars: summary.vars,
                ended_at: summary.ended_at,
                logical_time: summary.logical_time,
            });
        }
    }
    Ok(newest)
}

/// Only a stored summary's logical time (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
struct Timed {
    #[serde(default)]
    logical_time: Option<String>,
}

impl EngineLoop {
    /// A check's observation: recorded if its attempt still runs and it
    /// differs from the last one recorded.
    pub(super) fn on_observed(
        &mut self,
        batch: &mut Batch,
        (run_id, task, attempt): (RunId, &str, u32),
        observation: Value,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(run) = self.engine.run(run_id) else {
            return Ok(());
        };
        let Some(i) = run.workflow.task_index(task) else {
            return Ok(());
        };
        let state = &run.tasks[i];
        if state.status != TaskStatus::Running
            || state.attempts != attempt
            || state.observation.as_ref() == Some(&observation)
        {
            return Ok(());
        }
        let body = RecordBody::CheckObserved {
            task: task.to_string(),
            attempt,
            observation,
        };
        self.append(batch, run_id, now, body)
    }
}
