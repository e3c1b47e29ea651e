//! Events and bindings: `POST /events` (a CloudEvent for `api` bindings),
//! `GET /events` (what each accepted event did, dedup hits included),
//! `GET /events/{id}`, `GET /bindings`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AppState, Error};
use crate::reactor::cloudevents;
use crate::reactor::event::rfc3339;
use crate::spec::binding::{Binding, Trigger};

/// Checks a POSTed CloudEvent (structured: the body is the event) and
/// fills the attributes it may leave out (`id`, `source`, `specversion`,
/// `time`). Extension attributes are kept; `switchyard` is reserved and
/// dropped.
pub fn api_event(body: &[u8], now: i64) -> Result<Value, String> {
    let event = cloudevents::structured(body).map_err(|e| {
        if serde_json::from_slice::<Value>(body).is_ok() {
            format!("the body must be a CloudEvent: a JSON object with at least `type` ({e})")
        } else {
            format!("invalid JSON body: {e}")
        }
    })?;
    api_event_value(event, now)
}

/// [`api_event`] on an event already decoded (binary mode, a batch's element).
pub fn api_event_value(mut event: Map<String, Value>, now: i64) -> Result<Value, String> {
    match event.get("type") {
        Some(Value::String(t)) if t.trim().is_empty() => return Err("`type` is empty".into()),
        Some(Value::String(t)) if t.starts_with("switchyard.") => {
            return Err(format!(
                "type `{t}` is reserved for switchyard's own adapters; use your own type"
            ));
        }
        Some(Value::String(_)) => {}
        Some(_) => return Err("`type` must be a string".into()),
        None => return Err("missing `type` (CloudEvents attribute)".into()),
    }
    match event.get("specversion") {
        None => {
            event.insert("specversion".into(), json!("1.0"));
        }
        Some(Value::String(v)) if v == "1.0" => {}
        Some(other) => {
            return Err(format!(
                "specversion {other} is not supported (use \"1.0\")"
            ));
        }
    }
    for key in [
        "id",
        "source",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
    ] {
        if let Some(v) = event.get(key)
            && !v.is_string()
        {
            return Err(format!("`{key}` must be a string"));
        }
    }
    if let Some(Value::String(time)) = event.get("time")
        && chrono::DateTime::parse_from_rfc3339(time).is_err()
    {
        return Err(format!("`time` `{time}` is not an RFC 3339 timestamp"));
    }
    if event
        .get("id")
        .and_then(Value::as_str)
        .is_none_or(|id| id.is_empty())
    {
        event.insert("id".into(), json!(uuid::Uuid::now_v7().to_string()));
    }
    event
        .entry("source")
        .or_insert_with(|| json!("/api/v1/events"));
    event.entry("time").or_insert_with(|| json!(rfc3339(now)));
    event.entry("data").or_insert(Value::Null);
    event.remove("switchyard");
    Ok(Value::Object(event))
}

/// `POST /events`: a CloudEvent in the HTTP binding's structured mode
/// (`application/cloudevents+json`, or plain JSON), binary mode (`ce-`
/// headers, the body as data) or a batch (`application/cloudevents-batch+json`,
/// each event recorded and answered on its own).
#[utoipa::path(
    post,
    path = "/events",
    tag = "events",
    request_body(content = serde_json::Value, description = "A CloudEvent (structured, binary `ce-` headers, or a batch)", content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded: `{event_id, runs, outcomes}`", body = serde_json::Value),
        (status = 207, description = "A batch, some events refused", body = serde_json::Value),
        (status = 400, description = "Not a CloudEvent", body = crate::api::ErrorBody),
    )
)]
pub async fn post_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let now = crate::time::now_millis();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let media = content_type.map(cloudevents::media_type);
    let refused = |e: String| {
        state
            .reactor
            .metrics()
            .refuse(crate::metrics::Refusal::BadBody);
        e
    };
    if media.as_deref() == Some(cloudevents::BATCH) {
        let items = cloudevents::batch(&body)
            .map_err(refused)
            .map_err(Error::bad_request)?;
        let mut results = Vec::with_capacity(items.len());
        let mut all_accepted = true;
        for item in items {
            match item.and_then(|event| api_event_value(event, now)) {
                Ok(event) => results.push(submit_api_event(&state, event).await?),
                Err(e) => {
                    all_accepted = false;
                    let e = refused(e);
                    results.push(
                        json!({"status": 400, "error": {"code": "bad_request", "message": e}}),
                    );
                }
            }
        }
        let status = if all_accepted {
            StatusCode::ACCEPTED
        } else {
            StatusCode::MULTI_STATUS
        };
        return Ok((status, Json(json!({"events": results}))).into_response());
    }
    let decoded = if headers.contains_key("ce-specversion") {
        let ce_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        cloudevents::binary(ce_headers, content_type, &body)
            .and_then(|event| api_event_value(event, now))
    } else {
        api_event(&body, now)
    };
    let event = decoded.map_err(refused).map_err(Error::bad_request)?;
    let answer = submit_api_event(&state, event).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Records one API event with what each `api` binding did; says so when
/// none matched (the event is recorded all the same).
async fn submit_api_event(state: &AppState, event: Value) -> Result<Value, Error> {
    let bindings: Vec<Arc<Binding>> = state
        .reactor
        .bindings_where(|b| matches!(b.trigger, Trigger::Api));
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let accepted = state
        .reactor
        .submit(event, &bindings, Vec::new(), false)
        .await?;
    let mut answer = json!({
        "status": 202,
        "event_id": accepted.event_id,
        "runs": accepted.runs,
        "outcomes": accepted.outcomes,
    });
    if accepted.runs.is_empty() {
        answer["message"] = Value::String(if bindings.is_empty() {
            format!(
                "recorded; no binding listens to API events (`\"on\": {{\"api\": {{}}}}`), so nothing started for type `{event_type}`"
            )
        } else {
            format!(
                "recorded; no binding started a run for type `{event_type}` (see `outcomes`: each binding's filter or dedup)"
            )
        });
    }
    Ok(answer)
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    limit: Option<usize>,
    before: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 50)."),
        ("before" = Option<u64>, Query, description = "The cursor: events recorded before this sequence number."),
    ),
    responses(
        (status = 200, description = "`{\"events\": […], \"next\": cursor}`, newest first, each with its outcomes per binding", body = serde_json::Value),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    super::ApiQuery(query): super::ApiQuery<EventQuery>,
) -> Result<Json<Value>, Error> {
    let limit = super::page_limit(query.limit)?;
    let log = state.runtime.log().clone();
    let events = tokio::task::spawn_blocking(move || log.events(query.before, limit))
        .await
        .map_err(super::internal)??;
    let next = (events.len() == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let events: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({"events": events, "next": next})))
}

#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    params(
        ("id" = String, Path, description = "The event's id."),
    ),
    responses(
        (status = 200, description = "The event and its outcomes", body = serde_json::Value),
        (status = 404, description = "No such event", body = crate::api::ErrorBody),
    )
)]
pub async fn show_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let log = state.runtime.log().clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || log.event_by_id(&lookup))
        .await
        .map_err(super::internal)??;
    found
        .map(|e| Json(e.to_json()))
        .ok_or_else(|| Error::not_found(format!("no event with id `{id}`")))
}

/// A binding as the API shows it.
pub fn binding_json(binding: &Binding) -> Value {
    let mut out = json!({
        "name": binding.name,
        "description": binding.description,
        "trigger": binding.trigger.kind(),
        "on": binding.source.get("on"),
        "workflow": binding.workflow,
        "filter": binding.filter.as_ref().map(|f| f.source()),
        "params": binding.source.get("params").cloned().unwrap_or(json!({})),
        "dedup": {
            "key": binding.dedup_key_source(),
            "ttl": humantime::format_duration(binding.dedup_ttl).to_string(),
        },
        "enabled": binding.enabled,
        "expect": binding.source.get("expect"),
        "file": binding.file.as_ref().map(|f| f.display().to_string()),
    });
    match &binding.trigger {
        Trigger::Webhook(w) => out["url"] = json!(format!("/hooks/{}", w.path)),
        Trigger::Cron(c) => {
            out["schedule"] = json!(c.schedule.describe());
            out["next_fire"] = json!(
                c.schedule
                    .next_after(crate::time::now())
                    .map(crate::time::format)
            );
        }
        Trigger::File(f) => out["path"] = json!(f.path.display().to_string()),
        _ => {}
    }
    out
}

#[utoipa::path(
    get,
    path = "/bindings",
    tag = "bindings",
    responses(
        (status = 200, description = "The bindings loaded, rejected files, unbound queues", body = serde_json::Value),
    )
)]
pub async fn list_bindings(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    let registry = state.registry()?;
    let amqp = &state.reactor.metrics().amqp;
    let bindings: Vec<Value> = registry
        .bindings()
        .map(|b| {
            let mut out = binding_json(b);
            out["paused"] = json!(registry.is_paused(b));
            // An amqp binding's queue consumer: consuming, or why not.
            if let Trigger::Amqp(a) = &b.trigger {
                out["consumer"] = amqp.consumer(&a.queue).map_or(Value::Null, |c| {
                    json!({"queue": a.queue, "status": c.status, "error": c.error, "since": c.since})
                });
            }
            out
        })
        .collect();
    let errors = super::diagnostics_json(&registry.errors);
    let in_use: std::collections::HashSet<&str> = registry
        .bindings()
        .filter_map(|b| match &b.trigger {
            Trigger::Amqp(a) => Some(a.queue.as_str()),
            _ => None,
        })
        .collect();
    // Durable queues an earlier binding made and none uses now: they keep
    // what they hold until the operator deletes them.
    let unbound_queues: Vec<Value> = crate::triggers::amqp::queues_bound(state.runtime.log())
        .into_iter()
        .filter(|(queue, _)| !in_use.contains(queue.as_str()))
        .map(|(queue, _)| json!({"queue": queue, "reason": "no binding uses this durable queue any more; its broker bindings were removed"}))
        .collect();
    Ok(Json(
        json!({"bindings": bindings, "errors": errors, "unbound_queues": unbound_queues}),
    ))
}
