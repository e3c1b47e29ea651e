//! Counters, gauges and histograms for `/metrics`, in one place: every
//! component that counts gets its struct from here, and `api` renders them
//! through prometheus-client (OpenMetrics text). Counters are plain atomics
//! (and, for the AMQP consumers' states, a map held only to copy an entry),
//! so reading them is O(1) and never waits for the engine; histograms are
//! prometheus-client's own.

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
    /// Attempt durations, event-to-start delays, HTTP request durations.
    pub histograms: Histograms,
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
    /// The same refusals, by reason.
    pub refused: Refusals,
    /// The AMQP consumers' counters.
    pub amqp: AmqpMetrics,
    /// Adapters that died and are being restarted.
    pub adapters: AdapterHealth,
}

/// Events refused at the edge, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    /// A webhook whose signature (or signed timestamp) did not check out.
    pub signature: AtomicU64,
    /// A body over its binding's `max_body`.
    pub too_large: AtomicU64,
    /// A body that could not become an event (not JSON, not a CloudEvent,
    /// an undecodable AMQP message, a bad query string).
    pub bad_body: AtomicU64,
    /// A webhook path no binding serves, or a method it does not accept.
    pub no_route: AtomicU64,
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Signature,
    TooLarge,
    BadBody,
    NoRoute,
}

impl EventMetrics {
    /// Counts a refusal, in the total and by its reason.
    pub fn refuse(&self, reason: Refusal) {
        use std::sync::atomic::Ordering::Relaxed;
        self.rejected.fetch_add(1, Relaxed);
        let counter = match reason {
            Refusal::Signature => &self.refused.signature,
            Refusal::TooLarge => &self.refused.too_large,
            Refusal::BadBody => &self.refused.bad_body,
            Refusal::NoRoute => &self.refused.no_route,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Adapters (file watchers, AMQP consumers, cron and expectation timers)
/// whose task ended without being asked to, or panicked: listed until a
/// restart has run for a while. `/healthz` answers 503 while any is.
#[derive(Debug, Default)]
pub struct AdapterHealth {
    dead: std::sync::Mutex<std::collections::BTreeMap<String, DeadAdapter>>,
    /// Every supervised adapter now, by name: its supervisor and since when.
    live: std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>>,
    owners: AtomicU64,
}

/// One adapter as the dashboard's overview shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdapterState {
    /// `file:<dir>`, `cron:<binding>`, `expect:<binding>`, `amqp:<queue>`.
    pub name: String,
    /// `running`, or `restarting` after it died.
    pub status: &'static str,
    /// Since when it has been supervised (RFC 3339).
    pub since: String,
    /// Why it died last, while `restarting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub restarts: u64,
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

    /// `owner` supervises `adapter` from now on.
    pub fn started(&self, adapter: &str, owner: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                adapter.to_string(),
                (owner, crate::time::format(crate::time::now())),
            );
        }
    }

    /// `owner` stopped supervising `adapter` (stopped or replaced).
    pub fn stopped(&self, adapter: &str, owner: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.get(adapter).is_some_and(|(o, _)| *o == owner)
        {
            live.remove(adapter);
        }
    }

    /// Every supervised adapter, by name, with whether it is restarting.
    pub fn states(&self) -> Vec<AdapterState> {
        let dead = self.dead();
        let Ok(live) = self.live.lock() else {
            return Vec::new();
        };
        live.iter()
            .map(|(name, (_, since))| {
                let died = dead.get(name);
                AdapterState {
                    name: name.clone(),
                    status: if died.is_some() {
                        "restarting"
                    } else {
                        "running"
                    },
                    since: since.clone(),
                    error: died.map(|d| d.error.clone()),
                    restarts: died.map_or(0, |d| d.restarts),
                }
            })
            .collect()
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

    /// The overview lists every supervised adapter, dead ones as
    /// restarting; a reload's successor is never removed by its
    /// predecessor stopping late.
    #[test]
    fn adapters_are_listed_while_supervised_and_restarting_while_dead() {
        let health = AdapterHealth::default();
        let (old, new) = (health.owner(), health.owner());
        health.started("file:/in", old);
        health.started("cron:nightly", old);
        health.died("cron:nightly", old, "boom".into(), 2);
        let states = health.states();
        let shown: Vec<_> = states
            .iter()
            .map(|a| (a.name.as_str(), a.status, a.error.as_deref(), a.restarts))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("cron:nightly", "restarting", Some("boom"), 2),
                ("file:/in", "running", None, 0)
            ]
        );
        health.started("file:/in", new);
        health.stopped("file:/in", old);
        health.recovered("cron:nightly", old);
        health.stopped("cron:nightly", old);
        let shown: Vec<_> = health
            .states()
            .into_iter()
            .map(|a| (a.name, a.status))
            .collect();
        assert_eq!(shown, vec![("file:/in".to_string(), "running")]);
    }
}

// ------------------------------------------------------------------
// The exposition: prometheus-client encodes everything `/metrics` shows.
// The counters above stay plain atomics (read by the dashboard too); a
// scrape copies them into a [`Snapshot`], registered beside the
// histograms, which prometheus-client observes itself.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A histogram per label set.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and commit latencies: 0.1 ms to 10 s.
fn fast_seconds() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// Task attempts and event-to-start delays: 1 ms to 4 h.
fn task_seconds() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        14400.0,
    ])
}

/// A task attempt's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub workflow: String,
    pub task: String,
    pub kind: String,
}

/// The trigger that made an event (`webhook`, `cron`, `file`, `run`,
/// `binding`; `external` for events posted to the API or read from AMQP).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: String,
}

/// An HTTP request's route (the matched pattern, not the path), method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

/// The histograms of `/metrics`; clones share their state.
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Task attempts, from start to end, by workflow, task and kind.
    pub attempt_seconds: HistogramFamily<AttemptLabels>,
    /// From an event's time to the start of the run it started.
    pub event_to_start_seconds: HistogramFamily<TriggerLabels>,
    /// HTTP requests, until the response's head (a stream's length is not counted).
    pub http_request_seconds: HistogramFamily<RouteLabels>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            attempt_seconds: Family::new_with_constructor(task_seconds),
            event_to_start_seconds: Family::new_with_constructor(task_seconds),
            http_request_seconds: Family::new_with_constructor(fast_seconds),
        }
    }
}

/// The log's group commits: how long each took to be durable and how many
/// records it made durable.
#[derive(Debug, Clone)]
pub struct CommitHistograms {
    pub seconds: Histogram,
    pub records: Histogram,
}

impl Default for CommitHistograms {
    fn default() -> Self {
        Self {
            seconds: fast_seconds(),
            records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        }
    }
}

/// Counters and gauges read at a scrape, encoded by prometheus-client.
#[derive(Debug, Default)]
pub struct Snapshot {
    families: Vec<SnapshotFamily>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// A sample's value: counts stay integers in the exposition.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(u64),
    Float(f64),
}

impl From<u64> for Number {
    fn from(n: u64) -> Self {
        Number::Int(n)
    }
}

impl From<usize> for Number {
    fn from(n: usize) -> Self {
        Number::Int(n as u64)
    }
}

impl From<f64> for Number {
    fn from(n: f64) -> Self {
        Number::Float(n)
    }
}

/// Labels and value of one sample.
pub type Sample = (Vec<(&'static str, String)>, Number);

#[derive(Debug)]
struct SnapshotFamily {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Snapshot {
    fn push(&mut self, name: &'static str, help: &'static str, kind: Kind, samples: Vec<Sample>) {
        // prometheus-client ends each help text with a period itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        self.families.push(SnapshotFamily {
            name,
            help,
            kind,
            samples,
        });
    }

    /// A counter (`NAME_total` in the exposition).
    pub fn counter(&mut self, name: &'static str, help: &'static str, value: impl Into<Number>) {
        self.push(name, help, Kind::Counter, vec![(Vec::new(), value.into())]);
    }

    /// A counter with one sample per label set.
    pub fn counters(&mut self, name: &'static str, help: &'static str, samples: Vec<Sample>) {
        self.push(name, help, Kind::Counter, samples);
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: impl Into<Number>) {
        self.push(name, help, Kind::Gauge, vec![(Vec::new(), value.into())]);
    }

    pub fn gauges(&mut self, name: &'static str, help: &'static str, samples: Vec<Sample>) {
        self.push(name, help, Kind::Gauge, samples);
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn one(
            kind: Kind,
            value: Number,
            encoder: prometheus_client::encoding::MetricEncoder,
        ) -> Result<(), std::fmt::Error> {
            match (kind, value) {
                (Kind::Counter, Number::Int(n)) => ConstCounter::new(n).encode(encoder),
                (Kind::Counter, Number::Float(n)) => ConstCounter::new(n).encode(encoder),
                (Kind::Gauge, Number::Int(n)) => {
                    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(encoder)
                }
                (Kind::Gauge, Number::Float(n)) => ConstGauge::new(n).encode(encoder),
            }
        }
        for family in &self.families {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            match family.samples.as_slice() {
                [(labels, value)] if labels.is_empty() => one(family.kind, *value, metric)?,
                samples => {
                    for (labels, value) in samples {
                        one(family.kind, *value, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}
