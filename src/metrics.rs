//! Counters and gauges for `/metrics`, in one place: every component that
//! counts gets its struct from here, and `api` renders them. Plain atomics
//! (and, for the AMQP consumers' states, a map held only to copy an entry),
//! so reading them is O(1) and never waits for the engine.

use std::sync::atomic::AtomicU64;

use crate::log::Outcome;

/// The daemon's own counters (runs and attempts, from the durable record
/// stream; HTTP refusals; reloads).
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    pub runs_created: AtomicU64,
    pub runs_succeeded: AtomicU64,
    pub runs_failed: AtomicU64,
    pub runs_cancelled: AtomicU64,
    pub attempts_started: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub reloads: AtomicU64,
    pub reloads_rejected: AtomicU64,
    /// Records the metrics task missed because it lagged behind.
    pub records_missed: AtomicU64,
    /// Deleted by retention: ended runs, events, task logs.
    pub retention_runs: AtomicU64,
    pub retention_events: AtomicU64,
    pub retention_task_logs: AtomicU64,
}

/// Event counters for `/metrics`.
#[derive(Debug, Default)]
pub struct EventMetrics {
    pub accepted: AtomicU64,
    pub started: AtomicU64,
    pub duplicates: AtomicU64,
    pub filtered: AtomicU64,
    pub failed: AtomicU64,
    /// AMQP messages that matched none of their queue's bindings.
    pub unrouted: AtomicU64,
    /// Offered to a paused binding (or one whose workflow is paused).
    pub paused: AtomicU64,
    /// Refused at the edge (bad signature, bad body, too large, undecodable message).
    pub rejected: AtomicU64,
    /// The AMQP consumers' counters.
    pub amqp: AmqpMetrics,
    /// Adapters that died and are being restarted.
    pub adapters: AdapterHealth,
}

/// Adapters (file watchers, AMQP consumers, cron and expectation timers)
/// whose task ended without being asked to, or panicked: listed until a
/// restart has run for a while. `/healthz` answers 503 while any is.
#[derive(Debug, Default)]
pub struct AdapterHealth {
    dead: std::sync::Mutex<std::collections::BTreeMap<String, DeadAdapter>>,
    owners: AtomicU64,
}

/// One dead adapter, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadAdapter {
    /// Which supervisor wrote it: an adapter replaced by a reload must not
    /// clear its successor's entry.
    #[serde(skip)]
    pub owner: u64,
    pub error: String,
    /// When it died last (RFC 3339).
    pub since: String,
    /// Restarts so far.
    pub restarts: u64,
}

impl AdapterHealth {
    /// A number for a new supervisor.
    pub fn owner(&self) -> u64 {
        self.owners
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    pub fn died(&self, adapter: &str, owner: u64, error: String, restarts: u64) {
        if let Ok(mut dead) = self.dead.lock() {
            dead.insert(
                adapter.to_string(),
                DeadAdapter {
                    owner,
                    error,
                    since: crate::time::format(crate::time::now()),
                    restarts,
                },
            );
        }
    }

    /// Forgets `adapter`'s death, if `owner` recorded it.
    pub fn recovered(&self, adapter: &str, owner: u64) {
        if let Ok(mut dead) = self.dead.lock()
            && dead.get(adapter).is_some_and(|d| d.owner == owner)
        {
            dead.remove(adapter);
        }
    }

    /// The dead adapters now, by name.
    pub fn dead(&self) -> std::collections::BTreeMap<String, DeadAdapter> {
        self.dead.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl EventMetrics {
    pub fn count(&self, outcomes: &[Outcome]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.accepted.fetch_add(1, Relaxed);
        for outcome in outcomes {
            match outcome {
                Outcome::Started { .. } => self.started.fetch_add(1, Relaxed),
                Outcome::Duplicate { .. } => self.duplicates.fetch_add(1, Relaxed),
                Outcome::Filtered { .. } => self.filtered.fetch_add(1, Relaxed),
                Outcome::Failed { .. } => self.failed.fetch_add(1, Relaxed),
                Outcome::Unrouted { .. } => self.unrouted.fetch_add(1, Relaxed),
                Outcome::Paused { .. } => self.paused.fetch_add(1, Relaxed),
            };
        }
    }
}

/// Counters of every AMQP consumer, for `/metrics`.
#[derive(Debug, Default)]
pub struct AmqpMetrics {
    pub deliveries: AtomicU64,
    pub acked: AtomicU64,
    /// Rejected without requeue: could not become an event (or too large).
    pub poison: AtomicU64,
    /// Of those, rejected for a body over the binding's `max_body`.
    pub too_large: AtomicU64,
    /// Acks that could not be sent (the channel died first); the message
    /// comes back and dedup catches it.
    pub acks_lost: AtomicU64,
    /// Sessions that ended in a failure and were restarted.
    pub reconnects: AtomicU64,
    /// Deliveries received and not yet acked, now.
    pub unacked: AtomicU64,
    /// The most deliveries one session ever held unacked (bounded by the
    /// prefetch when `basic_qos` is in force).
    pub unacked_max: AtomicU64,
    /// Consumers currently connected and consuming.
    pub consuming: AtomicU64,
    /// What each queue's consumer is doing, by queue (`GET /bindings`
    /// shows it beside the queue's bindings). Held only to copy an entry.
    pub consumers: std::sync::Mutex<std::collections::HashMap<String, ConsumerState>>,
}

/// One queue's consumer, as `GET /bindings` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerState {
    /// Which consumer wrote it (numbered in the order they start): a
    /// consumer replaced by a reload must not overwrite or remove its
    /// successor's entry as it stops.
    pub owner: u64,
    /// `connecting`, `consuming` or `reconnecting`.
    pub status: &'static str,
    /// Why the last session ended, while `reconnecting` (a broker that
    /// cannot be reached, a TLS certificate refused, a channel error).
    pub error: Option<String>,
    /// When the status last changed (RFC 3339).
    pub since: String,
}

impl AmqpMetrics {
    /// Records what `queue`'s consumer `owner` is doing, unless a newer
    /// consumer (a higher `owner`) has taken the queue over: the one it
    /// replaced may still be winding down.
    pub fn set_consumer(
        &self,
        queue: &str,
        owner: u64,
        status: &'static str,
        error: Option<String>,
    ) {
        let state = ConsumerState {
            owner,
            status,
            error,
            since: crate::time::format(crate::time::now()),
        };
        if let Ok(mut consumers) = self.consumers.lock()
            && consumers.get(queue).is_none_or(|c| c.owner <= owner)
        {
            consumers.insert(queue.to_string(), state);
        }
    }

    /// Forgets `queue`'s consumer, unless another one has taken its place.
    pub fn remove_consumer(&self, queue: &str, owner: u64) {
        if let Ok(mut consumers) = self.consumers.lock()
            && consumers.get(queue).is_some_and(|c| c.owner == owner)
        {
            consumers.remove(queue);
        }
    }

    /// What `queue`'s consumer is doing; None when the queue has none.
    pub fn consumer(&self, queue: &str) -> Option<ConsumerState> {
        self.consumers.lock().ok()?.get(queue).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload replaces a queue's consumer while the old one winds down:
    /// whatever the old one writes late, the queue shows the new one.
    #[test]
    fn a_replaced_consumer_never_hides_its_successor() {
        let amqp = AmqpMetrics::default();
        amqp.set_consumer("q", 1, "consuming", None);
        amqp.set_consumer("q", 2, "connecting", None);
        amqp.set_consumer("q", 1, "reconnecting", Some("closed".into()));
        amqp.remove_consumer("q", 1);
        let shown = amqp.consumer("q").map(|c| (c.owner, c.status));
        assert_eq!(shown, Some((2, "connecting")));
        amqp.remove_consumer("q", 2);
        assert_eq!(amqp.consumer("q"), None);
    }
}
