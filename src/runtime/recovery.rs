//! Recovery at start: every unfinished run folded from the log; attempts
//! that were running are recorded lost (or resumed); runs already ended
//! are finished; runs that cannot be folded are ended visibly.

#[allow(unused_imports)]
use super::*;

impl EngineLoop {
    /// Folds every unfinished run into the engine and commits what recovery
    /// decides, before any new input is taken.
    pub(super) fn recover(&mut self) -> Result<Recovery, Error> {
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
                        let event_seq = run.event_seq;
                        let mut record = run.into_record();
                        let summary = super::group_commit::stored_summary(&mut record, event_seq);
                        batch
                            .commit
                            .finished(run_id, &record.workflow, record.status, summary);
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
                    let (summary, event_seq) = match broken_summary(&self.log, run_id, &record) {
                        Some((summary, event_seq)) => (Some(summary), event_seq),
                        None => (None, None),
                    };
                    let message = match &summary {
                        Some(summary) if self.lifecycle => serde_json::to_vec(
                            &lifecycle::unrecoverable_run_event(&record, summary),
                        )
                        .ok(),
                        _ => None,
                    };
                    batch.commit.record(&record, message)?;
                    if let Some(mut summary) = summary {
                        let bytes = super::group_commit::stored_summary(&mut summary, event_seq);
                        batch
                            .commit
                            .summary(run_id, &summary.workflow, summary.status, bytes);
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
}

/// The stored record of a run recovery had to end without its definition:
/// what its `run_created` says, so `runs show` and the API still find it.
/// None when even its history cannot be read (its end is still recorded).
fn broken_summary(log: &Log, run_id: RunId, ended: &Record) -> Option<(RunRecord, Option<u64>)> {
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
        event_seq,
        parent,
        logical_time,
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
        logical_time: logical_time.map(crate::engine::rfc3339),
        params: params.clone(),
        vars: params.clone(),
        event: event.clone().unwrap_or(Value::Null),
        started_at: None,
        ended_at: Some(crate::engine::rfc3339(ended.at)),
        error: error.clone(),
        parent: parent.as_deref().cloned(),
        tasks: Map::new(),
    };
    Some((record, *event_seq))
}
