//! The engine's I/O shell: one thread that owns the [`Engine`] and appends to
//! the [`Log`], and tokio tasks that run attempts and timers.
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::rerun::{self, RerunFrom};
use super::{Effect, Engine, Limits, RunRecord, TaskStatus, duration_millis, replay};
use crate::executors::{self, AttemptContext, AttemptOutcome};
use crate::log::{self, Log, Millis, Record, RecordBody, ReusedTask, RunId, RunStatus};
use crate::spec::Workflow;

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
    /// Run chaining (the reactor's `on.run` bindings); none for one-off runs.
    pub chain: Option<ChainHook>,
    /// The broker for `amqp` tasks; with an events exchange set, lifecycle
    /// events are written to the outbox with their records.
    pub broker: Option<crate::amqp::Broker>,
}

impl RuntimeConfig {
    /// Default limits, recovery on, no secrets, chaining or broker.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            recover: true,
            secrets: Default::default(),
            chain: None,
            broker: None,
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
pub type ChainHook = Arc<dyn Fn(&super::RunState, Millis) -> Option<Submission> + Send + Sync>;

/// A request to start a run.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub workflow: Arc<Workflow>,
    pub params: Map<String, Value>,
    pub event: Option<Value>,
    pub rerun_of: Option<RunId>,
    pub reused: Vec<ReusedTask>,
}

impl NewRun {
    pub fn new(workflow: Arc<Workflow>, params: Map<String, Value>) -> Self {
        Self {
            workflow,
            params,
            event: None,
            rerun_of: None,
            reused: Vec::new(),
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
    Active {
        reply: oneshot::Sender<Vec<RunRecord>>,
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
}

/// Cheap cloneable handle for talking to the runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::UnboundedSender<Input>,
    records: broadcast::Sender<Arc<Record>>,
    log: Log,
    fatal: Arc<Mutex<Option<String>>>,
    gauges: Arc<EngineGauges>,
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
            .map_err(Error::Stopped)
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
            .map_err(Error::Stopped)?;
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
            .map_err(Error::Stopped)
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
        self.submit(NewRun {
            workflow: Arc::clone(&source.workflow),
            params: source.params.clone(),
            event: source.event.clone(),
            rerun_of: Some(run_id),
            reused,
        })
        .await
    }

    /// The current record of a run the engine holds in memory (active runs).
    pub async fn snapshot(&self, run_id: RunId) -> Result<Option<RunRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Snapshot { run_id, reply })?;
        answer.await.map_err(|_| self.stopped())
    }

    /// The current records of every active run.
    pub async fn active_runs(&self) -> Result<Vec<RunRecord>, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Active { reply })?;
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
}

fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

struct EngineLoop {
    engine: Engine,
    /// Write lifecycle events to the outbox (`amqp.events_exchange` is set).
    lifecycle: bool,
    broker: Option<crate::amqp::Broker>,
    chain: Option<ChainHook>,
    secrets: Arc<crate::spec::Secrets>,
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
    waiters: HashMap<RunId, Vec<oneshot::Sender<RunRecord>>>,
    shutdown: CancellationToken,
    /// Set once shutdown began: the moment the grace period ends.
    draining: Option<Instant>,
    /// The engine timer a wake-up is armed for.
    armed: Option<Millis>,
    /// Attempt tasks, awaited (bounded) at shutdown so no process outlives us.
    running: Vec<tokio::task::JoinHandle<()>>,
}

/// What one group commit produced.
#[derive(Default)]
struct Batch {
    /// What this batch writes, in one [`log::Commit`].
    commit: log::Commit,
    records: Vec<Record>,
    effects: Vec<Effect>,
    created: Vec<(oneshot::Sender<Result<RunId, String>>, RunId)>,
    accepted: Vec<(oneshot::Sender<Result<Accepted, String>>, Accepted)>,
    /// How many `RunEnded` effects run chaining has looked at.
    chained: usize,
    cancelled: Vec<oneshot::Sender<Result<(), Error>>>,
    snapshots: Vec<(RunId, oneshot::Sender<Option<RunRecord>>)>,
    actives: Vec<oneshot::Sender<Vec<RunRecord>>>,
}

impl EngineLoop {
    /// Opens the log and builds the loop (not yet running): kills what a
    /// previous process left running, starts the process spawner.
    #[allow(clippy::type_complexity)]
    fn open(
        config: RuntimeConfig,
    ) -> Result<
        (
            Self,
            RuntimeHandle,
            Arc<Mutex<Option<String>>>,
            executors::process::Leftovers,
        ),
        Error,
    > {
        let log = Log::open(&config.data_dir)?;
        // Before any lost attempt is retried: whatever a previous process
        // left running (a script's children; the kernel killed its main
        // process with the daemon) is ended, so no task runs twice at once.
        let attempts_dir = config.data_dir.join("attempts");
        let leftovers = executors::process::kill_leftovers(&attempts_dir);
        let processes = executors::process::Processes::start(attempts_dir)
            .map_err(|e| Error::Stopped(format!("cannot start the process spawner: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (records, _) = broadcast::channel(4096);
        let fatal = Arc::new(Mutex::new(None));
        let gauges = Arc::new(EngineGauges::default());
        let handle = RuntimeHandle {
            tx: tx.clone(),
            records: records.clone(),
            log: log.clone(),
            fatal: Arc::clone(&fatal),
            gauges: Arc::clone(&gauges),
        };
        let mut engine = Engine::new(config.limits);
        engine.set_secrets(Arc::clone(&config.secrets));
        let engine_loop = EngineLoop {
            lifecycle: config
                .broker
                .as_ref()
                .is_some_and(|b| b.events_exchange().is_some()),
            broker: config.broker,
            chain: config.chain,
            secrets: config.secrets,
            engine,
            log,
            rx,
            tx,
            records,
            tokio: tokio::runtime::Handle::current(),
            scratch_dir: config.data_dir.join("scratch"),
            processes,
            gauges,
            attempts: HashMap::new(),
            waiters: HashMap::new(),
            shutdown: CancellationToken::new(),
            draining: None,
            armed: None,
            running: Vec::new(),
        };
        Ok((engine_loop, handle, fatal, leftovers))
    }

    /// See [`Runtime::cancel_offline`].
    fn cancel_offline(&mut self, run_id: RunId, reason: &str) -> Result<RunRecord, Error> {
        self.engine.pause();
        match replay::replay_into(&mut self.engine, &self.log, run_id) {
            Ok(_) => {}
            Err(replay::Error::NotFound(id)) => return Err(Error::NotFound(id)),
            Err(e) => return Err(e.into()),
        }
        match self.engine.run(run_id).map(|r| r.status) {
            None => return Err(Error::NotFound(run_id)),
            Some(status) if status.is_terminal() => {
                return Err(Error::Conflict(format!(
                    "run {run_id} already ended: {status}"
                )));
            }
            Some(_) => {}
        }
        let now = now_millis();
        let mut batch = Batch::default();
        let body = RecordBody::RunCancelRequested {
            reason: reason.to_string(),
        };
        self.append(&mut batch, run_id, now, body)?;
        self.settle(&mut batch, now)?;
        self.chain_ended(&mut batch, now)?;
        self.finish(batch, now)?;
        // Ended and evicted in `finish`: its stored record is the answer.
        let summary = match self.engine.run(run_id) {
            Some(run) => Some(run.record()),
            None => self
                .log
                .run_summary(run_id)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
        };
        summary.ok_or(Error::NotFound(run_id))
    }

    /// Folds every unfinished run into the engine and commits what recovery
    /// decides, before any new input is taken.
    fn recover(&mut self) -> Result<Recovery, Error> {
        let mut recovery = Recovery::default();
        let now = now_millis();
        let mut batch = Batch::default();
        for run_id in self.log.unfinished_runs()? {
            match replay::replay_into(&mut self.engine, &self.log, run_id) {
                Ok(n) => {
                    recovery.records_replayed += n;
                    // Its end is recorded but it was never finished (a log
                    // from before commits were one transaction): finish it
                    // now instead of folding it at every start.
                    if let Some(run) = self.engine.evict(run_id) {
                        tracing::warn!(run_id = %run_id, status = %run.status,
                            "Run had ended but was still listed as unfinished; finishing it.");
                        let summary = serde_json::to_vec(&run.into_record()).unwrap_or_default();
                        batch.commit.finished(run_id, summary);
                        recovery.runs_finished += 1;
                        continue;
                    }
                    recovery.runs_resumed += 1;
                }
                Err(e) => {
                    // A run that cannot be folded cannot go on; end it visibly.
                    tracing::error!(run_id = %run_id, error = %e, "Cannot recover run; ending it as failed.");
                    recovery.runs_broken += 1;
                    let body = RecordBody::RunEnded {
                        status: RunStatus::Failed,
                        error: Some(format!("cannot recover: {e}")),
                    };
                    let record = self.log.next_record(run_id, now, body)?;
                    let summary = broken_summary(&self.log, run_id, &record);
                    let message = match &summary {
                        Some(summary) if self.lifecycle => serde_json::to_vec(
                            &crate::amqp::outbox::unrecoverable_run_event(&record, summary),
                        )
                        .ok(),
                        _ => None,
                    };
                    batch.commit.record(&record, message)?;
                    if let Some(summary) = summary {
                        let bytes = serde_json::to_vec(&summary).unwrap_or_default();
                        batch.commit.summary(run_id, bytes);
                    }
                    batch.records.push(record);
                }
            }
        }
        let (records, effects) = self.engine.resume();
        for (run_id, body) in records {
            recovery.attempts_lost += 1;
            self.append(&mut batch, run_id, now, body)?;
        }
        recovery.attempts_resumed = effects
            .iter()
            .filter(|e| matches!(e, Effect::StartAttempt { .. }))
            .count();
        batch.effects.extend(effects);
        self.settle(&mut batch, now)?;
        self.chain_ended(&mut batch, now)?;
        self.finish(batch, now)?;
        Ok(recovery)
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut inputs = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            inputs.push(first);
            while inputs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(input) => inputs.push(input),
                    Err(_) => break,
                }
            }
            self.commit(&mut inputs)?;
            if let Some(deadline) = self.draining
                && self.drained(deadline)?
            {
                break;
            }
        }
        self.shutdown.cancel();
        for token in self.attempts.values() {
            token.cancel();
        }
        self.log.flush()?;
        // Let cancelled attempts kill their process groups before we go.
        let running = std::mem::take(&mut self.running);
        self.tokio.block_on(async move {
            let _ = tokio::time::timeout(ATTEMPT_STOP_GRACE, async {
                for attempt in running {
                    let _ = attempt.await;
                }
            })
            .await;
        });
        Ok(())
    }

    /// During shutdown: true once nothing non-resumable runs, or the grace
    /// period is over (then the rest are recorded interrupted).
    fn drained(&mut self, deadline: Instant) -> Result<bool, Error> {
        let running: Vec<(RunId, usize, u32)> = self
            .engine
            .running_attempts()
            .into_iter()
            .filter(|(run_id, task, _)| {
                self.engine
                    .run(*run_id)
                    .is_some_and(|run| !executors::resumable(run.workflow.tasks[*task].kind))
            })
            .collect();
        if running.is_empty() {
            return Ok(true);
        }
        if Instant::now() < deadline {
            return Ok(false);
        }
        let now = now_millis();
        let mut batch = Batch::default();
        for (run_id, task, attempt) in running {
            let Some(run) = self.engine.run(run_id) else {
                continue;
            };
            let body = RecordBody::AttemptLost {
                task: run.workflow.tasks[task].id.clone(),
                attempt,
                reason: "interrupted by shutdown".into(),
                shutdown: true,
            };
            self.append(&mut batch, run_id, now, body)?;
        }
        self.settle(&mut batch, now)?;
        self.chain_ended(&mut batch, now)?;
        self.finish(batch, now)?;
        Ok(true)
    }

    /// Numbers a record, applies it, and adds it to the batch's commit.
    fn append(
        &mut self,
        batch: &mut Batch,
        run_id: RunId,
        now: Millis,
        body: RecordBody,
    ) -> Result<(), Error> {
        // Applied before it is written (both before the flush, before any
        // effect) so its lifecycle event can say what it meant and go into
        // the same transaction.
        let record = self.log.next_record(run_id, now, body)?;
        batch.effects.extend(self.engine.apply(&record));
        let message = if self.lifecycle {
            self.engine
                .run(run_id)
                .and_then(|run| crate::amqp::outbox::lifecycle_event(&record, run))
                .and_then(|m| serde_json::to_vec(&m).ok())
        } else {
            None
        };
        batch.commit.record(&record, message)?;
        batch.records.push(record);
        Ok(())
    }

    /// Appends the engine's decisions until none remain.
    fn settle(&mut self, batch: &mut Batch, now: Millis) -> Result<(), Error> {
        // Each round settles one layer of consequences (a skip cascades one
        // task per round), so the number of rounds is bounded by DAG depth.
        for round in 0.. {
            let decisions = self.engine.decide(now);
            if decisions.is_empty() {
                break;
            }
            for (run_id, body) in decisions {
                self.append(batch, run_id, now, body)?;
            }
            if round == MAX_DECIDE_ROUNDS {
                tracing::error!(
                    rounds = round,
                    "Engine decisions did not settle; deferring the rest."
                );
                let _ = self.tx.send(Input::Wake);
                break;
            }
        }
        Ok(())
    }

    /// One group commit.
    fn commit(&mut self, inputs: &mut Vec<Input>) -> Result<(), Error> {
        let now = now_millis();
        let mut batch = Batch::default();
        for input in inputs.drain(..) {
            match input {
                Input::StartRun { run, reply, on_end } => {
                    if self.draining.is_some() {
                        let _ = reply.send(Err("switchyard is shutting down".into()));
                        continue;
                    }
                    let workflow = Arc::clone(&run.workflow);
                    let body = self.run_created(run, now)?;
                    self.engine.register(workflow);
                    let run_id = uuid::Uuid::now_v7();
                    self.append(&mut batch, run_id, now, body)?;
                    batch.created.push((reply, run_id));
                    if let Some(on_end) = on_end {
                        self.waiters.entry(run_id).or_default().push(on_end);
                    }
                }
                Input::Accept { submission, reply } => {
                    if self.draining.is_some() {
                        let _ = reply.send(Err("switchyard is shutting down".into()));
                        continue;
                    }
                    let accepted = self.accept(&mut batch, submission, now)?;
                    batch.accepted.push((reply, accepted));
                }
                Input::AttemptDone {
                    run_id,
                    task,
                    attempt,
                    mut outcome,
                } => {
                    self.redact(&mut outcome);
                    self.attempts.remove(&(run_id, task, attempt));
                    let Some(run) = self.engine.run(run_id) else {
                        continue;
                    };
                    let live = run
                        .tasks
                        .get(task)
                        .is_some_and(|t| t.status == TaskStatus::Running && t.attempts == attempt);
                    if !live {
                        continue; // Cancelled meanwhile; its end is already recorded.
                    }
                    let task_id = run.workflow.tasks[task].id.clone();
                    if let Some(logs) = &outcome.logs {
                        self.log.put_task_logs(run_id, &task_id, logs)?;
                    }
                    let body = RecordBody::AttemptFinished {
                        task: task_id,
                        attempt,
                        succeeded: outcome.succeeded,
                        output: outcome.output,
                        stdout: outcome.stdout,
                        error: outcome.error,
                        retryable: outcome.retryable,
                    };
                    self.append(&mut batch, run_id, now, body)?;
                }
                Input::Cancel {
                    run_id,
                    reason,
                    reply,
                } => match self.engine.run(run_id) {
                    Some(run) if !run.status.is_terminal() => {
                        self.append(
                            &mut batch,
                            run_id,
                            now,
                            RecordBody::RunCancelRequested { reason },
                        )?;
                        batch.cancelled.push(reply);
                    }
                    Some(run) => {
                        let _ = reply.send(Err(Error::Conflict(format!(
                            "run {run_id} already ended: {}",
                            run.status
                        ))));
                    }
                    None => {
                        let answer = match self.log.run_summary(run_id)? {
                            Some(_) => Err(Error::Conflict(format!("run {run_id} already ended"))),
                            None => Err(Error::NotFound(run_id)),
                        };
                        let _ = reply.send(answer);
                    }
                },
                Input::Snapshot { run_id, reply } => batch.snapshots.push((run_id, reply)),
                Input::Active { reply } => batch.actives.push(reply),
                Input::Wake => self.armed = None,
                Input::Shutdown { grace } => {
                    if self.draining.is_none() {
                        self.draining = Some(Instant::now() + grace);
                        self.engine.pause();
                        if !grace.is_zero() {
                            self.wake_at(now + grace.as_millis() as Millis);
                        }
                    }
                }
            }
        }
        self.settle(&mut batch, now)?;
        self.chain_ended(&mut batch, now)?;
        self.finish(batch, now)
    }

    /// Stores the run's definition (once per version) and returns its
    /// `RunCreated` body.
    fn run_created(&self, run: NewRun, now: Millis) -> Result<RecordBody, Error> {
        let workflow = &run.workflow;
        self.log.put_definition(
            &workflow.name,
            &workflow.version,
            workflow.version_label,
            &workflow.source,
            now,
        )?;
        Ok(RecordBody::RunCreated {
            workflow: workflow.name.clone(),
            version: workflow.version.clone(),
            version_label: workflow.version_label,
            params: run.params,
            event: run.event,
            rerun_of: run.rerun_of,
            reused: run.reused,
        })
    }

    /// Records one event: checks each candidate's dedup key (this commit's
    /// new entries included), creates the runs, and adds event, runs, dedup
    /// entries and marks to the commit's transaction.
    fn accept(
        &mut self,
        batch: &mut Batch,
        mut submission: Submission,
        now: Millis,
    ) -> Result<Accepted, Error> {
        // The event as stored (its record, and each run's copy) never holds
        // a secret: a webhook's query string or body, an AMQP header. The
        // reactor has already evaluated it unredacted.
        self.secrets.redact_json(&mut submission.event);
        let event_id = submission
            .event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let seq = self.log.next_seq()?;
        let mut outcomes = Vec::new();
        let mut dedup = Vec::new();
        let mut runs = Vec::new();
        for candidate in submission.candidates {
            let (binding, workflow, params, dedup_key, ttl) = match candidate {
                SubmitCandidate::Done(outcome) => {
                    outcomes.push(outcome);
                    continue;
                }
                SubmitCandidate::Start {
                    binding,
                    workflow,
                    params,
                    dedup_key,
                    ttl,
                } => (binding, workflow, params, dedup_key, ttl),
            };
            let first = match batch.commit.fresh_dedup(&binding, &dedup_key) {
                Some(entry) => Some(entry.clone()),
                None => self.log.dedup_lookup(&binding, &dedup_key, now)?,
            };
            if let Some(first) = first {
                outcomes.push(log::Outcome::Duplicate {
                    binding,
                    dedup_key,
                    run_id: first.run_id,
                    first_event: first.event_id,
                });
                continue;
            }
            let run_id = uuid::Uuid::now_v7();
            let run = NewRun {
                event: Some(submission.event.clone()),
                ..NewRun::new(Arc::clone(&workflow), params)
            };
            let body = self.run_created(run, now)?;
            self.engine.register(workflow);
            self.append(batch, run_id, now, body)?;
            let expires_at = now.saturating_add(duration_millis(ttl));
            dedup.push((
                binding.clone(),
                dedup_key.clone(),
                log::DedupEntry {
                    event_id: event_id.clone(),
                    run_id,
                    expires_at,
                },
            ));
            outcomes.push(log::Outcome::Started {
                binding,
                run_id,
                dedup_key,
            });
            runs.push(run_id);
        }
        let event = log::EventRecord {
            seq,
            at: now,
            event: submission.event,
            outcomes,
        };
        batch.commit.event(&event, dedup, submission.marks)?;
        let mut ended = Vec::new();
        if submission.wait {
            for run_id in &runs {
                let (tx, rx) = oneshot::channel();
                self.waiters.entry(*run_id).or_default().push(tx);
                ended.push(rx);
            }
        }
        Ok(Accepted {
            event_id,
            seq,
            outcomes: event.outcomes,
            runs,
            ended,
        })
    }

    /// Run chaining: for every run that ended in this batch, the `on.run`
    /// bindings' event is recorded and its runs created in this same commit.
    fn chain_ended(&mut self, batch: &mut Batch, now: Millis) -> Result<(), Error> {
        let Some(chain) = self.chain.clone() else {
            return Ok(());
        };
        // Chained runs cannot end in the batch that creates them (their tasks
        // run after the flush), so one pass settles; the bound is a guard.
        for _ in 0..MAX_DECIDE_ROUNDS {
            let ended: Vec<RunId> = batch.effects[batch.chained..]
                .iter()
                .filter_map(|e| match e {
                    Effect::RunEnded { run_id } => Some(*run_id),
                    _ => None,
                })
                .collect();
            batch.chained = batch.effects.len();
            if ended.is_empty() {
                break;
            }
            for run_id in ended {
                let Some(submission) = self.engine.run(run_id).and_then(|run| chain(run, now))
                else {
                    continue;
                };
                let accepted = self.accept(batch, submission, now)?;
                tracing::info!(
                    run_id = %run_id,
                    started = accepted.runs.len(),
                    "Run ended; chained bindings evaluated."
                );
            }
            self.settle(batch, now)?;
        }
        Ok(())
    }

    /// Flushes what the batch appended, then answers, publishes and acts.
    fn finish(&mut self, mut batch: Batch, now: Millis) -> Result<(), Error> {
        // Ended runs leave the engine here (chaining has seen them); their
        // state moves into the stored summary.
        let mut ended = Vec::new();
        for effect in &batch.effects {
            if let Effect::RunEnded { run_id } = effect
                && let Some(run) = self.engine.evict(*run_id)
            {
                let record = run.into_record();
                let summary = serde_json::to_vec(&record).unwrap_or_default();
                batch.commit.summary(*run_id, summary);
                ended.push(record);
            }
        }
        let commit = std::mem::take(&mut batch.commit);
        if !commit.is_empty() {
            self.log.write(commit)?;
            self.log.flush()?;
        }

        for (reply, run_id) in batch.created.drain(..) {
            let _ = reply.send(Ok(run_id));
        }
        for (reply, accepted) in batch.accepted.drain(..) {
            let _ = reply.send(Ok(accepted));
        }
        for reply in batch.cancelled.drain(..) {
            let _ = reply.send(Ok(()));
        }
        if self.records.receiver_count() > 0 {
            for record in batch.records.drain(..) {
                let _ = self.records.send(Arc::new(record));
            }
        }
        for record in ended {
            if let Some(waiters) = self.waiters.remove(&record.id) {
                for waiter in waiters {
                    let _ = waiter.send(record.clone());
                }
            }
        }
        for effect in std::mem::take(&mut batch.effects) {
            self.perform(effect, now);
        }
        // One wake-up for the engine's earliest timer, re-armed whenever it
        // changes or fired, so no retry or deadline is forgotten.
        if let Some(at) = self.engine.next_timer()
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.armed = Some(at);
            self.wake_at(at);
        }
        self.running.retain(|task| !task.is_finished());
        use std::sync::atomic::Ordering::Relaxed;
        self.gauges
            .runs
            .store(self.engine.run_count() as u64, Relaxed);
        self.gauges
            .timers
            .store(self.engine.timer_count() as u64, Relaxed);
        // Queries see the state after this batch (ended runs are evicted by
        // now, so they are answered from the stored summaries).
        for (run_id, reply) in batch.snapshots.drain(..) {
            let _ = reply.send(self.engine.run(run_id).map(|run| run.record()));
        }
        for reply in batch.actives.drain(..) {
            let _ = reply.send(self.engine.runs().map(|run| run.record()).collect());
        }
        Ok(())
    }

    /// Secret values never reach the log, the API or subscribers.
    fn redact(&self, outcome: &mut AttemptOutcome) {
        if self.secrets.is_empty() {
            return;
        }
        let secrets = &self.secrets;
        secrets.redact_json(&mut outcome.output);
        outcome.stdout = secrets.redact(&outcome.stdout);
        if let Some(error) = &mut outcome.error {
            *error = secrets.redact(error);
        }
        if let Some(logs) = &mut outcome.logs {
            logs.stdout = secrets.redact(&logs.stdout);
            logs.stderr = secrets.redact(&logs.stderr);
        }
    }

    fn wake_at(&self, at: Millis) {
        let tx = self.tx.clone();
        let delay = Duration::from_millis(at.saturating_sub(now_millis()).max(0) as u64);
        let shutdown = self.shutdown.clone();
        self.tokio.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => { let _ = tx.send(Input::Wake); }
                _ = shutdown.cancelled() => {}
            }
        });
    }

    fn perform(&mut self, effect: Effect, now: Millis) {
        match effect {
            Effect::StartAttempt {
                run_id,
                task,
                attempt,
                started_at,
            } => {
                // A later record of the same batch may have cancelled it.
                let live = self.engine.run(run_id).is_some_and(|run| {
                    run.tasks
                        .get(task)
                        .is_some_and(|t| t.status == TaskStatus::Running && t.attempts == attempt)
                });
                if !live {
                    return;
                }
                let tx = self.tx.clone();
                let prepared = match self.engine.prepare_attempt(run_id, task, now) {
                    Ok(prepared) => prepared,
                    Err(error) => {
                        let outcome = AttemptOutcome::permanent_failure(error);
                        let _ = tx.send(Input::AttemptDone {
                            run_id,
                            task,
                            attempt,
                            outcome,
                        });
                        return;
                    }
                };
                let token = self.shutdown.child_token();
                self.attempts.insert((run_id, task, attempt), token.clone());
                let ctx = AttemptContext {
                    run_id,
                    workflow: prepared.workflow,
                    task: prepared.task,
                    attempt,
                    started_at,
                    cancel: token.child_token(),
                    scratch_dir: self.scratch_dir.clone(),
                    broker: self.broker.clone(),
                    processes: self.processes.clone(),
                    secrets: Arc::clone(&self.secrets),
                };
                let tokio = self.tokio.clone();
                let attempt_task = self.tokio.spawn(async move {
                    let execution = tokio.spawn(executors::execute(
                        prepared.kind,
                        prepared.config,
                        ctx,
                        prepared.timeout,
                    ));
                    // An executor that panics fails its attempt instead of
                    // leaving the run waiting forever.
                    let outcome = match execution.await {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            AttemptOutcome::permanent_failure(format!("executor failed: {e}"))
                        }
                    };
                    let _ = tx.send(Input::AttemptDone {
                        run_id,
                        task,
                        attempt,
                        outcome,
                    });
                });
                self.running.push(attempt_task);
            }
            Effect::KillAttempt {
                run_id,
                task,
                attempt,
            } => {
                if let Some(token) = self.attempts.remove(&(run_id, task, attempt)) {
                    token.cancel();
                }
            }
            // Timers are armed from `Engine::next_timer` after each commit.
            Effect::Wake { .. } => {}
            // Evicted in `finish`, before the flush.
            Effect::RunEnded { .. } => {}
        }
    }
}

/// The stored record of a run recovery had to end without its definition:
/// what its `run_created` says, so `runs show` and the API still find it.
/// None when even its history cannot be read (its end is still recorded).
fn broken_summary(log: &Log, run_id: RunId, ended: &Record) -> Option<RunRecord> {
    let history = match log.run_history(run_id) {
        Ok(history) => history,
        Err(e) => {
            tracing::error!(run_id = %run_id, error = %e, "Cannot read the history of a run ended at recovery.");
            return None;
        }
    };
    let Some(RecordBody::RunCreated {
        workflow,
        version,
        version_label,
        params,
        event,
        ..
    }) = history.first().map(|r| &r.body)
    else {
        return None;
    };
    let RecordBody::RunEnded { status, error } = &ended.body else {
        return None;
    };
    let record = RunRecord {
        id: run_id,
        workflow: workflow.clone(),
        version: version.clone(),
        version_label: *version_label,
        status: *status,
        params: params.clone(),
        vars: params.clone(),
        event: event.clone().unwrap_or(Value::Null),
        started_at: None,
        ended_at: Some(super::rfc3339(ended.at)),
        error: error.clone(),
        tasks: Map::new(),
    };
    Some(record)
}
