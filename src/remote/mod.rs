//! Remote tasks, the daemon's side (README "Remote workers"): a task with
//! `queue` runs on `switchyard worker` processes fed through RabbitMQ
//! ([`protocol`]), while the daemon stays the source of truth: it records
//! every attempt, owns every deadline, and grants each attempt to exactly
//! one worker.
//!
//! [`Remote::run`] is one remote attempt: it sends the job straight to a
//! worker with a free slot when nothing waits in the task queue
//! (`Remote::dispatch_direct`), or else publishes it (persistent,
//! confirmed; retried while the broker is away), then waits for the
//! worker's result, a cancel or timeout (sent to the worker as a `cancel`),
//! heartbeats stopping (the attempt is lost, and retried like a local
//! attempt lost in a crash) or `start_timeout` passing with nobody taking
//! it. [`Remote::spawn`] consumes the result queue: claims are granted to
//! the first worker that asks and denied to the others; heartbeats keep
//! attempts alive and tell the daemon which worker runs what; a result is
//! handed to its attempt and acked only once the attempt's end is flushed
//! ([`Ended::durable`]), so a daemon crash loses no result; a result for an
//! attempt that is no longer running (lost, cancelled, timed out, or after
//! a retry) is late: logged, counted and dropped.
//!
//! After a restart the daemon re-attaches to the attempts that were running
//! remotely (they are not lost: their workers go on) and republishes their
//! jobs, in case one never reached the broker; a republished job's claim is
//! denied when the original runs (its worker's heartbeats say so). For one
//! heartbeat window after the start, claims of re-attached attempts wait,
//! so the heartbeats of the workers running them are heard first.

pub mod protocol;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Backoff, Broker, Endpoint, Outgoing};
use crate::executors::AttemptOutcome;
use protocol::{AttemptRef, FromWorker, Job, PROTOCOL, RemoteOutcome, ToWorker, WorkerInfo};

/// Default heartbeat interval of workers (`workers.heartbeat`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Heartbeat intervals without one before an attempt is lost.
pub const LOST_AFTER_INTERVALS: u32 = 3;
/// How long a cancelled or timed-out attempt's worker has to report it
/// stopped before the attempt ends without its word.
const CANCEL_GRACE: Duration = Duration::from_secs(15);
/// How long workers get to reconnect after the daemon's own connection to
/// the broker came (back), before their silence counts (at least one
/// heartbeat interval).
const RECONNECT_MARGIN: Duration = Duration::from_secs(5);
/// Results handled at once (each waits for its flush before its ack).
const PREFETCH: u16 = 512;
/// How long a job sent straight to a worker may be on its way before a
/// heartbeat that does not list it asks for a `fence`.
const DIRECT_SETTLE: Duration = Duration::from_millis(250);
/// How long a `run`'s confirm is waited for (cancel waits meanwhile).
const RUN_CONFIRM: Duration = Duration::from_secs(5);

/// How remote attempts are run (`workers` in switchyard.json).
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub heartbeat: Duration,
    pub results_queue: String,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            heartbeat: DEFAULT_HEARTBEAT,
            results_queue: protocol::DEFAULT_RESULTS_QUEUE.into(),
        }
    }
}

/// How a remote attempt ended.
#[derive(Debug)]
pub enum RemoteEnd {
    /// The worker's result (or the daemon's verdict: not started in time,
    /// cancelled without the worker's word).
    Finished(AttemptOutcome),
    /// Lost: heartbeats stopped, or the worker handed it back.
    Lost(String),
}

/// A remote attempt's end, and where to say once it is durable (the
/// worker's result message is acked then).
#[derive(Debug)]
pub struct Ended {
    pub end: RemoteEnd,
    pub durable: Option<oneshot::Sender<()>>,
}

impl Ended {
    fn verdict(end: RemoteEnd) -> Self {
        Self { end, durable: None }
    }
}

/// A tracked attempt's end, for [`Remote::run`].
#[derive(Debug)]
pub struct Tracking {
    finished: oneshot::Receiver<Ended>,
    /// Re-attached at start-up: the consumer is started once every such
    /// attempt is known (by the daemon, after recovery).
    reattached: bool,
}

/// One attempt the daemon waits for.
struct Tracked {
    queue: String,
    /// When the owner got it (grant, or a re-attached attempt's heartbeat).
    granted: Option<Instant>,
    /// The owner's message number at that moment: only its heartbeats
    /// built later can tell that it does not have the attempt.
    granted_seq: u64,
    /// Where its output is shown to followers while it runs.
    live: Option<Arc<crate::executors::live::LiveAttempt>>,
    /// Where a `check` attempt's observations are recorded.
    checks: Option<Arc<dyn crate::executors::check::CheckHost>>,
    /// Its kind resumes from its recorded start (`check`, `sleep`): handed
    /// back by a worker shutting down, it goes to another worker as the
    /// same attempt instead of being lost.
    resumable: bool,
    /// The owner's heartbeats stopped listing it although it lives: the
    /// grant never reached it (a broker restart took its control queue),
    /// so the job is published again for whoever claims it.
    republish: bool,
    /// The worker granted it.
    owner: Option<String>,
    /// Sent straight to its owner (`run`), with this number: until the
    /// owner's heartbeats list it, or say it counted that number, it may
    /// still be on its way.
    direct: Option<u64>,
    /// Its kind takes a `--concurrency` slot (all but `check`, `sleep`).
    slot: bool,
    /// Last heartbeat (or the grant).
    seen: Instant,
    /// Re-attached after a restart: the owner is learnt from heartbeats.
    reattached: bool,
    /// Why the daemon stopped it, once it has.
    stopping: Option<String>,
    done: Option<oneshot::Sender<Ended>>,
}

/// A worker, as its heartbeats show it.
#[derive(Debug, Clone)]
struct SeenWorker {
    info: WorkerInfo,
    running: Vec<AttemptRef>,
    last: Instant,
    last_at: String,
    /// It takes jobs straight from the daemon (its heartbeats say so).
    direct: Option<protocol::DirectState>,
    /// When the daemon last sent it a job straight (spreads them).
    last_dispatch: Option<Instant>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RemoteMetrics {
    pub jobs_published: AtomicU64,
    pub claims_granted: AtomicU64,
    /// Jobs sent straight to a worker with a free slot (no claim).
    pub direct: AtomicU64,
    /// Of those, sent through the task queue after all (the worker had no
    /// free slot after all, or the job never reached it).
    pub redirected: AtomicU64,
    pub claims_denied: AtomicU64,
    pub results: AtomicU64,
    /// Results for attempts no longer running: dropped.
    pub late_results: AtomicU64,
    pub lost: AtomicU64,
    /// Messages refused: not JSON, another protocol version, bad shape.
    pub refused: AtomicU64,
}

/// The daemon's remote-attempt service. Cheap to clone.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("results_queue", &self.inner.config.results_queue)
            .finish_non_exhaustive()
    }
}

struct Inner {
    endpoint: Endpoint,
    config: RemoteConfig,
    /// Jobs are published here (confirmed).
    jobs: Broker,
    attempts: Mutex<HashMap<AttemptRef, Tracked>>,
    workers: Mutex<BTreeMap<String, SeenWorker>>,
    /// The consumer's channel, for declares and control messages.
    session: tokio::sync::Mutex<Option<Channel>>,
    declared: Mutex<HashSet<String>>,
    /// The result queue is being consumed now: heartbeats can be heard.
    listening: AtomicBool,
    /// Since when it is, continuously.
    listening_since: Mutex<Option<Instant>>,
    started: Instant,
    metrics: RemoteMetrics,
    /// The result queue's consumer runs (started by the first remote
    /// attempt, or at start-up when a workflow has remote tasks).
    consuming: AtomicBool,
    stop: CancellationToken,
    /// This daemon process, for workers counting its `run`s.
    instance: String,
    /// Numbers `run` and `fence` messages.
    dispatches: AtomicU64,
}

impl Remote {
    /// The service; nothing connects until [`Remote::ensure_consuming`]
    /// (so a project without remote tasks needs no broker). `stop` ends
    /// the result queue's consumer.
    pub fn new(endpoint: Endpoint, config: RemoteConfig, stop: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs: Broker::with_endpoint(Ok(endpoint.clone()), None),
                endpoint,
                config,
                attempts: Mutex::new(HashMap::new()),
                workers: Mutex::new(BTreeMap::new()),
                session: tokio::sync::Mutex::new(None),
                declared: Mutex::new(HashSet::new()),
                listening: AtomicBool::new(false),
                listening_since: Mutex::new(None),
                started: Instant::now(),
                metrics: RemoteMetrics::default(),
                consuming: AtomicBool::new(false),
                stop,
                instance: uuid::Uuid::new_v4().simple().to_string(),
                dispatches: AtomicU64::new(0),
            }),
        }
    }

    /// Whether any remote attempt is being waited for.
    pub fn has_attempts(&self) -> bool {
        self.inner.attempts.lock().is_ok_and(|a| !a.is_empty())
    }

    pub fn heartbeat(&self) -> Duration {
        self.inner.config.heartbeat
    }

    pub fn results_queue(&self) -> &str {
        &self.inner.config.results_queue
    }

    pub fn metrics(&self) -> &RemoteMetrics {
        &self.inner.metrics
    }

    fn lost_after(&self) -> Duration {
        self.inner.config.heartbeat * LOST_AFTER_INTERVALS
    }

    /// Workers heard from within the lost window, and jobs in flight, for
    /// `GET /workers`.
    pub fn workers_json(&self) -> Value {
        let window = self.lost_after();
        let workers: Vec<Value> = self
            .inner
            .workers
            .lock()
            .map(|workers| {
                workers
                    .values()
                    .map(|w| {
                        json!({
                            "worker": w.info.worker,
                            "host": w.info.host,
                            "pid": w.info.pid,
                            "queues": w.info.queues,
                            "concurrency": w.info.concurrency,
                            "started_at": w.info.started_at,
                            "last_heartbeat": w.last_at,
                            "alive": w.last.elapsed() <= window,
                            "running": w.running,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut waiting: BTreeMap<String, usize> = BTreeMap::new();
        let mut running = 0;
        if let Ok(attempts) = self.inner.attempts.lock() {
            for tracked in attempts.values() {
                if tracked.owner.is_some() {
                    running += 1;
                } else {
                    *waiting.entry(tracked.queue.clone()).or_default() += 1;
                }
            }
        }
        json!({
            "workers": workers,
            "results_queue": self.inner.config.results_queue,
            "heartbeat_ms": self.inner.config.heartbeat.as_millis() as u64,
            "consuming_results": self.inner.listening.load(Ordering::Relaxed),
            "attempts_running": running,
            "attempts_waiting": waiting,
        })
    }

    /// The result queue's consumer: `idle` until the first remote attempt
    /// starts it, then `consuming`, or `reconnecting` between sessions.
    pub fn results_state(&self) -> &'static str {
        if !self.inner.consuming.load(Ordering::Relaxed) {
            "idle"
        } else if self.inner.listening.load(Ordering::Relaxed) {
            "consuming"
        } else {
            "reconnecting"
        }
    }

    /// The remote part of `/metrics`.
    pub fn collect(&self, s: &mut crate::metrics::Snapshot) {
        let m = &self.inner.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let window = self.lost_after();
        let (mut running, mut concurrency, mut age) = (Vec::new(), Vec::new(), Vec::new());
        if let Ok(seen) = self.inner.workers.lock() {
            for w in seen.values().filter(|w| w.last.elapsed() <= window) {
                let label = || vec![("worker", w.info.worker.clone())];
                running.push((label(), w.running.len().into()));
                concurrency.push((label(), (w.info.concurrency as u64).into()));
                age.push((label(), w.last.elapsed().as_secs_f64().into()));
            }
        }
        let mut queues: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        if let Ok(attempts) = self.inner.attempts.lock() {
            for t in attempts.values() {
                let entry = queues.entry(t.queue.clone()).or_default();
                if t.owner.is_some() {
                    entry.1 += 1;
                } else {
                    entry.0 += 1;
                }
            }
        }
        let per_queue = |pick: fn(&(usize, usize)) -> usize| {
            queues
                .iter()
                .map(|(queue, n)| (vec![("queue", queue.clone())], pick(n).into()))
                .collect()
        };
        s.counter(
            "remote_jobs_published",
            "Remote jobs published (confirmed).",
            get(&m.jobs_published),
        );
        s.counters(
            "remote_claims",
            "Workers' claims, by answer.",
            vec![
                (
                    vec![("answer", "granted".into())],
                    get(&m.claims_granted).into(),
                ),
                (
                    vec![("answer", "denied".into())],
                    get(&m.claims_denied).into(),
                ),
            ],
        );
        s.counter(
            "remote_direct",
            "Jobs sent straight to a worker with a free slot (no claim).",
            get(&m.direct),
        );
        s.counter(
            "remote_redirected",
            "Jobs sent straight to a worker that went through the task queue after all.",
            get(&m.redirected),
        );
        s.counter(
            "remote_results",
            "Results received from workers.",
            get(&m.results),
        );
        s.counter(
            "remote_late_results",
            "Results for attempts no longer running, dropped.",
            get(&m.late_results),
        );
        s.counter(
            "remote_lost",
            "Remote attempts lost (heartbeats stopped).",
            get(&m.lost),
        );
        s.counter(
            "remote_refused",
            "Messages on the result queue refused (bad JSON, another protocol version).",
            get(&m.refused),
        );
        s.gauge(
            "workers",
            "Workers heard from within the lost window.",
            running.len(),
        );
        s.gauges(
            "worker_running",
            "Attempts a worker runs, by its last heartbeat.",
            running,
        );
        s.gauges(
            "worker_concurrency",
            "A worker's --concurrency.",
            concurrency,
        );
        s.gauges(
            "worker_heartbeat_age_seconds",
            "Time since a worker's last heartbeat.",
            age,
        );
        s.gauges(
            "remote_jobs_waiting",
            "Remote attempts published and not yet started, by queue.",
            per_queue(|n| n.0),
        );
        s.gauges(
            "remote_attempts_running",
            "Remote attempts started and not ended, by queue.",
            per_queue(|n| n.1),
        );
    }

    /// Registers an attempt before anything can report on it (called in
    /// the engine thread, so after a restart every re-attached attempt is
    /// known before the first result is read); [`Remote::run`] goes on.
    pub fn track(
        &self,
        attempt: AttemptRef,
        queue: &str,
        reattach: bool,
        live: Option<Arc<crate::executors::live::LiveAttempt>>,
        checks: Option<Arc<dyn crate::executors::check::CheckHost>>,
        kind: crate::executors::KindName,
    ) -> Tracking {
        let (resumable, slot) = (
            crate::executors::resumable(kind),
            crate::executors::holds_slot(kind),
        );
        let (done, finished) = oneshot::channel();
        if let Ok(mut attempts) = self.inner.attempts.lock() {
            attempts.insert(
                attempt,
                Tracked {
                    queue: queue.to_string(),
                    owner: None,
                    direct: None,
                    slot,
                    seen: Instant::now(),
                    granted: None,
                    granted_seq: 0,
                    live,
                    checks,
                    resumable,
                    republish: false,
                    reattached: reattach,
                    stopping: None,
                    done: Some(done),
                },
            );
        }
        Tracking {
            finished,
            reattached: reattach,
        }
    }

    /// Runs one attempt remotely (see the module docs). `timeout` counts
    /// from the grant (the daemon's clock).
    pub async fn run(
        &self,
        job: Job,
        queue: &str,
        tracking: Tracking,
        cancel: CancellationToken,
        timeout: Option<Duration>,
        start_timeout: Option<Duration>,
    ) -> Ended {
        // Not while recovery still registers re-attached attempts: a
        // heartbeat read before its attempt is known would cancel it.
        if !tracking.reattached {
            self.ensure_consuming();
        }
        let key = job.attempt.clone();
        let mut finished = tracking.finished;
        let dispatched = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let direct = !tracking.reattached && self.dispatch_direct(queue, &job).await;
        if !direct {
            loop {
                let publish = self.publish_job(queue, &job);
                tokio::select! {
                    result = publish => match result {
                        Ok(()) => break,
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(attempt = %key, queue, error = %e, retry_in = ?delay,
                                "Cannot publish a remote task's job; retrying.");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = cancel.cancelled() => {
                                    self.forget(&key);
                                    return Ended::verdict(RemoteEnd::Finished(AttemptOutcome::failure(
                                        format!("cancelled before its job reached the broker ({e})"),
                                    )));
                                }
                            }
                        }
                    },
                    // A re-attached attempt's result may come before the republish.
                    ended = &mut finished => return ended.unwrap_or_else(|_| self.vanished()),
                }
            }
        }
        let tick = (self.inner.config.heartbeat / 4).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_sent: Option<Instant> = None;
        let mut granted_at: Option<Instant> = None;
        loop {
            tokio::select! {
                ended = &mut finished => {
                    return ended.unwrap_or_else(|_| self.vanished());
                }
                _ = cancel.cancelled(), if stop_sent.is_none() => {
                    match self.stop(&key, "cancelled").await {
                        Some(_) => stop_sent = Some(Instant::now()),
                        None => {
                            self.forget(&key);
                            return Ended::verdict(RemoteEnd::Finished(AttemptOutcome::failure(
                                "cancelled before a worker started it",
                            )));
                        }
                    }
                }
                _ = ticker.tick() => {
                    let state = self
                        .inner
                        .attempts
                        .lock()
                        .ok()
                        .and_then(|mut attempts| {
                            attempts.get_mut(&key).map(|t| {
                                (t.owner.clone(), t.seen, std::mem::take(&mut t.republish))
                            })
                        });
                    let Some((owner, seen, republish)) = state else {
                        // Taken by a result this very moment: its end is
                        // in `finished` (or it was dropped).
                        return (&mut finished).await.unwrap_or_else(|_| self.vanished());
                    };
                    if let Some(since) = stop_sent {
                        if since.elapsed() >= CANCEL_GRACE {
                            self.forget(&key);
                            let who = owner.as_deref().unwrap_or("?");
                            return Ended::verdict(RemoteEnd::Finished(AttemptOutcome::failure(
                                format!("stopped; worker {who} did not confirm within {}",
                                    humantime::format_duration(CANCEL_GRACE)),
                            )));
                        }
                        continue;
                    }
                    match owner {
                        Some(owner) => {
                            let granted = *granted_at.get_or_insert(seen);
                            if let Some(limit) = timeout
                                && granted.elapsed() >= limit
                            {
                                let reason = format!("timed out after {}", humantime::format_duration(limit));
                                if self.stop(&key, &reason).await.is_some() {
                                    stop_sent = Some(Instant::now());
                                }
                                continue;
                            }
                            // Silence counts only once the daemon has heard the
                            // broker long enough for workers to be back too
                            // (after its own start or a broker outage, their
                            // reconnects take a moment).
                            let settled = self.lost_after() + self.inner.config.heartbeat.max(RECONNECT_MARGIN);
                            if seen.elapsed() >= self.lost_after() && self.hearing_for(settled) {
                                self.forget(&key);
                                self.inner.metrics.lost.fetch_add(1, Ordering::Relaxed);
                                return Ended::verdict(RemoteEnd::Lost(format!(
                                    "no heartbeat from worker {owner} for {}",
                                    humantime::format_duration(self.lost_after())
                                )));
                            }
                        }
                        None => {
                            granted_at = None;
                            if republish {
                                let mut again = job.clone();
                                again.job_id = uuid::Uuid::now_v7().to_string();
                                if let Err(e) = self.publish_job(queue, &again).await {
                                    tracing::warn!(attempt = %key, error = %e, "Cannot publish a job again; retrying.");
                                    if let Ok(mut attempts) = self.inner.attempts.lock()
                                        && let Some(t) = attempts.get_mut(&key)
                                    {
                                        t.republish = true;
                                    }
                                }
                            }
                            if let Some(limit) = start_timeout
                                && dispatched.elapsed() >= limit
                            {
                                self.forget(&key);
                                let mut outcome = AttemptOutcome::permanent_failure(format!(
                                    "no worker started it within start_timeout {} (queue `{queue}`)",
                                    humantime::format_duration(limit)
                                ));
                                outcome.retryable = false;
                                return Ended::verdict(RemoteEnd::Finished(outcome));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The attempt's entry was dropped without an end (cannot happen but
    /// for a poisoned lock): fail it rather than hang.
    fn vanished(&self) -> Ended {
        Ended::verdict(RemoteEnd::Finished(AttemptOutcome::failure(
            "the remote attempt's state was lost",
        )))
    }

    fn forget(&self, key: &AttemptRef) {
        if let Ok(mut attempts) = self.inner.attempts.lock() {
            attempts.remove(key);
        }
    }

    /// Whether the result queue has been consumed without a break for
    /// `window` (only then does silence mean a worker is gone).
    fn hearing_for(&self, window: Duration) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
            && self
                .inner
                .listening_since
                .lock()
                .ok()
                .and_then(|s| *s)
                .is_some_and(|since| since.elapsed() >= window)
    }

    /// Marks the attempt stopping and tells its worker; None when no worker
    /// has it (then nothing runs to stop).
    async fn stop(&self, key: &AttemptRef, reason: &str) -> Option<String> {
        let owner = {
            let mut attempts = self.inner.attempts.lock().ok()?;
            let tracked = attempts.get_mut(key)?;
            tracked.stopping = Some(reason.to_string());
            tracked.owner.clone()
        }?;
        self.send_control(
            &owner,
            &ToWorker::Cancel {
                protocol: PROTOCOL,
                attempt: key.clone(),
                reason: reason.to_string(),
            },
        )
        .await;
        Some(owner)
    }

    /// Sends the job straight to a worker of `queue` with a free slot, when
    /// nothing waits in the task queue (which goes first): the daemon picks
    /// the worker, so no claim is needed, and the job skips the durable
    /// queue (the attempt is in the daemon's log already; a restart sends
    /// it again). False when there is no such worker: publish it.
    async fn dispatch_direct(&self, queue: &str, job: &Job) -> bool {
        if !self.inner.listening.load(Ordering::Relaxed) {
            return false;
        }
        // Heard from within this long: a worker frozen since (its
        // connection still open) is sent jobs it cannot take, lost after
        // the heartbeat window like attempts it was running.
        let fresh = self.inner.config.heartbeat * 3 / 2;
        // Held from numbering to sending: the worker gets `run`s and
        // `fence`s in the order of their numbers, which its count relies on.
        let session = self.inner.session.lock().await;
        let Some(channel) = session.clone() else {
            return false;
        };
        let chosen = (|| {
            let mut attempts = self.inner.attempts.lock().ok()?;
            let mut busy: HashMap<String, usize> = HashMap::new();
            for (attempt, t) in attempts.iter().filter(|(_, t)| t.slot) {
                match &t.owner {
                    // A worker's slots, whichever queue it took them for.
                    Some(owner) => *busy.entry(owner.clone()).or_default() += 1,
                    // Waiting in this task queue: it goes first.
                    None if t.queue == queue && *attempt != job.attempt => return None,
                    None => {}
                }
            }
            let tracked = attempts.get_mut(&job.attempt).filter(|t| t.slot)?;
            let mut workers = self.inner.workers.lock().ok()?;
            let (_, worker) = workers
                .values_mut()
                .filter(|w| {
                    w.last.elapsed() <= fresh
                        && w.direct.as_ref().is_some_and(|d| !d.closed)
                        && w.info.queues.iter().any(|q| q == queue)
                })
                .filter_map(|w| {
                    let taken = busy.get(&w.info.worker).copied().unwrap_or(0);
                    let free = w.info.concurrency.saturating_sub(taken);
                    (free > 0).then_some((free, w))
                })
                // Most free slots; of those, the one sent a job longest ago.
                .max_by(|(fa, a), (fb, b)| {
                    fa.cmp(fb).then(b.last_dispatch.cmp(&a.last_dispatch))
                })?;
            let now = Instant::now();
            worker.last_dispatch = Some(now);
            let dispatch = self.inner.dispatches.fetch_add(1, Ordering::Relaxed) + 1;
            tracked.owner = Some(worker.info.worker.clone());
            tracked.seen = now;
            tracked.granted = Some(now);
            // Not for the lost-grant check of claims: `direct` has its own.
            tracked.granted_seq = u64::MAX;
            tracked.direct = Some(dispatch);
            Some((worker.info.worker.clone(), dispatch))
        })();
        let Some((worker, dispatch)) = chosen else {
            return false;
        };
        let run = ToWorker::Run {
            protocol: PROTOCOL,
            daemon: self.inner.instance.clone(),
            dispatch,
            job: Box::new(job.clone()),
        };
        // Mandatory and confirmed: a worker gone since its last heartbeat
        // has no control queue, and the broker says so.
        let published = self.publish_on(&channel, &worker, &run, true).await;
        drop(session);
        let sent = match published {
            Ok(confirm) => match tokio::time::timeout(RUN_CONFIRM, confirm).await {
                Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
                Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(_))) => Err(true),
                Ok(Err(_)) | Err(_) => Err(false),
            },
            Err(sent) => Err(sent),
        };
        match sent {
            // Err(false): whether the broker has it is unknown (the
            // connection broke); the worker's heartbeats settle it.
            Ok(()) | Err(false) => {
                self.inner.metrics.direct.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(true) => {
                // Not routed: publish it instead, and send that worker no
                // more until it heartbeats again.
                self.inner
                    .metrics
                    .redirected
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(mut workers) = self.inner.workers.lock()
                    && let Some(w) = workers.get_mut(&worker)
                {
                    w.direct = None;
                }
                let Ok(mut attempts) = self.inner.attempts.lock() else {
                    return false;
                };
                match attempts.get_mut(&job.attempt) {
                    Some(t) if t.direct == Some(dispatch) => {
                        t.owner = None;
                        t.granted = None;
                        t.direct = None;
                        false
                    }
                    // Redirected meanwhile (its worker said it closed):
                    // published by the next tick already; not twice.
                    _ => true,
                }
            }
        }
    }

    async fn publish_job(&self, queue: &str, job: &Job) -> Result<(), String> {
        let name = protocol::job_queue(queue, &job.kind);
        self.declare(&name).await?;
        let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.job_id.clone().into())
            .with_headers(protocol::headers());
        self.inner
            .jobs
            .publish(Outgoing {
                exchange: String::new(),
                routing_key: name,
                body,
                properties,
                mandatory: true,
            })
            .await
            .map_err(|e| e.to_string())?;
        self.inner
            .metrics
            .jobs_published
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Declares a task queue (durable) once per consumer session.
    async fn declare(&self, queue: &str) -> Result<(), String> {
        if self.inner.declared.lock().is_ok_and(|d| d.contains(queue)) {
            return Ok(());
        }
        let channel = self
            .inner
            .session
            .lock()
            .await
            .clone()
            .filter(|c| c.status().connected())
            .ok_or("not connected to the broker yet")?;
        let name = crate::amqp::short("queue name", queue)?;
        channel
            .queue_declare(
                name,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare queue `{queue}`: {e}"))?;
        if let Ok(mut declared) = self.inner.declared.lock() {
            declared.insert(queue.to_string());
        }
        Ok(())
    }

    /// Sends a control message to a worker (not persistent: a worker that
    /// is gone has no queue, and its attempts are lost anyway), on the
    /// consumer's channel, without waiting for its confirm.
    async fn send_control(&self, worker: &str, message: &ToWorker) {
        let _ = self.publish_control(worker, message, false).await;
    }

    async fn publish_control(
        &self,
        worker: &str,
        message: &ToWorker,
        mandatory: bool,
    ) -> Result<lapin::PublisherConfirm, bool> {
        let Some(channel) = self.inner.session.lock().await.clone() else {
            return Err(true);
        };
        self.publish_on(&channel, worker, message, mandatory).await
    }

    /// Publishes a control message on `channel`; Err(true) when it was not
    /// handed to the connection (the broker never saw it).
    async fn publish_on(
        &self,
        channel: &Channel,
        worker: &str,
        message: &ToWorker,
        mandatory: bool,
    ) -> Result<lapin::PublisherConfirm, bool> {
        let body = serde_json::to_vec(message).map_err(|_| true)?;
        let routing_key =
            crate::amqp::short("queue name", &protocol::control_queue(worker)).map_err(|_| true)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(protocol::headers());
        channel
            .basic_publish(
                "".into(),
                routing_key,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| {
                tracing::warn!(worker, error = %e, "Cannot send a control message to a worker.");
                // Not handed to the connection: the broker never saw it.
                true
            })
    }

    /// Starts consuming the result queue (once), until the service's stop
    /// token, reconnecting with backoff.
    pub fn ensure_consuming(&self) {
        if self.inner.consuming.swap(true, Ordering::AcqRel) {
            return;
        }
        let remote = self.clone();
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                let started = Instant::now();
                let result = remote.session(&stop).await;
                remote.inner.listening.store(false, Ordering::Relaxed);
                *remote.inner.session.lock().await = None;
                if let Ok(mut declared) = remote.inner.declared.lock() {
                    declared.clear();
                }
                if stop.is_cancelled() {
                    return;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                if let Err(e) = result {
                    tracing::warn!(error = %e, retry_in = ?delay,
                        "Remote workers' result queue: session ended; reconnecting.");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        });
    }

    async fn session(&self, stop: &CancellationToken) -> Result<(), String> {
        let connection: Connection = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = crate::amqp::connect(&self.inner.endpoint, "remote tasks") => c.map_err(|e| e.to_string())?,
        };
        let result = self.consume(&connection, stop).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "switchyard remote session ended".into()),
        )
        .await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        let queue = crate::amqp::short("queue name", &self.inner.config.results_queue)?;
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare the result queue: {e}"))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
        // Control messages go out on this channel; a `run` waits for its
        // confirm (a worker gone since its last heartbeat has no queue).
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        let mut consumer = channel
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume the result queue: {e}"))?;
        *self.inner.session.lock().await = Some(channel.clone());
        self.inner.listening.store(true, Ordering::Relaxed);
        if let Ok(mut since) = self.inner.listening_since.lock() {
            *since = Some(Instant::now());
        }
        tracing::info!(queue = %self.inner.config.results_queue, "Consuming remote workers' results.");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                delivery = consumer.next() => match delivery {
                    None => return Err("the consumer was cancelled".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(delivery)) => self.handle(delivery).await,
                }
            }
        }
    }

    async fn handle(&self, delivery: lapin::message::Delivery) {
        let version = protocol::header_version(&delivery.properties);
        let message = match protocol::decode::<FromWorker>(&delivery.data, version) {
            Ok(message) => message,
            Err(e) => {
                self.inner.metrics.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "Refused a message on the result queue.");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
                return;
            }
        };
        match message {
            FromWorker::Claim {
                worker,
                job_id,
                attempt,
                seq,
                ..
            } => {
                let answer = self.claim(&worker, &job_id, &attempt, seq);
                if let Some(answer) = answer {
                    self.send_control(&worker, &answer).await;
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            FromWorker::Heartbeat {
                worker,
                running,
                reporting,
                claiming,
                seq,
                direct,
                ..
            } => {
                let (stale, fence) =
                    self.on_heartbeat(worker.clone(), running, reporting, &claiming, seq, direct);
                if fence {
                    // Numbered and sent under the session lock, in order
                    // with `run`s (see `dispatch_direct`).
                    let session = self.inner.session.lock().await;
                    if let Some(channel) = session.as_ref() {
                        let dispatch = self.inner.dispatches.fetch_add(1, Ordering::Relaxed) + 1;
                        let fence = ToWorker::Fence {
                            protocol: PROTOCOL,
                            daemon: self.inner.instance.clone(),
                            dispatch,
                            reply_to: self.inner.config.results_queue.clone(),
                        };
                        let _ = self
                            .publish_on(channel, &worker.worker, &fence, false)
                            .await;
                    }
                }
                for (attempt, reason) in stale {
                    self.send_control(
                        &worker.worker,
                        &ToWorker::Cancel {
                            protocol: PROTOCOL,
                            attempt,
                            reason,
                        },
                    )
                    .await;
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            FromWorker::Output {
                worker,
                attempt,
                stream,
                text,
                ..
            } => {
                // Shown to followers (redacted there with the daemon's
                // secrets too) when it comes from the attempt's worker.
                let live = self.owned_by(&worker, &attempt, |t| t.live.clone());
                if let Some(live) = live {
                    let stream = match stream {
                        protocol::Stream::Stdout => crate::executors::live::Stream::Stdout,
                        protocol::Stream::Stderr => crate::executors::live::Stream::Stderr,
                    };
                    live.push(stream, text.as_bytes());
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            FromWorker::Observed {
                worker,
                attempt,
                observation,
                ..
            } => {
                // Recorded when it comes from the attempt's worker.
                let checks = self.owned_by(&worker, &attempt, |t| t.checks.clone());
                if let Some(checks) = checks {
                    checks.observe(
                        attempt.run_id,
                        attempt.task.as_str().into(),
                        attempt.attempt,
                        observation,
                    );
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            FromWorker::Result {
                worker,
                attempt,
                outcome,
                ..
            } => {
                self.inner.metrics.results.fetch_add(1, Ordering::Relaxed);
                self.deliver(delivery, &worker, attempt, Report::Result(outcome));
            }
            FromWorker::Release {
                worker,
                attempt,
                reason,
                ..
            } => {
                self.released(&worker, &attempt, &reason);
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            FromWorker::Handback {
                worker,
                attempt,
                reason,
                ..
            } => {
                let reason = format!("handed back by worker {worker}: {reason}");
                self.deliver(delivery, &worker, attempt, Report::Handback(reason));
            }
        }
    }

    /// `pick` of an attempt `worker` owns (output and observations count
    /// only from the attempt's worker).
    fn owned_by<T>(
        &self,
        worker: &str,
        attempt: &AttemptRef,
        pick: impl FnOnce(&Tracked) -> Option<T>,
    ) -> Option<T> {
        let attempts = self.inner.attempts.lock().ok()?;
        let tracked = attempts.get(attempt)?;
        (tracked.owner.as_deref() == Some(worker))
            .then(|| pick(tracked))
            .flatten()
    }

    /// Answers a claim: the first worker to ask gets the attempt.
    fn claim(
        &self,
        worker: &str,
        job_id: &str,
        attempt: &AttemptRef,
        seq: u64,
    ) -> Option<ToWorker> {
        let deny = |reason: String| {
            Some(ToWorker::Deny {
                protocol: PROTOCOL,
                job_id: job_id.to_string(),
                attempt: attempt.clone(),
                reason,
            })
        };
        let mut attempts = self.inner.attempts.lock().ok()?;
        let Some(tracked) = attempts.get_mut(attempt) else {
            self.inner
                .metrics
                .claims_denied
                .fetch_add(1, Ordering::Relaxed);
            return deny("the attempt is not running (it ended, or was retried)".into());
        };
        if let Some(reason) = &tracked.stopping {
            return deny(format!("the attempt was stopped: {reason}"));
        }
        match &tracked.owner {
            Some(owner) if owner == worker => {}
            Some(owner) => {
                self.inner
                    .metrics
                    .claims_denied
                    .fetch_add(1, Ordering::Relaxed);
                return deny(format!("worker {owner} runs it"));
            }
            None => {
                // Re-attached: wait (no answer; the worker asks again) until
                // the workers running attempts have had a heartbeat's time.
                if tracked.reattached
                    && self.inner.started.elapsed() < self.inner.config.heartbeat * 3 / 2
                {
                    return None;
                }
                tracked.owner = Some(worker.to_string());
                tracked.seen = Instant::now();
                tracked.granted = Some(Instant::now());
                tracked.granted_seq = seq;
            }
        }
        self.inner
            .metrics
            .claims_granted
            .fetch_add(1, Ordering::Relaxed);
        Some(ToWorker::Grant {
            protocol: PROTOCOL,
            job_id: job_id.to_string(),
            attempt: attempt.clone(),
        })
    }

    /// A job sent straight to `worker` that it did not start: it goes
    /// through the task queue (or, stopped meanwhile, ends here).
    fn released(&self, worker: &str, attempt: &AttemptRef, reason: &str) {
        let Ok(mut attempts) = self.inner.attempts.lock() else {
            return;
        };
        let Some(tracked) = attempts.get_mut(attempt) else {
            return;
        };
        if tracked.owner.as_deref() != Some(worker) || tracked.direct.is_none() {
            return;
        }
        tracing::debug!(attempt = %attempt, worker, reason, "A job sent to a worker was released; publishing it.");
        if let Some(stopping) = tracked.stopping.clone() {
            let done = attempts.remove(attempt).and_then(|mut t| t.done.take());
            if let Some(done) = done {
                let _ = done.send(Ended::verdict(RemoteEnd::Finished(
                    AttemptOutcome::failure(format!("{stopping} (before it started)")),
                )));
            }
            return;
        }
        redirect(tracked);
        self.inner
            .metrics
            .redirected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Records a heartbeat; returns the attempts this worker runs that are
    /// not its own (another worker's, or no longer running), to cancel,
    /// and whether to send it a `fence` (a job sent straight to it is not
    /// in its heartbeats yet).
    fn on_heartbeat(
        &self,
        info: WorkerInfo,
        running: Vec<AttemptRef>,
        reporting: Vec<AttemptRef>,
        claiming: &[AttemptRef],
        seq: u64,
        direct: Option<protocol::DirectState>,
    ) -> (Vec<(AttemptRef, String)>, bool) {
        let mut stale = Vec::new();
        if let Ok(mut attempts) = self.inner.attempts.lock() {
            for attempt in running.iter().chain(&reporting) {
                match attempts.get_mut(attempt) {
                    Some(tracked) => match &tracked.owner {
                        Some(owner) if *owner == info.worker => tracked.seen = Instant::now(),
                        // A re-attached attempt's worker makes itself known.
                        None if tracked.reattached => {
                            tracked.owner = Some(info.worker.clone());
                            tracked.seen = Instant::now();
                            tracked.granted = Some(Instant::now());
                            tracked.granted_seq = seq;
                        }
                        Some(owner) => {
                            stale.push((attempt.clone(), format!("worker {owner} runs it")))
                        }
                        None => stale.push((attempt.clone(), "not granted".into())),
                    },
                    None => stale.push((
                        attempt.clone(),
                        "the attempt is no longer running (lost, cancelled or retried)".into(),
                    )),
                }
            }
        }
        // Granted to this worker a while ago, yet not in its heartbeat: it
        // never got the grant. Free the attempt and publish its job again.
        let settled = self.inner.config.heartbeat * 2;
        if let Ok(mut attempts) = self.inner.attempts.lock() {
            for (attempt, tracked) in attempts.iter_mut() {
                if tracked.owner.as_deref() == Some(info.worker.as_str())
                    && tracked.stopping.is_none()
                    && tracked.granted.is_some_and(|g| g.elapsed() >= settled)
                    // Built after the claim that got the grant, and the
                    // worker neither runs nor still claims it.
                    && seq > tracked.granted_seq
                    && !running.contains(attempt)
                    && !reporting.contains(attempt)
                    && !claiming.contains(attempt)
                {
                    tracing::warn!(attempt = %attempt, worker = %info.worker,
                        "A granted attempt is not running on its worker (the grant was lost); publishing its job again.");
                    tracked.owner = None;
                    tracked.granted = None;
                    tracked.republish = true;
                }
            }
        }
        let fence = self.settle_direct(&info.worker, direct.as_ref(), &running, &reporting);
        if let Ok(mut workers) = self.inner.workers.lock() {
            let last_dispatch = workers.get(&info.worker).and_then(|w| w.last_dispatch);
            workers.insert(
                info.worker.clone(),
                SeenWorker {
                    info,
                    running,
                    last: Instant::now(),
                    last_at: crate::time::format(crate::time::now()),
                    direct,
                    last_dispatch,
                },
            );
            // Forget workers silent for a long time.
            let window = self.lost_after() * 20;
            workers.retain(|_, w| w.last.elapsed() < window);
        }
        (stale, fence)
    }

    /// Jobs sent straight to `worker` that its heartbeat does not list: one
    /// whose number it counted (`upto`) arrived and was released, or was
    /// lost on the way (a later message of the same control queue
    /// arrived); so was one sent before it closed its control queue. Such
    /// jobs go through the task queue. Others may be on their way: the
    /// worker is alive, and after a moment a `fence` (whose arrival proves
    /// they arrived or never will) is asked for.
    fn settle_direct(
        &self,
        worker: &str,
        direct: Option<&protocol::DirectState>,
        running: &[AttemptRef],
        reporting: &[AttemptRef],
    ) -> bool {
        let upto = direct
            .filter(|d| d.daemon == self.inner.instance)
            .map_or(0, |d| d.upto);
        let closed = direct.is_some_and(|d| d.closed);
        let mut fence = false;
        let mut never_started = Vec::new();
        let Ok(mut attempts) = self.inner.attempts.lock() else {
            return false;
        };
        for (attempt, tracked) in attempts.iter_mut() {
            let Some(number) = tracked.direct else {
                continue;
            };
            if tracked.owner.as_deref() != Some(worker)
                || running.contains(attempt)
                || reporting.contains(attempt)
            {
                continue;
            }
            if upto >= number || closed {
                if tracked.stopping.is_some() {
                    // Stopped before it ever ran: it ends now.
                    never_started.push(attempt.clone());
                    continue;
                }
                tracing::warn!(attempt = %attempt, worker,
                    "A job sent straight to a worker did not reach it; publishing it.");
                redirect(tracked);
                self.inner
                    .metrics
                    .redirected
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                // On its way, or lost: the worker lives, so the attempt is
                // not lost while a fence settles which (if no fence gets
                // through for twice the lost window, its job session is
                // broken: lost, as for a silent worker).
                let sent = tracked.granted.map(|g| g.elapsed()).unwrap_or_default();
                if sent < self.lost_after() * 2 {
                    tracked.seen = Instant::now();
                }
                fence |= sent >= DIRECT_SETTLE;
            }
        }
        for attempt in never_started {
            let stopped = attempts.remove(&attempt);
            if let Some((Some(done), Some(stopping))) =
                stopped.map(|mut t| (t.done.take(), t.stopping))
            {
                let _ = done.send(Ended::verdict(RemoteEnd::Finished(
                    AttemptOutcome::failure(format!("{stopping} (before it started)")),
                )));
            }
        }
        fence
    }

    /// Hands a result (or handback) to its attempt and acks the message
    /// once the attempt's end is durable; a late one is acked and dropped.
    fn deliver(
        &self,
        delivery: lapin::message::Delivery,
        worker: &str,
        attempt: AttemptRef,
        report: Report,
    ) {
        // A resumable attempt handed back goes to another worker as the
        // same attempt, its elapsed time kept.
        if matches!(report, Report::Handback(_))
            && let Ok(mut attempts) = self.inner.attempts.lock()
            && let Some(tracked) = attempts.get_mut(&attempt)
            && tracked.resumable
            && tracked.stopping.is_none()
            && tracked.owner.as_deref() == Some(worker)
        {
            tracked.owner = None;
            tracked.granted = None;
            tracked.republish = true;
            drop(attempts);
            tracing::info!(attempt = %attempt, worker, "A worker shutting down handed back a resumable attempt; publishing it again.");
            tokio::spawn(async move {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            });
            return;
        }
        let taken = self.inner.attempts.lock().ok().and_then(|mut attempts| {
            let tracked = attempts.get(&attempt)?;
            let mine = tracked.owner.as_deref() == Some(worker)
                || (tracked.owner.is_none() && tracked.reattached);
            if !mine {
                return None;
            }
            let mut tracked = attempts.remove(&attempt)?;
            Some((tracked.done.take()?, tracked.stopping))
        });
        let Some((done, stopping)) = taken else {
            self.inner
                .metrics
                .late_results
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(attempt = %attempt, worker,
                "Late result from a remote worker (the attempt is no longer its, or ended): dropped.");
            tokio::spawn(async move {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            });
            return;
        };
        let end = match report {
            Report::Result(outcome) => RemoteEnd::Finished(finished(outcome, stopping)),
            Report::Handback(reason) => RemoteEnd::Lost(reason),
        };
        let (durable, flushed) = oneshot::channel();
        let _ = done.send(Ended {
            end,
            durable: Some(durable),
        });
        tokio::spawn(async move {
            match flushed.await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                // The engine stopped first: the broker gives the result
                // back, to be applied after the restart.
                Err(_) => {
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await;
                }
            }
        });
    }
}

/// A job sent straight to a worker goes through the task queue instead
/// (published again by [`Remote::run`]).
fn redirect(tracked: &mut Tracked) {
    tracked.owner = None;
    tracked.granted = None;
    tracked.direct = None;
    tracked.republish = true;
}

/// What a worker reported about an attempt's end.
enum Report {
    Result(RemoteOutcome),
    Handback(String),
}

/// An attempt outcome from the worker's report; a failure of an attempt
/// the daemon stopped says why it was stopped (`timed out after 5s`).
fn finished(outcome: RemoteOutcome, stopping: Option<String>) -> AttemptOutcome {
    let mut out = AttemptOutcome {
        succeeded: outcome.succeeded,
        output: outcome.output,
        stdout: outcome.stdout,
        error: outcome.error,
        retryable: outcome.retryable,
        logs: outcome.logs,
    };
    if let (false, Some(reason)) = (out.succeeded, stopping) {
        out.error = Some(match out.error {
            Some(error) => format!("{reason} ({error})"),
            None => reason,
        });
        out.retryable = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Remote {
        let endpoint = Endpoint::new("amqp://127.0.0.1:1/%2f").unwrap();
        Remote::new(endpoint, RemoteConfig::default(), CancellationToken::new())
    }

    fn attempt(task: &str) -> AttemptRef {
        AttemptRef {
            run_id: uuid::Uuid::now_v7(),
            task: task.into(),
            attempt: 1,
        }
    }

    /// Tracks `attempt` as sent straight to `worker` with `number`, `ago`.
    fn sent_straight(
        remote: &Remote,
        attempt: &AttemptRef,
        worker: &str,
        number: u64,
        ago: Duration,
    ) -> Tracking {
        let tracking = remote.track(attempt.clone(), "q", false, None, None, "shell");
        let mut attempts = remote.inner.attempts.lock().unwrap();
        let t = attempts.get_mut(attempt).unwrap();
        t.owner = Some(worker.into());
        t.granted = Some(Instant::now() - ago);
        t.granted_seq = u64::MAX;
        t.direct = Some(number);
        tracking
    }

    fn state(remote: &Remote, upto: u64, closed: bool) -> protocol::DirectState {
        protocol::DirectState {
            free: 1,
            daemon: remote.inner.instance.clone(),
            upto,
            closed,
        }
    }

    fn owner(remote: &Remote, attempt: &AttemptRef) -> (Option<String>, bool) {
        let attempts = remote.inner.attempts.lock().unwrap();
        let t = &attempts[attempt];
        (t.owner.clone(), t.republish)
    }

    #[test]
    fn a_job_sent_straight_is_settled_by_the_workers_count_of_what_it_received() {
        let remote = service();
        let (on_way, listed, counted) = (attempt("a"), attempt("b"), attempt("c"));
        let _a = sent_straight(&remote, &on_way, "w1", 5, Duration::from_secs(1));
        let _b = sent_straight(&remote, &listed, "w1", 3, Duration::from_secs(1));
        let _c = sent_straight(&remote, &counted, "w1", 2, Duration::from_secs(1));
        // Counted up to 4: `c` (2) arrived and is not listed (released, or
        // lost before a later message arrived): it goes through the task
        // queue. `b` is listed. `a` (5) may be on its way: a fence.
        let fence = remote.settle_direct(
            "w1",
            Some(&state(&remote, 4, false)),
            std::slice::from_ref(&listed),
            &[],
        );
        assert!(fence);
        assert_eq!(owner(&remote, &on_way), (Some("w1".into()), false));
        assert_eq!(owner(&remote, &listed), (Some("w1".into()), false));
        assert_eq!(owner(&remote, &counted), (None, true));
        // Another daemon's count says nothing about this one's messages.
        let mut other = state(&remote, 9, false);
        other.daemon = "another".into();
        assert!(remote.settle_direct("w1", Some(&other), std::slice::from_ref(&listed), &[]));
        assert_eq!(owner(&remote, &on_way), (Some("w1".into()), false));
        // Just sent: no fence yet.
        let fresh = attempt("d");
        let remote2 = service();
        let _d = sent_straight(&remote2, &fresh, "w1", 1, Duration::ZERO);
        assert!(!remote2.settle_direct("w1", Some(&state(&remote2, 0, false)), &[], &[]));
        // The fence counted: `a` never arrived, and never will.
        assert!(!remote.settle_direct(
            "w1",
            Some(&state(&remote, 6, false)),
            std::slice::from_ref(&listed),
            &[]
        ));
        assert_eq!(owner(&remote, &on_way), (None, true));
        assert_eq!(remote.inner.metrics.redirected.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_closed_control_queue_sends_what_it_missed_through_the_task_queue() {
        let remote = service();
        let (missed, running) = (attempt("a"), attempt("b"));
        let _a = sent_straight(&remote, &missed, "w1", 7, Duration::ZERO);
        let _b = sent_straight(&remote, &running, "w1", 6, Duration::ZERO);
        remote.settle_direct(
            "w1",
            Some(&state(&remote, 6, true)),
            std::slice::from_ref(&running),
            &[],
        );
        assert_eq!(owner(&remote, &missed), (None, true));
        assert_eq!(owner(&remote, &running), (Some("w1".into()), false));
        // Cancelled on its way, and never arrived: it ends, never started.
        let cancelled = attempt("e");
        let tracking = sent_straight(&remote, &cancelled, "w1", 9, Duration::ZERO);
        remote
            .inner
            .attempts
            .lock()
            .unwrap()
            .get_mut(&cancelled)
            .unwrap()
            .stopping = Some("cancelled".into());
        remote.settle_direct("w1", Some(&state(&remote, 6, true)), &[], &[]);
        match tracking.finished.blocking_recv().unwrap().end {
            RemoteEnd::Finished(outcome) => assert_eq!(
                outcome.error.as_deref(),
                Some("cancelled (before it started)")
            ),
            other => panic!("{other:?}"),
        }
        // Only the owner's heartbeats count.
        let theirs = attempt("c");
        let _c = sent_straight(&remote, &theirs, "w2", 8, Duration::ZERO);
        remote.settle_direct("w1", Some(&state(&remote, 99, true)), &[], &[]);
        assert_eq!(owner(&remote, &theirs), (Some("w2".into()), false));
    }

    #[tokio::test]
    async fn a_release_counts_only_from_the_owner_and_ends_a_stopped_attempt() {
        let remote = service();
        let released = attempt("a");
        let _a = sent_straight(&remote, &released, "w1", 1, Duration::ZERO);
        remote.released("w2", &released, "no free slot");
        assert_eq!(owner(&remote, &released), (Some("w1".into()), false));
        remote.released("w1", &released, "no free slot");
        assert_eq!(owner(&remote, &released), (None, true));
        // Cancelled while on its way: released, it ends without running.
        let stopped = attempt("b");
        let tracking = sent_straight(&remote, &stopped, "w1", 2, Duration::ZERO);
        remote
            .inner
            .attempts
            .lock()
            .unwrap()
            .get_mut(&stopped)
            .unwrap()
            .stopping = Some("cancelled".into());
        remote.released("w1", &stopped, "no free slot");
        let ended = tracking.finished.await.unwrap();
        match ended.end {
            RemoteEnd::Finished(outcome) => {
                assert!(!outcome.succeeded);
                assert_eq!(
                    outcome.error.as_deref(),
                    Some("cancelled (before it started)")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!remote.inner.attempts.lock().unwrap().contains_key(&stopped));
    }
}
