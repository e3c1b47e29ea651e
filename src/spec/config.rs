//! `switchyard.json`, the server config (SPEC §2). Every key is optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Collector, Diagnostics, join_path};

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
        let mut deserializer = serde_json::Deserializer::from_slice(&text);
        let config: Config = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(config) => config,
            Err(e) => {
                let path = join_path("", &e.path().to_string());
                c.error(path, e.into_inner().to_string());
                return Err(Diagnostics(c.diagnostics));
            }
        };
        if config.max_parallel_tasks == Some(0) {
            c.error("max_parallel_tasks", "must be at least 1");
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
