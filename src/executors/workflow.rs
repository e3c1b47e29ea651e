//! `workflow`: a sub-workflow. An attempt starts a child run of another
//! workflow (or a pinned version of it) with `params` and, by default,
//! waits for it to end; its output is the child's `{run_id, status, vars}`.
//!
//! The child's id is a function of (parent run, task, attempt and the
//! attempt's recorded start), so an attempt resumed after a crash finds the
//! child it started instead of starting a second one: the kind is
//! resumable, and holds no parallelism slot while it waits (a parent
//! holding the only slot would starve its own child). The runtime starts
//! the child ([`Children`]); nesting deeper than [`MAX_DEPTH`] fails, so a
//! cycle of workflows calling each other ends there instead of forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{AttemptContext, AttemptOutcome, Kind};
use crate::log::{Millis, RunId, RunStatus};

/// Deepest nesting of sub-workflows: a run started by a `workflow` task
/// of a run at this depth fails instead.
pub const MAX_DEPTH: u32 = 16;

fn yes() -> bool {
    true
}

/// `"workflow": {"name": "publish_promotion", "params": {"day": "${vars.day}"}}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubWorkflow {
    /// The workflow to run.
    pub name: String,
    /// The child run's params (templates over the parent's scope).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Wait for the child to end (default true); false: succeed as soon as
    /// the child run is created.
    #[serde(default = "yes")]
    pub wait: bool,
    /// A content hash (a run's `version`) to run instead of the current
    /// definition.
    #[serde(default)]
    pub version: Option<String>,
}

/// What a `workflow` attempt asks the runtime for.
#[derive(Debug, Clone)]
pub struct ChildRequest {
    pub id: RunId,
    pub workflow: String,
    pub version: Option<String>,
    pub params: Map<String, Value>,
    pub parent: RunId,
    pub task: Arc<str>,
    pub attempt: u32,
}

/// How a child run ended.
#[derive(Debug, Clone)]
pub struct ChildEnded {
    pub status: RunStatus,
    pub vars: Map<String, Value>,
    pub error: Option<String>,
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The runtime's side of sub-workflows.
pub trait Children: Send + Sync + std::fmt::Debug {
    /// Creates the child run (durably) unless a run with its id exists;
    /// answers the status of the run that existed, None for a new one.
    fn start(&self, request: ChildRequest) -> BoxFuture<Result<Option<RunStatus>, String>>;
    /// Waits for a run to end (answers at once for an ended one).
    fn wait(&self, run_id: RunId) -> BoxFuture<Result<ChildEnded, String>>;
    /// Cancels a run that is still going.
    fn cancel(&self, run_id: RunId, reason: String) -> BoxFuture<Result<(), String>>;
}

/// The id of the child run a `workflow` task's attempt starts: a UUIDv7
/// whose time is the attempt's recorded start and whose random part is a
/// hash of (parent run, task, attempt), so the same attempt always names
/// the same child and ids still sort by time.
pub fn child_run_id(parent: RunId, task: &str, attempt: u32, started_at: Millis) -> RunId {
    let mut hash = Sha256::new();
    hash.update(parent.as_bytes());
    hash.update(task.as_bytes());
    hash.update([0]);
    hash.update(attempt.to_be_bytes());
    let digest = hash.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(started_at).unwrap_or(0), &random)
        .into_uuid()
}

impl Kind for SubWorkflow {
    const NAME: &'static str = "workflow";
    const HOLDS_SLOT: bool = false;
    const RESUMABLE: bool = true;

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        if self.name.is_empty() {
            errors.push((".name".into(), "name the workflow to run".into()));
        }
        // A child run's params are recorded (and shown, and published with
        // lifecycle events): a secret there would leave the vault.
        for (key, value) in &self.params {
            if mentions_secrets(value) {
                errors.push((
                    format!(".params.{key}"),
                    "secrets are not passed to a child run (its params are recorded):                      the child workflow can use `${secrets.…}` itself"
                        .into(),
                ));
            }
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let Some(children) = ctx.children.clone() else {
            return AttemptOutcome::permanent_failure(
                "sub-workflows cannot run here (no runtime to start them)",
            );
        };
        let id = child_run_id(ctx.run_id, &ctx.task, ctx.attempt, ctx.started_at);
        let request = ChildRequest {
            id,
            workflow: self.name.clone(),
            version: self.version.clone(),
            params: self.params,
            parent: ctx.run_id,
            task: Arc::clone(&ctx.task),
            attempt: ctx.attempt,
        };
        let status = tokio::select! {
            started = children.start(request) => match started {
                Ok(status) => status.unwrap_or(RunStatus::Queued),
                Err(e) => return AttemptOutcome::permanent_failure(e),
            },
            _ = ctx.cancel.cancelled() => {
                // The child may have been created in the same commit as
                // the cancel: it goes too (unknown to the engine is fine).
                let _ = children.cancel(id, "its parent was cancelled".into()).await;
                return AttemptOutcome::failure("cancelled");
            }
        };
        if !self.wait {
            return AttemptOutcome::success(json!({
                "run_id": id.to_string(),
                "status": status,
                "vars": {},
            }));
        }
        let ended = tokio::select! {
            ended = children.wait(id) => ended,
            _ = ctx.cancel.cancelled() => {
                // The parent's attempt was cancelled (run cancel, timeout,
                // fail_fast): the child goes with it.
                if let Err(e) = children.cancel(id, "its parent was cancelled".into()).await {
                    tracing::debug!(run_id = %id, error = %e, "Child run not cancelled.");
                }
                return AttemptOutcome::failure("cancelled");
            }
        };
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => return AttemptOutcome::failure(e),
        };
        let output = json!({
            "run_id": id.to_string(),
            "status": ended.status,
            "vars": ended.vars,
        });
        if ended.status == RunStatus::Succeeded {
            return AttemptOutcome::success(output);
        }
        AttemptOutcome {
            output,
            // Another attempt would start another child: retry only if the
            // task asks for it, like any failure.
            ..AttemptOutcome::failure(format!(
                "child run {id} of `{}` {}{}",
                self.name,
                ended.status,
                ended.error.map(|e| format!(": {e}")).unwrap_or_default()
            ))
        }
    }
}

fn mentions_secrets(value: &Value) -> bool {
    match value {
        Value::String(text) => text.split("${").skip(1).any(|expr| {
            expr.split('}')
                .next()
                .is_some_and(|e| e.contains("secrets"))
        }),
        Value::Array(items) => items.iter().any(mentions_secrets),
        Value::Object(map) => map.values().any(mentions_secrets),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_attempt_names_the_same_child_and_ids_sort_by_start() {
        let parent = uuid::Uuid::now_v7();
        let a = child_run_id(parent, "call", 1, 1_700_000_000_000);
        assert_eq!(a, child_run_id(parent, "call", 1, 1_700_000_000_000));
        assert_ne!(a, child_run_id(parent, "call", 2, 1_700_000_000_000));
        assert_ne!(a, child_run_id(parent, "other", 1, 1_700_000_000_000));
        assert_eq!(a.get_version_num(), 7);
        assert!(a < child_run_id(parent, "call", 1, 1_700_000_000_001));
    }
}
