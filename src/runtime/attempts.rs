//! Attempts: starting them on tokio after their record is durable, killing
//! them, redacting what they report, and the shutdown drain.

#[allow(unused_imports)]
use super::*;

impl EngineLoop {
    pub(super) fn perform(&mut self, effect: Effect, now: Millis) {
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
                    databases: self.databases.clone(),
                    children: Some(Arc::clone(&self.children)),
                    live: self.start_live(run_id, task, attempt, prepared.kind),
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

    /// Secret values never reach the log, the API or subscribers.
    pub(super) fn redact(&self, outcome: &mut AttemptOutcome) {
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

    /// During shutdown: true once nothing non-resumable runs, or the grace
    /// period is over (then the rest are recorded interrupted).
    pub(super) fn drained(&mut self, deadline: Instant) -> Result<bool, Error> {
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
}
