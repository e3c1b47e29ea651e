//! Changes to a data dir no daemon holds, through the same commit path as
//! the daemon (lifecycle events, run chaining).

#[allow(unused_imports)]
use super::*;

impl EngineLoop {
    /// See [`Runtime::cancel_offline`].
    pub(super) fn cancel_offline(
        &mut self,
        run_id: RunId,
        reason: &str,
    ) -> Result<RunRecord, Error> {
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
}
