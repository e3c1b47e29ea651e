//! `check`: waits until one condition holds — a query's answer, an
//! endpoint's response, files in a directory, another workflow's run —
//! polling every `interval` (with an optional `backoff` up to
//! `max_interval`) until it does or the task's `timeout` passes.
//!
//! Cheap while it waits: a check takes no `max_parallel_tasks` slot (nor a
//! worker's `--concurrency` slot), its wait is counted from the attempt's
//! recorded start (a restart resumes it at its next poll, its elapsed time
//! kept), and what a poll saw is recorded only when it differs from what
//! the last recorded poll saw ([`CheckHost::observe`]), so an hour of
//! polling adds a record per change, not per poll. A poll that fails
//! (database down, connection refused) is an observation too: the check
//! goes on; only a config no poll can fix fails it at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::workflow::BoxFuture;
use super::{AttemptContext, AttemptOutcome, Kind};
use crate::log::{Millis, RunId, RunStatus};

/// Poll interval when none is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Files listed at most in an observation and an output.
const MAX_FILES: usize = 1000;
/// Runs of the upstream workflow looked through, newest first, per status.
pub const RUN_SCAN: usize = 5000;

/// `"check": {"sql": {...}, "until": "scalar > 0", "interval": "1m"}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// A query (as the `sql` task's config): holds when its `scalar` (first
    /// column of the first row) is truthy, or when `until` is true.
    #[serde(default)]
    pub sql: Option<super::sql::Sql>,
    /// A request (as the `http` task's config): holds when the status is
    /// one of `expect_status` (default 2xx), or when `until` is true.
    #[serde(default)]
    pub http: Option<super::http::Http>,
    /// Files: holds when a path or glob matches at least one file.
    #[serde(default)]
    pub file: Option<FileCondition>,
    /// Another workflow's run: holds when one reached `status`.
    #[serde(default)]
    pub run: Option<RunCondition>,
    /// A CEL condition over what a `sql` poll returned (`rows`, `scalar`,
    /// `row_count`) or an `http` poll's response (`status`, `headers`,
    /// `body`); `output` is all of it.
    #[serde(default)]
    pub until: Option<String>,
    /// Time between polls (humantime, default `30s`).
    #[serde(default)]
    pub interval: Option<String>,
    /// Each poll's interval is the last one's times this (at least 1;
    /// default 1: no backoff).
    #[serde(default)]
    pub backoff: Option<f64>,
    /// The longest interval `backoff` grows to.
    #[serde(default)]
    pub max_interval: Option<String>,
}

/// `"file": {"path": "/data/in/*.csv", "settle": "30s", "non_empty": true}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCondition {
    /// A file path or a glob (`*`, `?`, `[…]`, `**`).
    pub path: String,
    /// A match counts once it has not been modified for this long (a file
    /// still being written does not).
    #[serde(default)]
    pub settle: Option<String>,
    /// Empty files do not count.
    #[serde(default)]
    pub non_empty: bool,
}

/// `"run": {"workflow": "load_orders", "status": "succeeded"}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCondition {
    /// The workflow whose run is waited for.
    pub workflow: String,
    /// `succeeded` (default), `failed`, `cancelled`, or `ended` (any of them).
    #[serde(default)]
    pub status: Option<String>,
    /// The run's logical time (RFC 3339); default this run's own
    /// (`run.logical_time`): the upstream run for the same schedule tick.
    #[serde(default)]
    pub logical_time: Option<String>,
}

/// A run found by a `run` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRun {
    pub run_id: RunId,
    pub status: RunStatus,
    pub vars: Map<String, Value>,
    pub ended_at: Option<String>,
}

/// The runtime's side of checks.
pub trait CheckHost: Send + Sync + std::fmt::Debug {
    /// Records what an attempt observed (the check sends only changes).
    fn observe(&self, run_id: RunId, task: Arc<str>, attempt: u32, observation: Value);
    /// The newest run of `workflow` whose logical time is `logical_time`
    /// and whose status is one of `statuses`.
    fn find_run(
        &self,
        workflow: String,
        logical_time: Millis,
        statuses: Vec<RunStatus>,
    ) -> BoxFuture<Result<Option<FoundRun>, String>>;
}

impl Kind for Check {
    const NAME: &'static str = "check";
    const HOLDS_SLOT: bool = false;
    const RESUMABLE: bool = true;

    fn check(&self, raw: &Value, errors: &mut Vec<(String, String)>) {
        let given: Vec<&str> = [
            ("sql", self.sql.is_some()),
            ("http", self.http.is_some()),
            ("file", self.file.is_some()),
            ("run", self.run.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match given.as_slice() {
            [] => errors.push((
                String::new(),
                "give one condition: `sql`, `http`, `file` or `run`".into(),
            )),
            [_] => {}
            many => errors.push((
                String::new(),
                format!(
                    "give one condition, not {} (`{}`): use one check task per condition",
                    many.len(),
                    many.join("`, `")
                ),
            )),
        }
        let nested = |name: &str, found: Vec<(String, String)>, errors: &mut Vec<_>| {
            errors.extend(
                found
                    .into_iter()
                    .map(|(path, message)| (format!(".{name}{path}"), message)),
            );
        };
        if let Some(sql) = &self.sql {
            let mut found = Vec::new();
            sql.check(&raw["sql"], &mut found);
            if sql.script.is_some() {
                found.push((
                    ".script".into(),
                    "a check runs one `query` (its scalar or `until` decides), not a script".into(),
                ));
            }
            nested("sql", found, errors);
        }
        if let Some(http) = &self.http {
            let mut found = Vec::new();
            http.check(&raw["http"], &mut found);
            nested("http", found, errors);
        }
        if let Some(file) = &self.file {
            if !file.path.contains("${")
                && let Err(e) = glob::Pattern::new(&file.path)
            {
                errors.push((".file.path".into(), format!("not a glob: {e}")));
            }
            if file.path.trim().is_empty() {
                errors.push((".file.path".into(), "must not be empty".into()));
            }
            if let Some(settle) = &file.settle {
                duration_error(".file.settle", settle, errors);
            }
        }
        if let Some(run) = &self.run {
            if run.workflow.trim().is_empty() {
                errors.push((".run.workflow".into(), "must name a workflow".into()));
            }
            if let Some(status) = &run.status
                && !status.contains("${")
                && let Err(e) = statuses(status)
            {
                errors.push((".run.status".into(), e));
            }
            if let Some(time) = &run.logical_time
                && !time.contains("${")
                && let Err(e) = parse_time(time)
            {
                errors.push((".run.logical_time".into(), e));
            }
        }
        if let Some(until) = &self.until {
            if self.file.is_some() || self.run.is_some() {
                errors.push((
                    ".until".into(),
                    "`until` judges a `sql` or `http` poll; a `file` or `run` condition holds by itself"
                        .into(),
                ));
            } else if let Err(e) = crate::expr::Condition::parse(until) {
                errors.push((".until".into(), e.to_string()));
            }
        }
        if let Some(interval) = &self.interval {
            duration_error(".interval", interval, errors);
        }
        if let Some(max) = &self.max_interval {
            duration_error(".max_interval", max, errors);
        }
        if let Some(backoff) = self.backoff
            && !(backoff.is_finite() && (1.0..=100.0).contains(&backoff))
        {
            errors.push((
                ".backoff".into(),
                format!("must be between 1 (no backoff) and 100, got {backoff}"),
            ));
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let plan = match Plan::new(&self) {
            Ok(plan) => plan,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let until = match self.until.as_deref().map(crate::expr::Condition::parse) {
            None => None,
            Some(Ok(until)) => Some(until),
            Some(Err(e)) => return AttemptOutcome::permanent_failure(format!("until: {e}")),
        };
        let condition = match Condition::new(self, &ctx) {
            Ok(condition) => condition,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let mut poller = Poller {
            condition,
            until,
            settled: HashMap::new(),
        };
        let mut last: Option<Value> = None;
        let mut polls: u64 = 0;
        let mut interval = plan.interval;
        loop {
            polls += 1;
            let poll = poller.poll(&ctx).await;
            let (observation, held, sooner) = match poll {
                Poll::Held(output) => {
                    let mut output = match output {
                        Value::Object(map) => map,
                        other => Map::from_iter([("value".to_string(), other)]),
                    };
                    output.insert("polls".into(), json!(polls));
                    output.insert(
                        "waited_ms".into(),
                        json!((crate::time::now_millis() - ctx.started_at).max(0)),
                    );
                    return AttemptOutcome::success(Value::Object(output));
                }
                Poll::Waiting {
                    observation,
                    sooner,
                } => (observation, false, sooner),
                Poll::Failed(outcome) => return outcome,
                Poll::Cancelled => {
                    return AttemptOutcome::failure(match &last {
                        Some(seen) => format!("still waiting: {}", summary(seen)),
                        None => "cancelled before the first poll ended".to_string(),
                    });
                }
            };
            debug_assert!(!held);
            let observation = redact(&ctx, observation);
            if last.as_ref() != Some(&observation) {
                if let Some(host) = &ctx.checks {
                    host.observe(
                        ctx.run_id,
                        Arc::clone(&ctx.task),
                        ctx.attempt,
                        observation.clone(),
                    );
                }
                last = Some(observation);
            }
            let wait = sooner.map_or(interval, |s| s.min(interval));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.cancel.cancelled() => {
                    return AttemptOutcome::failure(match &last {
                        Some(seen) => format!("still waiting: {}", summary(seen)),
                        None => "cancelled".to_string(),
                    });
                }
            }
            interval = plan.next(interval);
        }
    }
}

fn duration_error(path: &str, text: &str, errors: &mut Vec<(String, String)>) {
    if !text.contains("${")
        && let Err(e) = crate::spec::parse_duration_text(text)
    {
        errors.push((path.into(), e));
    }
}

/// An observation's one-line summary.
fn summary(observation: &Value) -> String {
    observation["summary"]
        .as_str()
        .map_or_else(|| observation.to_string(), str::to_string)
}

/// What leaves the attempt never holds a secret.
fn redact(ctx: &AttemptContext, mut observation: Value) -> Value {
    ctx.secrets.redact_json(&mut observation);
    observation
}

/// The poll schedule.
struct Plan {
    interval: Duration,
    backoff: f64,
    max_interval: Duration,
}

impl Plan {
    fn new(check: &Check) -> Result<Self, String> {
        let parse = |what: &str, text: &Option<String>| {
            text.as_deref()
                .map(crate::spec::parse_duration_text)
                .transpose()
                .map_err(|e| format!("{what}: {e}"))
        };
        let interval = parse("interval", &check.interval)?
            .unwrap_or(DEFAULT_INTERVAL)
            .max(Duration::from_millis(1));
        let max_interval = parse("max_interval", &check.max_interval)?
            .unwrap_or(Duration::MAX)
            .max(interval);
        let backoff = check.backoff.unwrap_or(1.0);
        if !(backoff.is_finite() && backoff >= 1.0) {
            return Err(format!("backoff must be at least 1, got {backoff}"));
        }
        Ok(Self {
            interval,
            backoff,
            max_interval,
        })
    }

    fn next(&self, interval: Duration) -> Duration {
        if self.backoff <= 1.0 {
            return interval;
        }
        Duration::try_from_secs_f64(interval.as_secs_f64() * self.backoff)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }
}

/// The condition, ready to poll.
enum Condition {
    Sql(Box<super::sql::Sql>),
    Http {
        http: Box<super::http::Http>,
        expect: super::http::ExpectStatus,
    },
    File {
        path: String,
        settle: Option<Duration>,
        non_empty: bool,
    },
    Run {
        workflow: String,
        statuses: Vec<RunStatus>,
        status_text: String,
        logical_time: Millis,
    },
}

impl Condition {
    fn new(check: Check, ctx: &AttemptContext) -> Result<Self, String> {
        if let Some(sql) = check.sql {
            if sql.script.is_some() {
                return Err("a check runs one `query`, not a script".into());
            }
            return Ok(Condition::Sql(Box::new(sql)));
        }
        if let Some(mut http) = check.http {
            let expect = http
                .expect_status
                .take()
                .unwrap_or(super::http::ExpectStatus::One(
                    super::http::StatusPattern::Text("2xx".into()),
                ));
            expect
                .accepts(200)
                .map_err(|e| format!("expect_status: {e}"))?;
            // Every response is an observation; the check judges it.
            http.expect_status = Some(super::http::ExpectStatus::any());
            return Ok(Condition::Http {
                http: Box::new(http),
                expect,
            });
        }
        if let Some(file) = check.file {
            let settle = file
                .settle
                .as_deref()
                .map(crate::spec::parse_duration_text)
                .transpose()
                .map_err(|e| format!("file.settle: {e}"))?;
            glob::Pattern::new(&file.path).map_err(|e| format!("file.path: not a glob: {e}"))?;
            return Ok(Condition::File {
                path: file.path,
                settle,
                non_empty: file.non_empty,
            });
        }
        if let Some(run) = check.run {
            let status_text = run.status.unwrap_or_else(|| "succeeded".into());
            let statuses = statuses(&status_text).map_err(|e| format!("run.status: {e}"))?;
            let logical_time = match run.logical_time {
                Some(text) => parse_time(&text).map_err(|e| format!("run.logical_time: {e}"))?,
                None => ctx.logical_time.ok_or(
                    "run.logical_time: this attempt does not know its run's logical time \
                     (a remote worker): give `logical_time`",
                )?,
            };
            return Ok(Condition::Run {
                workflow: run.workflow,
                statuses,
                status_text,
                logical_time,
            });
        }
        Err("give one condition: `sql`, `http`, `file` or `run`".into())
    }
}

fn statuses(text: &str) -> Result<Vec<RunStatus>, String> {
    Ok(match text {
        "succeeded" => vec![RunStatus::Succeeded],
        "failed" => vec![RunStatus::Failed],
        "cancelled" => vec![RunStatus::Cancelled],
        "ended" => vec![
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ],
        other => {
            return Err(format!(
                "`{other}` is not one of succeeded, failed, cancelled, ended"
            ));
        }
    })
}

fn parse_time(text: &str) -> Result<Millis, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
}

/// What one poll found.
enum Poll {
    /// The condition holds: the task's output.
    Held(Value),
    /// Not yet: what was seen, and how soon something may change (a file
    /// settling) if sooner than the interval.
    Waiting {
        observation: Value,
        sooner: Option<Duration>,
    },
    /// No poll can succeed (a config the database refuses as such).
    Failed(AttemptOutcome),
    Cancelled,
}

struct Poller {
    condition: Condition,
    until: Option<crate::expr::Condition>,
    /// Files seen and when they were last seen to change (`settle`).
    settled: HashMap<String, (u64, SystemTime)>,
}

impl Poller {
    async fn poll(&mut self, ctx: &AttemptContext) -> Poll {
        if ctx.cancel.is_cancelled() {
            return Poll::Cancelled;
        }
        match &self.condition {
            Condition::Sql(sql) => {
                let query = super::sql::Sql {
                    script: None,
                    transaction: false,
                    ..(**sql).clone()
                };
                let outcome = query.execute(ctx.clone()).await;
                if ctx.cancel.is_cancelled() {
                    return Poll::Cancelled;
                }
                if !outcome.succeeded {
                    return failed_poll(outcome);
                }
                let scalar = outcome.output["scalar"].clone();
                let rows = outcome.output["row_count"].clone();
                let holds = match &self.until {
                    Some(until) => match judge(until, &outcome.output) {
                        Ok(holds) => holds,
                        Err(e) => return Poll::Failed(AttemptOutcome::permanent_failure(e)),
                    },
                    None => truthy(&scalar),
                };
                if holds {
                    return Poll::Held(outcome.output);
                }
                Poll::Waiting {
                    observation: json!({
                        "summary": match &self.until {
                            Some(until) => format!("scalar {scalar}, {rows} rows: `{}` is false", until.source()),
                            None => format!("scalar {scalar} ({rows} rows)"),
                        },
                        "scalar": scalar,
                        "row_count": rows,
                    }),
                    sooner: None,
                }
            }
            Condition::Http { http, expect } => {
                let request = (**http).clone();
                let outcome = request.execute(ctx.clone()).await;
                if ctx.cancel.is_cancelled() {
                    return Poll::Cancelled;
                }
                if !outcome.succeeded {
                    return failed_poll(outcome);
                }
                let status = outcome.output["status"].as_u64().unwrap_or(0) as u16;
                let holds = match &self.until {
                    Some(until) => match judge(until, &outcome.output) {
                        Ok(holds) => holds,
                        Err(e) => return Poll::Failed(AttemptOutcome::permanent_failure(e)),
                    },
                    None => expect.accepts(status).unwrap_or(false),
                };
                if holds {
                    return Poll::Held(outcome.output);
                }
                Poll::Waiting {
                    observation: json!({
                        "summary": match &self.until {
                            Some(until) => format!("http {status}: `{}` is false", until.source()),
                            None => format!("http {status}, expected {}", expect.describe()),
                        },
                        "status": status,
                    }),
                    sooner: None,
                }
            }
            Condition::File {
                path,
                settle,
                non_empty,
            } => {
                let (path, settle, non_empty) = (path.clone(), *settle, *non_empty);
                let known = std::mem::take(&mut self.settled);
                let scan = tokio::task::spawn_blocking(move || {
                    scan_files(&path, settle, non_empty, known)
                })
                .await;
                let Ok((found, known)) = scan else {
                    return failed_poll(AttemptOutcome::failure("the file scan failed"));
                };
                self.settled = known;
                match found {
                    Err(e) => failed_poll(AttemptOutcome::failure(e)),
                    Ok(files) if !files.ready.is_empty() => Poll::Held(json!({
                        "files": files.ready,
                        "count": files.ready.len(),
                    })),
                    Ok(files) => Poll::Waiting {
                        observation: json!({
                            "summary": match (files.matched, files.changing.len()) {
                                (0, _) => "no file matches".to_string(),
                                (n, 0) => format!("{n} match, none is non-empty"),
                                (n, changing) => format!("{n} match, {changing} still changing"),
                            },
                            "matched": files.matched,
                            "changing": files.changing,
                        }),
                        sooner: files.sooner,
                    },
                }
            }
            Condition::Run {
                workflow,
                statuses,
                status_text,
                logical_time,
            } => {
                let Some(host) = &ctx.checks else {
                    return Poll::Failed(AttemptOutcome::permanent_failure(
                        "a `run` condition is checked by the daemon, not on a remote worker: \
                         drop the task's `queue`",
                    ));
                };
                let found = tokio::select! {
                    found = host.find_run(workflow.clone(), *logical_time, statuses.clone()) => found,
                    _ = ctx.cancel.cancelled() => return Poll::Cancelled,
                };
                match found {
                    Ok(Some(run)) => Poll::Held(json!({
                        "run_id": run.run_id.to_string(),
                        "status": run.status,
                        "vars": run.vars,
                        "ended_at": run.ended_at,
                        "logical_time": crate::time::rfc3339(*logical_time),
                    })),
                    Ok(None) => Poll::Waiting {
                        observation: json!({
                            "summary": format!(
                                "no {status_text} run of `{workflow}` for logical time {}",
                                crate::time::rfc3339(*logical_time)
                            ),
                        }),
                        sooner: None,
                    },
                    Err(e) => failed_poll(AttemptOutcome::failure(e)),
                }
            }
        }
    }
}

/// A poll that failed: a permanent failure (bad config) ends the check;
/// anything else is what this poll saw, and the check goes on.
fn failed_poll(outcome: AttemptOutcome) -> Poll {
    let error = outcome.error.clone().unwrap_or_else(|| "failed".into());
    if !outcome.retryable {
        return Poll::Failed(outcome);
    }
    Poll::Waiting {
        observation: json!({"summary": format!("error: {error}")}),
        sooner: None,
    }
}

/// `until` over a poll's output: its fields by name, and `output`.
fn judge(until: &crate::expr::Condition, output: &Value) -> Result<bool, String> {
    let mut scope = crate::expr::MapScope {
        now: crate::time::now_millis(),
        ..Default::default()
    };
    if let Value::Object(fields) = output {
        for (name, value) in fields {
            scope.names.insert(name.clone(), value.clone());
        }
    }
    scope.names.insert("output".into(), output.clone());
    until
        .evaluate(&scope)
        .map_err(|e| format!("until: {}", e.message))
}

/// A query's scalar that means yes: not null, false, zero or empty.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => {
            let s = s.trim();
            !(s.is_empty()
                || s.eq_ignore_ascii_case("false")
                || s.parse::<f64>().is_ok_and(|n| n == 0.0))
        }
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Files a scan found.
struct Files {
    /// Matches that count (settled, non-empty as asked), sorted.
    ready: Vec<String>,
    matched: usize,
    /// Matches modified within `settle`.
    changing: Vec<String>,
    /// When the first changing match will have settled.
    sooner: Option<Duration>,
}

/// Lists the files `pattern` matches. With `settle`, a file counts once
/// it has not changed for that long: by its modification time, and by its
/// size from one poll to the next (a copy that keeps an old modification
/// time still settles only once it stops growing).
fn scan_files(
    pattern: &str,
    settle: Option<Duration>,
    non_empty: bool,
    known: HashMap<String, (u64, SystemTime)>,
) -> (Result<Files, String>, HashMap<String, (u64, SystemTime)>) {
    let paths = match glob::glob(pattern) {
        Ok(paths) => paths,
        Err(e) => return (Err(format!("`{pattern}` is not a glob: {e}")), known),
    };
    let now = SystemTime::now();
    let mut seen = HashMap::new();
    let mut files = Files {
        ready: Vec::new(),
        matched: 0,
        changing: Vec::new(),
        sooner: None,
    };
    for path in paths.flatten() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        files.matched += 1;
        let name = path.to_string_lossy().into_owned();
        if non_empty && meta.len() == 0 {
            continue;
        }
        let Some(settle) = settle else {
            files.ready.push(name);
            continue;
        };
        let modified = meta.modified().unwrap_or(now);
        // Since when this file has been as it is now: its modification
        // time when first seen, or when it was last seen to change.
        let stable_since = match known.get(&name) {
            Some((size, since)) if *size == meta.len() => (*since).max(modified),
            Some(_) => now,
            None => modified,
        }
        .min(now);
        seen.insert(name.clone(), (meta.len(), stable_since));
        let still = now.duration_since(stable_since).unwrap_or_default();
        if still >= settle {
            files.ready.push(name);
        } else {
            let left = settle.saturating_sub(still).max(Duration::from_millis(10));
            files.sooner = Some(files.sooner.map_or(left, |s: Duration| s.min(left)));
            files.changing.push(name);
        }
    }
    files.ready.sort();
    files.ready.truncate(MAX_FILES);
    files.changing.sort();
    files.changing.truncate(MAX_FILES);
    (Ok(files), seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scalar_holds_unless_null_false_zero_or_empty() {
        for yes in [json!(1), json!("x"), json!(true), json!(0.5), json!([1])] {
            assert!(truthy(&yes), "{yes}");
        }
        for no in [
            json!(null),
            json!(0),
            json!(false),
            json!(""),
            json!("0"),
            json!("0.00"),
        ] {
            assert!(!truthy(&no), "{no}");
        }
    }

    #[test]
    fn backoff_grows_the_interval_up_to_its_cap() {
        let check: Check = serde_json::from_value(json!({
            "file": {"path": "/x"}, "interval": "1s", "backoff": 2.0, "max_interval": "5s"
        }))
        .unwrap();
        let plan = Plan::new(&check).unwrap();
        let mut interval = plan.interval;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(interval.as_secs());
            interval = plan.next(interval);
        }
        assert_eq!(seen, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_file_counts_once_it_has_not_changed_for_settle() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.csv", dir.path().display());
        let file = dir.path().join("a.csv");
        std::fs::write(&file, "x").unwrap();
        std::fs::write(dir.path().join("empty.csv"), "").unwrap();
        let settle = Some(Duration::from_millis(300));
        let (found, known) = scan_files(&pattern, settle, true, HashMap::new());
        let found = found.unwrap();
        assert!(found.ready.is_empty(), "a file just written is not settled");
        assert_eq!((found.matched, found.changing.len()), (2, 1));
        assert!(
            found
                .sooner
                .is_some_and(|s| s <= Duration::from_millis(300))
        );
        std::thread::sleep(Duration::from_millis(350));
        let (found, _) = scan_files(&pattern, settle, true, known);
        let found = found.unwrap();
        assert_eq!(found.ready, vec![file.to_string_lossy().into_owned()]);
    }
}
