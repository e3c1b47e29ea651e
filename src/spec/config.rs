//! `switchyard.json`, the server config (SPEC §2). Every key is optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// The project directory (where the config file is); relative paths in
    /// bindings resolve against it. Not a key of the file.
    #[serde(skip)]
    pub base: PathBuf,
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
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file (trailing newline trimmed).
    File(PathBuf),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token required on `/api` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
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
        }
        if !c.diagnostics.is_empty() {
            return Err(Diagnostics(c.diagnostics));
        }
        let base = file.parent().unwrap_or(Path::new("."));
        Ok(config.resolved(base))
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
            };
            match value {
                Ok(value) => {
                    values.insert(name.clone(), value);
                }
                Err(message) => c.error(format!("secrets.{name}"), message),
            }
        }
        if c.diagnostics.is_empty() {
            Ok(Self { values })
        } else {
            Err(Diagnostics(c.diagnostics))
        }
    }

    pub fn from_values(values: BTreeMap<String, String>) -> Self {
        Self { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
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

    /// `text` with every secret value replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in self.values.values() {
            // Very short values would redact half of every text; they are
            // not secrets worth the name.
            if value.len() >= 4 && out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    /// Redacts every string inside a JSON value.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        if self.values.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => *s = self.redact(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }
}
