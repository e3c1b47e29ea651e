//! Binding files (SPEC §4): "when an event like this happens, start that
//! workflow with these params". A file holds one binding or an array.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Collector, Diagnostic, Diagnostics, deserialize_all, join_path, parse_duration};
use crate::expr::{Condition, Template, TemplateValue};
use crate::log::RunStatus;
use crate::spec::schedule::{Schedule, parse_timezone};

// ---------------------------------------------------------------------------
// Raw format (stage one)
// ---------------------------------------------------------------------------

/// A binding as written.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "switchyard binding")]
pub struct BindingFile {
    /// Editor hint; ignored.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Unique in the project: lowercase letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The trigger: exactly one of `amqp`, `file`, `webhook`, `cron`, `api`, `run`.
    pub on: TriggerFile,
    /// CEL condition over `event`; false: the event starts nothing here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The workflow to start.
    pub workflow: String,
    /// Run params: templates over `event`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupFile>,
    /// False: the binding is loaded and shown but starts nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `amqp` bindings: the largest message body accepted, in bytes
    /// (default 1 MiB). A larger message is rejected without requeue
    /// (dead-lettered where the queue has a DLX), logged and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<usize>,
    /// An absence alert: when no event came through this binding in time,
    /// the daemon records a `switchyard.binding.missed` event, which
    /// bindings with `on.missed` react to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectFile>,
}

/// When events are expected through a binding: `by` a schedule's instants
/// (each needs an event since the previous one) or `every` interval.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectFile {
    /// Crontab: by each instant, an event must have come since the previous instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// IANA timezone of `by` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Longest time without an event (humantime, e.g. "26h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

fn yes() -> bool {
    true
}

/// Exactly one trigger kind.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerFile {
    Amqp(AmqpTriggerFile),
    File(FileTriggerFile),
    Webhook(WebhookTriggerFile),
    Cron(CronTriggerFile),
    Api(ApiTriggerFile),
    Run(RunTriggerFile),
    Missed(MissedTriggerFile),
}

const TRIGGER_KINDS: &[&str] = &["amqp", "file", "webhook", "cron", "api", "run", "missed"];

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpTriggerFile {
    pub exchange: String,
    /// `topic` (default), `direct`, `fanout` or `headers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_type: Option<ExchangeType>,
    /// Default `#` (everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Default `switchyard.<binding name>`; declared durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Unacknowledged deliveries in flight (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeType {
    #[default]
    Topic,
    Direct,
    Fanout,
    Headers,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileTriggerFile {
    /// The watched directory (relative to the project directory).
    pub path: PathBuf,
    /// Glob on the file name (default `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Also watch subdirectories.
    #[serde(default)]
    pub recursive: bool,
    /// How long a file must stay unchanged before it fires (default "500ms").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<String>,
    /// Rescan the directory at this interval instead of watching it (for
    /// network filesystems, where kernel file events do not arrive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTriggerFile {
    /// Served at `/hooks/<path>`.
    pub path: String,
    /// Accepted methods (default `["POST"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Signing secret, usually `${secrets.name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureScheme>,
    /// `accepted` (default): 202 once durable; `wait`: answer when the run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// Largest body accepted (default 1 MiB); larger gets 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureScheme {
    /// `X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    HmacSha256,
    /// GitHub's `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// standardwebhooks.com: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
}

impl SignatureScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::HmacSha256 => "hmac-sha256",
            SignatureScheme::Github => "github",
            SignatureScheme::StandardWebhooks => "standard-webhooks",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Respond {
    #[default]
    Accepted,
    Wait,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CronTriggerFile {
    /// Crontab: 5 fields (standard numbering), 6/7 with seconds, or `@daily`-style macros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// A fixed interval instead of a schedule (humantime, e.g. "30s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// IANA timezone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Fires missed while down: `none`, `latest` (default) or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    None,
    #[default]
    Latest,
    All,
}

/// Events POSTed to `/api/v1/events`; use `filter` to pick by `event.type`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiTriggerFile {}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTriggerFile {
    /// The workflow whose runs are watched.
    pub workflow: String,
    /// End statuses that fire (default `["succeeded"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<RunStatus>>,
}

/// Absence alerts of another binding (its `expect`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MissedTriggerFile {
    /// The binding whose `expect` was not met.
    pub binding: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupFile {
    /// Template over `event` (default `${event.id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How long a key is remembered (default "7d").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

// ---------------------------------------------------------------------------
// Compiled form (stage two)
// ---------------------------------------------------------------------------

pub const DEFAULT_PREFETCH: u16 = 100;
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A validated binding.
#[derive(Debug)]
pub struct Binding {
    pub name: String,
    pub description: Option<String>,
    pub trigger: Trigger,
    pub filter: Option<Condition>,
    pub workflow: String,
    pub params: TemplateValue,
    /// None: the default key (the sender's delivery id, else `event.id`).
    pub dedup_key: Option<Template>,
    pub dedup_ttl: Duration,
    pub enabled: bool,
    /// Where it was loaded from.
    pub file: Option<PathBuf>,
    /// Its JSON path in that file: empty for a one-binding file, `[i]` in an array.
    pub at: String,
    /// The binding as written, for the API.
    pub source: Value,
    /// Its absence alert, if it has one.
    pub expect: Option<Expect>,
}

/// When events are expected through a binding.
#[derive(Debug, Clone)]
pub enum Expect {
    /// By each instant of the schedule, an event since the previous one.
    By(Schedule),
    /// At most this long between two events.
    Every(Duration),
}

impl Expect {
    /// For logs and the API: `by "0 6 * * *" in Europe/Berlin`, `every 26h`.
    pub fn describe(&self) -> String {
        match self {
            Expect::By(schedule) => format!("by {}", schedule.describe()),
            Expect::Every(every) => format!("every {}", humantime::format_duration(*every)),
        }
    }
}

#[derive(Debug)]
pub enum Trigger {
    Amqp(AmqpTrigger),
    File(FileTrigger),
    Webhook(WebhookTrigger),
    Cron(CronTrigger),
    Api,
    Run(RunTrigger),
    /// Absence alerts of the named binding.
    Missed(String),
}

impl Trigger {
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Amqp(_) => "amqp",
            Trigger::File(_) => "file",
            Trigger::Webhook(_) => "webhook",
            Trigger::Cron(_) => "cron",
            Trigger::Api => "api",
            Trigger::Run(_) => "run",
            Trigger::Missed(_) => "missed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AmqpTrigger {
    pub exchange: String,
    pub exchange_type: ExchangeType,
    pub routing_key: String,
    pub queue: String,
    pub prefetch: u16,
    /// Largest body accepted, in bytes.
    pub max_body: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileTrigger {
    /// Absolute (resolved against the project directory), lexically normalised.
    pub path: PathBuf,
    pub pattern: glob::Pattern,
    pub recursive: bool,
    pub settle: Duration,
    /// Rescan at this interval instead of watching.
    pub poll: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct WebhookTrigger {
    /// Normalised: no leading or trailing `/`.
    pub path: String,
    pub methods: Vec<String>,
    /// A template rendered with `secrets` in scope.
    pub secret: Option<Template>,
    pub signature: Option<SignatureScheme>,
    pub respond: Respond,
    pub max_body: usize,
}

#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub schedule: Schedule,
    pub catch_up: CatchUp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunTrigger {
    pub workflow: String,
    pub status: Vec<RunStatus>,
}

impl Binding {
    /// Loads one binding file: an object or an array of them. `workflow_exists`
    /// answers whether a workflow name is known; `base` resolves relative paths.
    pub fn load_file(
        file: &Path,
        base: &Path,
        workflow_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Binding>, Diagnostics> {
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) => {
                let mut c = Collector::new(file);
                c.error("", format!("cannot read file: {e}"));
                return Err(Diagnostics(c.diagnostics));
            }
        };
        Self::parse(file, &text, base, workflow_exists)
    }

    /// Validates binding file text (`file` names it in errors).
    pub fn parse(
        file: &Path,
        text: &[u8],
        base: &Path,
        workflow_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Binding>, Diagnostics> {
        let mut c = Collector::new(file);
        let value: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                c.error("", format!("invalid JSON: {e}"));
                return Err(Diagnostics(c.diagnostics));
            }
        };
        let items: Vec<(String, &Value)> = match &value {
            Value::Object(_) => vec![(String::new(), &value)],
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("[{i}]"), v))
                .collect(),
            _ => {
                c.error(
                    "",
                    "a binding file holds one binding object or a non-empty array of them",
                );
                return Err(Diagnostics(c.diagnostics));
            }
        };
        let mut bindings = Vec::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (at, item) in items {
            if let Some(mut binding) = compile(&mut c, &at, item, base, workflow_exists) {
                if !names.insert(binding.name.clone()) {
                    c.error(
                        join_path(&at, "name"),
                        format!("duplicate binding name `{}`", binding.name),
                    );
                }
                binding.file = Some(file.to_path_buf());
                bindings.push(binding);
            }
        }
        if c.diagnostics.is_empty() {
            Ok(bindings)
        } else {
            Err(Diagnostics(c.diagnostics))
        }
    }

    /// The dedup key template's source, for display.
    pub fn dedup_key_source(&self) -> String {
        let signed_body_only = matches!(&self.trigger, Trigger::Webhook(w)
            if matches!(w.signature, Some(SignatureScheme::HmacSha256 | SignatureScheme::Github)));
        self.dedup_key.as_ref().map_or_else(
            || {
                if signed_body_only {
                    "body:${event.switchyard.body_sha256}".to_string()
                } else {
                    "${event.id}".to_string()
                }
            },
            |t| match t {
                Template::Literal(s) => s.clone(),
                _ => self
                    .source
                    .pointer("/dedup/key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            },
        )
    }
}

/// Checks that bindings on the same source agree on what the source is: two
/// webhooks on one path must share their auth and response settings (one
/// request is checked once). Errors name the later binding.
pub fn check_shared_sources(bindings: &[&Binding]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut names: std::collections::HashMap<&str, &Binding> = std::collections::HashMap::new();
    let mut hooks: std::collections::HashMap<&str, &Binding> = std::collections::HashMap::new();
    for binding in bindings {
        let file = binding.file.clone().unwrap_or_default();
        if let Some(first) = names.get(binding.name.as_str()) {
            out.push(Diagnostic {
                file: file.clone(),
                path: join_path(&binding.at, "name"),
                message: format!(
                    "binding name `{}` is already used by {}",
                    binding.name,
                    first.file.as_deref().unwrap_or(Path::new("?")).display()
                ),
            });
            continue;
        }
        names.insert(&binding.name, binding);
        if let Trigger::Webhook(hook) = &binding.trigger {
            match hooks.get(hook.path.as_str()) {
                Some(first) => {
                    let Trigger::Webhook(other) = &first.trigger else {
                        continue;
                    };
                    let same = other.signature == hook.signature
                        && other.respond == hook.respond
                        && other.max_body == hook.max_body
                        && format!("{:?}", other.secret) == format!("{:?}", hook.secret);
                    if !same {
                        out.push(Diagnostic {
                            file,
                            path: join_path(&binding.at, "on.webhook"),
                            message: format!(
                                "webhook path `/hooks/{}` is also used by binding `{}` with other \
                                 secret, signature, respond or max_body_bytes settings; bindings \
                                 sharing a path must agree on them",
                                hook.path, first.name
                            ),
                        });
                    }
                }
                None => {
                    hooks.insert(&hook.path, binding);
                }
            }
        }
    }
    // `on.missed` names a binding that has an `expect`.
    for binding in bindings {
        let Trigger::Missed(target) = &binding.trigger else {
            continue;
        };
        let problem = match names.get(target.as_str()) {
            None => format!("no binding named `{target}` (its absence alerts are watched here)"),
            Some(other) if other.expect.is_none() => format!(
                "binding `{target}` has no `expect`, so it never misses: give it \
                 `\"expect\": {{\"every\": \"26h\"}}` or `{{\"by\": \"0 6 * * *\"}}`"
            ),
            Some(_) => continue,
        };
        out.push(Diagnostic {
            file: binding.file.clone().unwrap_or_default(),
            path: join_path(&binding.at, "on.missed.binding"),
            message: problem,
        });
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Lexically normalises a path (resolves `.` and `..` without touching the disk).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn compile(
    c: &mut Collector<'_>,
    at: &str,
    value: &Value,
    base: &Path,
    workflow_exists: &dyn Fn(&str) -> bool,
) -> Option<Binding> {
    let Some(object) = value.as_object() else {
        c.error(at, "a binding is a JSON object");
        return None;
    };
    // `on` is checked by hand first so that its mistakes get their own message.
    let mut on_ok = true;
    match object.get("on") {
        Some(Value::Object(on)) if on.len() == 1 => {
            let kind = on.keys().next().map(String::as_str).unwrap_or_default();
            if !TRIGGER_KINDS.contains(&kind) {
                c.error(
                    join_path(at, "on"),
                    format!(
                        "unknown trigger `{kind}`; expected one of: {}",
                        TRIGGER_KINDS.join(", ")
                    ),
                );
                on_ok = false;
            }
        }
        Some(Value::Object(on)) => {
            let keys: Vec<&str> = on.keys().map(String::as_str).collect();
            c.error(
                join_path(at, "on"),
                format!(
                    "`on` names exactly one trigger (one of: {}), found {}",
                    TRIGGER_KINDS.join(", "),
                    if keys.is_empty() {
                        "none".to_string()
                    } else {
                        keys.join(", ")
                    }
                ),
            );
            on_ok = false;
        }
        Some(_) => {
            c.error(
                join_path(at, "on"),
                "`on` is an object like {\"cron\": {…}}",
            );
            on_ok = false;
        }
        None => {}
    }
    let mut value = value.clone();
    if !on_ok && let Value::Object(map) = &mut value {
        map.remove("on");
    }
    let raw: BindingFile = match deserialize_all(&value) {
        Ok(raw) if on_ok => raw,
        Ok(_) => return None,
        Err(errors) => {
            for (path, message) in errors {
                if !on_ok && path.is_empty() && message.contains("missing field `on`") {
                    continue;
                }
                c.error(join_path(at, &path), message);
            }
            return None;
        }
    };
    let before = c.diagnostics.len();
    if !valid_name(&raw.name) {
        c.error(
            join_path(at, "name"),
            format!(
                "invalid binding name `{}`: use lowercase letters, digits, `_` and `-`",
                raw.name
            ),
        );
    }
    if !workflow_exists(&raw.workflow) {
        c.error(
            join_path(at, "workflow"),
            format!("unknown workflow `{}`", raw.workflow),
        );
    }
    let filter = raw.filter.as_deref().and_then(|f| {
        Condition::parse(f)
            .map_err(|e| c.error(join_path(at, "filter"), e.message))
            .ok()
    });
    let params = match TemplateValue::compile(&Value::Object(raw.params.clone())) {
        Ok(params) => Some(params),
        Err(errors) => {
            for (path, e) in errors {
                c.error(
                    join_path(&join_path(at, "params"), &path),
                    format!("invalid template: {e}"),
                );
            }
            None
        }
    };
    let dedup = raw.dedup.clone().unwrap_or_default();
    let dedup_key = dedup.key.as_deref().and_then(|k| {
        Template::parse(k)
            .map_err(|e| c.error(join_path(at, "dedup.key"), format!("invalid template: {e}")))
            .ok()
    });
    let dedup_ttl = match dedup.ttl.as_deref() {
        Some(ttl) => parse_duration(ttl, false)
            .map_err(|e| c.error(join_path(at, "dedup.ttl"), e))
            .unwrap_or(DEFAULT_DEDUP_TTL),
        None => DEFAULT_DEDUP_TTL,
    };
    match raw.max_body {
        Some(0) => c.error(join_path(at, "max_body"), "must be at least 1"),
        Some(_) if !matches!(raw.on, TriggerFile::Amqp(_)) => c.error(
            join_path(at, "max_body"),
            "applies to amqp bindings only (a webhook takes on.webhook.max_body_bytes)",
        ),
        _ => {}
    }
    let trigger = compile_trigger(c, &join_path(at, "on"), &raw, base, workflow_exists);
    let expect = raw
        .expect
        .as_ref()
        .and_then(|e| compile_expect(c, &join_path(at, "expect"), e));
    if c.diagnostics.len() > before {
        return None;
    }
    Some(Binding {
        name: raw.name.clone(),
        description: raw.description.clone(),
        trigger: trigger?,
        filter,
        workflow: raw.workflow.clone(),
        params: params?,
        dedup_key,
        dedup_ttl,
        enabled: raw.enabled,
        file: None,
        at: at.to_string(),
        source: value,
        expect,
    })
}

/// A binding's `expect`.
fn compile_expect(c: &mut Collector<'_>, at: &str, e: &ExpectFile) -> Option<Expect> {
    match (&e.by, &e.every) {
        (Some(_), Some(_)) => {
            c.error(
                at,
                "give either `by` (crontab) or `every` (interval), not both",
            );
            None
        }
        (None, None) => {
            c.error(
                at,
                "give `by` (a crontab: an event by each instant) or `every` (an interval: \
                 the longest time without an event)",
            );
            None
        }
        (Some(expr), None) => {
            let tz = match e.timezone.as_deref() {
                Some(name) => parse_timezone(name)
                    .map_err(|err| c.error(join_path(at, "timezone"), err))
                    .ok()?,
                None => chrono_tz::UTC,
            };
            Schedule::cron(expr, tz)
                .map(Expect::By)
                .map_err(|err| c.error(join_path(at, "by"), err))
                .ok()
        }
        (None, Some(every)) => {
            if e.timezone.is_some() {
                c.error(
                    join_path(at, "timezone"),
                    "`every` intervals do not use a timezone",
                );
            }
            let every = parse_duration(every, false)
                .map_err(|err| c.error(join_path(at, "every"), err))
                .ok()?;
            if every < Duration::from_secs(1) {
                c.error(join_path(at, "every"), "must be at least 1s");
                return None;
            }
            Some(Expect::Every(every))
        }
    }
}

/// The binding's trigger, compiled by its kind's own function.
fn compile_trigger(
    c: &mut Collector<'_>,
    at: &str,
    raw: &BindingFile,
    base: &Path,
    workflow_exists: &dyn Fn(&str) -> bool,
) -> Option<Trigger> {
    match &raw.on {
        TriggerFile::Amqp(a) => compile_amqp(c, at, a, raw),
        TriggerFile::File(f) => compile_file(c, at, f, base),
        TriggerFile::Webhook(w) => compile_webhook(c, at, w),
        TriggerFile::Cron(cr) => compile_cron(c, at, cr),
        TriggerFile::Api(_) => Some(Trigger::Api),
        TriggerFile::Run(r) => compile_run(c, at, r, workflow_exists),
        TriggerFile::Missed(m) => Some(Trigger::Missed(m.binding.clone())),
    }
}

/// The `amqp` trigger.
fn compile_amqp(
    c: &mut Collector<'_>,
    at: &str,
    a: &AmqpTriggerFile,
    raw: &BindingFile,
) -> Option<Trigger> {
    let at = join_path(at, "amqp");
    if a.exchange.trim().is_empty() {
        c.error(join_path(&at, "exchange"), "the exchange name is empty");
    }
    if a.prefetch == Some(0) {
        c.error(join_path(&at, "prefetch"), "must be at least 1");
    }
    let queue = a
        .queue
        .clone()
        .unwrap_or_else(|| format!("switchyard.{}", raw.name));
    if queue.trim().is_empty() {
        c.error(join_path(&at, "queue"), "the queue name is empty");
    } else if queue.starts_with("amq.") {
        c.error(
            join_path(&at, "queue"),
            "queue names starting with `amq.` are reserved by the broker",
        );
    }
    let routing_key = a.routing_key.as_deref().unwrap_or("#");
    for (key, value) in [
        ("exchange", a.exchange.as_str()),
        ("queue", queue.as_str()),
        ("routing_key", routing_key),
    ] {
        if value.len() > 255 {
            c.error(
                join_path(&at, key),
                format!("is {} bytes; AMQP allows 255", value.len()),
            );
        }
    }
    Some(Trigger::Amqp(AmqpTrigger {
        exchange: a.exchange.clone(),
        exchange_type: a.exchange_type.unwrap_or_default(),
        routing_key: a.routing_key.clone().unwrap_or_else(|| "#".into()),
        queue,
        prefetch: a.prefetch.unwrap_or(DEFAULT_PREFETCH),
        max_body: raw.max_body.unwrap_or(DEFAULT_MAX_BODY),
    }))
}

/// The `file` trigger.
fn compile_file(
    c: &mut Collector<'_>,
    at: &str,
    f: &FileTriggerFile,
    base: &Path,
) -> Option<Trigger> {
    let at = join_path(at, "file");
    if f.path.as_os_str().is_empty() {
        c.error(join_path(&at, "path"), "the watched path is empty");
    }
    let pattern_text = f.pattern.as_deref().unwrap_or("*");
    if pattern_text.contains('/') {
        c.error(
            join_path(&at, "pattern"),
            format!(
                "pattern `{pattern_text}` matches file names, not paths: drop the `/` (use `recursive` for subdirectories)"
            ),
        );
    }
    let pattern = glob::Pattern::new(pattern_text)
        .map_err(|e| {
            c.error(
                join_path(&at, "pattern"),
                format!("invalid glob `{pattern_text}`: {e}"),
            )
        })
        .ok();
    let settle = match f.settle.as_deref() {
        Some(s) => parse_duration(s, true)
            .map_err(|e| c.error(join_path(&at, "settle"), e))
            .ok(),
        None => Some(DEFAULT_SETTLE),
    };
    let poll = f.poll.as_deref().and_then(|p| {
        parse_duration(p, false)
            .map_err(|e| c.error(join_path(&at, "poll"), e))
            .ok()
    });
    let path = if f.path.is_absolute() {
        f.path.clone()
    } else {
        base.join(&f.path)
    };
    let path = normalize(&std::path::absolute(&path).unwrap_or(path));
    Some(Trigger::File(FileTrigger {
        path,
        pattern: pattern?,
        recursive: f.recursive,
        settle: settle?,
        poll,
    }))
}

/// The `webhook` trigger.
fn compile_webhook(c: &mut Collector<'_>, at: &str, w: &WebhookTriggerFile) -> Option<Trigger> {
    let at = join_path(at, "webhook");
    let path = w.path.trim_matches('/').to_string();
    let path_ok = !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        });
    if !path_ok {
        c.error(
            join_path(&at, "path"),
            format!(
                "invalid webhook path `{}`: use `/name` segments of letters, digits, `-`, `_`, `.`, `~`",
                w.path
            ),
        );
    }
    let methods: Vec<String> = w
        .methods
        .clone()
        .unwrap_or_else(|| vec!["POST".into()])
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.is_empty() {
        c.error(join_path(&at, "methods"), "at least one method is needed");
    }
    for (i, m) in methods.iter().enumerate() {
        if !["POST", "PUT", "PATCH", "GET", "DELETE"].contains(&m.as_str()) {
            c.error(
                join_path(&at, &format!("methods[{i}]")),
                format!("unsupported method `{m}` (POST, PUT, PATCH, GET, DELETE)"),
            );
        }
    }
    let secret = w.secret.as_deref().and_then(|s| {
        let t = Template::parse(s)
            .map_err(|e| c.error(join_path(&at, "secret"), format!("invalid template: {e}")))
            .ok()?;
        let other = t
            .expressions()
            .iter()
            .any(|e| !e.uses("secrets") || e.uses("event"));
        if other {
            c.error(
                join_path(&at, "secret"),
                "the secret may only use `${secrets.<name>}`",
            );
        }
        Some(t)
    });
    match (&secret, w.signature) {
        (Some(_), None) => c.error(
            join_path(&at, "signature"),
            "a secret needs a `signature` scheme: hmac-sha256, github or standard-webhooks",
        ),
        (None, Some(s)) => c.error(
            join_path(&at, "secret"),
            format!("signature `{}` needs a `secret`", s.as_str()),
        ),
        _ => {}
    }
    if w.max_body_bytes == Some(0) {
        c.error(join_path(&at, "max_body_bytes"), "must be at least 1");
    }
    Some(Trigger::Webhook(WebhookTrigger {
        path,
        methods,
        secret,
        signature: w.signature,
        respond: w.respond.unwrap_or_default(),
        max_body: w.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
    }))
}

/// The `cron` trigger.
fn compile_cron(c: &mut Collector<'_>, at: &str, cr: &CronTriggerFile) -> Option<Trigger> {
    let at = join_path(at, "cron");
    let tz = match cr.timezone.as_deref() {
        Some(name) => match parse_timezone(name) {
            Ok(tz) => Some(tz),
            Err(e) => {
                c.error(join_path(&at, "timezone"), e);
                None
            }
        },
        None => Some(chrono_tz::UTC),
    };
    let schedule = match (&cr.schedule, &cr.every) {
        (Some(_), Some(_)) => {
            c.error(at.clone(), "give either `schedule` or `every`, not both");
            None
        }
        (None, None) => {
            c.error(
                at.clone(),
                "give `schedule` (crontab) or `every` (interval)",
            );
            None
        }
        (Some(expr), None) => tz.and_then(|tz| {
            Schedule::cron(expr, tz)
                .map_err(|e| c.error(join_path(&at, "schedule"), e))
                .ok()
        }),
        (None, Some(every)) => {
            if cr.timezone.is_some() {
                c.error(
                    join_path(&at, "timezone"),
                    "`every` intervals do not use a timezone",
                );
            }
            parse_duration(every, false)
                .and_then(Schedule::every)
                .map_err(|e| c.error(join_path(&at, "every"), e))
                .ok()
        }
    };
    Some(Trigger::Cron(CronTrigger {
        schedule: schedule?,
        catch_up: cr.catch_up.unwrap_or_default(),
    }))
}

/// The `run` trigger.
fn compile_run(
    c: &mut Collector<'_>,
    at: &str,
    r: &RunTriggerFile,
    workflow_exists: &dyn Fn(&str) -> bool,
) -> Option<Trigger> {
    let at = join_path(at, "run");
    if !workflow_exists(&r.workflow) {
        c.error(
            join_path(&at, "workflow"),
            format!("unknown workflow `{}`", r.workflow),
        );
    }
    let status = r
        .status
        .clone()
        .unwrap_or_else(|| vec![RunStatus::Succeeded]);
    if status.is_empty() {
        c.error(join_path(&at, "status"), "at least one status is needed");
    }
    for (i, s) in status.iter().enumerate() {
        if !s.is_terminal() {
            c.error(
                join_path(&at, &format!("status[{i}]")),
                format!("`{s}` is not an end status (succeeded, failed, cancelled)"),
            );
        }
    }
    Some(Trigger::Run(RunTrigger {
        workflow: r.workflow.clone(),
        status,
    }))
}

/// The HMAC key of a standard-webhooks secret: a `whsec_` secret is the
/// base64 of the key (as the Standard Webhooks libraries issue them); any
/// other secret is used as it is. Checked when bindings load, so a bad
/// secret is a load-time error rather than a 401 on every request.
pub fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("the whsec_ secret is not valid base64 ({e})")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}
