//! Counters and gauges for `/metrics`, in one place: every component that
//! counts gets its struct from here, and `api` renders them. Plain atomics,
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
    /// Refused at the edge (bad signature, bad body, too large, undecodable message).
    pub rejected: AtomicU64,
    /// The AMQP consumers' counters.
    pub amqp: AmqpMetrics,
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
}
