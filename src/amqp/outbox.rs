//! Lifecycle events (SPEC §9): `run.started`, `run.succeeded`, `run.failed`,
//! `run.cancelled` and `task.failed`, published to `amqp.events_exchange`
//! as CloudEvents JSON with routing key `<workflow>.<type>`.
//!
//! The engine writes each event into the log's outbox in the same
//! transaction as the record it describes ([`lifecycle_event`]); the
//! [`publish`] loop sends durable entries in sequence order with publisher
//! confirms and removes them once confirmed. A broker outage delays them;
//! a crash between the confirm and the removal sends one again with the same
//! message id, so consumers can drop the duplicate.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Broker, Outgoing};
use crate::engine::{RunRecord, RunState, TaskStatus};
use crate::log::outbox::OutboxMessage;
use crate::log::{Log, Record, RecordBody, RunStatus};

/// How many messages are published before waiting for their confirms.
const BATCH: usize = 256;
/// Checked this often even when no record woke the loop.
const IDLE_POLL: Duration = Duration::from_secs(1);

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

/// Publishes the outbox until `stop`: wakes on every durable record batch
/// (`records`), and at least every second.
pub async fn publish(
    log: Log,
    broker: Broker,
    mut records: broadcast::Receiver<std::sync::Arc<Record>>,
    stop: CancellationToken,
) {
    let Some(exchange) = broker.events_exchange().map(str::to_string) else {
        return;
    };
    let mut backoff = Backoff::default();
    let mut declared = false;
    let mut failing = false;
    loop {
        let pending = match log.outbox_pending(BATCH) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the lifecycle outbox.");
                Vec::new()
            }
        };
        if pending.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = records.recv() => {
                    // One outbox scan for everything committed meanwhile,
                    // not one per record.
                    while records.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        let sent = async {
            if !declared {
                broker.ensure_exchange(&exchange).await?;
                declared = true;
            }
            send_batch(&broker, &exchange, &pending).await
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = sent => outcome,
        };
        match outcome {
            Ok(()) => {
                let seqs: Vec<u64> = pending.iter().map(|(seq, _)| *seq).collect();
                if let Err(e) = log.outbox_remove(&seqs) {
                    tracing::error!(error = %e, "Cannot clear published lifecycle events.");
                }
                if failing {
                    tracing::info!(exchange, "Lifecycle events flow again.");
                    failing = false;
                }
                backoff.reset();
            }
            Err(e) => {
                declared = false;
                let delay = backoff.next_delay();
                if !failing {
                    tracing::warn!(
                        exchange, error = %e, waiting = log.outbox_len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "Cannot publish lifecycle events; they wait in the outbox."
                    );
                    failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Publishes a batch in order (pipelined on one channel) and waits for
/// every confirm. A message that can never be published (a name over
/// AMQP's limits) is logged and dropped rather than blocking the rest.
async fn send_batch(
    broker: &Broker,
    exchange: &str,
    pending: &[(u64, OutboxMessage)],
) -> Result<(), super::PublishError> {
    let text = |event: &Value, key: &str| {
        ShortString::try_new(event.get(key).and_then(Value::as_str).unwrap_or_default())
            .unwrap_or_default()
    };
    let messages = pending
        .iter()
        .map(|(_, message)| Outgoing {
            exchange: exchange.to_string(),
            routing_key: message.routing_key.clone(),
            body: serde_json::to_vec(&message.event).unwrap_or_default(),
            properties: BasicProperties::default()
                .with_message_id(text(&message.event, "id"))
                .with_type(text(&message.event, "type"))
                .with_content_type("application/cloudevents+json".into())
                .with_app_id("switchyard".into())
                .with_delivery_mode(2)
                .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64),
            mandatory: false,
        })
        .collect();
    for (result, (seq, _)) in broker.publish_many(messages).await.into_iter().zip(pending) {
        match result {
            Ok(()) => {}
            Err(super::PublishError::Invalid(e)) => {
                tracing::error!(seq, error = %e, "Dropping a lifecycle event that cannot be published.");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
