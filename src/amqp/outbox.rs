//! Lifecycle events (SPEC §9): `run.started`, `run.succeeded`, `run.failed`,
//! `run.cancelled` and `task.failed`, published to `amqp.events_exchange`
//! as CloudEvents JSON with routing key `<workflow>.<type>`.
//!
//! The runtime writes each event into the log's outbox in the same
//! transaction as the record it describes (`runtime/lifecycle.rs`); the
//! [`publish`] loop sends durable entries in sequence order with publisher
//! confirms and removes them once confirmed. A broker outage delays them;
//! a crash between the confirm and the removal sends one again with the same
//! message id, so consumers can drop the duplicate.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Broker, Outgoing};
use crate::log::outbox::OutboxMessage;
use crate::log::{Log, Record};

/// How many messages are published before waiting for their confirms.
const BATCH: usize = 256;
/// Checked this often even when no record woke the loop.
const IDLE_POLL: Duration = Duration::from_secs(1);

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
                .with_timestamp(crate::time::now().timestamp().max(0) as u64),
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
