//! The log's record format: a versioned, append-only enum of every transition.
//!
//! Records are what the sled log stores and what replay folds. They are
//! separate from the engine's in-memory types on purpose: once a variant has
//! shipped it is only ever added to (new optional fields with `#[serde(default)]`,
//! new variants), never changed, so logs written by older binaries replay.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// The identity of a run: a UUIDv7, so ids sort by creation time.
pub type RunId = Uuid;

/// One transition, as stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Monotonically increasing over the whole log, assigned at append.
    pub seq: u64,
    /// Wall-clock time the transition was appended.
    pub at: Millis,
    pub run_id: RunId,
    pub body: RecordBody,
}

impl Record {
    /// The record as shown by `runs history` and the API: the body's fields
    /// with `seq` and `at` (RFC 3339) beside them.
    pub fn to_json(&self) -> Value {
        let mut body = serde_json::to_value(&self.body).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut body {
            map.insert("seq".into(), Value::from(self.seq));
            let at = chrono::DateTime::from_timestamp_millis(self.at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            map.insert("at".into(), Value::String(at));
        }
        body
    }
}

/// Format version 1 of a record body. Tagged by `type` in the stored JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordBody {
    /// A run was accepted. It starts `queued`.
    RunCreated {
        workflow: String,
        /// Content hash of the definition, the key into the definitions store.
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_label: Option<u64>,
        #[serde(default)]
        params: serde_json::Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<Value>,
        /// Set on a rerun: the run it repeats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rerun_of: Option<RunId>,
        /// Tasks that succeeded in `rerun_of` and are not run again.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reused: Vec<ReusedTask>,
    },
    /// The run left `queued` and began executing.
    RunStarted {},
    /// A task's attempt was started; its side effect runs after this is durable.
    AttemptStarted { task: String, attempt: u32 },
    /// A task's attempt ended (succeeded or failed).
    AttemptFinished {
        task: String,
        attempt: u32,
        succeeded: bool,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        output: Value,
        /// The last 64 KiB of stdout, in scope as `tasks.<id>.stdout`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        stdout: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// False for failures that another attempt cannot fix (bad config).
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        retryable: bool,
    },
    /// A failed task will be attempted again at `due_at`.
    RetryScheduled {
        task: String,
        attempt: u32,
        due_at: Millis,
    },
    /// A task will not run: its dependencies did not hold, or `when` was false.
    TaskSkipped { task: String, reason: String },
    /// A task failed without an attempt (its `when` could not be evaluated).
    TaskFailed { task: String, error: String },
    /// A task was cancelled (fail_fast, run timeout, user cancel).
    TaskCancelled { task: String, reason: String },
    /// The run's `timeout` elapsed; its remaining tasks are cancelled.
    RunTimedOut {},
    /// Someone cancelled the run; its remaining tasks are cancelled.
    RunCancelRequested { reason: String },
    /// A running attempt's outcome is unknown: the daemon crashed (found at
    /// start-up) or shut down while it ran. Retried if attempts remain; an
    /// attempt interrupted by a graceful shutdown is always retried.
    AttemptLost {
        task: String,
        attempt: u32,
        reason: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shutdown: bool,
    },
    /// The run is terminal.
    RunEnded {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// A task whose recorded success a rerun keeps instead of running it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReusedTask {
    pub task: String,
    #[serde(default)]
    pub output: Value,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Status of a run (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
