//! Webhooks at `/hooks/<path>` (SPEC §4): the order of checks is size limit
//! (413) → signature over the raw body in constant time (401) → timestamp
//! tolerance (401) → parse (400). A refused request records nothing. An
//! accepted one answers 202 once its event and runs are durable, or with
//! `respond: "wait"` when the runs end.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{AppState, Error};
use crate::expr::MapScope;
use crate::reactor::event::{Event, WEBHOOK_REQUEST};
use crate::spec::binding::{Binding, Respond, Trigger, WebhookTrigger};
use crate::spec::config::REDACTED;
use crate::triggers::webhook;

/// Headers whose values are credentials: never stored in an event.
const HIDDEN_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];
/// Headers carrying the sender's delivery id, in order of preference.
const DELIVERY_ID_HEADERS: &[&str] = &["x-github-delivery", "webhook-id", "idempotency-key"];

fn refused(state: &AppState, error: Error) -> Response {
    state
        .reactor
        .metrics()
        .rejected
        .fetch_add(1, Ordering::Relaxed);
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
    let bindings: Vec<Arc<Binding>> = state.reactor.bindings_where(|b| {
        b.enabled && matches!(&b.trigger, Trigger::Webhook(w) if w.path == path)
    });
    let Some(Trigger::Webhook(hook)) = bindings.first().map(|b| &b.trigger) else {
        return refused(
            &state,
            Error::not_found(format!("no webhook at /hooks/{path}")),
        );
    };
    let hook: WebhookTrigger = hook.clone();
    if !hook.methods.iter().any(|m| m == method.as_str()) {
        let mut response = refused(
            &state,
            Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("/hooks/{path} accepts {}", hook.methods.join(", ")),
            ),
        );
        if let Ok(allow) = header::HeaderValue::from_str(&hook.methods.join(", ")) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    }

    // 1. Size: refuse early on Content-Length, and cap what is read.
    let too_large = || {
        Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", hook.max_body),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > hook.max_body as u64) {
        return refused(&state, too_large());
    }
    let body = match axum::body::to_bytes(body, hook.max_body).await {
        Ok(body) => body,
        Err(_) => return refused(&state, too_large()),
    };

    // 2–3. Signature over the raw body, then the signed timestamp.
    if let (Some(template), Some(scheme)) = (&hook.secret, hook.signature) {
        let mut scope = MapScope::default();
        scope
            .names
            .insert("secrets".into(), state.secrets.to_json());
        let secret = match template.render_string(&scope) {
            Ok(secret) if !secret.is_empty() => secret,
            Ok(_) | Err(_) => {
                tracing::error!(path = %path, "Webhook secret did not render; refusing requests.");
                return refused(
                    &state,
                    Error::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the webhook's secret is not configured on the server",
                    ),
                );
            }
        };
        let lookup = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let now = chrono::Utc::now().timestamp();
        if let Err(e) = webhook::verify(scheme, &secret, &lookup, &body, now) {
            return refused(
                &state,
                Error::new(StatusCode::UNAUTHORIZED, "unauthorized", e.0),
            );
        }
    }

    // 4. Parse.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (data, datacontenttype) = if body.iter().all(u8::is_ascii_whitespace) {
        (Value::Null, None)
    } else if content_type.is_empty() || content_type.contains("json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => (v, Some("application/json".to_string())),
            Err(e) => {
                return refused(
                    &state,
                    Error::bad_request(format!("invalid JSON body: {e}")),
                );
            }
        }
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) => (Value::String(text.to_string()), Some(content_type.clone())),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body)),
                Some(format!("{content_type};base64")),
            ),
        }
    };
    let query = match query {
        Ok(Query(pairs)) => pairs,
        Err(e) => return refused(&state, Error::bad_request(format!("invalid query: {e}"))),
    };

    let now = chrono::Utc::now().timestamp_millis();
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
    for (name, value) in &headers {
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
    let mut query_map = Map::new();
    for (k, v) in query {
        query_map.insert(k, Value::String(v));
    }
    event
        .switchyard
        .insert("headers".into(), Value::Object(header_map));
    event
        .switchyard
        .insert("query".into(), Value::Object(query_map));
    event
        .switchyard
        .insert("method".into(), Value::String(method.to_string()));

    let wait = hook.respond == Respond::Wait;
    let accepted = match state
        .reactor
        .submit(event.into_value(), &bindings, Vec::new(), wait)
        .await
    {
        Ok(accepted) => accepted,
        Err(e) => return Error::from(e).into_response(),
    };
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
