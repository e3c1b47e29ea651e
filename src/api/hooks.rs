//! Webhooks at `/hooks/<path>` (SPEC §4): the order of checks is size limit
//! (413) → signature over the raw body in constant time (401) → timestamp
//! tolerance (401) → parse (400). A refused request records nothing. An
//! accepted one answers 202 once its event and runs are durable, or with
//! `respond: "wait"` when the runs end.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::Digest as _;

use super::{AppState, Error};
use crate::expr::MapScope;
use crate::metrics::Refusal;
use crate::reactor::event::{Event, WEBHOOK_REQUEST};
use crate::spec::binding::{Binding, Respond, Trigger, WebhookTrigger};
use crate::spec::config::REDACTED;
use crate::triggers::webhook;

/// Headers whose values are credentials: never stored in an event.
const HIDDEN_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];
/// Headers carrying the sender's delivery id, in order of preference.
const DELIVERY_ID_HEADERS: &[&str] = &["x-github-delivery", "webhook-id", "idempotency-key"];

fn refused(state: &AppState, reason: crate::metrics::Refusal, error: Error) -> Response {
    state.reactor.metrics().refuse(reason);
    error.into_response()
}

pub async fn hook(
    State(state): State<AppState>,
    Path(path): Path<String>,
    method: Method,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let path = path.trim_matches('/').to_string();
    let (bindings, hook) = match route(&state, &path, &method) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    // 1. Size.
    let body = match read_body(&headers, body, hook.max_body).await {
        Ok(body) => body,
        Err(e) => return refused(&state, Refusal::TooLarge, e),
    };
    // 2–3. Signature over the raw body, then the signed timestamp.
    if let Err(e) = check_signature(&state, &path, &hook, &headers, &body) {
        return refused(&state, Refusal::Signature, e);
    }
    // 4. Parse.
    let (data, datacontenttype) = match parse_body(&headers, &body) {
        Ok(parsed) => parsed,
        Err(e) => return refused(&state, Refusal::BadBody, e),
    };
    let query = match query {
        Ok(Query(pairs)) => pairs,
        Err(e) => {
            let e = Error::bad_request(format!("invalid query: {e}"));
            return refused(&state, Refusal::BadBody, e);
        }
    };
    // 5. Record, then answer.
    let event = event(
        &state,
        &path,
        &method,
        &headers,
        query,
        &body,
        data,
        datacontenttype,
    );
    let wait = hook.respond == Respond::Wait;
    let accepted = match state
        .reactor
        .submit(event.into_value(), &bindings, Vec::new(), wait)
        .await
    {
        Ok(accepted) => accepted,
        Err(e) => return Error::from(e).into_response(),
    };
    respond(accepted, wait).await
}

/// The enabled bindings on this path and their (shared) webhook settings,
/// or the 404/405 answer.
fn route(
    state: &AppState,
    path: &str,
    method: &Method,
) -> Result<(Vec<Arc<Binding>>, WebhookTrigger), Box<Response>> {
    let bindings: Vec<Arc<Binding>> = state.reactor.bindings_where(|b| {
        b.enabled && matches!(&b.trigger, Trigger::Webhook(w) if w.path == path)
    });
    let Some(Trigger::Webhook(hook)) = bindings.first().map(|b| &b.trigger) else {
        return Err(Box::new(refused(
            state,
            Refusal::NoRoute,
            Error::not_found(format!("no webhook at /hooks/{path}")),
        )));
    };
    let hook: WebhookTrigger = hook.clone();
    if !hook.methods.iter().any(|m| m == method.as_str()) {
        let mut response = refused(
            state,
            Refusal::NoRoute,
            Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("/hooks/{path} accepts {}", hook.methods.join(", ")),
            ),
        );
        if let Ok(allow) = header::HeaderValue::from_str(&hook.methods.join(", ")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return Err(Box::new(response));
    }
    Ok((bindings, hook))
}

/// Step 1: refuse early on Content-Length, and cap what is read.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max_body: usize,
) -> Result<axum::body::Bytes, Error> {
    let too_large = || {
        Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {max_body} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max_body)
        .await
        .map_err(|_| too_large())
}

/// Steps 2–3: the signature over the raw body in constant time, then the
/// signed timestamp's tolerance.
fn check_signature(
    state: &AppState,
    path: &str,
    hook: &WebhookTrigger,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Error> {
    let (Some(template), Some(scheme)) = (&hook.secret, hook.signature) else {
        return Ok(());
    };
    let mut scope = MapScope::default();
    scope
        .names
        .insert("secrets".into(), state.secrets.to_json());
    let secret = match template.render_string(&scope) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) | Err(_) => {
            tracing::error!(path = %path, "Webhook secret did not render; refusing requests.");
            return Err(Error::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the webhook's secret is not configured on the server",
            ));
        }
    };
    let lookup = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let now = crate::time::now().timestamp();
    webhook::verify(scheme, &secret, &lookup, body, now)
        .map_err(|e| Error::new(StatusCode::UNAUTHORIZED, "unauthorized", e.0))
}

/// Step 4: the body as event data: JSON (declared, or undeclared), text,
/// or base64 for bytes.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Option<String>), Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((Value::Null, None));
    }
    if content_type.is_empty() || content_type.contains("json") {
        return serde_json::from_slice::<Value>(body)
            .map(|v| (v, Some("application/json".to_string())))
            .map_err(|e| Error::bad_request(format!("invalid JSON body: {e}")));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Ok((form_object(body)?, Some("application/json".to_string())));
    }
    Ok(match std::str::from_utf8(body) {
        Ok(text) => (Value::String(text.to_string()), Some(content_type)),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            Some(format!("{content_type};base64")),
        ),
    })
}

/// A form body as an object: each field a string (a repeated field an
/// array of them); a `payload` field holding JSON (GitHub's form-encoded
/// webhooks) is parsed.
fn form_object(body: &[u8]) -> Result<Value, Error> {
    let mut fields = serde_json::Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let value = Value::String(value.into_owned());
        match fields.get_mut(key.as_ref()) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                fields.insert(key.into_owned(), value);
            }
        }
    }
    if let Some(Value::String(payload)) = fields.get("payload") {
        let parsed = serde_json::from_str::<Value>(payload).map_err(|e| {
            Error::bad_request(format!("the form field `payload` is not JSON: {e}"))
        })?;
        fields.insert("payload".into(), parsed);
    }
    Ok(Value::Object(fields))
}

/// Step 5: the event envelope (CloudEvents attribute names). Its id is the sender's delivery
/// id where there is one; credentials in headers are never stored; the
/// body's SHA-256 is kept for the default dedup key of schemes that sign
/// no timestamp.
#[allow(clippy::too_many_arguments)]
fn event(
    state: &AppState,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    query: Vec<(String, String)>,
    body: &[u8],
    data: Value,
    datacontenttype: Option<String>,
) -> Event {
    let now = crate::time::now_millis();
    let delivery = DELIVERY_ID_HEADERS.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
    });
    let id = delivery.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut event = Event::new(id, format!("/hooks/{path}"), WEBHOOK_REQUEST, now);
    event.subject = Some(format!("/hooks/{path}"));
    event.datacontenttype = datacontenttype;
    event.data = data;
    let mut header_map = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        let value = if HIDDEN_HEADERS.contains(&name) {
            REDACTED.to_string()
        } else {
            state
                .secrets
                .redact(&String::from_utf8_lossy(value.as_bytes()))
        };
        header_map.insert(name.to_string(), Value::String(value));
    }
    let query_map: Map<String, Value> = query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let body_sha256 = hex::encode(sha2::Sha256::digest(body));
    let extension = &mut event.switchyard;
    extension.insert("headers".into(), Value::Object(header_map));
    extension.insert("query".into(), Value::Object(query_map));
    extension.insert("method".into(), Value::String(method.to_string()));
    extension.insert("body_sha256".into(), Value::String(body_sha256));
    event
}

/// 202 with the event and its runs once durable; with `respond: "wait"`,
/// 200 with the runs' ends.
async fn respond(accepted: crate::reactor::Accepted, wait: bool) -> Response {
    if !wait || accepted.ended.is_empty() {
        let body = json!({
            "event_id": accepted.event_id,
            "runs": accepted.runs,
            "outcomes": accepted.outcomes,
        });
        return (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    }
    let mut runs = Vec::new();
    for ended in accepted.ended {
        match ended.await {
            Ok(record) => runs.push(json!({
                "id": record.id,
                "workflow": record.workflow,
                "status": record.status,
                "vars": record.vars,
                "error": record.error,
            })),
            Err(_) => {
                return Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server stopped before the run ended; it resumes on restart",
                )
                .into_response();
            }
        }
    }
    let body = json!({
        "event_id": accepted.event_id,
        "runs": runs,
        "outcomes": accepted.outcomes,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
