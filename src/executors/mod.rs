//! Task kinds: one file per kind, registered in the `kinds!` list below.
//!
//! A kind is a serde config struct implementing [`Kind`]: its name, load-time
//! checks, and `execute`. Adding a kind is adding its file and one line to the
//! list. Config strings are templates; the engine renders them and this module
//! deserializes the rendered JSON into the kind's config just before running.

mod amqp;
pub mod check;
mod http;
pub mod live;
mod noop;
pub mod process;
mod shell;
mod sleep;
pub mod sql;
mod trampoline;
pub mod workflow;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::log::{Millis, RunId, TaskLogs};

/// The name of a task kind, as used for its key in workflow files.
pub type KindName = &'static str;

/// Everything an attempt knows about where it runs.
#[derive(Debug, Clone)]
pub struct AttemptContext {
    pub run_id: RunId,
    pub workflow: Arc<str>,
    pub task: Arc<str>,
    pub attempt: u32,
    /// When the attempt was recorded as started (durable timers count from here).
    pub started_at: Millis,
    /// Cancelled on run cancel, fail_fast, timeout or shutdown.
    pub cancel: CancellationToken,
    /// Scratch directory for per-attempt files (`$SWITCHYARD_OUTPUT`).
    pub scratch_dir: PathBuf,
    /// The broker `amqp` tasks publish to.
    pub broker: Option<crate::amqp::Broker>,
    /// Where attempt processes are spawned and recorded.
    pub processes: process::Processes,
    /// Redacted from captured output before it is cut to size, so a cut
    /// never leaves part of a secret visible.
    pub secrets: Arc<crate::spec::Secrets>,
    /// The databases `sql` tasks reach (named connections, shared pools).
    pub databases: sql::Databases,
    /// Where `workflow` tasks start and wait for child runs.
    pub children: Option<Arc<dyn workflow::Children>>,
    /// Where a kind that captures output shows it while it runs (set for
    /// kinds with [`Kind::CAPTURES_OUTPUT`]).
    pub live: Option<Arc<live::LiveAttempt>>,
    /// The run's logical time (`run.logical_time`); None on a remote worker.
    pub logical_time: Option<Millis>,
    /// Where `check` attempts record what they observe and look runs up
    /// (on a remote worker: observations only).
    pub checks: Option<Arc<dyn check::CheckHost>>,
    /// A resumed `check` attempt's last recorded observation.
    pub observed: Option<Value>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub succeeded: bool,
    pub output: Value,
    /// The last 64 KiB of stdout.
    pub stdout: String,
    pub error: Option<String>,
    /// False when another attempt cannot help (bad config, missing program).
    pub retryable: bool,
    /// Captured output to keep as task logs.
    pub logs: Option<TaskLogs>,
}

impl AttemptOutcome {
    pub fn success(output: Value) -> Self {
        Self {
            succeeded: true,
            output,
            stdout: String::new(),
            error: None,
            retryable: true,
            logs: None,
        }
    }

    pub fn failure(error: impl Into<String>) -> Self {
        Self {
            succeeded: false,
            output: Value::Null,
            stdout: String::new(),
            error: Some(error.into()),
            retryable: true,
            logs: None,
        }
    }

    pub fn permanent_failure(error: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::failure(error)
        }
    }
}

/// One task kind.
pub trait Kind: DeserializeOwned + JsonSchema + Send + 'static {
    /// The key naming this kind in a task.
    const NAME: KindName;
    /// Whether an attempt takes one of the `max_parallel_tasks` slots. Kinds
    /// that only wait (`sleep`) or do nothing (`noop`) do not.
    const HOLDS_SLOT: bool = true;
    /// Whether an attempt interrupted by a restart can simply be started
    /// again from its recorded start (durable timers), rather than lost.
    const RESUMABLE: bool = false;
    /// Whether an attempt captures stdout/stderr (task logs), so followers
    /// can read its output while it runs.
    const CAPTURES_OUTPUT: bool = false;

    /// Load-time checks beyond the serde shape, on the config as written.
    /// Errors are `(path relative to the config, e.g. ".script", message)`.
    fn check(&self, _raw: &Value, _errors: &mut Vec<(String, String)>) {}

    /// Runs one attempt. Must return promptly once `ctx.cancel` fires,
    /// having stopped everything it started.
    fn execute(self, ctx: AttemptContext) -> impl Future<Output = AttemptOutcome> + Send;
}

macro_rules! kinds {
    ($($module:ident :: $kind:ident),* $(,)?) => {
        /// Every task kind, by name.
        pub const KIND_NAMES: &[KindName] = &[$(<$module::$kind as Kind>::NAME),*];

        /// Whether an attempt of this kind takes a parallelism slot.
        pub fn holds_slot(kind: KindName) -> bool {
            $(if kind == <$module::$kind as Kind>::NAME {
                return <$module::$kind as Kind>::HOLDS_SLOT;
            })*
            true
        }

        /// Whether an interrupted attempt of this kind resumes rather than is lost.
        pub fn resumable(kind: KindName) -> bool {
            $(if kind == <$module::$kind as Kind>::NAME {
                return <$module::$kind as Kind>::RESUMABLE;
            })*
            false
        }

        /// Whether an attempt of this kind captures output (task logs).
        pub fn captures_output(kind: KindName) -> bool {
            $(if kind == <$module::$kind as Kind>::NAME {
                return <$module::$kind as Kind>::CAPTURES_OUTPUT;
            })*
            false
        }

        /// Load-time validation of one task's kind config.
        pub fn validate_config(kind: KindName, raw: &Value, errors: &mut Vec<(String, String)>) {
            $(if kind == <$module::$kind as Kind>::NAME {
                return check::<$module::$kind>(raw, errors);
            })*
        }

        /// JSON Schemas of every kind's config, for the workflow schema.
        pub fn kind_schemas(generator: &mut SchemaGenerator) -> Vec<(KindName, Schema)> {
            vec![$((<$module::$kind as Kind>::NAME, generator.subschema_for::<$module::$kind>())),*]
        }

        async fn dispatch(kind: KindName, config: Value, ctx: AttemptContext) -> AttemptOutcome {
            $(if kind == <$module::$kind as Kind>::NAME {
                return run::<$module::$kind>(config, ctx).await;
            })*
            AttemptOutcome::permanent_failure(format!("unknown task kind `{kind}`"))
        }
    };
}

kinds! {
    check::Check,
    shell::Shell,
    http::Http,
    sql::Sql,
    workflow::SubWorkflow,
    amqp::Amqp,
    noop::Noop,
    sleep::Sleep,
}

/// Looks a kind key up.
pub fn kind_name(key: &str) -> Option<KindName> {
    KIND_NAMES.iter().copied().find(|k| *k == key)
}

fn check<K: Kind>(raw: &Value, errors: &mut Vec<(String, String)>) {
    if !raw.is_object() {
        errors.push((
            String::new(),
            format!("`{}` takes an object, got {}", K::NAME, json_type(raw)),
        ));
        return;
    }
    match crate::spec::deserialize_all::<K>(raw) {
        Ok(config) => config.check(raw, errors),
        Err(found) => errors.extend(found.into_iter().map(|(path, message)| {
            let path = if path.is_empty() || path.starts_with('[') {
                path
            } else {
                format!(".{path}")
            };
            (path, message)
        })),
    }
}

async fn run<K: Kind>(config: Value, ctx: AttemptContext) -> AttemptOutcome {
    match serde_path_to_error::deserialize::<_, K>(config) {
        Ok(config) => config.execute(ctx).await,
        Err(e) => AttemptOutcome::permanent_failure(format!(
            "invalid {} config after rendering templates at `{}`: {}",
            K::NAME,
            e.path(),
            crate::spec::in_user_words(&e.inner().to_string())
        )),
    }
}

/// Runs one attempt of `kind` with its rendered config, enforcing `timeout`
/// (which cancels the attempt, killing what it started).
pub async fn execute(
    kind: KindName,
    config: Value,
    ctx: AttemptContext,
    timeout: Option<Duration>,
) -> AttemptOutcome {
    let cancel = ctx.cancel.clone();
    // A resumable kind's time counts from its recorded start: a restart
    // resumes its wait with the time already spent.
    let spent = if resumable(kind) {
        let elapsed = crate::time::now_millis().saturating_sub(ctx.started_at);
        Duration::from_millis(u64::try_from(elapsed).unwrap_or(0))
    } else {
        Duration::ZERO
    };
    let attempt = dispatch(kind, config, ctx);
    tokio::pin!(attempt);
    let Some(timeout) = timeout else {
        return attempt.await;
    };
    tokio::select! {
        outcome = &mut attempt => outcome,
        _ = tokio::time::sleep(timeout.saturating_sub(spent)) => {
            cancel.cancel();
            let mut outcome = attempt.await;
            // Work that completed as it was being stopped (a statement that
            // committed) stands: failing it would run it a second time.
            if outcome.succeeded {
                return outcome;
            }
            outcome.retryable = true;
            let timed_out = format!("timed out after {}", humantime::format_duration(timeout));
            // A check says what it was still waiting for.
            outcome.error = Some(match outcome.error {
                Some(waiting) if kind == <check::Check as Kind>::NAME => {
                    format!("{timed_out} ({waiting})")
                }
                _ => timed_out,
            });
            outcome
        }
    }
}

/// Text of a scalar, so a whole-value template like `"${vars.port}"` can fill
/// a string field (argv element, env value) with a number or a bool.
pub(crate) fn scalar_text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, got {}", json_type(&other))),
    }
}

/// The URL with its password shown as `***` (any scheme: http tasks,
/// database URLs).
pub(crate) fn redact_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        // Unparsable: cut a `user:password@` by hand.
        Err(_) => {
            let Some(start) = url.find("://").map(|i| i + 3) else {
                return url.to_string();
            };
            let authority = &url[start..];
            let end = authority.find(['/', '?', '#']).unwrap_or(authority.len());
            match authority[..end].rfind('@') {
                Some(at) if authority[..at].contains(':') => {
                    let colon = authority[..at].find(':').unwrap_or(at);
                    format!(
                        "{}{}:***{}",
                        &url[..start],
                        &authority[..colon],
                        &authority[at..]
                    )
                }
                _ => url.to_string(),
            }
        }
    }
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
