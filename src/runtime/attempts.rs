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
                if prepared.queue.is_some() {
                    self.start_remote(run_id, task, attempt, started_at, prepared, token);
                    return;
                }
                // Only projects with worker-read secrets pay for the check.
                if self.worker_secrets
                    && let Some(secret) = crate::spec::config::worker_secret_used(&prepared.config)
                {
                    self.attempts.remove(&(run_id, task, attempt));
                    let _ = tx.send(Input::AttemptDone {
                        run_id,
                        task,
                        attempt,
                        outcome: AttemptOutcome::permanent_failure(format!(
                            "secret `{secret}` is read by remote workers only (`{{\"worker\": …}}` \
                             in switchyard.json): give the task a `queue`"
                        )),
                    });
                    return;
                }
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
                    logical_time: Some(prepared.logical_time),
                    checks: self.checks_for(prepared.kind),
                    observed: prepared.observed,
                };
                let tokio = self.tokio.clone();
                let attempt_task = self.tokio.spawn(async move {
                    // What the executor logs names the attempt it is about
                    // (the span is made here, off the engine thread: its
                    // fields are formatted when it is created).
                    let span = tracing::info_span!(
                        "attempt",
                        run_id = %run_id,
                        workflow = %ctx.workflow,
                        task = %ctx.task,
                        attempt
                    );
                    let execution = tokio.spawn(tracing::Instrument::instrument(
                        executors::execute(prepared.kind, prepared.config, ctx, prepared.timeout),
                        span,
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

    /// A task with `queue`: its job goes to the workers through the broker;
    /// the attempt ends when [`crate::remote::Remote::run`] says so.
    fn start_remote(
        &mut self,
        run_id: RunId,
        task: usize,
        attempt: u32,
        started_at: Millis,
        prepared: crate::engine::PreparedAttempt,
        token: CancellationToken,
    ) {
        let tx = self.tx.clone();
        let queue = prepared.queue.clone().unwrap_or_default();
        let job = match self.job(run_id, attempt, started_at, &prepared) {
            Ok(job) => job,
            Err(error) => {
                let _ = tx.send(Input::AttemptDone {
                    run_id,
                    task,
                    attempt,
                    outcome: AttemptOutcome::permanent_failure(error),
                });
                return;
            }
        };
        let Some(remote) = self.remote.clone() else {
            let _ = tx.send(Input::AttemptDone {
                run_id,
                task,
                attempt,
                outcome: AttemptOutcome::permanent_failure(format!(
                    "task `{}` runs on queue `{queue}`, but this switchyard has no broker \
                     for remote workers (`switchyard run` runs no remote tasks; use `serve`)",
                    prepared.task
                )),
            });
            return;
        };
        // Started before this process: the worker may still run it.
        let reattach = started_at < self.opened_at;
        let live = self.start_live(run_id, task, attempt, prepared.kind);
        let tracking = remote.track(
            job.attempt.clone(),
            &queue,
            reattach,
            live,
            self.checks_for(prepared.kind),
            prepared.kind,
        );
        let attempt_task = self.tokio.spawn(async move {
            let ended = remote
                .run(
                    job,
                    &queue,
                    tracking,
                    token.child_token(),
                    prepared.timeout,
                    prepared.start_timeout,
                )
                .await;
            let _ = tx.send(Input::RemoteDone {
                run_id,
                task,
                attempt,
                end: ended.end,
                durable: ended.durable,
            });
        });
        self.running.push(attempt_task);
    }

    /// Where an attempt of `kind` records observations: `check`s only.
    fn checks_for(
        &self,
        kind: executors::KindName,
    ) -> Option<Arc<dyn executors::check::CheckHost>> {
        (kind == <executors::check::Check as executors::Kind>::NAME)
            .then(|| Arc::clone(&self.checks))
    }

    /// The job of a remote attempt: the rendered config (a named database
    /// connection, of a `sql` task or a check's `sql`, replaced by its URL:
    /// workers have no `connections`) and
    /// the secret values it holds, for the worker to redact.
    fn job(
        &self,
        run_id: RunId,
        attempt: u32,
        started_at: Millis,
        prepared: &crate::engine::PreparedAttempt,
    ) -> Result<crate::remote::protocol::Job, String> {
        let mut config = prepared.config.clone();
        // The sql kind's config, or a check's sql condition.
        let sql = match prepared.kind {
            "sql" => Some(&mut config),
            "check" => config.get_mut("sql"),
            _ => None,
        };
        if let Some(map) = sql.and_then(Value::as_object_mut)
            && let Some(Value::String(name)) = map.remove("connection")
        {
            let url = self.databases.url_of(&name)?;
            map.insert("url".into(), Value::String(url));
        }
        let text = config.to_string();
        let redact: Vec<String> = self
            .secrets
            .values()
            .chain(self.databases.passwords())
            .filter(|v| !v.is_empty() && text.contains(v.as_str()))
            .collect();
        let (heartbeat, reply_to) = match &self.remote {
            Some(remote) => (remote.heartbeat(), remote.results_queue().to_string()),
            None => (Duration::ZERO, String::new()),
        };
        Ok(crate::remote::protocol::Job {
            protocol: crate::remote::protocol::PROTOCOL,
            job_id: uuid::Uuid::now_v7().to_string(),
            attempt: crate::remote::protocol::AttemptRef {
                run_id,
                task: prepared.task.to_string(),
                attempt,
            },
            workflow: prepared.workflow.to_string(),
            kind: prepared.kind.to_string(),
            config,
            started_at,
            timeout_ms: prepared.timeout.map(|t| t.as_millis() as u64),
            heartbeat_ms: heartbeat.as_millis() as u64,
            reply_to,
            redact,
        })
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
                self.engine.run(*run_id).is_some_and(|run| {
                    let spec = &run.workflow.tasks[*task];
                    // Remote attempts go on on their workers.
                    spec.queue.is_none() && !executors::resumable(spec.kind)
                })
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
