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
/// The shortest interval allowed.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// How long `backoff` lets the interval grow when `max_interval` is not given.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Files listed at most in an observation and an output.
const MAX_FILES: usize = 1000;
/// Runs of the upstream workflow looked through, newest first, per status
/// (each read only when reached; the walk stops at the first match).
pub const RUN_SCAN: usize = 100_000;

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
    /// Time between polls (humantime, default `30s`, at least `10ms`).
    #[serde(default)]
    pub interval: Option<String>,
    /// Each poll's interval is the last one's times this (at least 1;
    /// default 1: no backoff).
    #[serde(default)]
    pub backoff: Option<f64>,
    /// The longest interval `backoff` grows to (default 1h).
    #[serde(default)]
    pub max_interval: Option<String>,
}

/// `"file": {"path": "/data/in/*.csv", "settle": "30s", "non_empty": true}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileCondition {
    /// A file path or a glob (`*`, `?`, `[…]`, `**`); with `pattern`, the
    /// directory the pattern is matched under.
    pub path: String,
    /// A glob matched under the directory `path` (`"*.csv"`,
    /// `"2026-*/part-*.parquet"`).
    #[serde(default)]
    pub pattern: Option<String>,
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
    /// How close the upstream run's logical time must be: `instant`
    /// (default: the same instant), `hour` or `day` (the same UTC hour or
    /// day, for workflows on different schedules: an upstream at 01:00 and
    /// a downstream at 02:00 share a day).
    #[serde(default)]
    pub same: Option<String>,
}

/// A span of logical times, `[from, until)`.
pub type Window = (Millis, Millis);

/// The logical times `same` accepts around `at`.
fn window(same: &str, at: Millis) -> Result<Window, String> {
    let span: Millis = match same {
        "instant" => return Ok((at, at + 1)),
        "hour" => 3_600_000,
        "day" => 86_400_000,
        other => return Err(format!("`{other}` is not one of instant, hour, day")),
    };
    let from = at.div_euclid(span) * span;
    Ok((from, from + span))
}

/// A run found by a `run` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRun {
    pub run_id: RunId,
    pub status: RunStatus,
    pub vars: Map<String, Value>,
    pub ended_at: Option<String>,
    /// Its logical time (RFC 3339).
    pub logical_time: Option<String>,
}

/// The runtime's side of checks.
pub trait CheckHost: Send + Sync + std::fmt::Debug {
    /// Records what an attempt observed (the check sends only changes).
    fn observe(&self, run_id: RunId, task: Arc<str>, attempt: u32, observation: Value);
    /// The newest run of `workflow` whose logical time is within
    /// `logical_times` and whose status is one of `statuses`.
    fn find_run(
        &self,
        workflow: String,
        logical_times: Window,
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
            if sql.transaction {
                found.push((
                    ".transaction".into(),
                    "a check's query only reads: it takes no `transaction`".into(),
                ));
            }
            nested("sql", found, errors);
        }
        if let Some(http) = &self.http {
            let mut found = Vec::new();
            http.check(&raw["http"], &mut found);
            if http.expect_status.is_some() && self.until.is_some() {
                found.push((
                    ".expect_status".into(),
                    "give `expect_status` or the check's `until`, not both: `until` decides alone"
                        .into(),
                ));
            }
            nested("http", found, errors);
        }
        if let Some(file) = &self.file {
            for (key, text) in [
                (".file.path", Some(&file.path)),
                (".file.pattern", file.pattern.as_ref()),
            ] {
                let Some(text) = text.filter(|t| !t.contains("${")) else {
                    continue;
                };
                if let Err(e) = file_glob(text, None) {
                    errors.push((key.into(), e));
                }
            }
            if file
                .pattern
                .as_deref()
                .is_some_and(|p| std::path::Path::new(p).is_absolute())
            {
                errors.push((
                    ".file.pattern".into(),
                    "is matched under `path`: give it relative (`*.csv`)".into(),
                ));
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
            if let Some(same) = &run.same
                && !same.contains("${")
                && let Err(e) = window(same, 0)
            {
                errors.push((".run.same".into(), e));
            }
        }
        if let Some(until) = &self.until {
            if super::shell::has_template(until) {
                errors.push((
                    ".until".into(),
                    "`${…}` is not allowed inside `until`: event data must not become code. \
                     Compare with a var instead (`body.state == vars.wanted`)"
                        .into(),
                ));
            } else if self.file.is_some() || self.run.is_some() {
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
        let fixed = |text: &Option<String>| {
            text.as_deref()
                .filter(|t| !t.contains("${"))
                .and_then(|t| crate::spec::parse_duration_text(t).ok())
        };
        if let Some(interval) = fixed(&self.interval)
            && interval < MIN_INTERVAL
        {
            errors.push((
                ".interval".into(),
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_INTERVAL)
                ),
            ));
        }
        if let (Some(max), Some(interval)) = (fixed(&self.max_interval), fixed(&self.interval))
            && max < interval
        {
            errors.push((
                ".max_interval".into(),
                "must not be shorter than `interval`".into(),
            ));
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
        let until = match self.until.as_deref().map(crate::expr::Expression::parse) {
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
            files: HashMap::new(),
        };
        // What the log holds already (a resumed attempt's last observation).
        let mut recorded: Option<Value> = ctx.observed.clone();
        let mut last: Option<Value> = recorded.clone();
        let mut budget = Budget::new();
        let mut polls: u64 = 0;
        let mut interval = plan.interval;
        let still_waiting = |last: &Option<Value>, otherwise: &str| match last {
            Some(seen) => format!("still waiting: {}", summary(seen)),
            None => otherwise.to_string(),
        };
        loop {
            polls += 1;
            let (observation, sooner) = match poller.poll(&ctx).await {
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
                } => (redact(&ctx, observation), sooner),
                Poll::Failed(outcome) => return *outcome,
                Poll::Cancelled => {
                    return AttemptOutcome::failure(still_waiting(&last, "cancelled"));
                }
            };
            last = Some(observation);
            // Recorded when it changed, within the record budget (a value
            // that changes at every poll is recorded now and then, the
            // latest always).
            if last != recorded && budget.take() {
                if let Some(host) = &ctx.checks {
                    host.observe(
                        ctx.run_id,
                        Arc::clone(&ctx.task),
                        ctx.attempt,
                        last.clone().unwrap_or_default(),
                    );
                }
                recorded.clone_from(&last);
            }
            let wait = sooner.map_or(interval, |s| s.min(interval));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.cancel.cancelled() => {
                    return AttemptOutcome::failure(still_waiting(&last, "cancelled"));
                }
            }
            interval = plan.next(interval);
        }
    }
}

/// Observation records an attempt may write at once, and how often one
/// more is allowed after that: a check whose observation changes at every
/// poll (a growing count) writes a record per [`BUDGET_REFILL`], not per
/// poll.
const BUDGET_BURST: u32 = 20;
const BUDGET_REFILL: Duration = Duration::from_secs(30);

struct Budget {
    left: u32,
    since: std::time::Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            left: BUDGET_BURST,
            since: std::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let earned = (self.since.elapsed().as_secs_f64() / BUDGET_REFILL.as_secs_f64()) as u32;
        if earned > 0 {
            self.left = (self.left + earned).min(BUDGET_BURST);
            self.since = std::time::Instant::now();
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
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
            .max(MIN_INTERVAL);
        let max_interval = parse("max_interval", &check.max_interval)?
            .unwrap_or(DEFAULT_MAX_INTERVAL)
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
        same: String,
        window: Window,
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
            let path =
                file_glob(&file.path, file.pattern.as_deref()).map_err(|e| format!("file: {e}"))?;
            return Ok(Condition::File {
                path,
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
            let same = run.same.unwrap_or_else(|| "instant".into());
            let window = window(&same, logical_time).map_err(|e| format!("run.same: {e}"))?;
            return Ok(Condition::Run {
                workflow: run.workflow,
                statuses,
                status_text,
                logical_time,
                same,
                window,
            });
        }
        Err("give one condition: `sql`, `http`, `file` or `run`".into())
    }
}

/// The glob a `file` condition matches: `path`, or `pattern` under the
/// directory `path`. Neither may hold `..`, so a value from an event cannot
/// walk out of the directory named.
fn file_glob(path: &str, pattern: Option<&str>) -> Result<String, String> {
    let joined = match pattern {
        Some(pattern) => std::path::Path::new(path)
            .join(pattern)
            .to_string_lossy()
            .into_owned(),
        None => path.to_string(),
    };
    if std::path::Path::new(&joined)
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!("`{joined}` must not contain `..`"));
    }
    glob::Pattern::new(&joined).map_err(|e| format!("`{joined}` is not a glob: {e}"))?;
    Ok(joined)
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
    Failed(Box<AttemptOutcome>),
    Cancelled,
}

struct Poller {
    condition: Condition,
    until: Option<crate::expr::Expression>,
    /// Files seen: their size and modification time, and since when this
    /// check has seen them so (`settle`).
    files: HashMap<String, Seen>,
}

/// A file as a poll saw it, and since when it has been so.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    size: u64,
    modified: Option<SystemTime>,
    since: std::time::Instant,
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
                let outcome = match answered(query.execute(ctx.clone()).await, ctx) {
                    Ok(outcome) => outcome,
                    Err(poll) => return poll,
                };
                let scalar = short(&outcome.output["scalar"]);
                let rows = outcome.output["row_count"].clone();
                let truthy = truthy(&outcome.output["scalar"]);
                self.judged(
                    outcome.output,
                    format!("scalar {scalar} ({rows} rows)"),
                    truthy,
                )
            }
            Condition::Http { http, expect } => {
                let outcome = match answered((**http).clone().execute(ctx.clone()).await, ctx) {
                    Ok(outcome) => outcome,
                    Err(poll) => return poll,
                };
                let status = outcome.output["status"].as_u64().unwrap_or(0) as u16;
                let (seen, accepted) = match &self.until {
                    Some(_) => (format!("http {status}"), false),
                    None => (
                        format!("http {status}, expected {}", expect.describe()),
                        expect.accepts(status).unwrap_or(false),
                    ),
                };
                self.judged(outcome.output, seen, accepted)
            }
            Condition::File {
                path,
                settle,
                non_empty,
            } => {
                let (path, settle, non_empty) = (path.clone(), *settle, *non_empty);
                let known = std::mem::take(&mut self.files);
                let scan = tokio::task::spawn_blocking(move || {
                    scan_files(&path, settle, non_empty, known)
                });
                // A scan of a slow or huge tree does not hold up a cancel.
                let scanned = tokio::select! {
                    scanned = scan => scanned,
                    _ = ctx.cancel.cancelled() => return Poll::Cancelled,
                };
                let Ok((files, known)) = scanned else {
                    return failed_poll(AttemptOutcome::failure("the file scan failed"));
                };
                self.files = known;
                if !files.ready.is_empty() {
                    return Poll::Held(json!({
                        "files": files.ready,
                        "count": files.ready_count,
                    }));
                }
                let mut summary = match (files.matched, files.changing) {
                    (0, _) => "no file matches".to_string(),
                    (n, 0) if non_empty => format!("{n} match, all empty"),
                    (n, 0) => format!("{n} match"),
                    (n, changing) => format!("{n} match, {changing} not settled yet"),
                };
                if let Some(error) = &files.error {
                    summary.push_str(&format!("; {error}"));
                }
                Poll::Waiting {
                    observation: json!({"summary": summary}),
                    sooner: files.sooner,
                }
            }
            Condition::Run {
                workflow,
                statuses,
                status_text,
                logical_time,
                same,
                window,
            } => {
                let Some(host) = &ctx.checks else {
                    return Poll::Failed(Box::new(AttemptOutcome::permanent_failure(
                        "a `run` condition is checked by the daemon",
                    )));
                };
                let found = tokio::select! {
                    found = host.find_run(workflow.clone(), *window, statuses.clone()) => found,
                    _ = ctx.cancel.cancelled() => return Poll::Cancelled,
                };
                match found {
                    Ok(Some(run)) => Poll::Held(json!({
                        "run_id": run.run_id.to_string(),
                        "status": run.status,
                        "vars": run.vars,
                        "ended_at": run.ended_at,
                        "logical_time": run.logical_time,
                    })),
                    Ok(None) => waiting(format!(
                        "no {status_text} run of `{workflow}` for logical time {}{}",
                        crate::time::rfc3339(*logical_time),
                        match same.as_str() {
                            "instant" => String::new(),
                            other => format!(" (same {other}, UTC)"),
                        }
                    )),
                    Err(e) => Poll::Failed(Box::new(AttemptOutcome::permanent_failure(e))),
                }
            }
        }
    }
}

impl Poller {
    /// A `sql` or `http` poll that answered: held when `until` says so, or
    /// (without one) when `by_default`; else waiting, having seen `seen`.
    fn judged(&self, output: Value, seen: String, by_default: bool) -> Poll {
        let holds = match &self.until {
            None => by_default,
            Some(until) => match judge(until, &output) {
                Judged::Holds(holds) => holds,
                Judged::NotBool(e) => {
                    return Poll::Failed(Box::new(AttemptOutcome::permanent_failure(e)));
                }
                Judged::Error(e) => return waiting(format!("{seen}; {e}")),
            },
        };
        match (&self.until, holds) {
            (_, true) => Poll::Held(output),
            (Some(until), false) => waiting(format!("{seen}: `{}` is false", until.source())),
            (None, false) => waiting(seen),
        }
    }
}

/// Longest summary recorded (a huge scalar or error is cut).
const MAX_SUMMARY: usize = 300;

/// Not yet, having seen `summary`.
fn waiting(mut summary: String) -> Poll {
    if summary.len() > MAX_SUMMARY {
        let mut cut = MAX_SUMMARY;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push('…');
    }
    Poll::Waiting {
        observation: json!({"summary": summary}),
        sooner: None,
    }
}

/// A value as a summary shows it: compact, at most 100 characters.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// A `sql` or `http` poll's outcome when it answered; else what the poll
/// comes to (cancelled, or a failed poll).
fn answered(outcome: AttemptOutcome, ctx: &AttemptContext) -> Result<AttemptOutcome, Poll> {
    if ctx.cancel.is_cancelled() {
        return Err(Poll::Cancelled);
    }
    if !outcome.succeeded {
        return Err(failed_poll(outcome));
    }
    Ok(outcome)
}

/// A poll that failed: a permanent failure (bad config) ends the check;
/// anything else is what this poll saw, and the check goes on.
fn failed_poll(outcome: AttemptOutcome) -> Poll {
    let error = outcome.error.clone().unwrap_or_else(|| "failed".into());
    if !outcome.retryable {
        return Poll::Failed(Box::new(outcome));
    }
    waiting(format!("error: {error}"))
}

/// What `until` said of a poll.
enum Judged {
    Holds(bool),
    /// Not a bool: no poll can fix that.
    NotBool(String),
    /// It could not be evaluated on this poll (a field not there yet, a
    /// null compared to a number): the check goes on.
    Error(String),
}

/// `until` over a poll's output: its fields by name, and `output`.
fn judge(until: &crate::expr::Expression, output: &Value) -> Judged {
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
    match until.evaluate(&scope) {
        Ok(Value::Bool(holds)) => Judged::Holds(holds),
        Ok(other) => Judged::NotBool(format!(
            "until `{}` must be a bool, got {}",
            until.source(),
            super::json_type(&other)
        )),
        Err(e) => Judged::Error(format!("until: {}", e.message)),
    }
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
    /// Matches that count (settled, non-empty as asked), sorted; at most
    /// [`MAX_FILES`] of `ready_count`.
    ready: Vec<String>,
    ready_count: usize,
    matched: usize,
    /// Matches not settled yet.
    changing: usize,
    /// When the first changing match may have settled.
    sooner: Option<Duration>,
    /// The first path that could not be read, and how many could not.
    error: Option<String>,
}

/// Paths a scan looks at, at most (a glob over a huge tree, or a symlink
/// loop under `**`, ends here).
const MAX_SCANNED: usize = 100_000;

/// Lists the files `pattern` matches. With `settle`, a file counts once
/// this check has seen it with the same size and modification time for
/// that long (timed on this process's monotonic clock, so neither a file
/// server's clock nor a copy that keeps an old modification time can make
/// a file still being written count).
fn scan_files(
    pattern: &str,
    settle: Option<Duration>,
    non_empty: bool,
    known: HashMap<String, Seen>,
) -> (Files, HashMap<String, Seen>) {
    let mut files = Files {
        ready: Vec::new(),
        ready_count: 0,
        matched: 0,
        changing: 0,
        sooner: None,
        error: None,
    };
    let paths = match glob::glob(pattern) {
        Ok(paths) => paths,
        Err(e) => {
            files.error = Some(format!("`{pattern}` is not a glob: {e}"));
            return (files, known);
        }
    };
    let now = std::time::Instant::now();
    let mut seen = HashMap::new();
    let mut unreadable = 0usize;
    for path in paths.take(MAX_SCANNED) {
        let path = match path {
            Ok(path) => path,
            Err(e) => {
                unreadable += 1;
                if files.error.is_none() {
                    files.error = Some(format!("cannot read {}", e.path().display()));
                }
                continue;
            }
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        files.matched += 1;
        if non_empty && meta.len() == 0 {
            continue;
        }
        let name = path.to_string_lossy().into_owned();
        let Some(settle) = settle else {
            files.ready_count += 1;
            if files.ready.len() < MAX_FILES {
                files.ready.push(name);
            }
            continue;
        };
        let (size, modified) = (meta.len(), meta.modified().ok());
        let since = match known.get(&name) {
            Some(before) if before.size == size && before.modified == modified => before.since,
            _ => now,
        };
        seen.insert(
            name.clone(),
            Seen {
                size,
                modified,
                since,
            },
        );
        let still = now.duration_since(since);
        if still >= settle {
            files.ready_count += 1;
            if files.ready.len() < MAX_FILES {
                files.ready.push(name);
            }
        } else {
            files.changing += 1;
            let left = (settle - still).max(Duration::from_millis(10));
            files.sooner = Some(files.sooner.map_or(left, |s: Duration| s.min(left)));
        }
    }
    if unreadable > 1
        && let Some(error) = &mut files.error
    {
        error.push_str(&format!(" (and {} more)", unreadable - 1));
    }
    files.ready.sort();
    (files, seen)
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
    fn same_hour_or_day_is_the_utc_hour_or_day_around_the_time() {
        let at = parse_time("2026-12-01T02:30:15Z").unwrap();
        let show =
            |(from, until): Window| (crate::time::rfc3339(from), crate::time::rfc3339(until));
        assert_eq!(window("instant", at).unwrap(), (at, at + 1));
        assert_eq!(
            show(window("hour", at).unwrap()),
            (
                "2026-12-01T02:00:00.000Z".into(),
                "2026-12-01T03:00:00.000Z".into()
            )
        );
        assert_eq!(
            show(window("day", at).unwrap()),
            (
                "2026-12-01T00:00:00.000Z".into(),
                "2026-12-02T00:00:00.000Z".into()
            )
        );
        assert!(window("week", at).is_err());
    }

    #[test]
    fn observations_are_recorded_in_a_burst_then_one_per_refill() {
        let mut budget = Budget::new();
        let taken = (0..BUDGET_BURST + 5).filter(|_| budget.take()).count();
        assert_eq!(taken, BUDGET_BURST as usize);
        // A refill's time later, one more.
        budget.since -= BUDGET_REFILL;
        assert!(budget.take());
        assert!(!budget.take());
    }

    #[test]
    fn a_pattern_is_matched_under_its_path_and_neither_climbs_out() {
        assert_eq!(
            file_glob("/data/in", Some("*.csv")).unwrap(),
            "/data/in/*.csv"
        );
        assert_eq!(file_glob("/data/in/*.csv", None).unwrap(), "/data/in/*.csv");
        assert!(
            file_glob("/data/in", Some("../../etc/*"))
                .unwrap_err()
                .contains("..")
        );
        assert!(file_glob("/data/../etc", None).is_err());
        assert!(
            file_glob("/data/in", Some("["))
                .unwrap_err()
                .contains("not a glob")
        );
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
        // First sight: not settled, however old its modification time.
        let (found, known) = scan_files(&pattern, settle, true, HashMap::new());
        assert!(found.ready.is_empty(), "a file just seen is not settled");
        assert_eq!((found.matched, found.changing), (2, 1));
        assert!(
            found
                .sooner
                .is_some_and(|s| s <= Duration::from_millis(300))
        );
        // It grows: its settling starts again.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(&file, "xy").unwrap();
        let (found, known) = scan_files(&pattern, settle, true, known);
        assert!(found.ready.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        let (found, known) = scan_files(&pattern, settle, true, known);
        assert!(found.ready.is_empty(), "grew 200 ms ago");
        std::thread::sleep(Duration::from_millis(150));
        let (found, _) = scan_files(&pattern, settle, true, known);
        assert_eq!(found.ready, vec![file.to_string_lossy().into_owned()]);
        assert_eq!(found.ready_count, 1);
    }

    #[test]
    fn until_errors_wait_and_only_a_non_bool_fails() {
        let until = crate::expr::Expression::parse("body.state == 'done'").unwrap();
        let judged = |output: Value| match judge(&until, &output) {
            Judged::Holds(h) => format!("holds {h}"),
            Judged::NotBool(e) => format!("not bool: {e}"),
            Judged::Error(e) => format!("error: {e}"),
        };
        assert_eq!(judged(json!({"body": {"state": "done"}})), "holds true");
        assert!(judged(json!({"body": {}})).starts_with("error: until"));
        let number = crate::expr::Expression::parse("status + 1").unwrap();
        assert!(matches!(
            judge(&number, &json!({"status": 200})),
            Judged::NotBool(_)
        ));
    }
}
