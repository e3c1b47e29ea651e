//! In-memory state of runs and tasks: what folding the log produces.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::log::{Millis, ParentRun, RunId, RunStatus};
use crate::spec::Workflow;

/// Status of a task (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Pending,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One task within a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub status: TaskStatus,
    /// Attempts started so far.
    pub attempts: u32,
    pub output: Value,
    pub stdout: String,
    pub error: Option<String>,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    /// When the scheduled retry is due.
    pub retry_due: Option<Millis>,
    /// When the current (latest) attempt started.
    pub attempt_started_at: Option<Millis>,
    /// Set when a rerun kept this task's success from an earlier run.
    pub reused_from: Option<RunId>,
    /// A `check` task's latest recorded observation (its current attempt's).
    pub observation: Option<Value>,
    /// Derived, not logged: waiting in the engine's queue for a parallelism slot.
    pub(crate) queued: bool,
}

impl Default for TaskState {
    fn default() -> Self {
        Self {
            status: TaskStatus::Pending,
            attempts: 0,
            output: Value::Null,
            stdout: String::new(),
            error: None,
            started_at: None,
            ended_at: None,
            retry_due: None,
            attempt_started_at: None,
            reused_from: None,
            observation: None,
            queued: false,
        }
    }
}

/// Why the rest of a run is being cancelled.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelling {
    /// `fail_fast`: an unhandled failure.
    FailFast { task: String },
    /// The run's `timeout` elapsed.
    TimedOut,
    /// Someone cancelled the run.
    User { reason: String },
}

impl Cancelling {
    pub fn reason(&self) -> String {
        match self {
            Cancelling::FailFast { task } => format!("fail_fast: task `{task}` failed"),
            Cancelling::TimedOut => "run timed out".into(),
            Cancelling::User { reason } => reason.clone(),
        }
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct RunState {
    pub id: RunId,
    pub workflow: Arc<Workflow>,
    pub status: RunStatus,
    pub params: Map<String, Value>,
    pub event: Option<Value>,
    /// The stored event `event` is, when the run refers to one.
    pub event_seq: Option<u64>,
    /// The project vars the run was created with (a rerun takes them too).
    pub project_vars: Map<String, Value>,
    /// Workflow vars, overridden by params, overridden by exports (latest wins).
    pub vars: Map<String, Value>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub deadline: Option<Millis>,
    pub cancelling: Option<Cancelling>,
    pub error: Option<String>,
    pub tasks: Vec<TaskState>,
    /// A sub-workflow's run: the `workflow` task attempt that started it.
    pub parent: Option<ParentRun>,
    /// The instant the run is for (`run.logical_time`): a cron tick's
    /// scheduled time, else its event's time, else when it was created.
    pub logical_time: Millis,
    /// Derived: needs a look from `decide`.
    pub(crate) dirty: bool,
}

impl PartialEq for RunState {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.workflow.version == other.workflow.version
            && self.status == other.status
            && self.params == other.params
            && self.event == other.event
            && self.event_seq == other.event_seq
            && self.project_vars == other.project_vars
            && self.vars == other.vars
            && self.created_at == other.created_at
            && self.started_at == other.started_at
            && self.ended_at == other.ended_at
            && self.deadline == other.deadline
            && self.cancelling == other.cancelling
            && self.error == other.error
            && self.parent == other.parent
            && self.logical_time == other.logical_time
            && self.tasks.len() == other.tasks.len()
            && self.tasks.iter().zip(&other.tasks).all(|(a, b)| {
                // `queued` is scheduling state derived after replay, not history.
                TaskState {
                    queued: false,
                    ..a.clone()
                } == TaskState {
                    queued: false,
                    ..b.clone()
                }
            })
    }
}

/// The run record of SPEC §10, as printed by `run --json` and the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub workflow: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_label: Option<u64>,
    pub status: RunStatus,
    /// The instant the run is for (RFC 3339): a cron tick's scheduled
    /// time, else its event's time, else when it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_time: Option<String>,
    pub params: Map<String, Value>,
    pub vars: Map<String, Value>,
    pub event: Value,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A sub-workflow's run: the run, task and attempt that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRun>,
    pub tasks: Map<String, Value>,
}

pub use crate::time::rfc3339;

impl RunState {
    /// The run record (SPEC §10) of the run as it is now.
    pub fn record(&self) -> RunRecord {
        self.record_with(self.params.clone(), self.vars.clone(), self.event.clone())
    }

    /// The run record, moving the run's params, vars and event into it
    /// (an ended run's last use).
    pub fn into_record(mut self) -> RunRecord {
        let params = std::mem::take(&mut self.params);
        let vars = std::mem::take(&mut self.vars);
        let event = self.event.take();
        self.record_with(params, vars, event)
    }

    fn record_with(
        &self,
        params: Map<String, Value>,
        vars: Map<String, Value>,
        event: Option<Value>,
    ) -> RunRecord {
        let mut tasks = Map::new();
        for (task_spec, state) in self.workflow.tasks.iter().zip(&self.tasks) {
            tasks.insert(task_spec.id.clone(), {
                let mut task = serde_json::json!({
                    "status": state.status,
                    "attempts": state.attempts,
                    "output": state.output,
                    "error": state.error,
                    "started_at": state.started_at.map(rfc3339),
                    "ended_at": state.ended_at.map(rfc3339),
                });
                if let Some(from) = state.reused_from {
                    task["reused_from"] = Value::String(from.to_string());
                }
                if let Some(observation) = &state.observation {
                    task["observation"] = observation.clone();
                }
                // A sub-workflow task links the child run its latest attempt started.
                if task_spec.kind
                    == <crate::executors::workflow::SubWorkflow as crate::executors::Kind>::NAME
                    && state.attempts > 0
                    && state.reused_from.is_none()
                    // Only once a child can exist: running, or an output naming it.
                    && (state.status == TaskStatus::Running || state.output.get("run_id").is_some())
                    && let Some(started_at) = state.attempt_started_at
                {
                    let child = crate::executors::workflow::child_run_id(
                        self.id,
                        &task_spec.id,
                        state.attempts,
                        started_at,
                    );
                    task["child_run_id"] = Value::String(child.to_string());
                }
                task
            });
        }
        RunRecord {
            id: self.id,
            workflow: self.workflow.name.clone(),
            version: self.workflow.version.clone(),
            version_label: self.workflow.version_label,
            status: self.status,
            logical_time: Some(rfc3339(self.logical_time)),
            params,
            vars,
            event: event.unwrap_or(Value::Null),
            started_at: self.started_at.map(rfc3339),
            ended_at: self.ended_at.map(rfc3339),
            error: self.error.clone(),
            parent: self.parent.clone(),
            tasks,
        }
    }
}
