//! The runtime: the engine's I/O shell. One thread owns the pure
//! [`Engine`] and appends to the [`Log`]; tokio tasks run attempts and
//! timers.
//!
//! The loop takes every input waiting (new runs, attempt results, wake-ups,
//! cancels), appends the records they cause, lets the engine decide what
//! follows and appends those too, then flushes once — group commit — and
//! only then answers callers, publishes records and performs effects.
//! Nothing is reported or started before the flush that makes it durable.
//!
//! On start it recovers: every unfinished run is folded from the log, attempts
//! that were running are recorded lost (or, for durable timers, resumed), and
//! the runs go on.
//!
//! By concern: `group_commit.rs` (the loop: take inputs, append, settle,
//! write + flush, then answer and act), `accept.rs` (submissions: an event
//! with its runs and dedup entries, run chaining), `attempts.rs` (starting
//! and killing attempts, redaction, the shutdown drain), `recovery.rs`
//! (folding unfinished runs at start), `children.rs` (sub-workflows: the
//! `workflow` task's child runs), `lifecycle.rs` (which records are
//! lifecycle events, for the outbox), `offline.rs` (changes to a data dir
//! no daemon holds, through the same commit path).
//!
//! Architecture invariant: nothing is acted on or reported before the flush
//! that makes it durable; only this module drives the engine against the
//! log.

mod accept;
mod attempts;
mod checks;
mod children;
mod group_commit;
mod lifecycle;
mod live;
mod offline;
mod recovery;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::rerun::{self, RerunFrom};
use crate::engine::{Effect, Engine, Limits, RunRecord, TaskStatus, duration_millis, replay};
use crate::executors::{self, AttemptContext, AttemptOutcome};
use crate::log::{self, Log, Millis, Record, RecordBody, ReusedTask, RunId, RunStatus};
use crate::spec::Workflow;

pub use live::LiveOutputs;

/// Most inputs folded into one group commit.
const MAX_BATCH: usize = 8192;
/// A guard against a decision loop that never settles (a bug, not input).
const MAX_DECIDE_ROUNDS: usize = 100_000;
/// How long shutdown waits for cancelled attempts to stop their processes
/// (the shell executor's SIGTERM grace plus its pipe drain).
const ATTEMPT_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] log::Error),
    #[error(transparent)]
    Replay(#[from] replay::Error),
    #[error("the engine has stopped: {0}")]
    Stopped(String),
    /// Refused for now (shutting down, or the log cannot be flushed):
    /// nothing was acknowledged; the caller may try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// How to start a runtime.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Resume unfinished runs found in the log (the daemon does; a one-off
    /// `switchyard run` leaves them for the daemon).
    pub recover: bool,
    /// Secrets for `${secrets.*}`; their values are redacted from everything recorded.
    pub secrets: Arc<crate::spec::Secrets>,
    /// Project-level vars (`switchyard.json` `vars`), recorded in each run
    /// created, under its workflow's vars and params.
    pub project_vars: Map<String, Value>,
    /// Run chaining (the reactor's `on.run` bindings); none for one-off runs.
    pub chain: Option<ChainHook>,
    /// The broker for `amqp` tasks; with an events exchange set, lifecycle
    /// events are written to the outbox with their records.
    pub broker: Option<crate::amqp::Broker>,
    /// The databases `sql` tasks reach: `switchyard.json`'s `connections`
    /// and one pool per URL, shared by every attempt.
    pub databases: executors::sql::Databases,
    /// The workflows `workflow` tasks start by name (the daemon's registry;
    /// the project's files for a one-off run). None: only pinned versions.
    pub workflows: Option<WorkflowLookup>,
    /// Where tasks with `queue` run (remote workers); None: such tasks
    /// fail, saying there is no broker for them.
    pub remote: Option<crate::remote::Remote>,
}

/// Finds the current definition of a workflow by name.
pub type WorkflowLookup = Arc<dyn Fn(&str) -> Option<Arc<Workflow>> + Send + Sync>;

impl RuntimeConfig {
    /// Default limits, recovery on, no secrets, chaining or broker.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            recover: true,
            secrets: Default::default(),
            project_vars: Map::new(),
            chain: None,
            broker: None,
            databases: Default::default(),
            workflows: None,
            remote: None,
        }
    }
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("data_dir", &self.data_dir)
            .field("limits", &self.limits)
            .field("recover", &self.recover)
            .field("chain", &self.chain.is_some())
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// What start-up recovery found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    pub runs_resumed: usize,
    pub records_replayed: usize,
    pub attempts_lost: usize,
    pub attempts_resumed: usize,
    /// Runs whose log could not be folded; they are ended as failed.
    pub runs_broken: usize,
    /// Runs whose end was recorded but which were still listed as
    /// unfinished (a partial commit of an older log): finished at start.
    pub runs_finished: usize,
    /// Process groups of attempts a previous process left alive, killed.
    pub processes_killed: usize,
    pub took: Duration,
}

/// One binding's part of a submitted event, evaluated by the reactor.
#[derive(Debug)]
pub enum SubmitCandidate {
    /// Start a run unless `(binding, dedup_key)` was seen within its TTL.
    Start {
        binding: String,
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        dedup_key: String,
        ttl: Duration,
    },
    /// Decided already (filtered out, or failed to evaluate): only recorded.
    Done(log::Outcome),
}

/// An event with what each candidate binding would do, ready to be recorded.
#[derive(Debug)]
pub struct Submission {
    pub event: Value,
    pub candidates: Vec<SubmitCandidate>,
    /// Adapter state written in the same transaction (cron fire, file ledger).
    pub marks: Vec<log::Mark>,
    /// Also return receivers for the started runs' ends.
    pub wait: bool,
    /// Publish the event itself on `amqp.events_exchange` (an absence
    /// alert), through the outbox in the event's own transaction.
    pub publish: Option<log::outbox::OutboxMessage>,
}

/// What the engine answered for one submitted event, once durable.
#[derive(Debug)]
pub struct Accepted {
    pub event_id: String,
    pub seq: u64,
    pub outcomes: Vec<log::Outcome>,
    /// Runs started, in binding order.
    pub runs: Vec<RunId>,
    /// With `wait`: each started run's record when it ends.
    pub ended: Vec<oneshot::Receiver<RunRecord>>,
}

/// Called when a run ends, inside the group commit that records the end; a
/// submission it returns is written in that same commit (run chaining).
pub type ChainHook =
    Arc<dyn Fn(&crate::engine::RunState, Millis) -> Option<Submission> + Send + Sync>;

/// Which runs a listing wants.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs with a smaller (older) id: the listing's cursor.
    pub before: Option<RunId>,
    pub limit: usize,
}

impl RunFilter {
    pub fn matches(&self, run: &crate::engine::RunState) -> bool {
        self.workflow
            .as_ref()
            .is_none_or(|w| *w == run.workflow.name)
            && self.status.is_none_or(|s| s == run.status)
            && self.before.is_none_or(|b| run.id < b)
    }
}

/// A request to start a run.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: Arc<Workflow>,
    pub params: Map<String, Value>,
    pub event: Option<Value>,
    /// The stored event `event` is (its seq): the run refers to it instead
    /// of storing a copy.
    pub event_seq: Option<u64>,
    /// The project vars to record; `None`: the project's current ones.
    pub project_vars: Option<Map<String, Value>>,
    pub rerun_of: Option<RunId>,
    pub reused: Vec<ReusedTask>,
    /// The run's id; None: a new UUIDv7. (A sub-workflow's child has an id
    /// fixed by its parent's attempt.)
    pub id: Option<RunId>,
    /// Set on a sub-workflow's run.
    pub parent: Option<crate::log::ParentRun>,
    /// The instant the run is for; None: its event's (or its creation).
    pub logical_time: Option<Millis>,
}

impl NewRun {
    pub fn new(workflow: Arc<Workflow>, params: Map<String, Value>) -> Self {
        Self {
            workflow,
            params,
            event: None,
            event_seq: None,
            project_vars: None,
            rerun_of: None,
            reused: Vec::new(),
            id: None,
            parent: None,
            logical_time: None,
        }
    }
}

enum Input {
    StartRun {
        run: NewRun,
        reply: oneshot::Sender<Result<RunId, String>>,
        on_end: Option<oneshot::Sender<RunRecord>>,
    },
    AttemptDone {
        run_id: RunId,
        task: usize,
        attempt: u32,
        outcome: AttemptOutcome,
    },
    /// A remote attempt's end; `durable` is told once it is flushed (the
    /// worker's result message is acked then).
    RemoteDone {
        run_id: RunId,
        task: usize,
        attempt: u32,
        end: crate::remote::RemoteEnd,
        durable: Option<oneshot::Sender<()>>,
    },
    Accept {
        submission: Submission,
        reply: oneshot::Sender<Result<Accepted, String>>,
    },
    Cancel {
        run_id: RunId,
        reason: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Snapshot {
        run_id: RunId,
        reply: oneshot::Sender<Option<RunRecord>>,
    },
    /// A `workflow` task's child run.
    StartChild {
        request: executors::workflow::ChildRequest,
        reply: oneshot::Sender<Result<Option<RunStatus>, String>>,
    },
    /// Tell `reply` when this run ends (at once if it has).
    WaitRun {
        run_id: RunId,
        reply: oneshot::Sender<RunRecord>,
    },
    Active {
        filter: RunFilter,
        reply: oneshot::Sender<Vec<RunRecord>>,
    },
    /// What a `check` attempt saw (recorded when it changed).
    Observed {
        run_id: RunId,
        task: Arc<str>,
        attempt: u32,
        observation: Value,
    },
    Wake,
    Shutdown {
        grace: Duration,
    },
}

/// A running engine. Dropping it without [`Runtime::shutdown`] stops it too.
pub struct Runtime {
    handle: RuntimeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    recovery: Recovery,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// The engine's live sizes, for `/metrics` (updated after each commit).
#[derive(Debug, Default)]
pub struct EngineGauges {
    /// Runs in memory: created and not yet ended.
    pub runs: std::sync::atomic::AtomicU64,
    /// Wake-ups armed: run deadlines and retry delays of live runs.
    pub timers: std::sync::atomic::AtomicU64,
    /// Why the log cannot be flushed now (None: it can). While set, no
    /// source is acknowledged; `/healthz` reports it.
    pub log_error: Mutex<Option<String>>,
}

impl EngineGauges {
    /// The log's flush failure, if flushes are failing now.
    pub fn log_error(&self) -> Option<String> {
        self.log_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Cheap cloneable handle for talking to the runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::UnboundedSender<Input>,
    records: broadcast::Sender<Arc<Record>>,
    log: Log,
    fatal: Arc<Mutex<Option<String>>>,
    gauges: Arc<EngineGauges>,
    live: Arc<LiveOutputs>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens the log, recovers unfinished runs and starts the engine thread.
    /// Must be called inside a tokio runtime, which runs the attempts.
    pub fn start(config: RuntimeConfig) -> Result<Self, Error> {
        let started = Instant::now();
        let recover = config.recover;
        let (mut engine_loop, handle, fatal, leftovers) = EngineLoop::open(config)?;
        let mut recovery = if recover {
            engine_loop.recover()?
        } else {
            Recovery::default()
        };
        recovery.processes_killed = leftovers.killed;
        recovery.took = started.elapsed();
        if recovery.runs_resumed > 0 || recovery.runs_broken > 0 || recovery.runs_finished > 0 {
            tracing::info!(
                runs = recovery.runs_resumed,
                records = recovery.records_replayed,
                attempts_lost = recovery.attempts_lost,
                attempts_resumed = recovery.attempts_resumed,
                broken = recovery.runs_broken,
                processes_killed = recovery.processes_killed,
                finished = recovery.runs_finished,
                took_ms = recovery.took.as_millis() as u64,
                "Recovered unfinished runs."
            );
        }
        let thread = std::thread::Builder::new()
            .name("switchyard-engine".into())
            .spawn(move || {
                if let Err(e) = engine_loop.run() {
                    tracing::error!(error = %e, "Engine stopped: the log could not be written.");
                    if let Ok(mut slot) = fatal.lock() {
                        *slot = Some(e.to_string());
                    }
                }
                engine_loop.shutdown.cancel();
            })
            .map_err(|e| Error::Stopped(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            handle,
            thread: Some(thread),
            recovery,
        })
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Cancels a run in a data dir no daemon holds, through the same commit
    /// path as the daemon: the cancellation's records, its lifecycle events
    /// (into the outbox, published when a daemon runs) and the `on.run`
    /// bindings' chained event and runs (resumed when a daemon starts) are
    /// one commit. Nothing is started here: the engine is paused, and the
    /// run's processes are not running (no daemon holds the dir).
    pub fn cancel_offline(
        config: RuntimeConfig,
        run_id: RunId,
        reason: &str,
    ) -> Result<RunRecord, Error> {
        let (mut engine_loop, _handle, _fatal, _) = EngineLoop::open(config)?;
        engine_loop.cancel_offline(run_id, reason)
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Stops the engine at once: running attempts are cancelled and recorded
    /// as interrupted (they run again on the next start).
    pub async fn shutdown(self) {
        self.shutdown_within(Duration::ZERO).await;
    }

    /// Stops starting runs and attempts, gives running attempts `grace` to
    /// finish, then cancels the rest, records them as interrupted, flushes
    /// and closes the log.
    pub async fn shutdown_within(mut self, grace: Duration) {
        let _ = self.handle.tx.send(Input::Shutdown { grace });
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.handle.tx.send(Input::Shutdown {
            grace: Duration::ZERO,
        });
    }
}

impl RuntimeHandle {
    fn stopped(&self) -> Error {
        let reason = self
            .fatal
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or_else(|| "shut down".into());
        Error::Stopped(reason)
    }

    fn send(&self, input: Input) -> Result<(), Error> {
        self.tx.send(input).map_err(|_| self.stopped())
    }

    /// Why the engine stopped for good (the log could not be written), if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|slot| slot.clone())
    }

    /// Starts a run; returns its id once `RunCreated` is durable.
    pub async fn start_run(
        &self,
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        event: Option<Value>,
    ) -> Result<RunId, Error> {
        let run = NewRun {
            event,
            ..NewRun::new(workflow, params)
        };
        self.submit(run).await
    }

    /// Starts a run described in full (reruns carry reused tasks).
    pub async fn submit(&self, run: NewRun) -> Result<RunId, Error> {
        let (reply, created) = oneshot::channel();
        self.send(Input::StartRun {
            run,
            reply,
            on_end: None,
        })?;
        created
            .await
            .map_err(|_| self.stopped())?
            .map_err(Error::Unavailable)
    }

    /// Starts a run and waits for it to end; `on_created` gets the run id as
    /// soon as it is durable.
    pub async fn run_to_end(
        &self,
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        event: Option<Value>,
        on_created: impl FnOnce(RunId),
    ) -> Result<RunRecord, Error> {
        let run = NewRun {
            event,
            ..NewRun::new(workflow, params)
        };
        let (reply, created) = oneshot::channel();
        let (on_end, ended) = oneshot::channel();
        self.send(Input::StartRun {
            run,
            reply,
            on_end: Some(on_end),
        })?;
        let run_id = created
            .await
            .map_err(|_| self.stopped())?
            .map_err(Error::Unavailable)?;
        on_created(run_id);
        ended.await.map_err(|_| self.stopped())
    }

    /// Records an event and starts the runs it calls for (deduplicated);
    /// returns once all of it is durable.
    pub async fn accept(&self, submission: Submission) -> Result<Accepted, Error> {
        let (reply, accepted) = oneshot::channel();
        self.send(Input::Accept { submission, reply })?;
        accepted
            .await
            .map_err(|_| self.stopped())?
            .map_err(Error::Unavailable)
    }

    /// Cancels an active run: kills its running attempts, cancels the rest.
    pub async fn cancel(&self, run_id: RunId, reason: impl Into<String>) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        self.send(Input::Cancel {
            run_id,
            reason: reason.into(),
            reply,
        })?;
        done.await.map_err(|_| self.stopped())?
    }

    /// Starts a rerun of an ended run (SPEC §7).
    pub async fn rerun(&self, run_id: RunId, from: &RerunFrom) -> Result<RunId, Error> {
        self.rerun_with(run_id, from, Map::new()).await
    }

    /// A rerun whose params are the source's with `patch` merged over them
    /// (a key set to null is removed, as in a JSON merge patch).
    pub async fn rerun_with(
        &self,
        run_id: RunId,
        from: &RerunFrom,
        patch: Map<String, Value>,
    ) -> Result<RunId, Error> {
        let log = self.log.clone();
        let source = tokio::task::spawn_blocking(move || replay::fold(&log, run_id))
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?
            .map_err(|e| match e {
                replay::Error::NotFound(id) => Error::NotFound(id),
                other => Error::Replay(other),
            })?;
        if !source.status.is_terminal()
            && let Some(live) = self.snapshot(run_id).await?
            && !live.status.is_terminal()
        {
            return Err(Error::Conflict(format!(
                "run {run_id} is still {}: cancel it or wait for it to end before rerunning",
                live.status
            )));
        }
        let reused = rerun::plan(&source, from).map_err(|e| {
            if source.status.is_terminal() {
                Error::Invalid(e)
            } else {
                Error::Conflict(e)
            }
        })?;
        let mut params = source.params.clone();
        for (key, value) in patch {
            if value.is_null() {
                params.remove(&key);
            } else {
                params.insert(key, value);
            }
        }
        self.submit(NewRun {
            workflow: Arc::clone(&source.workflow),
            params,
            // A rerun keeps its own copy of the event: retention keeps a
            // stored event only as long as the runs it started.
            event: source.event.clone(),
            event_seq: None,
            // The source's, like its version and params: reused outputs
            // and rerun tasks see the same values.
            project_vars: Some(source.project_vars.clone()),
            rerun_of: Some(run_id),
            reused,
            id: None,
            parent: None,
            logical_time: Some(source.logical_time),
        })
        .await
    }

    /// The current record of a run the engine holds in memory (active runs).
    pub async fn snapshot(&self, run_id: RunId) -> Result<Option<RunRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Snapshot { run_id, reply })?;
        answer.await.map_err(|_| self.stopped())
    }

    /// The current records of the active runs `filter` selects, newest
    /// first, at most `filter.limit` (only those are copied).
    pub async fn active_runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Active { filter, reply })?;
        answer.await.map_err(|_| self.stopped())
    }

    /// A run's record: live if active, else as stored when it ended.
    pub async fn run_record(&self, run_id: RunId) -> Result<Option<RunRecord>, Error> {
        if let Some(record) = self.snapshot(run_id).await? {
            return Ok(Some(record));
        }
        let stored = self.log.run_summary(run_id)?;
        Ok(stored.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Every record, after it is durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.records.subscribe()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The engine's live run and timer counts.
    pub fn gauges(&self) -> &EngineGauges {
        &self.gauges
    }

    /// The output of attempts running now (what `logs?follow=true` reads
    /// before their logs are stored).
    pub fn live(&self) -> &LiveOutputs {
        &self.live
    }
}

use crate::time::now_millis;

struct EngineLoop {
    engine: Engine,
    /// Write lifecycle events to the outbox (`amqp.events_exchange` is set).
    lifecycle: bool,
    broker: Option<crate::amqp::Broker>,
    chain: Option<ChainHook>,
    secrets: Arc<crate::spec::Secrets>,
    databases: executors::sql::Databases,
    workflows: Option<WorkflowLookup>,
    remote: Option<crate::remote::Remote>,
    /// Some secret is read by workers only: local attempts are checked
    /// for it.
    worker_secrets: bool,
    /// When this loop started: an attempt started before it and started
    /// again is a resumed one (a remote attempt is re-attached).
    opened_at: Millis,
    /// What `workflow` attempts start and wait for child runs through.
    children: Arc<dyn executors::workflow::Children>,
    /// What `check` attempts record observations and find runs through.
    checks: Arc<dyn executors::check::CheckHost>,
    /// Child starts asked for while draining: never answered (dropped with
    /// the loop); the attempts resume at the next start.
    held_child_starts: Vec<oneshot::Sender<Result<Option<RunStatus>, String>>>,
    project_vars: Map<String, Value>,
    log: Log,
    rx: mpsc::UnboundedReceiver<Input>,
    tx: mpsc::UnboundedSender<Input>,
    records: broadcast::Sender<Arc<Record>>,
    tokio: tokio::runtime::Handle,
    scratch_dir: PathBuf,
    processes: executors::process::Processes,
    gauges: Arc<EngineGauges>,
    /// Cancel tokens of attempts in flight.
    attempts: HashMap<(RunId, usize, u32), CancellationToken>,
    /// Output of running attempts, for followers.
    live: Arc<LiveOutputs>,
    /// The live output of each attempt in flight that captures output.
    live_attempts: HashMap<(RunId, usize, u32), Arc<executors::live::LiveAttempt>>,
    waiters: HashMap<RunId, Vec<oneshot::Sender<RunRecord>>>,
    shutdown: CancellationToken,
    /// Set once shutdown began: the moment the grace period ends.
    draining: Option<Instant>,
    /// The engine timer a wake-up is armed for.
    armed: Option<Millis>,
    /// Attempt tasks, awaited (bounded) at shutdown so no process outlives us.
    running: Vec<tokio::task::JoinHandle<()>>,
    /// Batches whose flush failed: written to sled but not known durable.
    /// Nothing of them was acknowledged; their effects wait for the next
    /// flush that succeeds.
    undurable: Option<Undurable>,
}

/// What waits for a flush to succeed again.
#[derive(Default)]
struct Undurable {
    records: Vec<Record>,
    effects: Vec<Effect>,
    ended: Vec<RunRecord>,
    /// `workflow` tasks waiting to hear that their child run is durable.
    children: Vec<oneshot::Sender<Result<Option<RunStatus>, String>>>,
    /// Remote results waiting to be acked.
    durable: Vec<oneshot::Sender<()>>,
    /// Failed flushes in a row (for the retry backoff).
    failures: u32,
}

/// What one group commit produced.
#[derive(Default)]
struct Batch {
    /// What this batch writes, in one [`log::Commit`].
    commit: log::Commit,
    records: Vec<Record>,
    effects: Vec<Effect>,
    created: Vec<(oneshot::Sender<Result<RunId, String>>, RunId)>,
    /// Child runs of `workflow` tasks created in this batch.
    children: Vec<oneshot::Sender<Result<Option<RunStatus>, String>>>,
    /// Remote results recorded in this batch: told once it is durable.
    durable: Vec<oneshot::Sender<()>>,
    accepted: Vec<(oneshot::Sender<Result<Accepted, String>>, Accepted)>,
    /// How many `RunEnded` effects run chaining has looked at.
    chained: usize,
    cancelled: Vec<oneshot::Sender<Result<(), Error>>>,
    snapshots: Vec<(RunId, oneshot::Sender<Option<RunRecord>>)>,
    actives: Vec<(RunFilter, oneshot::Sender<Vec<RunRecord>>)>,
}
