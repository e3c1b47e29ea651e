//! `http`: one HTTP request, through one client shared by every attempt (so
//! connections are kept alive across tasks and runs), over rustls with the
//! system's roots. A refused connection, a TLS error, a body over
//! `max_body` or a status outside `expect_status` fails the attempt with
//! that reason; the task's `retry` applies. The response is the output
//! either way, so an `on failure` task can read what the server said.

use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AttemptContext, AttemptOutcome, Kind, redact_userinfo, scalar_text};

/// Response bodies larger than this fail the attempt unless `max_body` says
/// otherwise.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fn get() -> String {
    "GET".into()
}

/// `"http": {"method": "POST", "url": "https://api.example.com/v1/alerts",
/// "json": {"campaign": "${vars.campaign_id}"}, "auth": {"bearer": "${secrets.token}"}}`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// `GET` (default), `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS`.
    #[serde(default = "get")]
    pub method: String,
    /// An `http://` or `https://` URL.
    pub url: String,
    /// Query parameters added to the URL (scalar values).
    #[serde(default)]
    pub query: Map<String, Value>,
    /// Request headers (scalar values).
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// A JSON body (`content-type: application/json`).
    #[serde(default)]
    pub json: Option<Value>,
    /// A text body, sent as given.
    #[serde(default)]
    pub body: Option<String>,
    /// A form body (`application/x-www-form-urlencoded`, scalar values).
    #[serde(default)]
    pub form: Option<Map<String, Value>>,
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Statuses that succeed: a code (`404`), a class (`"2xx"`), a range
    /// (`"200-299"`), or a list of those. Default `"2xx"`.
    #[serde(default)]
    pub expect_status: Option<ExpectStatus>,
    /// Largest response body read, in bytes (default 1 MiB); a larger one
    /// fails the attempt.
    #[serde(default)]
    pub max_body: Option<usize>,
}

/// `{"bearer": "<token>"}` or `{"basic": ["<user>", "<password>"]}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Auth {
    Bearer(String),
    Basic(String, String),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ExpectStatus {
    One(StatusPattern),
    Any(Vec<StatusPattern>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusPattern {
    Code(u16),
    Text(String),
}

/// A parsed status pattern: an inclusive range of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusRange(u16, u16);

impl StatusPattern {
    fn range(&self) -> Result<StatusRange, String> {
        let valid = |code: u16| (100..=599).contains(&code);
        match self {
            StatusPattern::Code(code) if valid(*code) => Ok(StatusRange(*code, *code)),
            StatusPattern::Code(code) => Err(format!("{code} is not an HTTP status (100-599)")),
            StatusPattern::Text(text) => {
                let text = text.trim();
                let lower = text.to_ascii_lowercase();
                if let Some(class) = lower.strip_suffix("xx")
                    && let Ok(digit @ 1..=5) = class.parse::<u16>()
                {
                    return Ok(StatusRange(digit * 100, digit * 100 + 99));
                }
                let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|c| valid(*c));
                if let Some((from, to)) = text.split_once('-')
                    && let (Some(from), Some(to)) = (parse(from), parse(to))
                    && from <= to
                {
                    return Ok(StatusRange(from, to));
                }
                if let Some(code) = parse(text) {
                    return Ok(StatusRange(code, code));
                }
                Err(format!(
                    "`{text}` is not a status pattern: give a code (404), a class (\"2xx\") or a range (\"200-299\")"
                ))
            }
        }
    }
}

impl ExpectStatus {
    /// Every status (a `check`'s polls judge the response themselves).
    pub(super) fn any() -> Self {
        ExpectStatus::One(StatusPattern::Text("100-599".into()))
    }

    /// Whether `status` is one of these (`check`'s default condition).
    pub(super) fn accepts(&self, status: u16) -> Result<bool, String> {
        Ok(self.ranges()?.iter().any(|r| (r.0..=r.1).contains(&status)))
    }

    fn ranges(&self) -> Result<Vec<StatusRange>, String> {
        match self {
            ExpectStatus::One(p) => Ok(vec![p.range()?]),
            ExpectStatus::Any(ps) if ps.is_empty() => {
                Err("an empty list matches no status".to_string())
            }
            ExpectStatus::Any(ps) => ps.iter().map(StatusPattern::range).collect(),
        }
    }

    pub(super) fn describe(&self) -> String {
        let one = |p: &StatusPattern| match p {
            StatusPattern::Code(c) => c.to_string(),
            StatusPattern::Text(t) => t.clone(),
        };
        match self {
            ExpectStatus::One(p) => one(p),
            ExpectStatus::Any(ps) => ps.iter().map(one).collect::<Vec<_>>().join(", "),
        }
    }
}

/// A connection not made within this fails the attempt (a task `timeout`
/// bounds the whole request).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A response that sends nothing for this long fails the attempt.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The client every attempt shares: its pool keeps connections alive
/// between tasks. Redirects are followed (up to 10) only to the same
/// origin, or from http to https on the same host: headers the task set
/// (an API key, say) never go to another server or over cleartext. Any
/// other redirect is the response, judged by `expect_status`.
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::tls::install_provider();
            reqwest::Client::builder()
                .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let Some(from) = attempt.previous().last() else {
                        return attempt.follow();
                    };
                    let to = attempt.url();
                    let same_origin = from.scheme() == to.scheme()
                        && from.host_str() == to.host_str()
                        && from.port_or_known_default() == to.port_or_known_default();
                    let upgrade = from.scheme() == "http"
                        && to.scheme() == "https"
                        && from.host_str() == to.host_str();
                    if attempt.previous().len() > 10 {
                        attempt.error("more than 10 redirects")
                    } else if same_origin || upgrade {
                        attempt.follow()
                    } else {
                        attempt.stop()
                    }
                }))
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Kind for Http {
    const NAME: &'static str = "http";

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        let bodies = [
            self.json.is_some(),
            self.body.is_some(),
            self.form.is_some(),
        ];
        if bodies.iter().filter(|b| **b).count() > 1 {
            errors.push((
                String::new(),
                "give one of `json`, `body` and `form`".to_string(),
            ));
        }
        if !self.method.contains("${")
            && !METHODS.contains(&self.method.to_ascii_uppercase().as_str())
        {
            errors.push((
                ".method".into(),
                format!("`{}` is not one of {}", self.method, METHODS.join(", ")),
            ));
        }
        if !self.url.contains("${")
            && let Err(e) = parse_url(&self.url)
        {
            errors.push((".url".into(), e));
        }
        if let Some(expect) = &self.expect_status
            && let Err(e) = expect.ranges()
        {
            errors.push((".expect_status".into(), e));
        }
        if self.max_body == Some(0) {
            errors.push((".max_body".into(), "must be at least 1 byte".into()));
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let request = match self.request() {
            Ok(request) => request,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let expected = match self.expect_status.as_ref().map(ExpectStatus::ranges) {
            None => vec![StatusRange(200, 299)],
            Some(Ok(ranges)) => ranges,
            Some(Err(e)) => {
                return AttemptOutcome::permanent_failure(format!("expect_status: {e}"));
            }
        };
        let max_body = self.max_body.unwrap_or(DEFAULT_MAX_BODY);
        let client = match client() {
            Ok(client) => client,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let exchange = async {
            let response = client
                .execute(request)
                .await
                .map_err(|e| describe_error(&self.url, &e))?;
            read_response(response, max_body).await
        };
        let response = tokio::select! {
            response = exchange => response,
            _ = ctx.cancel.cancelled() => return AttemptOutcome::failure("cancelled"),
        };
        let (status, output) = match response {
            Ok(response) => response,
            Err(e) => return AttemptOutcome::failure(e),
        };
        if expected.iter().any(|r| (r.0..=r.1).contains(&status)) {
            return AttemptOutcome::success(output);
        }
        let wanted = self
            .expect_status
            .as_ref()
            .map_or_else(|| "2xx".to_string(), ExpectStatus::describe);
        AttemptOutcome {
            output,
            ..AttemptOutcome::failure(format!(
                "{} {} answered {status}{}, expected {wanted}",
                self.method.to_ascii_uppercase(),
                redact_userinfo(&self.url),
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default(),
            ))
        }
    }
}

impl Http {
    fn request(&self) -> Result<reqwest::Request, String> {
        let method = reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|m| METHODS.contains(&m.as_str()))
            .ok_or_else(|| {
                format!(
                    "method `{}` is not one of {}",
                    self.method,
                    METHODS.join(", ")
                )
            })?;
        let url = parse_url(&self.url)?;
        let mut builder = client()?.request(method, url);
        if !self.query.is_empty() {
            let pairs = scalars("query", &self.query)?;
            builder = builder.query(&pairs);
        }
        for (name, value) in scalars("headers", &self.headers)? {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: `{name}` is not a header name"))?;
            let value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| format!("headers.{name}: not a valid header value"))?;
            builder = builder.header(name, value);
        }
        match &self.auth {
            Some(Auth::Bearer(token)) => builder = builder.bearer_auth(token),
            Some(Auth::Basic(user, password)) => builder = builder.basic_auth(user, Some(password)),
            None => {}
        }
        if let Some(json) = &self.json {
            builder = builder.json(json);
        } else if let Some(body) = &self.body {
            builder = builder.body(body.clone());
        } else if let Some(form) = &self.form {
            builder = builder.form(&scalars("form", form)?);
        }
        builder
            .build()
            .map_err(|e| format!("cannot build the request: {e}"))
    }
}

fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| format!("`{}` is not a URL: {e}", redact_userinfo(text)))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("scheme `{other}` is not http or https")),
    }
}

/// `(name, text)` pairs of a map of scalars.
fn scalars(what: &str, map: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
    map.iter()
        .map(|(k, v)| {
            scalar_text(v.clone())
                .map(|text| (k.clone(), text))
                .map_err(|e| format!("{what}.{k}: {e}"))
        })
        .collect()
}

/// The status and the output `{status, headers, body}`, the body read up
/// to `max_body` and parsed when it is JSON.
async fn read_response(
    mut response: reqwest::Response,
    max_body: usize,
) -> Result<(u16, Value), String> {
    let status = response.status().as_u16();
    let mut headers = Map::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(seen)) => {
                seen.push_str(", ");
                seen.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    if response
        .content_length()
        .is_some_and(|n| n > max_body as u64)
    {
        return Err(too_large(max_body));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the response body failed: {e}"))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(too_large(max_body));
        }
        body.extend_from_slice(&chunk);
    }
    let body = match is_json.then(|| serde_json::from_slice::<Value>(&body)) {
        Some(Ok(value)) => value,
        _ => Value::String(String::from_utf8_lossy(&body).into_owned()),
    };
    Ok((
        status,
        json!({"status": status, "headers": headers, "body": body}),
    ))
}

fn too_large(max_body: usize) -> String {
    format!("the response body is over max_body ({max_body} bytes)")
}

/// Why a request got no response, in words that name the cause.
fn describe_error(url: &str, error: &reqwest::Error) -> String {
    let url = redact_userinfo(url);
    // reqwest's own message is generic; the cause chain says what happened
    // (connection refused, certificate unknown, …).
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let what = if error.is_connect() {
        "cannot connect to"
    } else if error.is_timeout() {
        "timed out talking to"
    } else if error.is_redirect() {
        "too many redirects from"
    } else {
        "request failed:"
    };
    if causes.is_empty() {
        format!("{what} {url}: {error}")
    } else {
        format!("{what} {url}: {}", causes.join(": "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(p: StatusPattern) -> Result<StatusRange, String> {
        p.range()
    }

    #[test]
    fn status_patterns() {
        assert_eq!(range(StatusPattern::Code(404)), Ok(StatusRange(404, 404)));
        assert_eq!(
            range(StatusPattern::Text("2xx".into())),
            Ok(StatusRange(200, 299))
        );
        assert_eq!(
            range(StatusPattern::Text("5XX".into())),
            Ok(StatusRange(500, 599))
        );
        assert_eq!(
            range(StatusPattern::Text("200-204".into())),
            Ok(StatusRange(200, 204))
        );
        assert_eq!(
            range(StatusPattern::Text("409".into())),
            Ok(StatusRange(409, 409))
        );
        for bad in ["6xx", "abc", "300-200", "", "2x"] {
            assert!(range(StatusPattern::Text(bad.into())).is_err(), "{bad}");
        }
        assert!(range(StatusPattern::Code(42)).is_err());
        assert!(ExpectStatus::Any(Vec::new()).ranges().is_err());
    }

    #[test]
    fn a_password_in_a_url_is_never_shown() {
        assert_eq!(
            redact_userinfo("https://bot:hunter2@api.example.com/x"),
            "https://bot:***@api.example.com/x"
        );
        assert!(
            parse_url("ftp://x")
                .unwrap_err()
                .contains("not http or https")
        );
        assert!(
            !parse_url("https://u:hunter2@")
                .unwrap_err()
                .contains("hunter2")
        );
    }
}
