//! Accepting submissions: an event, the runs it starts and its dedup
//! entries in one commit (the dedup check sees this commit's own entries);
//! run chaining in the commit that ends a run.

#[allow(unused_imports)]
use super::*;

impl EngineLoop {
    /// Stores the run's definition (once per version) and returns its
    /// `RunCreated` body.
    pub(super) fn run_created(&self, run: NewRun, now: Millis) -> Result<RecordBody, Error> {
        let workflow = &run.workflow;
        self.log.put_definition(
            &workflow.name,
            &workflow.version,
            workflow.version_label,
            &workflow.source,
            now,
        )?;
        let logical_time = run
            .logical_time
            .or_else(|| run.event.as_ref().and_then(logical_time_of));
        Ok(RecordBody::RunCreated {
            workflow: workflow.name.clone(),
            version: workflow.version.clone(),
            version_label: workflow.version_label,
            params: run.params,
            project_vars: run
                .project_vars
                .unwrap_or_else(|| self.project_vars.clone()),
            event: run.event,
            event_seq: run.event_seq,
            rerun_of: run.rerun_of,
            reused: run.reused,
            parent: run.parent.map(Box::new),
            logical_time,
        })
    }

    /// Records one event: checks each candidate's dedup key (this commit's
    /// new entries included), creates the runs, and adds event, runs, dedup
    /// entries and marks to the commit's transaction.
    pub(super) fn accept(
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
                event_seq: Some(seq),
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
            referenced: !runs.is_empty(),
            outcomes,
        };
        batch.commit.event(&event, dedup, submission.marks)?;
        if self.lifecycle
            && let Some(message) = &submission.publish
        {
            let bytes = serde_json::to_vec(message).map_err(|source| log::Error::Corrupt {
                key: format!("outbox {seq}"),
                source,
            })?;
            batch.commit.publish_event(seq, bytes);
        }
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
    pub(super) fn chain_ended(&mut self, batch: &mut Batch, now: Millis) -> Result<(), Error> {
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
}

/// The instant an event stands for: a cron tick's scheduled time, else the
/// event's own `time` (CloudEvents), when it parses as RFC 3339.
pub(crate) fn logical_time_of(event: &Value) -> Option<Millis> {
    let scheduled = event
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| *t == "switchyard.cron.tick")
        .and_then(|_| event.pointer("/data/scheduled_time"))
        .and_then(Value::as_str);
    let text = scheduled.or_else(|| event.get("time").and_then(Value::as_str))?;
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}
