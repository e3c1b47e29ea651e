//! The engine's I/O shell: one thread that owns the [`Engine`] and appends to
//! the [`Log`], and tokio tasks that run attempts and timers.
//!
//! The loop takes every input waiting (new runs, attempt results, wake-ups),
//! appends the records they cause, lets the engine decide what follows and
//! appends those too, then flushes once — group commit — and only then
//! answers callers, publishes records and performs effects. Nothing is
//! reported or started before the flush that makes it durable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Effect, Engine, Limits, RunRecord};
use crate::executors::{self, AttemptContext, AttemptOutcome};
use crate::log::{self, Log, Millis, Record, RecordBody, RunId};
use crate::spec::Workflow;

/// Most inputs folded into one group commit.
const MAX_BATCH: usize = 8192;
/// A guard against a decision loop that never settles (a bug, not input).
const MAX_DECIDE_ROUNDS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] log::Error),
    #[error("the engine has stopped: {0}")]
    Stopped(String),
}

/// How to start a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
}

enum Input {
    StartRun {
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        event: Option<Value>,
        reply: oneshot::Sender<RunId>,
        on_end: Option<oneshot::Sender<RunRecord>>,
    },
    AttemptDone {
        run_id: RunId,
        task: usize,
        attempt: u32,
        outcome: AttemptOutcome,
    },
    Wake,
    Shutdown,
}

/// A running engine. Dropping it without [`Runtime::shutdown`] stops it too.
pub struct Runtime {
    handle: RuntimeHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Cheap cloneable handle for talking to the runtime.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::UnboundedSender<Input>,
    records: broadcast::Sender<Arc<Record>>,
    log: Log,
    fatal: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens the log and starts the engine thread. Must be called inside a
    /// tokio runtime, which runs the attempts.
    pub fn start(config: RuntimeConfig) -> Result<Self, Error> {
        let log = Log::open(&config.data_dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (records, _) = broadcast::channel(4096);
        let fatal = Arc::new(Mutex::new(None));
        let handle = RuntimeHandle {
            tx: tx.clone(),
            records: records.clone(),
            log: log.clone(),
            fatal: Arc::clone(&fatal),
        };
        let mut engine_loop = EngineLoop {
            engine: Engine::new(config.limits),
            log,
            rx,
            tx,
            records,
            tokio: tokio::runtime::Handle::current(),
            scratch_dir: config.data_dir.join("scratch"),
            attempts: HashMap::new(),
            waiters: HashMap::new(),
            shutdown: CancellationToken::new(),
        };
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
        })
    }

    pub fn handle(&self) -> RuntimeHandle {
        self.handle.clone()
    }

    /// Stops the engine: running attempts are cancelled, everything appended
    /// is flushed, and the log is closed.
    pub async fn shutdown(mut self) {
        let _ = self.handle.tx.send(Input::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.handle.tx.send(Input::Shutdown);
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

    /// Starts a run; returns its id once `RunCreated` is durable.
    pub async fn start_run(
        &self,
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        event: Option<Value>,
    ) -> Result<RunId, Error> {
        let (reply, created) = oneshot::channel();
        self.tx
            .send(Input::StartRun {
                workflow,
                params,
                event,
                reply,
                on_end: None,
            })
            .map_err(|_| self.stopped())?;
        created.await.map_err(|_| self.stopped())
    }

    /// Starts a run and waits for it to end; returns the run id as soon as it
    /// is durable through `on_created`, then the final record.
    pub async fn run_to_end(
        &self,
        workflow: Arc<Workflow>,
        params: Map<String, Value>,
        event: Option<Value>,
        on_created: impl FnOnce(RunId),
    ) -> Result<RunRecord, Error> {
        let (reply, created) = oneshot::channel();
        let (on_end, ended) = oneshot::channel();
        self.tx
            .send(Input::StartRun {
                workflow,
                params,
                event,
                reply,
                on_end: Some(on_end),
            })
            .map_err(|_| self.stopped())?;
        on_created(created.await.map_err(|_| self.stopped())?);
        ended.await.map_err(|_| self.stopped())
    }

    /// Every record, after it is durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.records.subscribe()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }
}

fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

struct EngineLoop {
    engine: Engine,
    log: Log,
    rx: mpsc::UnboundedReceiver<Input>,
    tx: mpsc::UnboundedSender<Input>,
    records: broadcast::Sender<Arc<Record>>,
    tokio: tokio::runtime::Handle,
    scratch_dir: PathBuf,
    /// Cancel tokens of attempts in flight.
    attempts: HashMap<(RunId, usize, u32), CancellationToken>,
    waiters: HashMap<RunId, Vec<oneshot::Sender<RunRecord>>>,
    shutdown: CancellationToken,
}

/// What one group commit produced.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    effects: Vec<Effect>,
    replies: Vec<(oneshot::Sender<RunId>, RunId)>,
}

impl EngineLoop {
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
            let stop = self.commit(&mut inputs)?;
            if stop {
                break;
            }
        }
        self.shutdown.cancel();
        for token in self.attempts.values() {
            token.cancel();
        }
        self.log.flush()?;
        Ok(())
    }

    fn append(
        &mut self,
        batch: &mut Batch,
        run_id: RunId,
        now: Millis,
        body: RecordBody,
    ) -> Result<(), Error> {
        let record = self.log.append(run_id, now, body)?;
        batch.effects.extend(self.engine.apply(&record));
        batch.records.push(record);
        Ok(())
    }

    /// One group commit. Returns true when asked to shut down.
    fn commit(&mut self, inputs: &mut Vec<Input>) -> Result<bool, Error> {
        let now = now_millis();
        let mut batch = Batch::default();
        let mut stop = false;
        for input in inputs.drain(..) {
            match input {
                Input::StartRun {
                    workflow,
                    params,
                    event,
                    reply,
                    on_end,
                } => {
                    self.log
                        .put_definition(&workflow.version, &workflow.source)?;
                    let body = RecordBody::RunCreated {
                        workflow: workflow.name.clone(),
                        version: workflow.version.clone(),
                        version_label: workflow.version_label,
                        params,
                        event,
                    };
                    self.engine.register(workflow);
                    let run_id = uuid::Uuid::now_v7();
                    self.append(&mut batch, run_id, now, body)?;
                    batch.replies.push((reply, run_id));
                    if let Some(on_end) = on_end {
                        self.waiters.entry(run_id).or_default().push(on_end);
                    }
                }
                Input::AttemptDone {
                    run_id,
                    task,
                    attempt,
                    outcome,
                } => {
                    self.attempts.remove(&(run_id, task, attempt));
                    let Some(run) = self.engine.run(run_id) else {
                        continue;
                    };
                    let live = run.tasks.get(task).is_some_and(|t| {
                        t.status == super::TaskStatus::Running && t.attempts == attempt
                    });
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
                Input::Wake => {}
                Input::Shutdown => stop = true,
            }
        }
        // Each round settles one layer of consequences (a skip cascades one
        // task per round), so the number of rounds is bounded by DAG depth.
        for round in 0.. {
            let decisions = self.engine.decide(now);
            if decisions.is_empty() {
                break;
            }
            for (run_id, body) in decisions {
                self.append(&mut batch, run_id, now, body)?;
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
        let mut ended = Vec::new();
        for effect in &batch.effects {
            if let Effect::RunEnded { run_id } = effect
                && let Some(run) = self.engine.run(*run_id)
            {
                let record = run.record();
                let summary = serde_json::to_vec(&record).unwrap_or_default();
                self.log.put_run_summary(*run_id, &summary)?;
                ended.push(record);
            }
        }
        if batch.records.is_empty() {
            return Ok(stop);
        }

        self.log.flush()?;

        for (reply, run_id) in batch.replies.drain(..) {
            let _ = reply.send(run_id);
        }
        if self.records.receiver_count() > 0 {
            for record in batch.records.drain(..) {
                let _ = self.records.send(Arc::new(record));
            }
        }
        for record in ended {
            let run_id = record.id;
            if let Some(waiters) = self.waiters.remove(&run_id) {
                for waiter in waiters {
                    let _ = waiter.send(record.clone());
                }
            }
        }
        for effect in std::mem::take(&mut batch.effects) {
            self.perform(effect, now);
        }
        Ok(stop)
    }

    fn perform(&mut self, effect: Effect, now: Millis) {
        match effect {
            Effect::StartAttempt {
                run_id,
                task,
                attempt,
                started_at,
            } => {
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
                };
                self.tokio.spawn(async move {
                    let outcome =
                        executors::execute(prepared.kind, prepared.config, ctx, prepared.timeout)
                            .await;
                    let _ = tx.send(Input::AttemptDone {
                        run_id,
                        task,
                        attempt,
                        outcome,
                    });
                });
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
            Effect::Wake { at } => {
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
            Effect::RunEnded { run_id } => self.engine.evict(run_id),
        }
    }
}
