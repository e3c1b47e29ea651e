//! The log's record format: a versioned, append-only enum of every transition.
//!
//! Records are what the sled log stores and what replay folds. They are
//! separate from the engine's in-memory types on purpose: once a variant has
//! shipped it is only ever added to (new optional fields with `#[serde(default)]`,
//! new variants), never changed, so logs written by older binaries replay.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::time::Millis;

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
    /// Writes the record as the log stores it: a `run_created` that refers
    /// to its event by `event_seq` leaves its in-memory copy out.
    pub fn write_stored(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        if let RecordBody::RunCreated {
            workflow,
            version,
            version_label,
            params,
            project_vars,
            event: Some(_),
            event_seq: Some(event_seq),
            rerun_of,
            reused,
            parent,
            logical_time,
        } = &self.body
        {
            let stored = StoredRunCreated {
                seq: self.seq,
                at: self.at,
                run_id: self.run_id,
                body: StoredRunCreatedBody {
                    workflow,
                    version,
                    version_label: *version_label,
                    params,
                    project_vars,
                    event_seq: *event_seq,
                    rerun_of: *rerun_of,
                    reused,
                    parent: parent.as_deref(),
                    logical_time: *logical_time,
                },
            };
            return serde_json::to_writer(out, &stored);
        }
        serde_json::to_writer(out, self)
    }

    /// The record as shown by `runs history` and the API: the body's fields
    /// with `seq` and `at` (RFC 3339) beside them.
    pub fn to_json(&self) -> Value {
        let mut body = serde_json::to_value(&self.body).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut body {
            map.insert("seq".into(), Value::from(self.seq));
            map.insert("at".into(), Value::String(crate::time::rfc3339(self.at)));
        }
        body
    }
}

/// Format version 1 of a record body. Tagged by `type` in the stored JSON.
// `RunCreated` is the large variant: one per run, moved (not copied) into
// the commit; boxing its fields would only add an allocation per record.
#[allow(clippy::large_enum_variant)]
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
        /// The project's `vars` when the run was created (format 6): the
        /// lowest layer of its vars, under the workflow's and the params.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        project_vars: serde_json::Map<String, Value>,
        /// The event that started the run. Stored only by runs that have no
        /// `event_seq` (before format 5, or not started by a stored event).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<Value>,
        /// The stored event this run was started by (its `seq` in the events
        /// tree). The log keeps one copy of an event: a run created from one
        /// is written without `event`, and reading its history puts it back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_seq: Option<u64>,
        /// Set on a rerun: the run it repeats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rerun_of: Option<RunId>,
        /// Tasks that succeeded in `rerun_of` and are not run again.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reused: Vec<ReusedTask>,
        /// Set on a sub-workflow's run (format 7): the `workflow` task
        /// attempt that started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<Box<ParentRun>>,
        /// The instant the run is for (format 7): a cron tick's or a
        /// backfill's scheduled time, else its event's time, a parent's
        /// for a child, the source's for a rerun. None: when it was created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logical_time: Option<Millis>,
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
    /// A `check` task's attempt saw something new (format 8): written only
    /// when what a poll observed differs from the last one recorded, so a
    /// long wait adds a record per change, not per poll.
    CheckObserved {
        task: String,
        attempt: u32,
        observation: Value,
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

/// A `run_created` record as stored when its event is stored beside it
/// (see [`Record::write_stored`]): the same JSON as `Record`, without `event`.
#[derive(Serialize)]
struct StoredRunCreated<'a> {
    seq: u64,
    at: Millis,
    run_id: RunId,
    body: StoredRunCreatedBody<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "run_created")]
struct StoredRunCreatedBody<'a> {
    workflow: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_label: Option<u64>,
    params: &'a serde_json::Map<String, Value>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    project_vars: &'a serde_json::Map<String, Value>,
    event_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rerun_of: Option<RunId>,
    #[serde(skip_serializing_if = "<[ReusedTask]>::is_empty")]
    reused: &'a [ReusedTask],
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<&'a ParentRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logical_time: Option<Millis>,
}

/// The `workflow` task attempt a sub-workflow's run was started by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRun {
    pub run_id: RunId,
    pub task: String,
    pub attempt: u32,
    /// 1 for a child of a top-level run; at most
    /// [`crate::executors::workflow::MAX_DEPTH`].
    pub depth: u32,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn created(event_seq: Option<u64>) -> Record {
        let mut params = serde_json::Map::new();
        params.insert("day".into(), Value::from("2026-12-02"));
        Record {
            seq: 7,
            at: 1_000,
            run_id: Uuid::now_v7(),
            body: RecordBody::RunCreated {
                workflow: "w".into(),
                version: "v1".into(),
                version_label: Some(3),
                params,
                project_vars: serde_json::Map::from_iter([(
                    "region".to_string(),
                    Value::from("eu"),
                )]),
                event: Some(serde_json::json!({"id": "e1", "data": {"big": "body"}})),
                event_seq,
                rerun_of: Some(Uuid::now_v7()),
                reused: vec![ReusedTask {
                    task: "a".into(),
                    output: serde_json::json!({"n": 1}),
                    stdout: "out".into(),
                }],
                parent: Some(Box::new(ParentRun {
                    run_id: Uuid::now_v7(),
                    task: "call".into(),
                    attempt: 2,
                    depth: 3,
                })),
                logical_time: Some(1_000),
            },
        }
    }

    #[test]
    fn a_run_created_from_a_stored_event_is_written_without_its_copy() {
        let record = created(Some(42));
        let mut bytes = Vec::new();
        record.write_stored(&mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("big"), "{text}");
        // Every other field survives: the stored form is the record minus
        // its event.
        let decoded: Record = serde_json::from_slice(&bytes).unwrap();
        let mut expected = record.clone();
        if let RecordBody::RunCreated { event, .. } = &mut expected.body {
            *event = None;
        }
        assert_eq!(decoded, expected);
    }

    #[test]
    fn a_run_created_without_a_stored_event_keeps_its_copy() {
        let record = created(None);
        let mut bytes = Vec::new();
        record.write_stored(&mut bytes).unwrap();
        let decoded: Record = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded, record);
    }
}
