//! Talking to a running server's API (`runs …`, `trigger`).

use serde_json::Value;

use crate::spec::Config;

/// Where the server is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// `--server` wins, else the config's `listen`; the token comes from
    /// `SWITCHYARD_TOKEN` or the config's `api.token`.
    pub fn new(server: Option<&str>, config: &Config) -> Self {
        let server = server
            .map(str::to_string)
            .or_else(|| config.listen.clone())
            .unwrap_or_else(|| crate::spec::config::DEFAULT_LISTEN.to_string());
        let base = if server.starts_with("http://") || server.starts_with("https://") {
            server.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", server.trim_end_matches('/'))
        };
        let token = std::env::var("SWITCHYARD_TOKEN")
            .ok()
            .or_else(|| config.api.as_ref().and_then(|a| a.token.clone()));
        Self {
            base,
            token,
            http: {
                crate::tls::install_provider();
                reqwest::Client::new()
            },
        }
    }

    /// `GET /healthz` within two seconds: Ok when healthy, else what is
    /// wrong (no answer, or the server's own account: the log, the
    /// engine, each dead adapter and its error).
    pub async fn health(&self) -> Result<(), String> {
        let url = format!("{}/healthz", self.base);
        let request = self
            .http
            .get(&url)
            .timeout(std::time::Duration::from_secs(2));
        let response = request
            .send()
            .await
            .map_err(|e| format!("no answer from {url}: {e}"))?;
        if response.status().is_success() {
            return Ok(());
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let mut problems = Vec::new();
        for key in ["log", "engine"] {
            if let Some(text) = body.get(key).and_then(Value::as_str) {
                problems.push(format!("{key}: {text}"));
            }
        }
        if let Some(adapters) = body.get("adapters").and_then(Value::as_object) {
            for (name, dead) in adapters {
                let error = dead.get("error").and_then(Value::as_str).unwrap_or("?");
                problems.push(format!("adapter {name} died: {error}"));
            }
        }
        if problems.is_empty() {
            problems.push(format!("{url} answered {status}"));
        }
        Err(problems.join("; "))
    }

    /// Sends a request; returns the JSON body of a 2xx, or the API's error message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {e} (is `switchyard serve` running? use --server, or --data-dir to work offline)", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| {
            format!(
                "the server at {} answered {status} with a body that is not JSON: {e}",
                self.base
            )
        })?;
        if status.is_success() {
            Ok(body)
        } else {
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            Err(format!("{status}: {message}"))
        }
    }
}

/// A [`Client`] for one command that blocks on its calls: the project's
/// config loaded, one current-thread runtime.
#[derive(Debug)]
pub struct Blocking {
    tokio: tokio::runtime::Runtime,
    pub client: Client,
}

impl Blocking {
    pub fn new(config_path: &std::path::Path, server: Option<&str>) -> Result<Self, String> {
        let config = super::load_config(config_path).map_err(|e| e.to_string())?;
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        Ok(Self {
            tokio,
            client: Client::new(server, &config),
        })
    }

    /// [`Client::call`], waited for.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        self.tokio.block_on(self.client.call(method, path, body))
    }

    /// [`Client::health`], waited for.
    pub fn health(&self) -> Result<(), String> {
        self.tokio.block_on(self.client.health())
    }
}
