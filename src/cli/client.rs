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

impl Client {
    /// Reads a server-sent event stream (`GET`), calling `on_event(name,
    /// data)` for each event until it returns false or the stream ends. A
    /// non-2xx answer is the API's error message.
    pub async fn events(
        &self,
        path: &str,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), String> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| {
            format!(
                "cannot reach the server at {}: {e} (is `switchyard serve` running? use --server)",
                self.base
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or_default();
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or("request failed");
            return Err(format!("{status}: {message}"));
        }
        let mut parser = SseParser::default();
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| format!("the stream from {} broke: {e}", self.base))?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            for (name, data) in parser.feed(&chunk) {
                if !on_event(&name, &data) {
                    return Ok(());
                }
            }
        }
    }
}

/// Splits a `text/event-stream` into `(event, data)` pairs (the fields the
/// API sends: `event`, multi-line `data`; comments and `id`/`retry`
/// ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Option<String>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A CR LF is one line end; wait for the LF after a final CR.
            let mut next = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(end + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
            self.buffer.drain(..next);
            if line.is_empty() {
                if let Some(mut data) = self.data.take() {
                    if data.ends_with('\n') {
                        data.pop();
                    }
                    let name = std::mem::take(&mut self.event);
                    let name = if name.is_empty() {
                        "message".into()
                    } else {
                        name
                    };
                    events.push((name, data));
                }
                self.event.clear();
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    let data = self.data.get_or_insert_with(String::new);
                    data.push_str(value);
                    data.push('\n');
                }
                _ => {}
            }
        }
        events
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
