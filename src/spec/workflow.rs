//! Workflow files (SPEC §3): the raw format and its compiled form.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{Collector, Diagnostics, deserialize_all, join_path, parse_duration};
use crate::executors::{self, KindName};
use crate::expr::{Condition, TemplateValue};

// ---------------------------------------------------------------------------
// Raw format (stage one)
// ---------------------------------------------------------------------------

/// A workflow file as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "switchyard workflow")]
pub struct WorkflowFile {
    /// Editor hint; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Unique in the project: lowercase letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Optional label; the content hash is the real version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Defaults for run vars; run params override them.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// Limit for the whole run (humantime, e.g. "1h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// How many runs of this workflow may be active at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_runs: Option<u32>,
    /// What to do with a run over `max_active_runs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_overflow: Option<Overflow>,
    /// True: the first unhandled failure cancels the rest of the run.
    #[serde(default)]
    pub fail_fast: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<TaskDefaults>,
    pub tasks: Vec<TaskFile>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    #[default]
    Queue,
    Skip,
}

/// Defaults applied to every task that does not set the key itself.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Run every task (but sub-workflows) on remote workers consuming this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// For remote tasks: fail an attempt no worker starts within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<String>,
}

/// Retry policy as written. With `retry` present, `max_attempts` defaults to 3.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Total attempts including the first (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Delay before the second attempt (humantime, default "1s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Multiplier applied to the delay after each attempt (≥ 1.0, default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    /// Upper bound for the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<String>,
}

/// Dependencies as written: `"a"`, `["a", "b"]`, `{"all": [...]}`, `{"any": [...]}`.
/// Each entry is a task id, optionally with `:success`, `:failure` or `:completion`.
/// (Schema only: `after` is parsed by hand so that each mistake gets its own message.)
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum AfterFile {
    One(String),
    List(Vec<String>),
    All(AllOf),
    Any(AnyOf),
}

/// Every dependency must hold.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllOf {
    #[schemars(length(min = 1))]
    pub all: Vec<String>,
}

/// At least one dependency must hold, judged once every named task is terminal.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnyOf {
    #[schemars(length(min = 1))]
    pub any: Vec<String>,
}

/// The keys every task may have besides its kind.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCommon {
    /// Unique in the workflow: lowercase letters, digits and `_`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<AfterFile>")]
    pub after: Option<Value>,
    /// CEL condition evaluated once `after` holds; false skips the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Task-level vars (templates); override run vars for this task only.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map<String, Value>,
    /// Run vars written from this task's output: `{"var": "${output.x}"}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub export: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryFile>,
    /// Limit per attempt (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// True: a failure of this task does not fail the run.
    #[serde(default)]
    pub allow_failure: bool,
    /// Run on remote workers consuming this RabbitMQ queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// With `queue`: fail an attempt no worker starts within this long
    /// (humantime; default: wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<String>,
}

const COMMON_KEYS: &[&str] = &[
    "id",
    "after",
    "when",
    "vars",
    "export",
    "retry",
    "timeout",
    "allow_failure",
    "queue",
    "start_timeout",
];

/// One task as written: the common keys plus exactly one kind key. Parsed by
/// hand in stage two so that every task's errors are reported.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct TaskFile(pub Map<String, Value>);

impl JsonSchema for TaskFile {
    fn schema_name() -> Cow<'static, str> {
        "Task".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = TaskCommon::json_schema(generator);
        let kinds = executors::kind_schemas(generator);
        if let Some(object) = schema.as_object_mut() {
            if let Some(Value::Object(properties)) = object.get_mut("properties") {
                for (name, kind_schema) in &kinds {
                    properties.insert((*name).to_string(), kind_schema.clone().to_value());
                }
            }
            let one_of: Vec<Value> = kinds
                .iter()
                .map(|(name, _)| serde_json::json!({ "required": [name] }))
                .collect();
            object.insert("oneOf".into(), Value::Array(one_of));
            object.insert(
                "description".into(),
                "A task: `id`, exactly one kind key, and optional keys.".into(),
            );
        }
        schema
    }
}

// ---------------------------------------------------------------------------
// Compiled form (stage two)
// ---------------------------------------------------------------------------

/// A validated workflow, ready to run. Immutable; runs hold it by `Arc`.
#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    /// Content hash of the definition (16 hex digits).
    pub version: String,
    pub version_label: Option<u64>,
    pub vars: Map<String, Value>,
    pub timeout: Option<Duration>,
    pub max_active_runs: Option<u32>,
    pub on_overflow: Overflow,
    pub fail_fast: bool,
    pub tasks: Vec<Task>,
    /// The definition as JSON; stored in the log with every run that uses it.
    pub source: Arc<[u8]>,
    /// Where it was loaded from, if from a file.
    pub file: Option<PathBuf>,
    index: HashMap<String, usize>,
}

/// A validated task.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub kind: KindName,
    /// The kind's config, strings compiled as templates.
    pub config: TemplateValue,
    pub after: Dependencies,
    pub when: Option<Condition>,
    pub vars: Vec<(String, TemplateValue)>,
    pub export: Vec<(String, TemplateValue)>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub allow_failure: bool,
    pub queue: Option<String>,
    /// With `queue`: how long an attempt may wait for a worker.
    pub start_timeout: Option<Duration>,
    /// Tasks whose `after` names this one.
    pub dependents: Vec<usize>,
    /// Some task depends on this one's `failure` or `completion`: a failure
    /// here is handled, so `fail_fast` does not cancel the run for it.
    pub failure_handled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dependencies {
    /// A root task.
    None,
    /// Every dependency must hold (AND).
    All(Vec<Dep>),
    /// At least one must hold (OR), judged once all named tasks are terminal.
    Any(Vec<Dep>),
}

impl Dependencies {
    pub fn deps(&self) -> &[Dep] {
        match self {
            Dependencies::None => &[],
            Dependencies::All(d) | Dependencies::Any(d) => d,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dep {
    pub task: usize,
    pub on: DepOn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepOn {
    Success,
    Failure,
    Completion,
}

impl DepOn {
    pub fn as_str(self) -> &'static str {
        match self {
            DepOn::Success => "success",
            DepOn::Failure => "failure",
            DepOn::Completion => "completion",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub delay: Duration,
    pub backoff: f64,
    pub max_delay: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            delay: Duration::from_secs(1),
            backoff: 1.0,
            max_delay: None,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 = the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let exponent = next_attempt.saturating_sub(2).min(64) as i32;
        let seconds = self.delay.as_secs_f64() * self.backoff.powi(exponent);
        let mut delay = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX);
        if let Some(max) = self.max_delay {
            delay = delay.min(max);
        }
        delay
    }
}

impl Workflow {
    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Loads and validates one workflow file.
    pub fn load(file: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read(file).map_err(|e| {
            let mut c = Collector::new(file);
            c.error("", format!("cannot read file: {e}"));
            Diagnostics(c.diagnostics)
        })?;
        let mut workflow = Self::parse(file, &text)?;
        workflow.file = Some(file.to_path_buf());
        Ok(workflow)
    }

    /// Validates a definition given as JSON text; `file` names it in errors.
    pub fn parse(file: &Path, text: &[u8]) -> Result<Self, Diagnostics> {
        Self::parse_with(Collector::new(file), text)
    }

    /// Compiles a definition a run started with, as stored in the log. It
    /// was validated when the run started; the task kinds' load-time checks
    /// (which later builds may make stricter, like the `${…}` rules) are
    /// not applied again, so a run in flight replays with the definition it
    /// started with. Structure (JSON shape, ids, dependencies, expressions)
    /// must still compile.
    pub fn parse_stored(file: &Path, text: &[u8]) -> Result<Self, Diagnostics> {
        let mut c = Collector::new(file);
        c.stored = true;
        Self::parse_with(c, text)
    }

    fn parse_with(mut c: Collector<'_>, text: &[u8]) -> Result<Self, Diagnostics> {
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                c.error("", format!("invalid JSON: {e}"));
                return Err(Diagnostics(c.diagnostics));
            }
        };
        if !value.is_object() {
            c.error("", "a workflow file holds one JSON object");
            return Err(Diagnostics(c.diagnostics));
        }
        let raw: WorkflowFile = match deserialize_all(&value) {
            Ok(raw) => raw,
            Err(errors) => {
                for (path, message) in errors {
                    c.error(join_path("", &path), message);
                }
                return Err(Diagnostics(c.diagnostics));
            }
        };
        let source: Arc<[u8]> = serde_json::to_vec(&value).unwrap_or_default().into();
        match compile(&mut c, raw, source) {
            Some(workflow) if c.diagnostics.is_empty() => Ok(workflow),
            _ => Err(Diagnostics(c.diagnostics)),
        }
    }
}

/// Content hash of a definition: the first 16 hex digits of its SHA-256.
pub fn content_hash(source: &[u8]) -> String {
    let digest = Sha256::digest(source);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_name(name: &str, allow_dash: bool) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (allow_dash && b == b'-')
        })
}

fn compile(c: &mut Collector<'_>, raw: WorkflowFile, source: Arc<[u8]>) -> Option<Workflow> {
    if !valid_name(&raw.name, true) {
        c.error(
            "name",
            format!(
                "invalid workflow name `{}`: use lowercase letters, digits, `_` and `-`",
                raw.name
            ),
        );
    }
    let timeout = raw.timeout.as_deref().and_then(|t| {
        parse_duration(t, false)
            .map_err(|e| c.error("timeout", e))
            .ok()
    });
    if raw.max_active_runs == Some(0) {
        c.error("max_active_runs", "must be at least 1");
    }
    if raw.tasks.is_empty() {
        c.error("tasks", "a workflow needs at least one task");
    }
    let defaults = raw.defaults.clone().unwrap_or_default();
    let default_retry = defaults
        .retry
        .as_ref()
        .map(|r| compile_retry(c, "defaults.retry", r))
        .unwrap_or_default();
    let default_timeout = defaults.timeout.as_deref().and_then(|t| {
        parse_duration(t, false)
            .map_err(|e| c.error("defaults.timeout", e))
            .ok()
    });

    // Pass 1: common keys, kinds, ids.
    struct Partial {
        common: TaskCommon,
        kind: KindName,
        config: TemplateValue,
    }
    let mut partials: Vec<Option<Partial>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, task) in raw.tasks.iter().enumerate() {
        let at = format!("tasks[{i}]");
        let partial = parse_task(c, &at, &task.0);
        if let Some(p) = &partial {
            if !valid_name(&p.0.id, false) {
                c.error(
                    format!("{at}.id"),
                    format!(
                        "invalid task id `{}`: use lowercase letters, digits and `_`",
                        p.0.id
                    ),
                );
            }
            if let Some(first) = index.get(&p.0.id) {
                c.error(
                    format!("{at}.id"),
                    format!(
                        "duplicate task id `{}` (first used at tasks[{first}])",
                        p.0.id
                    ),
                );
            } else {
                index.insert(p.0.id.clone(), i);
            }
        } else if let Some(Value::String(id)) = task.0.get("id") {
            // Keep the id known so dependents do not report it as unknown.
            index.entry(id.clone()).or_insert(i);
        }
        partials.push(partial.map(|(common, kind, config)| Partial {
            common,
            kind,
            config,
        }));
    }

    // Pass 2: dependencies, expressions, durations.
    let mut tasks: Vec<Task> = Vec::new();
    for (i, partial) in partials.into_iter().enumerate() {
        let Some(Partial {
            common,
            kind,
            config,
        }) = partial
        else {
            continue;
        };
        let at = format!("tasks[{i}]");
        let after = compile_after(c, &at, &common, &index, i);
        let when = common.when.as_deref().and_then(|w| {
            Condition::parse(w)
                .map_err(|e| c.error(format!("{at}.when"), e.message))
                .ok()
        });
        let vars = compile_templates(c, &format!("{at}.vars"), &common.vars);
        let export = compile_templates(c, &format!("{at}.export"), &common.export);
        for name in common.export.keys() {
            if !is_identifier(name) {
                c.error(
                    format!("{at}.export.{name}"),
                    format!("export name `{name}` must be an identifier (letters, digits, `_`)"),
                );
            }
        }
        let retry = match &common.retry {
            Some(r) => compile_retry(c, &format!("{at}.retry"), r),
            None => default_retry.clone(),
        };
        let timeout = match &common.timeout {
            Some(t) => parse_duration(t, false)
                .map_err(|e| c.error(format!("{at}.timeout"), e))
                .ok(),
            None => default_timeout,
        };
        // Sub-workflows, and checks for another workflow's run, run on the
        // daemon (they read its state): a workflow-wide queue leaves them there.
        let on_daemon = kind == "workflow"
            || (kind == "check"
                && raw.tasks[i]
                    .0
                    .get("check")
                    .is_some_and(|check| check.get("run").is_some()));
        let queue = common
            .queue
            .clone()
            .or_else(|| (!on_daemon).then(|| defaults.queue.clone()).flatten());
        if let Some(queue) = &queue {
            let at = if common.queue.is_some() {
                format!("{at}.queue")
            } else {
                "defaults.queue".to_string()
            };
            if queue.trim().is_empty() {
                c.error(at, "queue name must not be empty");
            } else if let Err(e) =
                crate::amqp::short("queue name", &crate::remote::protocol::waits_queue(queue))
            {
                c.error(at, e);
            } else if kind == "workflow" {
                c.error(
                    at,
                    "a `workflow` task runs on the daemon (its child run's tasks may use `queue`)",
                );
            } else if on_daemon {
                c.error(
                    at,
                    "a check for another workflow's `run` is answered by the daemon's log: \
                     it takes no `queue`",
                );
            }
        }
        let start_timeout = match common
            .start_timeout
            .as_ref()
            .or(defaults.start_timeout.as_ref())
        {
            Some(text) => {
                let key = if common.start_timeout.is_some() {
                    format!("{at}.start_timeout")
                } else {
                    "defaults.start_timeout".to_string()
                };
                if queue.is_none() && common.start_timeout.is_some() {
                    c.error(
                        key.clone(),
                        "applies to remote tasks only: give the task a `queue`",
                    );
                }
                parse_duration(text, false)
                    .map_err(|e| c.error(key, e))
                    .ok()
            }
            None => None,
        };
        tasks.push(Task {
            id: common.id,
            kind,
            config,
            after,
            when,
            vars,
            export,
            retry,
            timeout,
            allow_failure: common.allow_failure,
            queue,
            start_timeout,
            dependents: Vec::new(),
            failure_handled: false,
        });
    }
    // Cycles are looked for even when other tasks have errors: every task
    // that compiled contributes its edges (by position in the file).
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.tasks.len()];
    let mut ids: Vec<String> = vec![String::new(); raw.tasks.len()];
    for (id, &position) in &index {
        if let Some(slot) = ids.get_mut(position) {
            slot.clone_from(id);
        }
    }
    for task in &tasks {
        if let Some(&position) = index.get(&task.id) {
            edges[position] = task.after.deps().iter().map(|d| d.task).collect();
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let path: Vec<&str> = cycle.iter().map(|&i| ids[i].as_str()).collect();
        c.error(
            format!("tasks[{}].after", cycle[0]),
            format!("cycle: {}", path.join(" -> ")),
        );
    }
    if !c.diagnostics.is_empty() {
        return None;
    }
    // Every task compiled, so positions in `tasks` equal positions in the file.
    for i in 0..tasks.len() {
        let deps: Vec<Dep> = tasks[i].after.deps().to_vec();
        for dep in deps {
            if !tasks[dep.task].dependents.contains(&i) {
                tasks[dep.task].dependents.push(i);
            }
            if dep.on != DepOn::Success {
                tasks[dep.task].failure_handled = true;
            }
        }
    }
    let version = content_hash(&source);
    Some(Workflow {
        name: raw.name,
        description: raw.description,
        version,
        version_label: raw.version,
        vars: raw.vars,
        timeout,
        max_active_runs: raw.max_active_runs,
        on_overflow: raw.on_overflow.unwrap_or_default(),
        fail_fast: raw.fail_fast,
        tasks,
        source,
        file: None,
        index,
    })
}

fn parse_task(
    c: &mut Collector<'_>,
    at: &str,
    task: &Map<String, Value>,
) -> Option<(TaskCommon, KindName, TemplateValue)> {
    let mut common = Map::new();
    let mut kinds: Vec<(KindName, &Value)> = Vec::new();
    let mut ok = true;
    for (key, value) in task {
        if COMMON_KEYS.contains(&key.as_str()) {
            common.insert(key.clone(), value.clone());
        } else if let Some(kind) = executors::kind_name(key) {
            kinds.push((kind, value));
        } else {
            ok = false;
            c.error(
                format!("{at}.{key}"),
                format!(
                    "unknown key `{key}`; a task has one kind key ({}) and optional keys ({})",
                    executors::KIND_NAMES.join(", "),
                    COMMON_KEYS[1..].join(", ")
                ),
            );
        }
    }
    let id_hint = task
        .get("id")
        .and_then(Value::as_str)
        .map(|id| format!(" `{id}`"))
        .unwrap_or_default();
    let common: Option<TaskCommon> = match deserialize_all(&Value::Object(common)) {
        Ok(common) => Some(common),
        Err(errors) => {
            for (path, message) in errors {
                c.error(join_path(at, &path), format!("task{id_hint}: {message}"));
            }
            None
        }
    };
    let kind = match kinds.as_slice() {
        [] => {
            c.error(
                at,
                format!(
                    "task{id_hint} has no kind: add exactly one of {}",
                    executors::KIND_NAMES.join(", ")
                ),
            );
            None
        }
        [(kind, config)] => {
            let kind_at = format!("{at}.{kind}");
            let mut kind_errors = Vec::new();
            if !c.stored {
                executors::validate_config(kind, config, &mut kind_errors);
            }
            let mut template_ok = true;
            if let Err(errors) = TemplateValue::compile(config) {
                template_ok = false;
                for (path, e) in errors {
                    // The kind's own check explains this place better (e.g. the
                    // `${…}`-in-script rule); report it once.
                    if !kind_errors.iter().any(|(p, _)| *p == path) {
                        c.error(format!("{kind_at}{path}"), e.message);
                    }
                }
            }
            for (path, message) in &kind_errors {
                c.error(
                    join_path(&kind_at, path),
                    format!("task{id_hint}: {message}"),
                );
            }
            if kind_errors.is_empty() && template_ok {
                TemplateValue::compile(config)
                    .ok()
                    .map(|compiled| (*kind, compiled))
            } else {
                None
            }
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(k, _)| *k).collect();
            c.error(
                at,
                format!(
                    "task{id_hint} has more than one kind ({}); a task has exactly one",
                    names.join(", ")
                ),
            );
            None
        }
    };
    match (common, kind, ok) {
        (Some(common), Some((kind, config)), true) => Some((common, kind, config)),
        _ => None,
    }
}

fn compile_after(
    c: &mut Collector<'_>,
    at: &str,
    common: &TaskCommon,
    index: &HashMap<String, usize>,
    own: usize,
) -> Dependencies {
    let path = format!("{at}.after");
    let Some(after) = &common.after else {
        return Dependencies::None;
    };
    // (entries with their paths, any?)
    let (entries, any): (Vec<(String, &Value)>, bool) = match after {
        Value::String(_) => (vec![(path.clone(), after)], false),
        Value::Array(items) => (
            items
                .iter()
                .enumerate()
                .map(|(n, v)| (format!("{path}[{n}]"), v))
                .collect(),
            false,
        ),
        Value::Object(map) => {
            let mut form = None;
            for (key, value) in map {
                match key.as_str() {
                    "all" | "any" if form.is_some() => {
                        c.error(format!("{path}.{key}"), "use either `all` or `any`, not both");
                    }
                    "all" | "any" => form = Some((key.as_str(), value)),
                    other => c.error(
                        format!("{path}.{other}"),
                        format!("unknown key `{other}`: `after` takes {{\"all\": [...]}} or {{\"any\": [...]}}"),
                    ),
                }
            }
            let Some((key, list)) = form else {
                if map.is_empty() {
                    c.error(path, "an object `after` needs `all` or `any`");
                }
                return Dependencies::None;
            };
            let Value::Array(items) = list else {
                c.error(
                    format!("{path}.{key}"),
                    format!("`{key}` takes a list of task ids"),
                );
                return Dependencies::None;
            };
            if items.is_empty() {
                c.error(
                    format!("{path}.{key}"),
                    format!("`{key}` needs at least one dependency"),
                );
            }
            (
                items
                    .iter()
                    .enumerate()
                    .map(|(n, v)| (format!("{path}.{key}[{n}]"), v))
                    .collect(),
                key == "any",
            )
        }
        other => {
            c.error(
                path,
                format!(
                    "`after` takes a task id, a list of them, or {{\"all\"|\"any\": [...]}}, got {}",
                    executors::json_type(other)
                ),
            );
            return Dependencies::None;
        }
    };
    let mut deps = Vec::new();
    for (entry_path, entry) in entries {
        let Value::String(entry) = entry else {
            c.error(
                entry_path,
                "a dependency is a task id string, e.g. \"probe\" or \"probe:failure\"",
            );
            continue;
        };
        let (id, on) = match entry.split_once(':') {
            None => (entry.as_str(), DepOn::Success),
            Some((id, "success")) => (id, DepOn::Success),
            Some((id, "failure")) => (id, DepOn::Failure),
            Some((id, "completion")) => (id, DepOn::Completion),
            Some((_, other)) => {
                c.error(
                    entry_path,
                    format!(
                        "unknown condition `{other}` in `{entry}`: use success, failure or completion"
                    ),
                );
                continue;
            }
        };
        match index.get(id) {
            Some(&task) if task == own => {
                c.error(entry_path, format!("task `{id}` cannot depend on itself"));
            }
            Some(&task) => {
                if deps.iter().any(|d: &Dep| d.task == task) {
                    c.error(entry_path, format!("task `{id}` is named twice"));
                } else {
                    deps.push(Dep { task, on });
                }
            }
            None => {
                let mut known: Vec<&str> = index.keys().map(String::as_str).collect();
                known.sort_unstable();
                c.error(
                    entry_path,
                    format!("unknown task id `{id}` (tasks: {})", known.join(", ")),
                );
            }
        }
    }
    if deps.is_empty() {
        Dependencies::None
    } else if any {
        Dependencies::Any(deps)
    } else {
        Dependencies::All(deps)
    }
}

fn compile_templates(
    c: &mut Collector<'_>,
    at: &str,
    map: &Map<String, Value>,
) -> Vec<(String, TemplateValue)> {
    let mut out = Vec::new();
    for (key, value) in map {
        match TemplateValue::compile(value) {
            Ok(t) => out.push((key.clone(), t)),
            Err(errors) => {
                for (path, e) in errors {
                    c.error(format!("{at}.{key}{path}"), e.message);
                }
            }
        }
    }
    out
}

fn compile_retry(c: &mut Collector<'_>, at: &str, raw: &RetryFile) -> RetryPolicy {
    let mut policy = RetryPolicy {
        max_attempts: raw.max_attempts.unwrap_or(3),
        ..RetryPolicy::default()
    };
    if policy.max_attempts == 0 {
        c.error(
            format!("{at}.max_attempts"),
            "must be at least 1 (it counts the first attempt)",
        );
    }
    if let Some(delay) = &raw.delay {
        match parse_duration(delay, true) {
            Ok(d) => policy.delay = d,
            Err(e) => c.error(format!("{at}.delay"), e),
        }
    }
    if let Some(backoff) = raw.backoff {
        if !(backoff.is_finite() && backoff >= 1.0) {
            c.error(
                format!("{at}.backoff"),
                format!("must be a number ≥ 1.0, got {backoff}"),
            );
        } else {
            policy.backoff = backoff;
        }
    }
    if let Some(max) = &raw.max_delay {
        match parse_duration(max, false) {
            Ok(d) => policy.max_delay = Some(d),
            Err(e) => c.error(format!("{at}.max_delay"), e),
        }
    }
    policy
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Finds one cycle in "depends on" edges, returned as task positions with
/// the first repeated at the end.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnStack;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &edges[node];
            if *next < deps.len() {
                let dep = deps[*next];
                *next += 1;
                match marks.get(dep) {
                    Some(Mark::New) => {
                        marks[dep] = Mark::OnStack;
                        stack.push((dep, 0));
                    }
                    Some(Mark::OnStack) => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        // The stack runs from dependent to dependency; print in
                        // execution order (dependency first).
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(n, _)| n).collect();
                        cycle.reverse();
                        cycle.push(cycle[0]);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                marks[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}
