//! The remote-task protocol between the daemon and `switchyard worker`
//! processes, over RabbitMQ (README "Remote workers" documents it for
//! people writing their own tooling).
//!
//! Queues:
//! - `switchyard.tasks.<queue>` (durable): [`Job`]s, persistent and
//!   publisher-confirmed, for the workers consuming `<queue>`;
//!   `switchyard.tasks.<queue>.waits` the same for kinds that take no slot
//!   (`check`, `sleep`), consumed with a prefetch of their own.
//! - the daemon's result queue (durable, `workers.results_queue`, default
//!   `switchyard.results`): everything a worker says ([`FromWorker`]).
//! - `switchyard.worker.<worker id>` (exclusive, auto-delete): what the
//!   daemon says to one worker ([`ToWorker`]).
//!
//! Every message is JSON with `"protocol": 1` (and the AMQP header
//! `x-switchyard-protocol`); a peer refuses a message of another version
//! with an error naming both.
//!
//! One attempt: the daemon records the attempt started, then publishes its
//! job. A worker takes it and asks for it (`claim`); the daemon grants the
//! first claim of an attempt and denies the others (a redelivered or
//! republished job never runs twice), so only a granted worker runs it. The
//! worker acks the job at once (so a job may run far longer than the
//! broker's delivery-ack timeout), heartbeats every attempt it runs, and
//! publishes the `result` (persistent, confirmed), which the daemon acks
//! only once the attempt's end is flushed to its log. The daemon keeps the
//! deadlines: no heartbeat for three intervals and the attempt is lost and
//! retried; a timeout or cancel is a `cancel` to the worker, which kills
//! the attempt's process group and reports it.
//!
//! Sent straight: when a worker whose heartbeats carry `direct` has a free
//! slot (by the daemon's count) and nothing waits in the task queue, the
//! daemon sends the job to its control queue as `run` (mandatory,
//! confirmed): the worker is its owner already, no claim. The worker
//! releases a `run` it cannot start; its heartbeats count the `run`s (and
//! `fence`s) received, so the daemon knows which never arrived; both go
//! through the task queue as the same attempt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::log::{RunId, TaskLogs};

/// The version this build speaks.
pub const PROTOCOL: u32 = 1;
/// The AMQP header that carries it too.
pub const PROTOCOL_HEADER: &str = "x-switchyard-protocol";
/// Default result queue.
pub const DEFAULT_RESULTS_QUEUE: &str = "switchyard.results";

/// The durable queue of a task queue name.
pub fn task_queue(queue: &str) -> String {
    format!("switchyard.tasks.{queue}")
}

/// The durable queue of a task queue's waits: jobs of kinds that take no
/// slot (`check`, `sleep`), consumed beside the task queue with a prefetch
/// of their own, so a wait is never stuck behind jobs waiting for a slot.
pub fn waits_queue(queue: &str) -> String {
    format!("switchyard.tasks.{queue}.waits")
}

/// The queue a job of `kind` goes to.
pub fn job_queue(queue: &str, kind: &str) -> String {
    if crate::executors::kind_name(kind).is_some_and(|k| !crate::executors::holds_slot(k)) {
        waits_queue(queue)
    } else {
        task_queue(queue)
    }
}

/// The control queue of one worker.
pub fn control_queue(worker: &str) -> String {
    format!("switchyard.worker.{worker}")
}

/// Which attempt a message is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptRef {
    pub run_id: RunId,
    pub task: String,
    pub attempt: u32,
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.run_id, self.task, self.attempt)
    }
}

/// One attempt to run, as the daemon rendered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    /// Unique per publish: a republished job has a new one.
    pub job_id: String,
    #[serde(flatten)]
    pub attempt: AttemptRef,
    pub workflow: String,
    /// The task kind (`shell`, `http`, `sql`, `amqp`, `sleep`, `noop`).
    pub kind: String,
    /// The kind's config with every template rendered (secrets included:
    /// they travel only inside jobs).
    pub config: Value,
    /// When the attempt was recorded started (ms since the epoch).
    pub started_at: i64,
    /// The task's timeout; the daemon enforces it (a `cancel`), the worker
    /// too, as a backstop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How often to heartbeat.
    pub heartbeat_ms: u64,
    /// Where to send claims, heartbeats, output and the result.
    pub reply_to: String,
    /// Secret values to redact from output before it is cut or sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

/// What a worker sends to the daemon's result queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// "May I run this attempt?" (answered by `grant` or `deny`).
    Claim {
        protocol: u32,
        worker: String,
        /// The worker's message counter: a heartbeat with a higher one was
        /// built after this claim was sent.
        #[serde(default)]
        seq: u64,
        job_id: String,
        #[serde(flatten)]
        attempt: AttemptRef,
    },
    /// Every `heartbeat_ms`: the worker and every attempt it runs.
    Heartbeat {
        protocol: u32,
        #[serde(flatten)]
        worker: WorkerInfo,
        running: Vec<AttemptRef>,
        /// Attempts that ended and whose result is being sent (confirmed):
        /// alive, but no longer holding a slot.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reporting: Vec<AttemptRef>,
        /// Attempts claimed and not answered yet.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        claiming: Vec<AttemptRef>,
        #[serde(default)]
        seq: u64,
        /// Sent by workers that take jobs straight from the daemon (`run`
        /// on their control queue); absent from older workers, which are
        /// only sent jobs through the task queues.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direct: Option<DirectState>,
    },
    /// A job sent straight to this worker (`run`) that it did not start
    /// (no free slot: it took a job from the task queue meanwhile): the
    /// daemon sends it through the task queue.
    Release {
        protocol: u32,
        worker: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        reason: String,
    },
    /// A chunk of an attempt's output, as it is produced.
    Output {
        protocol: u32,
        worker: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        stream: Stream,
        text: String,
    },
    /// How the attempt ended.
    Result {
        protocol: u32,
        worker: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        outcome: RemoteOutcome,
    },
    /// What a `check` attempt's poll saw, when it changed (recorded by the
    /// daemon as the task's observation).
    Observed {
        protocol: u32,
        worker: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        observation: Value,
    },
    /// The worker gives the attempt back unfinished (it is shutting down):
    /// the daemon records it lost and retries it at once.
    Handback {
        protocol: u32,
        worker: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        reason: String,
    },
}

impl FromWorker {
    pub fn protocol(&self) -> u32 {
        match self {
            FromWorker::Claim { protocol, .. }
            | FromWorker::Heartbeat { protocol, .. }
            | FromWorker::Output { protocol, .. }
            | FromWorker::Observed { protocol, .. }
            | FromWorker::Result { protocol, .. }
            | FromWorker::Release { protocol, .. }
            | FromWorker::Handback { protocol, .. } => *protocol,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A worker's side of direct dispatch, in its heartbeats to one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectState {
    /// Free `--concurrency` slots when the heartbeat was built
    /// (informational: the daemon counts what it gave each worker).
    pub free: usize,
    /// The daemon instance `upto` counts for (a restarted daemon numbers
    /// its messages afresh).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub daemon: String,
    /// The highest `dispatch` number of that daemon's `run` and `fence`
    /// messages received. Every `run` numbered up to it arrived and is in
    /// `running`/`reporting` (or its result is already in the result
    /// queue, or it was released), or never will arrive: the daemon sends
    /// them in number order and a control queue keeps it, so a `run` lost
    /// with one (say in a broker restart) stays lost for good.
    #[serde(default)]
    pub upto: u64,
    /// The worker is shutting down: its control queue is gone, and what
    /// was sent to it after `upto` never arrives.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

/// A worker as it describes itself in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: usize,
    /// When the worker started (RFC 3339).
    pub started_at: String,
}

/// An attempt's end, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteOutcome {
    pub succeeded: bool,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<TaskLogs>,
}

/// What the daemon sends to one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    Grant {
        protocol: u32,
        job_id: String,
        #[serde(flatten)]
        attempt: AttemptRef,
    },
    Deny {
        protocol: u32,
        job_id: String,
        #[serde(flatten)]
        attempt: AttemptRef,
        reason: String,
    },
    /// Run this job: it is this worker's already (the daemon chose it, as
    /// it had a free slot and nothing waited in the task queue), no claim
    /// needed. Sent only to workers whose heartbeats carry `direct`.
    Run {
        protocol: u32,
        /// The daemon instance, and this message's number (`run` and
        /// `fence` share one numbering, and are sent in its order).
        daemon: String,
        dispatch: u64,
        job: Box<Job>,
    },
    /// Nothing to do but count: a worker's next heartbeat saying `upto`
    /// this number proves every earlier `run` arrived or never will.
    Fence {
        protocol: u32,
        daemon: String,
        dispatch: u64,
        /// The daemon's result queue (whose heartbeats count it).
        reply_to: String,
    },
    /// Stop the attempt (timeout, cancel, or it is not this worker's).
    Cancel {
        protocol: u32,
        #[serde(flatten)]
        attempt: AttemptRef,
        reason: String,
    },
}

impl ToWorker {
    pub fn protocol(&self) -> u32 {
        match self {
            ToWorker::Grant { protocol, .. }
            | ToWorker::Deny { protocol, .. }
            | ToWorker::Run { protocol, .. }
            | ToWorker::Fence { protocol, .. }
            | ToWorker::Cancel { protocol, .. } => *protocol,
        }
    }
}

/// Decodes a message, refusing another protocol version with an error
/// that names both (checked before the shape, so a future message with
/// new fields is reported as a version mismatch, not as a parse error).
pub fn decode<T: serde::de::DeserializeOwned>(
    body: &[u8],
    header: Option<u32>,
) -> Result<T, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON message: {e}"))?;
    let version = value
        .get("protocol")
        .and_then(Value::as_u64)
        .map(|v| v as u32)
        .or(header);
    match version {
        Some(PROTOCOL) => {}
        Some(other) => {
            return Err(format!(
                "protocol version {other}, this switchyard speaks version {PROTOCOL}: \
                 run the same switchyard release on the daemon and its workers"
            ));
        }
        None => return Err("no `protocol` version in the message".into()),
    }
    serde_json::from_value(value).map_err(|e| format!("malformed message: {e}"))
}

/// The AMQP headers every message carries.
pub fn headers() -> lapin::types::FieldTable {
    let mut table = BTreeMap::new();
    table.insert(
        lapin::types::ShortString::from(PROTOCOL_HEADER),
        lapin::types::AMQPValue::LongUInt(PROTOCOL),
    );
    lapin::types::FieldTable::from(table)
}

/// The protocol version in a delivery's headers, if any.
pub fn header_version(properties: &lapin::BasicProperties) -> Option<u32> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(PROTOCOL_HEADER)? {
        lapin::types::AMQPValue::LongUInt(v) => Some(*v),
        lapin::types::AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        lapin::types::AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
        lapin::types::AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_is_refused_naming_both() {
        let body = br#"{"protocol": 2, "type": "claim", "worker": "w", "job_id": "j",
                        "run_id": "01890000-0000-7000-8000-000000000000", "task": "a", "attempt": 1}"#;
        let err = decode::<FromWorker>(body, None).unwrap_err();
        assert!(
            err.contains("version 2") && err.contains("version 1"),
            "{err}"
        );
        let err = decode::<FromWorker>(br#"{"type": "claim"}"#, None).unwrap_err();
        assert!(err.contains("no `protocol`"), "{err}");
    }

    fn attempt_of_run() -> AttemptRef {
        AttemptRef {
            run_id: uuid::Uuid::now_v7(),
            task: "extract".into(),
            attempt: 1,
        }
    }

    #[test]
    fn messages_round_trip() {
        let attempt = AttemptRef {
            run_id: uuid::Uuid::now_v7(),
            task: "load".into(),
            attempt: 2,
        };
        let claim = FromWorker::Claim {
            protocol: PROTOCOL,
            worker: "w1".into(),
            seq: 7,
            job_id: "j1".into(),
            attempt: attempt.clone(),
        };
        let body = serde_json::to_vec(&claim).unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains(r#""type":"claim""#) && text.contains(r#""task":"load""#),
            "{text}"
        );
        assert_eq!(decode::<FromWorker>(&body, None).unwrap(), claim);
        let cancel = ToWorker::Cancel {
            protocol: PROTOCOL,
            attempt,
            reason: "timed out".into(),
        };
        let body = serde_json::to_vec(&cancel).unwrap();
        assert_eq!(decode::<ToWorker>(&body, Some(PROTOCOL)).unwrap(), cancel);
        let run = ToWorker::Run {
            protocol: PROTOCOL,
            daemon: "d1".into(),
            dispatch: 3,
            job: Box::new(Job {
                protocol: PROTOCOL,
                job_id: "j1".into(),
                attempt: attempt_of_run(),
                workflow: "w".into(),
                kind: "shell".into(),
                config: serde_json::json!({"command": ["true"]}),
                started_at: 1,
                timeout_ms: None,
                heartbeat_ms: 1000,
                reply_to: "switchyard.results".into(),
                redact: Vec::new(),
            }),
        };
        let body = serde_json::to_vec(&run).unwrap();
        assert!(String::from_utf8_lossy(&body).contains(r#""type":"run""#));
        assert_eq!(decode::<ToWorker>(&body, None).unwrap(), run);
        // A heartbeat from a worker that predates direct dispatch.
        let old = br#"{"protocol": 1, "type": "heartbeat", "worker": "w", "host": "h", "pid": 1,
                       "queues": ["q"], "concurrency": 2, "started_at": "", "running": []}"#;
        match decode::<FromWorker>(old, None).unwrap() {
            FromWorker::Heartbeat { direct, .. } => assert_eq!(direct, None),
            other => panic!("{other:?}"),
        }
    }
}
