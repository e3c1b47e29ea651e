//! The loop and its group commit: take every input waiting, append the
//! records they cause, let the engine decide what follows, write and flush
//! once, then answer callers, publish records and perform effects.

#[allow(unused_imports)]
use super::*;

impl EngineLoop {
    /// Opens the log and builds the loop (not yet running): kills what a
    /// previous process left running, starts the process spawner.
    #[allow(clippy::type_complexity)]
    pub(super) fn open(
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
        let shutdown = CancellationToken::new();
        let live = Arc::new(LiveOutputs::default());
        let handle = RuntimeHandle {
            tx: tx.clone(),
            records: records.clone(),
            log: log.clone(),
            fatal: Arc::clone(&fatal),
            gauges: Arc::clone(&gauges),
            live: Arc::clone(&live),
        };
        let mut engine = Engine::new(config.limits);
        engine.set_secrets(Arc::clone(&config.secrets));
        let worker_secrets = config.secrets.has_worker_secrets();
        let engine_loop = EngineLoop {
            lifecycle: config
                .broker
                .as_ref()
                .is_some_and(|b| b.events_exchange().is_some()),
            broker: config.broker,
            chain: config.chain,
            secrets: config.secrets,
            databases: config.databases,
            workflows: config.workflows,
            remote: config.remote,
            worker_secrets,
            opened_at: now_millis(),
            children: Arc::new(super::children::RuntimeChildren {
                handle: handle.clone(),
                shutdown: shutdown.clone(),
            }),
            checks: Arc::new(super::checks::RuntimeChecks {
                handle: handle.clone(),
            }),
            held_child_starts: Vec::new(),
            project_vars: config.project_vars,
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
            live,
            live_attempts: HashMap::new(),
            waiters: HashMap::new(),
            shutdown,
            draining: None,
            armed: None,
            running: Vec::new(),
            undurable: None,
        };
        Ok((engine_loop, handle, fatal, leftovers))
    }

    pub(super) fn run(&mut self) -> Result<(), Error> {
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

    /// Numbers a record, applies it, and adds it to the batch's commit.
    pub(super) fn append(
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
                .and_then(|run| lifecycle::lifecycle_event(&record, run))
                .and_then(|m| serde_json::to_vec(&m).ok())
        } else {
            None
        };
        batch.commit.record(&record, message)?;
        batch.records.push(record);
        Ok(())
    }

    /// Appends the engine's decisions until none remain.
    pub(super) fn settle(&mut self, batch: &mut Batch, now: Millis) -> Result<(), Error> {
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

    /// One group commit: each input is handled by its own method, then the
    /// engine's decisions are appended until they settle, and the batch is
    /// written, flushed and acted on.
    pub(super) fn commit(&mut self, inputs: &mut Vec<Input>) -> Result<(), Error> {
        let now = now_millis();
        let mut batch = Batch::default();
        for input in inputs.drain(..) {
            match input {
                Input::StartRun { run, reply, on_end } => {
                    self.on_start_run(&mut batch, run, reply, on_end, now)?
                }
                Input::Accept { submission, reply } => {
                    self.on_accept(&mut batch, submission, reply, now)?
                }
                Input::AttemptDone {
                    run_id,
                    task,
                    attempt,
                    outcome,
                } => self.on_attempt_done(&mut batch, (run_id, task, attempt), outcome, now)?,
                Input::RemoteDone {
                    run_id,
                    task,
                    attempt,
                    end,
                    durable,
                } => {
                    batch.durable.extend(durable);
                    match end {
                        crate::remote::RemoteEnd::Finished(outcome) => {
                            self.on_attempt_done(&mut batch, (run_id, task, attempt), outcome, now)?
                        }
                        crate::remote::RemoteEnd::Lost(reason) => {
                            self.on_attempt_lost(&mut batch, (run_id, task, attempt), reason, now)?
                        }
                    }
                }
                Input::Cancel {
                    run_id,
                    reason,
                    reply,
                } => self.on_cancel(&mut batch, run_id, reason, reply, now)?,
                Input::Snapshot { run_id, reply } => batch.snapshots.push((run_id, reply)),
                Input::StartChild { request, reply } => {
                    self.on_start_child(&mut batch, request, reply, now)?
                }
                Input::WaitRun { run_id, reply } => self.on_wait_run(run_id, reply)?,
                Input::Active { filter, reply } => batch.actives.push((filter, reply)),
                Input::Observed {
                    run_id,
                    task,
                    attempt,
                    observation,
                } => self.on_observed(&mut batch, (run_id, &task, attempt), observation, now)?,
                Input::Wake => self.armed = None,
                Input::Shutdown { grace } => self.on_shutdown(grace, now),
            }
        }
        self.settle(&mut batch, now)?;
        self.chain_ended(&mut batch, now)?;
        self.finish(batch, now)
    }

    /// A run asked for by hand (API, CLI): its `RunCreated`.
    fn on_start_run(
        &mut self,
        batch: &mut Batch,
        run: NewRun,
        reply: oneshot::Sender<Result<RunId, String>>,
        on_end: Option<oneshot::Sender<RunRecord>>,
        now: Millis,
    ) -> Result<(), Error> {
        if self.draining.is_some() {
            let _ = reply.send(Err("switchyard is shutting down".into()));
            return Ok(());
        }
        let workflow = Arc::clone(&run.workflow);
        let run_id = run.id.unwrap_or_else(uuid::Uuid::now_v7);
        let body = self.run_created(run, now)?;
        self.engine.register(workflow);
        self.append(batch, run_id, now, body)?;
        batch.created.push((reply, run_id));
        if let Some(on_end) = on_end {
            self.waiters.entry(run_id).or_default().push(on_end);
        }
        Ok(())
    }

    /// An event from a trigger, with what each binding would do.
    fn on_accept(
        &mut self,
        batch: &mut Batch,
        submission: Submission,
        reply: oneshot::Sender<Result<Accepted, String>>,
        now: Millis,
    ) -> Result<(), Error> {
        if self.draining.is_some() {
            let _ = reply.send(Err("switchyard is shutting down".into()));
            return Ok(());
        }
        let accepted = self.accept(batch, submission, now)?;
        batch.accepted.push((reply, accepted));
        Ok(())
    }

    /// An attempt's result, redacted, as `AttemptFinished` (unless the
    /// attempt was cancelled meanwhile: its end is already recorded).
    fn on_attempt_done(
        &mut self,
        batch: &mut Batch,
        (run_id, task, attempt): (RunId, usize, u32),
        mut outcome: AttemptOutcome,
        now: Millis,
    ) -> Result<(), Error> {
        self.redact(&mut outcome);
        self.attempts.remove(&(run_id, task, attempt));
        // Followers of its live output move on to the stored logs (written
        // just below) once this is gone.
        let output = self.live_attempts.remove(&(run_id, task, attempt));
        let ended = |live: &Self| {
            if let Some(output) = &output {
                live.live.end(output);
            }
        };
        let Some(run) = self.engine.run(run_id) else {
            ended(self);
            return Ok(());
        };
        let running = run
            .tasks
            .get(task)
            .is_some_and(|t| t.status == TaskStatus::Running && t.attempts == attempt);
        if !running {
            ended(self);
            return Ok(());
        }
        let task_id = run.workflow.tasks[task].id.clone();
        if let Some(logs) = &outcome.logs {
            let stored = self.log.put_task_logs(run_id, &task_id, logs);
            ended(self);
            stored?;
        } else {
            ended(self);
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
        self.append(batch, run_id, now, body)
    }

    /// A remote attempt lost (heartbeats stopped, handed back): recorded
    /// like an attempt lost in a crash, so it is retried if it may be.
    fn on_attempt_lost(
        &mut self,
        batch: &mut Batch,
        (run_id, task, attempt): (RunId, usize, u32),
        reason: String,
        now: Millis,
    ) -> Result<(), Error> {
        self.attempts.remove(&(run_id, task, attempt));
        if let Some(output) = self.live_attempts.remove(&(run_id, task, attempt)) {
            self.live.end(&output);
        }
        let Some(run) = self.engine.run(run_id) else {
            return Ok(());
        };
        let live = run
            .tasks
            .get(task)
            .is_some_and(|t| t.status == TaskStatus::Running && t.attempts == attempt);
        if !live {
            return Ok(());
        }
        tracing::warn!(run = %run_id, task = %run.workflow.tasks[task].id, attempt, reason,
            "Remote attempt lost.");
        let body = RecordBody::AttemptLost {
            task: run.workflow.tasks[task].id.clone(),
            attempt,
            reason,
            shutdown: false,
        };
        self.append(batch, run_id, now, body)
    }

    /// A cancel request: recorded for a live run, refused for an ended or
    /// unknown one.
    fn on_cancel(
        &mut self,
        batch: &mut Batch,
        run_id: RunId,
        reason: String,
        reply: oneshot::Sender<Result<(), Error>>,
        now: Millis,
    ) -> Result<(), Error> {
        match self.engine.run(run_id) {
            Some(run) if !run.status.is_terminal() => {
                self.append(
                    batch,
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
        }
        Ok(())
    }

    /// Shutdown: start nothing more; running attempts get `grace`.
    fn on_shutdown(&mut self, grace: Duration, now: Millis) {
        if self.draining.is_none() {
            self.draining = Some(Instant::now() + grace);
            self.engine.pause();
            if !grace.is_zero() {
                self.wake_at(now + grace.as_millis() as Millis);
            }
        }
    }

    /// Flushes what the batch appended, then answers, publishes and acts.
    pub(super) fn finish(&mut self, mut batch: Batch, now: Millis) -> Result<(), Error> {
        // Ended runs leave the engine here (chaining has seen them); their
        // state moves into the stored summary.
        let mut ended = Vec::new();
        for effect in &batch.effects {
            if let Effect::RunEnded { run_id } = effect
                && let Some(run) = self.engine.evict(*run_id)
            {
                let event_seq = run.event_seq;
                let mut record = run.into_record();
                let summary = stored_summary(&mut record, event_seq);
                batch
                    .commit
                    .summary(*run_id, &record.workflow, record.status, summary);
                ended.push(record);
            }
        }
        let commit = std::mem::take(&mut batch.commit);
        if !commit.is_empty() || self.undurable.is_some() {
            if !commit.is_empty() {
                self.log.write(commit)?;
            }
            if let Err(e) = self.log.flush() {
                self.flush_failed(batch, ended, &e, now);
                return Ok(());
            }
            self.flush_recovered(&mut batch, &mut ended);
        }

        for (reply, run_id) in batch.created.drain(..) {
            let _ = reply.send(Ok(run_id));
        }
        for reply in batch.children.drain(..) {
            let _ = reply.send(Ok(None));
        }
        for durable in batch.durable.drain(..) {
            let _ = durable.send(());
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
        for (filter, reply) in batch.actives.drain(..) {
            let _ = reply.send(self.active_records(&filter));
        }
        Ok(())
    }

    /// A flush failed: what the batch wrote is in sled but not known to be
    /// on disk. Nobody is told it succeeded (callers get an error, so
    /// webhooks answer 503, AMQP messages are requeued, the file ledger and
    /// cron marks are retried by their adapters and meet their dedup
    /// entries), no effect is performed, and the flush is retried with a
    /// backoff. The engine goes on: when a flush succeeds again, the held
    /// records are published and their effects performed.
    fn flush_failed(
        &mut self,
        mut batch: Batch,
        ended: Vec<RunRecord>,
        e: &log::Error,
        now: Millis,
    ) {
        let reason = format!("the log cannot be flushed: {e}");
        let undurable = self.undurable.get_or_insert_with(Undurable::default);
        undurable.failures += 1;
        if undurable.failures == 1 {
            tracing::error!(error = %e, "Log flush failed; nothing is acknowledged until it works again.");
        }
        if let Ok(mut slot) = self.gauges.log_error.lock() {
            *slot = Some(reason.clone());
        }
        let refusal = format!("{reason}; nothing was acknowledged, try again");
        for (reply, run_id) in batch.created.drain(..) {
            // A run asked for by hand has no dedup key to make a retry
            // safe: say exactly where it stands.
            let _ = reply.send(Err(format!(
                "{reason}: run {run_id} is recorded but not yet durable; it starts when the \
                 log recovers (or is lost if the process dies first): check GET /runs/{run_id} \
                 before starting it again"
            )));
        }
        for (reply, _) in batch.accepted.drain(..) {
            let _ = reply.send(Err(refusal.clone()));
        }
        // A child run is in the engine already and starts once the log
        // recovers: its parent's attempt waits for that instead of failing
        // (which would start a second child on a retry).
        undurable.children.append(&mut batch.children);
        undurable.durable.append(&mut batch.durable);
        for reply in batch.cancelled.drain(..) {
            let _ = reply.send(Err(Error::Unavailable(refusal.clone())));
        }
        undurable.records.append(&mut batch.records);
        undurable.effects.append(&mut batch.effects);
        undurable.ended.extend(ended);
        let delay = 50u64
            .saturating_mul(1 << undurable.failures.min(5))
            .min(1_000);
        self.wake_at(now + delay as Millis);
        for (run_id, reply) in batch.snapshots.drain(..) {
            let _ = reply.send(self.engine.run(run_id).map(|run| run.record()));
        }
        for (filter, reply) in batch.actives.drain(..) {
            let _ = reply.send(self.active_records(&filter));
        }
    }

    /// A flush succeeded after failures: what was held is durable now; it
    /// goes out first, in order, with this batch.
    fn flush_recovered(&mut self, batch: &mut Batch, ended: &mut Vec<RunRecord>) {
        let Some(mut held) = self.undurable.take() else {
            return;
        };
        tracing::warn!(
            failures = held.failures,
            "Log flushes work again; resuming."
        );
        if let Ok(mut slot) = self.gauges.log_error.lock() {
            *slot = None;
        }
        held.records.append(&mut batch.records);
        batch.records = held.records;
        held.effects.append(&mut batch.effects);
        batch.effects = held.effects;
        held.ended.append(ended);
        *ended = held.ended;
        held.children.append(&mut batch.children);
        batch.children = held.children;
        held.durable.append(&mut batch.durable);
        batch.durable = held.durable;
    }

    /// The records of the active runs a listing wants: matched by
    /// reference, newest first, and only the page is copied.
    fn active_records(&self, filter: &RunFilter) -> Vec<RunRecord> {
        let mut ids: Vec<RunId> = self
            .engine
            .runs()
            .filter(|run| filter.matches(run))
            .map(|run| run.id)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.truncate(filter.limit);
        ids.iter()
            .filter_map(|id| self.engine.run(*id).map(|run| run.record()))
            .collect()
    }

    pub(super) fn wake_at(&self, at: Millis) {
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
}

/// The summary as the log stores it: a run started by a stored event
/// refers to it instead of carrying a copy (the record keeps its event).
pub(super) fn stored_summary(record: &mut RunRecord, event_seq: Option<u64>) -> Vec<u8> {
    if event_seq.is_none() {
        return serde_json::to_vec(record).unwrap_or_default();
    }
    let event = std::mem::take(&mut record.event);
    let summary = serde_json::to_vec(record).unwrap_or_default();
    record.event = event;
    log::summary_with_event_ref(summary, event_seq)
}
