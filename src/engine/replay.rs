//! Folding runs back from the log: recovery at start-up, `runs show` of a
//! run without a daemon, and reruns all rebuild state the same way.

use std::path::Path;
use std::sync::Arc;

use super::{Engine, Limits, RunState};
use crate::log::{Log, RecordBody, RunId};
use crate::spec::Workflow;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Log(#[from] crate::log::Error),
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("run {run_id}: its log does not start with `run_created`")]
    NoStart { run_id: RunId },
    #[error("run {run_id}: definition {version} is missing from the log")]
    MissingDefinition { run_id: RunId, version: String },
    #[error("run {run_id}: definition {version} no longer compiles: {message}")]
    BadDefinition {
        run_id: RunId,
        version: String,
        message: String,
    },
}

/// Loads the definition a run started with, from the log (not from files).
pub fn load_definition(log: &Log, run_id: RunId, version: &str) -> Result<Arc<Workflow>, Error> {
    let source = log
        .definition(version)?
        .ok_or_else(|| Error::MissingDefinition {
            run_id,
            version: version.to_string(),
        })?;
    let name = format!("<definition {version}>");
    Workflow::parse_stored(Path::new(&name), &source)
        .map(Arc::new)
        .map_err(|d| Error::BadDefinition {
            run_id,
            version: version.to_string(),
            message: d.to_string(),
        })
}

/// Folds one run's records into `engine`, registering its definition.
/// Effects are dropped: this rebuilds state, it does not act.
pub fn replay_into(engine: &mut Engine, log: &Log, run_id: RunId) -> Result<usize, Error> {
    let history = log.run_history(run_id)?;
    let Some(first) = history.first() else {
        return Err(Error::NotFound(run_id));
    };
    let RecordBody::RunCreated { version, .. } = &first.body else {
        return Err(Error::NoStart { run_id });
    };
    if engine.definition(version).is_none() {
        let definition = load_definition(log, run_id, version)?;
        engine.register(definition);
    }
    for record in &history {
        engine.apply(record);
    }
    Ok(history.len())
}

/// The state of one run, folded from its records alone.
pub fn fold(log: &Log, run_id: RunId) -> Result<RunState, Error> {
    let mut engine = Engine::new(Limits::default());
    replay_into(&mut engine, log, run_id)?;
    engine.run(run_id).cloned().ok_or(Error::NotFound(run_id))
}
