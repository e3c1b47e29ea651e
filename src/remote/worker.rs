//! `switchyard worker`: runs remote tasks' jobs with the daemon's own
//! executors (shell, http, sql, amqp, sleep, noop, check), following the
//! [`protocol`](super::protocol): claim, run once granted, heartbeat,
//! report, obey `cancel`.
//!
//! - Jobs are consumed with a prefetch of `--concurrency`, so a worker
//!   holds at most that many; a job is acked once its claim is answered
//!   (granted: it runs; denied: it is dropped), never held for the length
//!   of the task.
//! - Attempts' processes are spawned as on the daemon: in their own process
//!   group, killed on cancel or timeout, dying with the worker even after a
//!   SIGKILL; what a killed worker's scripts left behind is killed when the
//!   next worker starts on the same `--data-dir`.
//! - The broker going away ends the session; running attempts go on, their
//!   results are sent (persistent, confirmed, retried) once it is back, and
//!   consuming resumes with backoff.
//! - SIGTERM stops taking jobs, lets running attempts finish within
//!   `--grace`, then stops the rest and hands them back (the daemon
//!   retries them at once). Waits that resume from their recorded start
//!   (`check`, `sleep`) are handed back at once and go on elsewhere as the
//!   same attempt.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::protocol::{
    self, AttemptRef, FromWorker, Job, PROTOCOL, RemoteOutcome, ToWorker, WorkerInfo,
};
use crate::amqp::{Backoff, Broker, Endpoint, Outgoing};
use crate::executors::{self, AttemptContext, AttemptOutcome};

/// Jobs of kinds that take no slot (`check`, `sleep`) held at once.
const WAITS_PREFETCH: u16 = 256;
/// How often an unanswered claim is sent again.
const CLAIM_RETRY: Duration = Duration::from_secs(2);
/// Heartbeat interval until a job says the daemon's.
const FIRST_HEARTBEAT: Duration = super::DEFAULT_HEARTBEAT;

/// What `switchyard worker` was asked to do.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub endpoint: Endpoint,
    pub queues: Vec<String>,
    pub concurrency: usize,
    /// Where attempts' process groups are recorded and scratch files go.
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for running attempts.
    pub grace: Duration,
}

struct Running {
    /// Ended; its result is being sent.
    reporting: bool,
    /// Its kind resumes from its recorded start (`check`, `sleep`): handed
    /// back at once on SIGTERM, to go on elsewhere with its time kept.
    resumable: bool,
    cancel: CancellationToken,
    /// Why it was stopped, and whether to hand it back.
    stopped: Arc<Mutex<Option<(String, bool)>>>,
    reply_to: String,
}

/// A claim: its attempt, and where its answer goes (taken when it comes).
type Claiming = (AttemptRef, Option<oneshot::Sender<ToWorker>>);

struct Shared {
    info: WorkerInfo,
    /// Everything sent to the daemon (confirmed; results and handbacks
    /// persistent).
    out: Broker,
    /// `--concurrency`: a job is claimed only with a permit, held until its
    /// attempt is reported (jobs are acked at the grant, so the broker's
    /// prefetch alone would not bound them).
    slots: Arc<tokio::sync::Semaphore>,
    /// Claims waiting for an answer, by job id.
    /// (An answered claim stays until its attempt is in `running`, so a
    /// heartbeat always lists it somewhere.)
    pending: Mutex<HashMap<String, Claiming>>,
    /// Numbers claims and heartbeats in the order they are built.
    seq: AtomicU64,
    running: Mutex<HashMap<AttemptRef, Running>>,
    reply_to: Mutex<BTreeSet<String>>,
    heartbeat_ms: AtomicU64,
    processes: executors::process::Processes,
    scratch_dir: PathBuf,
    broker: Broker,
    /// Attempts begun (tests and logs).
    started: AtomicU64,
    /// Per daemon (its result queue): its instance and the highest number
    /// of its `run` and `fence` messages received.
    direct: Mutex<HashMap<String, (String, u64)>>,
    /// The control queue is gone for good (shutting down).
    closed: std::sync::atomic::AtomicBool,
    /// A daemon heard of for the first time: heartbeat it now, so it can
    /// send jobs straight here.
    beat_now: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn id(&self) -> &str {
        &self.info.worker
    }

    /// Remembers a daemon's result queue, heartbeating it at once when new.
    fn report_to(&self, reply_to: &str) {
        if let Ok(mut targets) = self.reply_to.lock()
            && targets.insert(reply_to.to_string())
        {
            self.beat_now.store(true, Ordering::SeqCst);
        }
    }

    /// Counts a daemon's `run` or `fence` received.
    fn received(&self, reply_to: &str, daemon: &str, dispatch: u64) {
        if let Ok(mut direct) = self.direct.lock() {
            let entry = direct
                .entry(reply_to.to_string())
                .or_insert_with(|| (daemon.to_string(), 0));
            if entry.0 != daemon {
                *entry = (daemon.to_string(), 0);
            }
            entry.1 = entry.1.max(dispatch);
        }
    }

    /// This worker's side of direct dispatch, for a heartbeat to `reply_to`
    /// (read before the attempt lists).
    fn direct_state(&self, reply_to: &str) -> protocol::DirectState {
        let (daemon, upto) = self
            .direct
            .lock()
            .ok()
            .and_then(|d| d.get(reply_to).cloned())
            .unwrap_or_default();
        let closed = self.closed.load(Ordering::SeqCst);
        protocol::DirectState {
            free: if closed {
                0
            } else {
                self.slots.available_permits()
            },
            daemon,
            upto,
            closed,
        }
    }

    /// Publishes one message to a daemon's result queue: results and
    /// handbacks persistent and retried until confirmed, output chunks
    /// confirmed once (so the last chunk is queued before the result).
    async fn send(&self, reply_to: &str, message: &FromWorker, persistent: bool) {
        let Ok(body) = serde_json::to_vec(message) else {
            return;
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let result = self
                .out
                .publish(Outgoing {
                    exchange: String::new(),
                    routing_key: reply_to.to_string(),
                    body: body.clone(),
                    properties: properties(persistent),
                    mandatory: true,
                })
                .await;
            match result {
                Ok(()) => return,
                Err(e) if !persistent => {
                    tracing::debug!(error = %e, "Cannot send to the daemon.");
                    return;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "Cannot send a result to the daemon; retrying.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends a claim or a heartbeat: not confirmed (each is sent again if
    /// lost), on the publishing connection's second channel, so it never
    /// waits behind a result's confirm. Claims and heartbeats keep their
    /// order, which their numbering relies on.
    async fn notify(&self, reply_to: &str, message: &FromWorker) {
        let Ok(body) = serde_json::to_vec(message) else {
            return;
        };
        let sent = self
            .out
            .publish_unconfirmed(Outgoing {
                exchange: String::new(),
                routing_key: reply_to.to_string(),
                body,
                properties: properties(false),
                mandatory: false,
            })
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "Cannot send to the daemon.");
        }
    }
}

fn properties(persistent: bool) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(if persistent { 2 } else { 1 })
        .with_headers(protocol::headers())
}

fn worker_id() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("{host}-{}-{}", std::process::id(), &random[..8]);
    (id, host)
}

/// Runs until `stop` (SIGTERM), then drains within the grace period.
pub async fn run(options: WorkerOptions, stop: CancellationToken) -> Result<(), String> {
    if options.queues.is_empty() {
        return Err("name at least one `--queue`".into());
    }
    if options.concurrency == 0 {
        return Err("`--concurrency` must be at least 1".into());
    }
    for queue in &options.queues {
        crate::amqp::short("queue name", &protocol::waits_queue(queue))?;
    }
    let (id, host) = worker_id();
    let own_dir = options.data_dir.join(&id);
    kill_dead_workers_leftovers(&options.data_dir);
    std::fs::create_dir_all(&own_dir)
        .map_err(|e| format!("cannot create {}: {e}", own_dir.display()))?;
    let lock = std::fs::File::create(own_dir.join("lock"))
        .map_err(|e| format!("cannot create {}: {e}", own_dir.join("lock").display()))?;
    lock.try_lock()
        .map_err(|e| format!("cannot lock {}: {e}", own_dir.display()))?;
    let processes = executors::process::Processes::start(own_dir.join("attempts"))
        .map_err(|e| format!("cannot start the process spawner: {e}"))?;
    let shared = Arc::new(Shared {
        info: WorkerInfo {
            worker: id.clone(),
            host,
            pid: std::process::id(),
            queues: options.queues.clone(),
            concurrency: options.concurrency,
            started_at: crate::time::format(crate::time::now()),
        },
        out: Broker::with_endpoint(Ok(options.endpoint.clone()), None),
        slots: Arc::new(tokio::sync::Semaphore::new(options.concurrency)),
        pending: Mutex::new(HashMap::new()),
        seq: AtomicU64::new(0),
        running: Mutex::new(HashMap::new()),
        reply_to: Mutex::new(BTreeSet::new()),
        heartbeat_ms: AtomicU64::new(FIRST_HEARTBEAT.as_millis() as u64),
        processes,
        scratch_dir: own_dir.join("scratch"),
        broker: Broker::with_endpoint(Ok(options.endpoint.clone()), None),
        started: AtomicU64::new(0),
        direct: Mutex::new(HashMap::new()),
        closed: std::sync::atomic::AtomicBool::new(false),
        beat_now: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(worker = %id, queues = ?options.queues, concurrency = options.concurrency,
        broker = %options.endpoint.describe(), "Worker started.");
    let heartbeats = CancellationToken::new();
    tokio::spawn(heartbeat_loop(Arc::clone(&shared), heartbeats.clone()));

    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let session = CancellationToken::new();
        let result = session_run(&shared, &options, &stop, &session).await;
        session.cancel();
        if stop.is_cancelled() {
            break;
        }
        let delay = backoff.next_delay();
        if let Err(e) = &result {
            tracing::warn!(error = %e, retry_in = ?delay, "Worker session ended; reconnecting.");
        } else {
            backoff.reset();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    // The connection is closed, and the control queue with it: a heartbeat
    // saying so at once lets the daemon send what it missed elsewhere.
    shared.closed.store(true, Ordering::SeqCst);
    shared.beat_now.store(true, Ordering::SeqCst);
    drain(&shared, options.grace).await;
    // That heartbeat goes out before the last.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while shared.beat_now.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    heartbeats.cancel();
    tracing::info!(worker = %id, attempts = shared.started.load(Ordering::Relaxed), "Worker stopped.");
    drop(lock);
    let _ = std::fs::remove_dir_all(&own_dir);
    Ok(())
}

/// Kills what workers that died on this data dir left running (their
/// directory's lock is free), and removes their directories.
fn kill_dead_workers_leftovers(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(lock) = std::fs::File::open(dir.join("lock")) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // A live worker.
        }
        let leftovers = executors::process::kill_leftovers(&dir.join("attempts"));
        if leftovers.killed > 0 {
            tracing::warn!(dir = %dir.display(), killed = leftovers.killed,
                "Killed the processes a dead worker left running.");
        }
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// After SIGTERM: running attempts get `grace` to finish; the rest are
/// stopped and handed back.
async fn drain(shared: &Arc<Shared>, grace: Duration) {
    // Waits (a check, a sleep) do not finish soon, and lose nothing by
    // moving: another worker goes on with them at once.
    if let Ok(running) = shared.running.lock() {
        for (attempt, entry) in running.iter().filter(|(_, e)| e.resumable && !e.reporting) {
            tracing::info!(attempt = %attempt, "Handing a resumable attempt back: the worker is shutting down.");
            if let Ok(mut stopped) = entry.stopped.lock() {
                stopped.get_or_insert(("worker shutting down".into(), true));
            }
            entry.cancel.cancel();
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let left = shared.running.lock().map(|r| r.len()).unwrap_or(0);
        if left == 0 {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Ok(running) = shared.running.lock() {
        for (attempt, entry) in running.iter() {
            tracing::warn!(attempt = %attempt, "Handing an unfinished attempt back: the worker is shutting down.");
            if let Ok(mut stopped) = entry.stopped.lock() {
                *stopped = Some((
                    format!(
                        "worker shutting down (not finished within the {} grace period)",
                        humantime::format_duration(grace)
                    ),
                    true,
                ));
            }
            entry.cancel.cancel();
        }
    }
    // The handbacks are sent as the attempts stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while shared
        .running
        .lock()
        .map(|r| !r.is_empty())
        .unwrap_or(false)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last = tokio::time::Instant::now();
    loop {
        // Re-read often: the first job may shorten the interval.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let every = Duration::from_millis(shared.heartbeat_ms.load(Ordering::Relaxed).max(100));
        if last.elapsed() < every && !shared.beat_now.swap(false, Ordering::SeqCst) {
            continue;
        }
        last = tokio::time::Instant::now();
        let targets: Vec<String> = shared
            .reply_to
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        for reply_to in targets {
            // Read first: a `run` counted here is in the lists read next.
            let direct = shared.direct_state(&reply_to);
            let (running, reporting): (Vec<_>, Vec<_>) = shared
                .running
                .lock()
                .map(|r| {
                    r.iter()
                        .filter(|(_, e)| e.reply_to == reply_to)
                        .map(|(a, e)| (a.clone(), e.reporting))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .partition(|(_, reporting)| !reporting);
            // Numbered after the lists are read: a claim sent before this
            // heartbeat has a lower number, and is in one of the lists.
            let claiming: Vec<AttemptRef> = shared
                .pending
                .lock()
                .map(|p| p.values().map(|(a, _)| a.clone()).collect())
                .unwrap_or_default();
            let seq = shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
            let message = FromWorker::Heartbeat {
                protocol: PROTOCOL,
                worker: shared.info.clone(),
                running: running.into_iter().map(|(a, _)| a).collect(),
                reporting: reporting.into_iter().map(|(a, _)| a).collect(),
                claiming,
                seq,
                direct: Some(direct),
            };
            shared.notify(&reply_to, &message).await;
        }
    }
}

async fn session_run(
    shared: &Arc<Shared>,
    options: &WorkerOptions,
    stop: &CancellationToken,
    session: &CancellationToken,
) -> Result<(), String> {
    let name = format!("worker {}", shared.id());
    let connection: Connection = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = crate::amqp::connect(&options.endpoint, &name) => c.map_err(|e| e.to_string())?,
    };
    let result = consume(shared, options, &connection, stop, session).await;
    session.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "switchyard worker session ended".into()),
    )
    .await;
    result
}

async fn consume(
    shared: &Arc<Shared>,
    options: &WorkerOptions,
    connection: &Connection,
    stop: &CancellationToken,
    session: &CancellationToken,
) -> Result<(), String> {
    let broker = |what: String| move |e: lapin::Error| format!("{what}: {e}");
    let control = connection
        .create_channel()
        .await
        .map_err(broker("cannot open a channel".into()))?;
    let control_queue = crate::amqp::short("queue name", &protocol::control_queue(shared.id()))?;
    control
        .queue_declare(
            control_queue.clone(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot declare the control queue".into()))?;
    let mut orders = control
        .basic_consume(
            control_queue,
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot consume the control queue".into()))?;
    let jobs = connection
        .create_channel()
        .await
        .map_err(broker("cannot open a channel".into()))?;
    let prefetch = u16::try_from(options.concurrency).unwrap_or(u16::MAX);
    jobs.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker(format!("basic.qos {prefetch}")))?;
    // Waits take no slot: many at once, on a channel of their own.
    let waits = connection
        .create_channel()
        .await
        .map_err(broker("cannot open a channel".into()))?;
    waits
        .basic_qos(WAITS_PREFETCH, BasicQosOptions::default())
        .await
        .map_err(broker(format!("basic.qos {WAITS_PREFETCH}")))?;
    // Every queue's deliveries into one stream.
    let (forward, mut deliveries) = tokio::sync::mpsc::channel(options.concurrency.max(1));
    let sources = options.queues.iter().flat_map(|queue| {
        [
            (&jobs, protocol::task_queue(queue)),
            (&waits, protocol::waits_queue(queue)),
        ]
    });
    for (jobs, name) in sources {
        let name = crate::amqp::short("queue name", &name)?;
        jobs.queue_declare(
            name.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(broker(format!("cannot declare queue `{name}`")))?;
        let consumer = jobs
            .basic_consume(
                name.clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker(format!("cannot consume queue `{name}`")))?;
        let forward = forward.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                tokio::select! {
                    _ = session.cancelled() => return,
                    delivery = consumer.next() => {
                        let end = !matches!(delivery, Some(Ok(_)));
                        if forward.send(delivery).await.is_err() || end {
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(forward);
    tracing::info!(worker = %shared.id(), "Consuming jobs.");
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // Unacked jobs (waiting for a grant) go back to the queue.
                let _ = jobs.close(200, "worker stopping".into()).await;
                let _ = waits.close(200, "worker stopping".into()).await;
                return Ok(());
            }
            order = orders.next() => match order {
                None => return Err("the control consumer ended".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(delivery)) => obey(shared, &delivery),
            },
            delivery = deliveries.recv() => match delivery.flatten() {
                None => return Err("a job consumer ended".into()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(delivery)) => {
                    tokio::spawn(take_job(Arc::clone(shared), delivery, session.clone()));
                }
            },
        }
    }
}

/// A control message from the daemon.
fn obey(shared: &Arc<Shared>, delivery: &lapin::message::Delivery) {
    let version = protocol::header_version(&delivery.properties);
    let order = match protocol::decode::<ToWorker>(&delivery.data, version) {
        Ok(order) => order,
        Err(e) => {
            tracing::error!(error = %e, "Refused a control message from the daemon.");
            return;
        }
    };
    match order {
        ToWorker::Grant { ref job_id, .. } | ToWorker::Deny { ref job_id, .. } => {
            let waiting = shared
                .pending
                .lock()
                .ok()
                .and_then(|mut p| p.get_mut(job_id).and_then(|(_, s)| s.take()));
            if let Some(waiting) = waiting {
                let _ = waiting.send(order);
            }
        }
        ToWorker::Run {
            daemon,
            dispatch,
            job,
            ..
        } => take_direct(shared, &daemon, dispatch, *job),
        ToWorker::Fence {
            daemon,
            dispatch,
            reply_to,
            ..
        } => shared.received(&reply_to, &daemon, dispatch),
        ToWorker::Cancel {
            attempt, reason, ..
        } => {
            if let Ok(running) = shared.running.lock()
                && let Some(entry) = running.get(&attempt)
            {
                tracing::info!(attempt = %attempt, reason, "The daemon stopped an attempt.");
                if let Ok(mut stopped) = entry.stopped.lock() {
                    stopped.get_or_insert((reason, false));
                }
                entry.cancel.cancel();
            }
        }
    }
}

/// A job the daemon sent straight to this worker: it is this worker's, no
/// claim needed. Taken (or released) before its number is counted
/// received, so a heartbeat saying `upto` it also lists it unless its
/// result or release went first.
fn take_direct(shared: &Arc<Shared>, daemon: &str, dispatch: u64, job: Job) {
    shared.report_to(&job.reply_to);
    shared
        .heartbeat_ms
        .fetch_min(job.heartbeat_ms.max(100), Ordering::Relaxed);
    let holds_slot = executors::kind_name(&job.kind).is_none_or(executors::holds_slot);
    let permit = if holds_slot {
        match Arc::clone(&shared.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                // A job from the task queue took the slot meanwhile.
                shared.received(&job.reply_to, daemon, dispatch);
                let release = FromWorker::Release {
                    protocol: PROTOCOL,
                    worker: shared.id().to_string(),
                    attempt: job.attempt.clone(),
                    reason: "no free slot".into(),
                };
                let shared = Arc::clone(shared);
                tokio::spawn(async move { shared.send(&job.reply_to, &release, true).await });
                return;
            }
        }
    } else {
        None
    };
    let admitted = admit(shared, &job);
    shared.received(&job.reply_to, daemon, dispatch);
    if let Some(admitted) = admitted {
        tokio::spawn(run_admitted(Arc::clone(shared), job, permit, admitted));
    }
}

/// One job: claim it, then run it if granted.
async fn take_job(
    shared: Arc<Shared>,
    delivery: lapin::message::Delivery,
    session: CancellationToken,
) {
    let version = protocol::header_version(&delivery.properties);
    let job = match protocol::decode::<Job>(&delivery.data, version) {
        Ok(job) => job,
        Err(e) => {
            // Another version, or not a job: dead-lettered where the queue
            // has a DLX, never retried here.
            tracing::error!(error = %e, "Refused a job.");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..BasicNackOptions::default()
                })
                .await;
            return;
        }
    };
    shared.report_to(&job.reply_to);
    // A job published again (after a daemon restart) for an attempt this
    // worker already runs: the attempt is not started twice.
    let runs_it = || {
        shared
            .running
            .lock()
            .is_ok_and(|running| running.contains_key(&job.attempt))
    };
    if runs_it() {
        let _ = delivery.ack(BasicAckOptions::default()).await;
        return;
    }
    shared
        .heartbeat_ms
        .fetch_min(job.heartbeat_ms.max(100), Ordering::Relaxed);
    // A free slot first (waiting here keeps the job unacked, so the broker
    // may give it to an idle worker when this session ends). Kinds that
    // only wait (`check`, `sleep`) take none, as on the daemon.
    let holds_slot = executors::kind_name(&job.kind).is_none_or(executors::holds_slot);
    let permit = if holds_slot {
        tokio::select! {
            permit = Arc::clone(&shared.slots).acquire_owned() => match permit {
                Ok(permit) => Some(permit),
                Err(_) => return,
            },
            _ = session.cancelled() => return,
        }
    } else {
        None
    };
    // Claim, and wait for the answer (asking again now and then: a claim
    // or its answer may be lost, or the daemon may be restarting).
    let (answer_tx, mut answer) = oneshot::channel();
    if let Ok(mut pending) = shared.pending.lock() {
        pending.insert(job.job_id.clone(), (job.attempt.clone(), Some(answer_tx)));
    }
    let answer = loop {
        let claim = FromWorker::Claim {
            protocol: PROTOCOL,
            worker: shared.id().to_string(),
            seq: shared.seq.fetch_add(1, Ordering::SeqCst) + 1,
            job_id: job.job_id.clone(),
            attempt: job.attempt.clone(),
        };
        shared.notify(&job.reply_to, &claim).await;
        tokio::select! {
            answer = &mut answer => break answer.ok(),
            _ = session.cancelled() => break None,
            _ = tokio::time::sleep(CLAIM_RETRY) => {}
        }
    };
    let forget_claim = |shared: &Shared| {
        if let Ok(mut pending) = shared.pending.lock() {
            pending.remove(&job.job_id);
        }
    };
    if !matches!(answer, Some(ToWorker::Grant { .. })) {
        forget_claim(&shared);
    }
    match answer {
        // The session ended first: the broker gives the job to someone.
        None => {}
        Some(ToWorker::Grant { .. }) => {
            // Not waited for: a lost ack only lets the broker give the job
            // to another worker, whose claim the daemon denies.
            let acker = delivery.acker.clone();
            tokio::spawn(async move { acker.ack(BasicAckOptions::default()).await });
            let job_id = job.job_id.clone();
            run_attempt(Arc::clone(&shared), job, permit).await;
            if let Ok(mut pending) = shared.pending.lock() {
                pending.remove(&job_id);
            }
        }
        Some(ToWorker::Deny { reason, .. }) => {
            tracing::info!(attempt = %job.attempt, reason, "Claim denied; job dropped.");
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
        Some(ToWorker::Cancel { .. } | ToWorker::Run { .. } | ToWorker::Fence { .. }) => {}
    }
}

/// Runs a granted attempt; `slot` is given back once the attempt has
/// ended, before its result is confirmed (the attempt stays in the
/// heartbeats until then).
async fn run_attempt(
    shared: Arc<Shared>,
    job: Job,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    if let Some(admitted) = admit(&shared, &job) {
        run_admitted(shared, job, slot, admitted).await;
    }
}

/// An attempt in `running`: how to stop it, and why it was.
struct Admitted {
    cancel: CancellationToken,
    stopped: Arc<Mutex<Option<(String, bool)>>>,
}

/// Puts an attempt in `running` (so every heartbeat from now on lists it);
/// None when it is there already: an attempt granted twice to this worker
/// (two copies of its job) runs once.
fn admit(shared: &Shared, job: &Job) -> Option<Admitted> {
    let cancel = CancellationToken::new();
    let stopped = Arc::new(Mutex::new(None));
    let mut running = shared.running.lock().ok()?;
    if running.contains_key(&job.attempt) {
        return None;
    }
    running.insert(
        job.attempt.clone(),
        Running {
            reporting: false,
            resumable: executors::kind_name(&job.kind).is_some_and(executors::resumable),
            cancel: cancel.clone(),
            stopped: Arc::clone(&stopped),
            reply_to: job.reply_to.clone(),
        },
    );
    Some(Admitted { cancel, stopped })
}

async fn run_admitted(
    shared: Arc<Shared>,
    job: Job,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    admitted: Admitted,
) {
    let Admitted { cancel, stopped } = admitted;
    // In `running` now: the answered claim can go.
    if let Ok(mut pending) = shared.pending.lock() {
        pending.remove(&job.job_id);
    }
    shared.started.fetch_add(1, Ordering::Relaxed);
    // Secrets this worker reads itself, and redacts like the others.
    let mut config = job.config.clone();
    let mut redact = job.redact.clone();
    let resolved = crate::spec::config::resolve_worker_secrets(&mut config);
    if let Ok(values) = &resolved {
        redact.extend(values.iter().cloned());
    }
    let secrets = Arc::new(crate::spec::Secrets::from_values(
        redact
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("redact{i}"), v.clone()))
            .collect(),
    ));
    let outcome = match (executors::kind_name(&job.kind), resolved) {
        (_, Err(e)) => AttemptOutcome::permanent_failure(e),
        (Some("workflow") | None, _) => AttemptOutcome::permanent_failure(format!(
            "task kind `{}` cannot run on a worker",
            job.kind
        )),
        (Some(kind), Ok(_)) => {
            // Output as it is produced, to the daemon's followers.
            let (live, forwarding) = if executors::captures_output(kind) {
                let (tap, tapped) = tokio::sync::mpsc::unbounded_channel();
                let live = Arc::new(executors::live::LiveAttempt::new(
                    job.attempt.run_id,
                    job.attempt.task.as_str().into(),
                    job.attempt.attempt,
                    Arc::clone(&secrets),
                    Some(tap),
                ));
                let forwarding = tokio::spawn(forward_output(
                    Arc::clone(&shared),
                    job.attempt.clone(),
                    job.reply_to.clone(),
                    tapped,
                ));
                (Some(live), Some(forwarding))
            } else {
                (None, None)
            };
            let ctx = AttemptContext {
                run_id: job.attempt.run_id,
                workflow: job.workflow.as_str().into(),
                task: job.attempt.task.as_str().into(),
                attempt: job.attempt.attempt,
                started_at: job.started_at,
                cancel: cancel.clone(),
                scratch_dir: shared.scratch_dir.clone(),
                broker: Some(shared.broker.clone()),
                processes: shared.processes.clone(),
                secrets: Arc::clone(&secrets),
                databases: executors::sql::Databases::new(Default::default(), "."),
                children: None,
                live: live.clone(),
                logical_time: None,
                checks: Some(Arc::new(WorkerChecks {
                    shared: Arc::clone(&shared),
                    attempt: job.attempt.clone(),
                    reply_to: job.reply_to.clone(),
                })),
                observed: None,
            };
            let timeout = job.timeout_ms.map(Duration::from_millis);
            let execution = tokio::spawn(executors::execute(kind, config, ctx, timeout));
            let outcome = match execution.await {
                Ok(outcome) => outcome,
                Err(e) => AttemptOutcome::permanent_failure(format!("executor failed: {e}")),
            };
            // The last of the output goes out before the result.
            if let Some(live) = live {
                live.finish();
            }
            if let Some(forwarding) = forwarding {
                let _ = forwarding.await;
            }
            outcome
        }
    };
    drop(slot);
    if let Ok(mut running) = shared.running.lock()
        && let Some(entry) = running.get_mut(&job.attempt)
    {
        entry.reporting = true;
    }
    // What leaves the worker never holds a secret it read.
    let mut outcome = outcome;
    secrets.redact_json(&mut outcome.output);
    outcome.stdout = secrets.redact(&outcome.stdout);
    outcome.error = outcome.error.map(|e| secrets.redact(&e));
    if let Some(logs) = &mut outcome.logs {
        logs.stdout = secrets.redact(&logs.stdout);
        logs.stderr = secrets.redact(&logs.stderr);
    }
    let stop = stopped.lock().ok().and_then(|s| s.clone());
    let message = match stop {
        Some((reason, true)) => FromWorker::Handback {
            protocol: PROTOCOL,
            worker: shared.id().to_string(),
            attempt: job.attempt.clone(),
            reason,
        },
        _ => FromWorker::Result {
            protocol: PROTOCOL,
            worker: shared.id().to_string(),
            attempt: job.attempt.clone(),
            outcome: RemoteOutcome {
                succeeded: outcome.succeeded,
                output: outcome.output,
                stdout: outcome.stdout,
                error: outcome.error,
                retryable: outcome.retryable,
                logs: outcome.logs,
            },
        },
    };
    shared.send(&job.reply_to, &message, true).await;
    if let Ok(mut running) = shared.running.lock() {
        running.remove(&job.attempt);
    }
}

/// A `check` attempt's host on a worker: its observations go to the
/// daemon (confirmed, not persistent, like output); a `run` condition
/// needs the daemon's log and is refused here.
struct WorkerChecks {
    shared: Arc<Shared>,
    attempt: AttemptRef,
    reply_to: String,
}

impl std::fmt::Debug for WorkerChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerChecks")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl executors::check::CheckHost for WorkerChecks {
    fn observe(
        &self,
        _run_id: crate::log::RunId,
        _task: Arc<str>,
        _attempt: u32,
        observation: serde_json::Value,
    ) {
        let message = FromWorker::Observed {
            protocol: PROTOCOL,
            worker: self.shared.id().to_string(),
            attempt: self.attempt.clone(),
            observation,
        };
        let (shared, reply_to) = (Arc::clone(&self.shared), self.reply_to.clone());
        tokio::spawn(async move { shared.send(&reply_to, &message, false).await });
    }

    fn find_run(
        &self,
        _workflow: String,
        _logical_times: executors::check::Window,
        _statuses: Vec<crate::log::RunStatus>,
    ) -> executors::workflow::BoxFuture<Result<Option<executors::check::FoundRun>, String>> {
        Box::pin(async {
            Err("a `run` condition is checked by the daemon: drop the task's `queue`".to_string())
        })
    }
}

/// Most text in one `output` message.
const OUTPUT_CHUNK: usize = 16 * 1024;
/// How long output gathers before it is sent.
const OUTPUT_EVERY: Duration = Duration::from_millis(50);

/// Sends an attempt's output to the daemon in bounded chunks, gathered for
/// up to [`OUTPUT_EVERY`]; ends when the attempt's output does.
async fn forward_output(
    shared: Arc<Shared>,
    attempt: AttemptRef,
    reply_to: String,
    mut tapped: tokio::sync::mpsc::UnboundedReceiver<executors::live::Tapped>,
) {
    let mut open = true;
    while open {
        let Some(first) = tapped.recv().await else {
            return;
        };
        let mut chunks: Vec<(executors::live::Stream, String)> =
            vec![(first.stream, first.text.to_string())];
        let until = tokio::time::Instant::now() + OUTPUT_EVERY;
        while chunks.iter().map(|(_, t)| t.len()).sum::<usize>() < OUTPUT_CHUNK {
            match tokio::time::timeout_at(until, tapped.recv()).await {
                Ok(Some(piece)) => match chunks.last_mut() {
                    Some((stream, text)) if *stream == piece.stream => text.push_str(&piece.text),
                    _ => chunks.push((piece.stream, piece.text.to_string())),
                },
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        for (stream, text) in chunks {
            let message = FromWorker::Output {
                protocol: PROTOCOL,
                worker: shared.id().to_string(),
                attempt: attempt.clone(),
                stream: match stream {
                    executors::live::Stream::Stdout => protocol::Stream::Stdout,
                    executors::live::Stream::Stderr => protocol::Stream::Stderr,
                },
                text,
            };
            shared.send(&reply_to, &message, false).await;
        }
    }
}
