//! `switchyard.json`, the server config (SPEC §2). Every key is optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Collector, Diagnostics, deserialize_all, join_path};

/// The config file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "switchyard config")]
pub struct Config {
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Directories of workflow files (default `["workflows"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<Vec<PathBuf>>,
    /// Directories of binding files (default `["bindings"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<Vec<PathBuf>>,
    /// Where the log lives (default `.switchyard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address (default `127.0.0.1:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpConfig>,
    /// Named secrets, read from the environment or a file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Upper bound on task attempts running at once (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_tasks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiConfig>,
    /// How long ended runs, events and task logs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionConfig>,
    /// Project-level vars: the lowest layer, under each workflow's own
    /// `vars` and a run's params. A run keeps the values it started with.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Named database connections for `sql` tasks (like Airflow
    /// connections): `{"shop": {"url": "${secrets.shop_db}"}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Remote workers (tasks with `queue`): heartbeat and result queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersConfig>,
    /// The project directory (where the config file is); relative paths in
    /// bindings resolve against it. Not a key of the file.
    #[serde(skip)]
    pub base: PathBuf,
    /// `bindings` was set in the file: its directories must exist (the
    /// default `bindings` may be missing: a project without bindings).
    /// Not a key of the file.
    #[serde(skip)]
    pub bindings_configured: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL (default env `AMQP_URL`, else `amqp://guest:guest@127.0.0.1:5672/%2f`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Exchange for lifecycle events; none are published without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_exchange: Option<String>,
    /// TLS for an `amqps://` URL: a private CA, a client certificate.
    /// Without it, an `amqps://` broker's certificate is checked against
    /// the system's roots. Not used with `amqp://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<AmqpTlsConfig>,
}

/// `amqp.tls`: the files for TLS to the broker (`amqps://` URLs), PEM,
/// relative paths against the project dir. Read and checked at start-up.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpTlsConfig {
    /// CA certificates (PEM) trusted for the broker's certificate in
    /// addition to the system's roots: a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM, the leaf first, then any intermediates)
    /// for brokers that require mutual TLS; set with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1,
    /// unencrypted); set with `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `workers`: how the daemon runs tasks on `switchyard worker` processes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// How often workers heartbeat each running attempt (humantime,
    /// default "10s"); an attempt silent for three intervals is lost and
    /// retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// The daemon's durable queue for workers' claims, heartbeats and
    /// results (default `switchyard.results`). Two daemons on one broker
    /// need two names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_queue: Option<String>,
}

/// A named database connection.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `postgres://`, `mysql://`, `mariadb://` or `sqlite://` URL; a
    /// template over `secrets` (e.g. `"${secrets.shop_db}"`). TLS is set in
    /// the URL (`sslmode=require` on PostgreSQL, `ssl-mode=REQUIRED` on MySQL).
    pub url: String,
    /// Connections in this connection's pool (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline trimmed).
    File(PathBuf),
    /// Read by the remote worker that runs the task, from this environment
    /// variable of its own: the daemon never holds the value. Only tasks
    /// with a `queue` can use it.
    Worker(String),
}

/// What a worker-resolved secret renders to on the daemon: a marker the
/// worker replaces with the value of its environment variable `var`.
pub fn worker_secret_marker(name: &str, var: &str) -> String {
    format!("\u{1}sy-secret:{name}:{var}\u{1}")
}

/// The first worker-resolved secret a rendered config uses, if any (a task
/// running on the daemon cannot use one).
pub fn worker_secret_used(config: &serde_json::Value) -> Option<String> {
    let text = config.to_string();
    let start = text.find("\\u0001sy-secret:")? + "\\u0001sy-secret:".len();
    let name = text[start..].split(':').next()?;
    Some(name.to_string())
}

/// Replaces the worker-secret markers in a rendered config with the
/// values of this process's environment; returns the values (to redact).
pub fn resolve_worker_secrets(config: &mut serde_json::Value) -> Result<Vec<String>, String> {
    fn walk(value: &mut serde_json::Value, found: &mut Vec<String>) -> Result<(), String> {
        match value {
            serde_json::Value::String(text) => {
                while let Some(start) = text.find("\u{1}sy-secret:") {
                    let rest = &text[start + "\u{1}sy-secret:".len()..];
                    let end = rest.find('\u{1}').ok_or("a malformed secret marker")?;
                    let (name, var) = rest[..end]
                        .split_once(':')
                        .ok_or("a malformed secret marker")?;
                    let secret = std::env::var(var).map_err(|_| {
                        format!("secret `{name}`: environment variable `{var}` is not set on this worker")
                    })?;
                    let marker_len = "\u{1}sy-secret:".len() + end + 1;
                    text.replace_range(start..start + marker_len, &secret);
                    found.push(secret);
                }
                Ok(())
            }
            serde_json::Value::Array(items) => items.iter_mut().try_for_each(|v| walk(v, found)),
            serde_json::Value::Object(map) => map.values_mut().try_for_each(|v| walk(v, found)),
            _ => Ok(()),
        }
    }
    let mut found = Vec::new();
    walk(config, &mut found)?;
    Ok(found)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token required on `/api` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `retention`: durations (humantime, e.g. `"30d"`, `"12h"`); what is older
/// is deleted in the background.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Ended runs with their records (default `30d`, by when they started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<String>,
    /// Accepted events (default `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<String>,
    /// Captured stdout/stderr of attempts (default `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_logs: Option<String>,
}

/// The retention periods in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub runs: std::time::Duration,
    pub events: std::time::Duration,
    pub task_logs: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            runs: std::time::Duration::from_secs(30 * DAY),
            events: std::time::Duration::from_secs(7 * DAY),
            task_logs: std::time::Duration::from_secs(30 * DAY),
        }
    }
}

pub const DEFAULT_MAX_PARALLEL_TASKS: usize = 16;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Config {
    /// Loads `file`; a missing file is the empty config only when `optional`.
    /// Relative paths inside are resolved against the file's directory.
    pub fn load(file: &Path, optional: bool) -> Result<Self, Diagnostics> {
        let mut c = Collector::new(file);
        let text = match std::fs::read(file) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default().resolved(Path::new(".")));
            }
            Err(e) => {
                c.error("", format!("cannot read config: {e}"));
                return Err(Diagnostics(c.diagnostics));
            }
        };
        let value: serde_json::Value = match serde_json::from_slice(&text) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            Ok(_) => {
                c.error("", "the config file holds one JSON object");
                return Err(Diagnostics(c.diagnostics));
            }
            Err(e) => {
                c.error("", format!("invalid JSON: {e}"));
                return Err(Diagnostics(c.diagnostics));
            }
        };
        let config: Config = match deserialize_all(&value) {
            Ok(config) => config,
            Err(errors) => {
                for (path, message) in errors {
                    c.error(join_path("", &path), message);
                }
                return Err(Diagnostics(c.diagnostics));
            }
        };
        if config.max_parallel_tasks == Some(0) {
            c.error("max_parallel_tasks", "must be at least 1");
        }
        if let Some(amqp) = &config.amqp {
            if let Some(url) = &amqp.url
                && let Err(e) = crate::amqp::parse_url(url)
            {
                c.error("amqp.url", e);
            }
            if let Some(exchange) = &amqp.events_exchange {
                if exchange.is_empty() {
                    c.error("amqp.events_exchange", "the exchange name is empty");
                } else if exchange.len() > 255 {
                    c.error("amqp.events_exchange", "is over 255 bytes, AMQP's limit");
                }
            }
            if let Some(tls) = &amqp.tls {
                match (&tls.cert_file, &tls.key_file) {
                    (Some(_), None) => c.error(
                        "amqp.tls.cert_file",
                        "is set without amqp.tls.key_file: a client certificate needs both",
                    ),
                    (None, Some(_)) => c.error(
                        "amqp.tls.cert_file",
                        "is missing: amqp.tls.key_file is set, and a client certificate needs both",
                    ),
                    _ => {}
                }
            }
        }
        for (name, connection) in &config.connections {
            let at = format!("connections.{name}");
            if name.is_empty() {
                c.error("connections", "a connection name is empty");
            }
            if connection.max_connections == Some(0) {
                c.error(format!("{at}.max_connections"), "must be at least 1");
            }
            match crate::expr::Template::parse(&connection.url) {
                Err(e) => c.error(format!("{at}.url"), format!("invalid template: {e}")),
                Ok(t) if !t.has_expressions() => {
                    if let Err(e) = crate::executors::sql::Databases::check_url(&connection.url) {
                        c.error(format!("{at}.url"), e);
                    }
                }
                Ok(_) => {}
            }
        }
        if let Err((key, message)) = config.retention() {
            c.error(format!("retention.{key}"), message);
        }
        if let Err((key, message)) = config.remote() {
            c.error(format!("workers.{key}"), message);
        }
        if !c.diagnostics.is_empty() {
            return Err(Diagnostics(c.diagnostics));
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let config = config.resolved(base);
        // The TLS files are checked here (the broker reads them again for
        // its connections), so a missing or broken one stops `validate`
        // and `serve` before anything connects.
        if let Some(tls) = config.amqp.as_ref().and_then(|a| a.tls.as_ref())
            && let Err(e) = crate::amqp::tls::load(tls)
        {
            c.error(e.json_path(), e.detail());
            return Err(Diagnostics(c.diagnostics));
        }
        Ok(config)
    }

    /// The retention periods (defaults for what is not set); the key and
    /// the error of a bad one.
    pub fn retention(&self) -> Result<Retention, (&'static str, String)> {
        let mut retention = Retention::default();
        let Some(raw) = &self.retention else {
            return Ok(retention);
        };
        for (key, text, slot) in [
            ("runs", &raw.runs, &mut retention.runs),
            ("events", &raw.events, &mut retention.events),
            ("task_logs", &raw.task_logs, &mut retention.task_logs),
        ] {
            if let Some(text) = text {
                *slot = super::parse_duration(text, false).map_err(|e| (key, e))?;
            }
        }
        Ok(retention)
    }

    /// How remote tasks run (defaults for what is not set); the key and
    /// the error of a bad one.
    pub fn remote(&self) -> Result<crate::remote::RemoteConfig, (&'static str, String)> {
        let mut remote = crate::remote::RemoteConfig::default();
        let Some(raw) = &self.workers else {
            return Ok(remote);
        };
        if let Some(text) = &raw.heartbeat {
            remote.heartbeat = super::parse_duration(text, false).map_err(|e| ("heartbeat", e))?;
            if remote.heartbeat < std::time::Duration::from_millis(100) {
                return Err(("heartbeat", "must be at least 100ms".into()));
            }
        }
        if let Some(queue) = &raw.results_queue {
            crate::amqp::short("queue name", queue).map_err(|e| ("results_queue", e))?;
            if queue.trim().is_empty() {
                return Err(("results_queue", "must not be empty".into()));
            }
            remote.results_queue = queue.clone();
        }
        Ok(remote)
    }

    fn resolved(mut self, base: &Path) -> Self {
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        self.base = base.to_path_buf();
        let resolve = |p: PathBuf| {
            if p.is_absolute() || base == Path::new(".") {
                p
            } else {
                base.join(p)
            }
        };
        self.workflows = Some(
            self.workflows
                .take()
                .unwrap_or_else(|| vec![PathBuf::from("workflows")])
                .into_iter()
                .map(resolve)
                .collect(),
        );
        self.bindings_configured |= self.bindings.is_some();
        self.bindings = Some(
            self.bindings
                .take()
                .unwrap_or_else(|| vec![PathBuf::from("bindings")])
                .into_iter()
                .map(resolve)
                .collect(),
        );
        self.data_dir = Some(resolve(
            self.data_dir
                .take()
                .unwrap_or_else(|| PathBuf::from(".switchyard")),
        ));
        if let Some(tls) = self.amqp.as_mut().and_then(|a| a.tls.as_mut()) {
            for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
                *file = file.take().map(resolve);
            }
        }
        self
    }

    pub fn workflow_dirs(&self) -> Vec<PathBuf> {
        self.workflows
            .clone()
            .unwrap_or_else(|| vec![PathBuf::from("workflows")])
    }

    pub fn binding_dirs(&self) -> Vec<PathBuf> {
        self.bindings
            .clone()
            .unwrap_or_else(|| vec![PathBuf::from("bindings")])
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".switchyard"))
    }

    pub fn max_parallel_tasks(&self) -> usize {
        self.max_parallel_tasks
            .unwrap_or(DEFAULT_MAX_PARALLEL_TASKS)
    }
}

/// Secret values resolved from the config, in scope as `secrets.<name>`.
/// Their values never reach the log: task output, logs and errors are
/// redacted with [`Secrets::redact`] before they are recorded.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
    /// Every distinct value, matched leftmost-longest in one pass: a short
    /// secret inside a longer one never leaves part of the longer visible.
    matcher: Option<Arc<aho_corasick::AhoCorasick>>,
    /// The values the matcher looks for (what output still arriving is
    /// checked against: [`Secrets::redact_prefix`]).
    patterns: Arc<Vec<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

/// What replaces a secret's value wherever it would surface.
pub const REDACTED: &str = "[redacted]";

impl Secrets {
    /// Reads every secret the config names; a missing variable or file is an error.
    pub fn resolve(config: &Config, file: &Path) -> Result<Self, Diagnostics> {
        Self::resolve_for(config, file, |_| true)
    }

    /// Reads every secret it can; only one that `needed` names and that
    /// cannot be read is an error (a one-off `run` needs what its workflow
    /// uses, not what a binding elsewhere does). Every secret read is
    /// redacted, needed or not.
    pub fn resolve_for(
        config: &Config,
        file: &Path,
        needed: impl Fn(&str) -> bool,
    ) -> Result<Self, Diagnostics> {
        let mut c = Collector::new(file);
        let mut values = BTreeMap::new();
        for (name, source) in &config.secrets {
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    format!("secret `{name}`: environment variable `{var}` is not set")
                }),
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("secret `{name}`: cannot read {}: {e}", path.display())),
                SecretSource::Worker(var) => Ok(worker_secret_marker(name, var)),
            };
            match value {
                Ok(value) => {
                    values.insert(name.clone(), value);
                }
                Err(message) if needed(name) => c.error(format!("secrets.{name}"), message),
                Err(_) => {}
            }
        }
        if c.diagnostics.is_empty() {
            Ok(Self::from_values(values))
        } else {
            Err(Diagnostics(c.diagnostics))
        }
    }

    /// Whether any secret is read by workers only (`{"worker": …}`).
    pub fn has_worker_secrets(&self) -> bool {
        self.values
            .values()
            .any(|v| v.starts_with("\u{1}sy-secret:"))
    }

    /// The secret values (for a remote job's redaction list).
    pub fn values(&self) -> impl Iterator<Item = String> + '_ {
        self.values.values().cloned()
    }

    pub fn from_values(values: BTreeMap<String, String>) -> Self {
        let (matcher, patterns) = matcher(values.values().cloned());
        Self {
            values,
            matcher,
            patterns,
        }
    }

    /// These secrets, also redacting `values` (the passwords inside
    /// connection URLs), which expressions do not see as `secrets`.
    pub fn also_redacting(self, values: impl IntoIterator<Item = String>) -> Self {
        let extra: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        if extra.is_empty() {
            return self;
        }
        let (matcher, patterns) = matcher(self.values.values().cloned().chain(extra));
        Self {
            values: self.values,
            matcher,
            patterns,
        }
    }

    /// Secrets so short that redacting them will also hide ordinary text
    /// (they are redacted all the same): the daemon warns about them.
    pub fn short_ones(&self) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(_, v)| v.len() < MIN_SECRET_LEN)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The longest secret value, in bytes: a text cut anywhere keeps every
    /// secret whole if it keeps this much more than it shows.
    pub fn longest(&self) -> usize {
        self.values.values().map(String::len).max().unwrap_or(0)
    }

    /// Nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.matcher.is_none()
    }

    /// The `secrets` object expressions see.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.values
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        )
    }

    /// For output still arriving: how many bytes of `bytes` can be shown
    /// now, and that prefix redacted. Shown pieces put end to end read
    /// exactly as [`Secrets::redact`] of the whole stream would: what
    /// could still be the start of a secret is held back (the longest end
    /// of `bytes` that begins some secret), a complete match crossing the
    /// cut is taken whole, and a cut never splits a UTF-8 character. With
    /// `all`, everything is shown (the stream ended).
    pub fn redact_prefix(&self, bytes: &[u8], all: bool) -> (String, usize) {
        let mut cut = bytes.len();
        if !all {
            let longest = self.matcher.as_ref().map_or(0, |m| m.max_pattern_len());
            let held = (1..longest.min(bytes.len() + 1))
                .rev()
                .find(|&k| {
                    let end = &bytes[bytes.len() - k..];
                    self.patterns
                        .iter()
                        .any(|p| p.len() > k && p.as_bytes().starts_with(end))
                })
                .unwrap_or(0);
            cut = bytes.len() - held;
            // Never inside a character: a sequence still incomplete at the
            // cut waits for its last bytes.
            if let Some(lead) = (cut.saturating_sub(3)..cut)
                .rev()
                .find(|&i| bytes[i] & 0xC0 != 0x80)
                && std::str::from_utf8(&bytes[lead..cut]).is_err_and(|e| e.error_len().is_none())
            {
                cut = lead;
            }
        }
        if let Some(matcher) = &self.matcher {
            for found in matcher.find_iter(bytes) {
                if found.start() >= cut {
                    break;
                }
                if found.end() > cut {
                    cut = found.end();
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes[..cut]);
        (self.redact(&text), cut)
    }

    /// `text` with every secret value replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        match &self.matcher {
            Some(matcher) if matcher.is_match(text) => {
                matcher.replace_all(text, &vec![REDACTED; matcher.patterns_len()])
            }
            _ => text.to_string(),
        }
    }

    /// Redacts every string inside a JSON value, object keys included.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        let Some(matcher) = &self.matcher else {
            return;
        };
        match value {
            serde_json::Value::String(s) if matcher.is_match(s.as_str()) => *s = self.redact(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                if map.keys().any(|k| matcher.is_match(k.as_str())) {
                    let entries = std::mem::take(map);
                    for (key, mut v) in entries {
                        self.redact_json(&mut v);
                        map.insert(self.redact(&key), v);
                    }
                } else {
                    map.values_mut().for_each(|v| self.redact_json(v));
                }
            }
            _ => {}
        }
    }
}

/// One leftmost-longest matcher over every distinct non-empty value (None
/// when there are none).
fn matcher(
    values: impl Iterator<Item = String>,
) -> (Option<Arc<aho_corasick::AhoCorasick>>, Arc<Vec<String>>) {
    let mut patterns: Vec<String> = values.filter(|v| !v.is_empty()).collect();
    patterns.sort_unstable();
    patterns.dedup();
    if patterns.is_empty() {
        return (None, Arc::default());
    }
    let matcher = aho_corasick::AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(&patterns)
        .ok()
        .map(Arc::new);
    (matcher, Arc::new(patterns))
}

/// Secrets shorter than this are warned about at start-up.
pub const MIN_SECRET_LEN: usize = 8;

#[cfg(test)]
mod redaction_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn secrets(values: &[(&str, &str)]) -> Secrets {
        Secrets::from_values(
            values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_longest_secret_wins_so_nothing_of_it_stays_visible() {
        // `short` is inside `long`: replacing `short` first would leave
        // `long`'s rest in the clear.
        let s = secrets(&[("short", "abc12345"), ("long", "xyzabc12345-tail")]);
        assert_eq!(s.redact("k=xyzabc12345-tail;"), "k=[redacted];");
        assert_eq!(s.redact("k=abc12345"), "k=[redacted]");
        assert_eq!(s.redact("nothing here"), "nothing here");
    }

    #[test]
    fn short_secrets_are_redacted_and_reported() {
        let s = secrets(&[("pin", "4711"), ("token", "a-long-enough-token")]);
        assert_eq!(s.redact("pin 4711"), "pin [redacted]");
        assert_eq!(s.short_ones(), ["pin"]);
        assert_eq!(s.longest(), 19);
    }

    /// Feeds `text` in pieces of `step` bytes the way live output arrives
    /// and returns what a follower is shown, end to end.
    fn streamed(s: &Secrets, text: &[u8], step: usize) -> (String, Vec<String>) {
        let (mut pending, mut shown, mut pieces) = (Vec::new(), String::new(), Vec::new());
        for chunk in text.chunks(step) {
            pending.extend_from_slice(chunk);
            let (piece, used) = s.redact_prefix(&pending, false);
            pending.drain(..used);
            shown.push_str(&piece);
            pieces.push(piece);
        }
        let (piece, used) = s.redact_prefix(&pending, true);
        assert_eq!(used, pending.len());
        shown.push_str(&piece);
        pieces.push(piece);
        (shown, pieces)
    }

    #[test]
    fn output_redacted_as_it_arrives_reads_as_the_whole_redacted() {
        let s = secrets(&[
            ("short", "abc12345"),
            ("long", "xyzabc12345-tail"),
            ("u", "sécret-é"),
        ]);
        let text = "a xyzabc12345-tail b abc12345 c xyzabc12345 d sécret-é é xyzabc1 abc1234\n";
        let whole = s.redact(text);
        for step in 1..text.len() + 1 {
            let (shown, pieces) = streamed(&s, text.as_bytes(), step);
            assert_eq!(shown, whole, "pieces of {step} bytes");
            for piece in pieces {
                assert!(
                    !piece.contains("12345-") && !piece.contains("sécret"),
                    "{piece:?}"
                );
            }
        }
        // Nothing that cannot begin a secret is held back.
        let (piece, used) = s.redact_prefix(b"plain line\n", false);
        assert_eq!((piece.as_str(), used), ("plain line\n", 11));
        let (piece, used) = s.redact_prefix(b"token xyzab", false);
        assert_eq!((piece.as_str(), used), ("token ", 6));
        // No secrets: everything but an unfinished character.
        let none = Secrets::default();
        let bytes = "ab\u{e9}".as_bytes();
        let (piece, used) = none.redact_prefix(&bytes[..3], false);
        assert_eq!((piece.as_str(), used), ("ab", 2));
    }

    #[test]
    fn json_keys_are_redacted_as_well_as_values() {
        let s = secrets(&[("token", "tok-123456789")]);
        let mut value = serde_json::json!({
            "tok-123456789": {"nested": ["x tok-123456789 y", 1]},
            "plain": "tok-123456789",
        });
        s.redact_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "[redacted]": {"nested": ["x [redacted] y", 1]},
                "plain": "[redacted]",
            })
        );
    }
}
