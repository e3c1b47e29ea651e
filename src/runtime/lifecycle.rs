//! Lifecycle events (README "RabbitMQ"): which records are `run.started`,
//! `run.succeeded`, `run.failed`, `run.cancelled` and `task.failed`, as
//! CloudEvents JSON with routing key `<workflow>.<type>`. Built in the
//! engine thread right after the record is applied and written to the
//! outbox in the record's own transaction; `amqp::outbox::publish` sends
//! them once durable.

use serde_json::{Value, json};

use crate::engine::{RunRecord, RunState, TaskStatus};
use crate::log::outbox::OutboxMessage;
use crate::log::{Record, RecordBody, RunStatus};

/// The lifecycle event a record stands for, built after the record was
/// applied to `run` (so a failed attempt counts as `task.failed` only when
/// no retry follows).
pub fn lifecycle_event(record: &Record, run: &RunState) -> Option<OutboxMessage> {
    let (kind, task) = match &record.body {
        RecordBody::RunStarted {} => ("run.started", None),
        RecordBody::RunEnded { status, .. } => (run_end_kind(*status)?, None),
        RecordBody::AttemptFinished {
            task,
            succeeded: false,
            ..
        }
        | RecordBody::TaskFailed { task, .. } => {
            let i = run.workflow.tasks.iter().position(|t| &t.id == task)?;
            let state = &run.tasks[i];
            if state.status != TaskStatus::Failed {
                return None; // It will be retried.
            }
            (
                "task.failed",
                Some((task.as_str(), state.attempts, &state.error)),
            )
        }
        _ => return None,
    };
    Some(message(record, kind, &run.record(), task))
}

/// The `run.failed` event of a run that recovery had to end because its
/// log could not be folded (`summary` is what its `RunCreated` says).
pub fn unrecoverable_run_event(record: &Record, summary: &RunRecord) -> OutboxMessage {
    message(record, "run.failed", summary, None)
}

fn run_end_kind(status: RunStatus) -> Option<&'static str> {
    match status {
        RunStatus::Succeeded => Some("run.succeeded"),
        RunStatus::Failed => Some("run.failed"),
        RunStatus::Cancelled => Some("run.cancelled"),
        RunStatus::Queued | RunStatus::Running => None,
    }
}

/// The CloudEvent: `task` is the failed task's id, attempts and error.
fn message(
    record: &Record,
    kind: &str,
    summary: &RunRecord,
    task: Option<(&str, u32, &Option<String>)>,
) -> OutboxMessage {
    let workflow = summary.workflow.as_str();
    let mut data = json!({
        "run_id": record.run_id,
        "workflow": workflow,
        "version": summary.version,
        "status": summary.status,
        "params": summary.params,
    });
    if let Some(map) = data.as_object_mut() {
        match task {
            Some((task, attempts, error)) => {
                map.insert("task".into(), json!(task));
                map.insert("attempts".into(), json!(attempts));
                map.insert("error".into(), json!(error));
            }
            None if kind != "run.started" => {
                map.insert("vars".into(), Value::Object(summary.vars.clone()));
                map.insert("error".into(), json!(summary.error));
                map.insert("started_at".into(), json!(summary.started_at));
                map.insert("ended_at".into(), json!(summary.ended_at));
            }
            None => {
                map.insert("started_at".into(), json!(summary.started_at));
            }
        }
    }
    let event = json!({
        "specversion": "1.0",
        "id": format!("{}.{}", record.run_id, record.seq),
        "source": format!("/workflows/{workflow}"),
        "type": format!("switchyard.{kind}"),
        "subject": match task {
            Some((task, _, _)) => format!("{workflow}/{task}"),
            None => workflow.to_string(),
        },
        "time": crate::engine::rfc3339(record.at),
        "datacontenttype": "application/json",
        "data": data,
    });
    OutboxMessage {
        routing_key: format!("{workflow}.{kind}"),
        event,
    }
}
