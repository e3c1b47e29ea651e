//! Operations: pause and resume a binding or a whole workflow (durable),
//! and replay a recorded event to the current bindings.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, Error};
use crate::reactor::pause::{self, Target};
use crate::reactor::pins;
use crate::reactor::trigger_accepts;
use crate::spec::binding::Binding;
use crate::triggers::backfill;

#[utoipa::path(
    post,
    path = "/bindings/{name}/pause",
    tag = "bindings",
    params(
        ("name" = String, Path, description = "The binding's name."),
    ),
    responses(
        (status = 200, description = "Paused (durably)", body = serde_json::Value),
        (status = 404, description = "No such binding", body = crate::api::ErrorBody),
    )
)]
pub async fn pause_binding(state: State<AppState>, name: Path<String>) -> Result<Response, Error> {
    set(state, Target::Binding, name, true).await
}

#[utoipa::path(
    post,
    path = "/bindings/{name}/resume",
    tag = "bindings",
    params(
        ("name" = String, Path, description = "The binding's name."),
    ),
    responses(
        (status = 200, description = "Resumed", body = serde_json::Value),
        (status = 404, description = "No such binding", body = crate::api::ErrorBody),
    )
)]
pub async fn resume_binding(state: State<AppState>, name: Path<String>) -> Result<Response, Error> {
    set(state, Target::Binding, name, false).await
}

#[utoipa::path(
    post,
    path = "/workflows/{name}/pause",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    responses(
        (status = 200, description = "Every binding of the workflow paused", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = crate::api::ErrorBody),
    )
)]
pub async fn pause_workflow(state: State<AppState>, name: Path<String>) -> Result<Response, Error> {
    set(state, Target::Workflow, name, true).await
}

#[utoipa::path(
    post,
    path = "/workflows/{name}/resume",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    responses(
        (status = 200, description = "Resumed", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = crate::api::ErrorBody),
    )
)]
pub async fn resume_workflow(
    state: State<AppState>,
    name: Path<String>,
) -> Result<Response, Error> {
    set(state, Target::Workflow, name, false).await
}

/// Pauses or resumes; answers once it is durable and the adapters have
/// been told (an AMQP consumer stops, a file watcher stops).
async fn set(
    State(state): State<AppState>,
    target: Target,
    Path(name): Path<String>,
    paused: bool,
) -> Result<Response, Error> {
    {
        let registry = state.registry()?;
        let known = match target {
            Target::Binding => registry.binding(&name).is_some(),
            Target::Workflow => registry.get(&name).is_some(),
        };
        if !known {
            let what = match target {
                Target::Binding => "binding",
                Target::Workflow => "workflow",
            };
            return Err(Error::not_found(format!("no {what} named `{name}`")));
        }
    }
    let log = state.runtime.log().clone();
    let registry = Arc::clone(&state.registry);
    let key = name.clone();
    let changed =
        tokio::task::spawn_blocking(move || pause::set(&log, &registry, target, &key, paused))
            .await
            .map_err(super::internal)??;
    state.bindings_changed.notify_one();
    let since = pause::since(state.runtime.log(), target, &name);
    let kind = match target {
        Target::Binding => "binding",
        Target::Workflow => "workflow",
    };
    tracing::info!(kind, name, paused, changed, "Pause state set.");
    Ok((
        StatusCode::OK,
        Json(json!({kind: name, "paused": paused, "since": since, "changed": changed})),
    )
        .into_response())
}

/// `POST /events/{id}/replay`: the recorded event offered again to the
/// bindings of its source as they are now, bypassing dedup explicitly (each
/// run gets the dedup key `replay:<new event id>:<binding>`), recorded as a
/// new event `<id>#replay-<uuid>` whose `switchyard.replay_of` names the original.
#[utoipa::path(
    post,
    path = "/events/{id}/replay",
    tag = "events",
    params(
        ("id" = String, Path, description = "The recorded event's id."),
    ),
    responses(
        (status = 202, description = "Offered again to the current bindings", body = serde_json::Value),
        (status = 404, description = "No such event", body = crate::api::ErrorBody),
    )
)]
pub async fn replay_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let log = state.runtime.log().clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || log.event_by_id(&lookup))
        .await
        .map_err(super::internal)??;
    let Some(record) = found else {
        return Err(Error::not_found(format!("no event with id `{id}`")));
    };
    let original = record.event;
    let bindings: Vec<Arc<Binding>> = state
        .reactor
        .bindings_where(|b| b.enabled && trigger_accepts(b, &original).is_ok());
    let replay_id = format!("{id}#replay-{}", uuid::Uuid::now_v7().simple());
    let mut event = original.clone();
    event["id"] = Value::String(replay_id.clone());
    if !event.get("switchyard").is_some_and(Value::is_object) {
        event["switchyard"] = json!({});
    }
    event["switchyard"]["replay_of"] = Value::String(id.clone());
    let accepted = state.reactor.replay(event, &bindings).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "event_id": accepted.event_id,
            "replay_of": id,
            "runs": accepted.runs,
            "outcomes": accepted.outcomes,
        })),
    )
        .into_response())
}

/// `POST /bindings/{name}/backfill {from, to, dry_run}`: one run per
/// instant of a cron binding's schedule in `[from, to]`, oldest first; an
/// instant that already ran is reported as a duplicate. `dry_run` lists the
/// instants only.
#[utoipa::path(
    post,
    path = "/bindings/{name}/backfill",
    tag = "bindings",
    params(
        ("name" = String, Path, description = "The binding's name."),
    ),
    request_body(content = serde_json::Value, description = "`{\"from\": time, \"to\": time, \"dry_run\": bool}`", content_type = "application/json"),
    responses(
        (status = 202, description = "The backfill, or (dry run) the instants", body = serde_json::Value),
        (status = 400, description = "A bad range", body = crate::api::ErrorBody),
        (status = 404, description = "No such binding", body = crate::api::ErrorBody),
    )
)]
pub async fn backfill_binding(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let body = super::json_object(&body)?;
    if let Some(key) = body
        .keys()
        .find(|k| !["from", "to", "dry_run"].contains(&k.as_str()))
    {
        return Err(Error::bad_request(format!(
            "unknown key `{key}`; the body is {{\"from\": T, \"to\": T, \"dry_run\": bool}}"
        )));
    }
    let time = |key: &str| -> Result<chrono::DateTime<chrono::Utc>, Error> {
        match body.get(key) {
            Some(Value::String(text)) => {
                backfill::parse_time(text).map_err(|e| Error::bad_request(format!("`{key}`: {e}")))
            }
            _ => Err(Error::bad_request(format!(
                "`{key}` is required: an RFC 3339 time or a YYYY-MM-DD date"
            ))),
        }
    };
    let (from, to) = (time("from")?, time("to")?);
    let dry_run = match body.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::bad_request("`dry_run` must be true or false")),
    };
    let binding = state
        .registry()?
        .binding(&name)
        .cloned()
        .ok_or_else(|| Error::not_found(format!("no binding named `{name}`")))?;
    let fires = backfill::instants(&binding, from, to).map_err(Error::unprocessable)?;
    let times: Vec<String> = fires.iter().map(|t| crate::time::format(*t)).collect();
    if dry_run {
        return Ok(
            Json(json!({"binding": name, "dry_run": true, "instants": times})).into_response(),
        );
    }
    let recorded = backfill::start(&state.reactor, &binding, (from, to), &fires).await?;
    let started = recorded
        .instants
        .iter()
        .filter(|i| i.outcome == "started")
        .count();
    let duplicates = recorded
        .instants
        .iter()
        .filter(|i| i.outcome == "duplicate")
        .count();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "backfill": recorded,
            "started": started,
            "duplicates": duplicates,
        })),
    )
        .into_response())
}

/// `GET /backfills/{id}`: the backfill with each run's current status.
#[utoipa::path(
    get,
    path = "/backfills/{id}",
    tag = "bindings",
    params(
        ("id" = String, Path, description = "The backfill's id."),
    ),
    responses(
        (status = 200, description = "Its progress", body = serde_json::Value),
        (status = 404, description = "No such backfill", body = crate::api::ErrorBody),
    )
)]
pub async fn show_backfill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let recorded = backfill::find(&state.reactor, &id)?
        .ok_or_else(|| Error::not_found(format!("no backfill `{id}`")))?;
    let mut runs = Vec::new();
    for fired in &recorded.instants {
        if let Some(run_id) = fired.run_id {
            let status = state
                .runtime
                .run_record(run_id)
                .await?
                .map(|r| r.status.to_string());
            runs.push(
                json!({"scheduled_time": fired.scheduled_time, "run_id": run_id, "status": status}),
            );
        }
    }
    Ok(Json(json!({"backfill": recorded, "runs": runs})))
}

/// `POST /backfills/{id}/cancel`: cancels what the backfill started and has
/// not finished.
#[utoipa::path(
    post,
    path = "/backfills/{id}/cancel",
    tag = "bindings",
    params(
        ("id" = String, Path, description = "The backfill's id."),
    ),
    responses(
        (status = 200, description = "Cancelled: no more runs start", body = serde_json::Value),
        (status = 404, description = "No such backfill", body = crate::api::ErrorBody),
    )
)]
pub async fn cancel_backfill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let recorded = backfill::find(&state.reactor, &id)?
        .ok_or_else(|| Error::not_found(format!("no backfill `{id}`")))?;
    let cancelled = backfill::cancel(&state.reactor, &recorded).await;
    Ok(Json(json!({"backfill": id, "cancelled": cancelled})))
}

/// A version of `name` by hash (`current`: the file's).
fn version_of(
    state: &AppState,
    name: &str,
    version: &str,
) -> Result<Arc<crate::spec::Workflow>, Error> {
    let current = state
        .registry()?
        .get(name)
        .map(|e| Arc::clone(&e.current))
        .ok_or_else(|| Error::not_found(format!("no workflow named `{name}`")))?;
    if version == "current" || version == current.version {
        return Ok(current);
    }
    pins::version(state.runtime.log(), name, version).map_err(Error::not_found)
}

/// `GET /workflows/{name}/versions`: every version runs have used (and the
/// current one), oldest first: content hash, label, first seen, whether it
/// is current or pinned, and the definition.
#[utoipa::path(
    get,
    path = "/workflows/{name}/versions",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    responses(
        (status = 200, description = "Its versions: hash, first seen, current, pinned", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = crate::api::ErrorBody),
    )
)]
pub async fn list_versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let (current, pinned) = {
        let registry = state.registry()?;
        let current = registry
            .get(&name)
            .map(|e| Arc::clone(&e.current))
            .ok_or_else(|| Error::not_found(format!("no workflow named `{name}`")))?;
        (current, registry.pinned(&name).map(|w| w.version.clone()))
    };
    let log = state.runtime.log();
    let mut versions = Vec::new();
    let mut seen_current = false;
    for info in log.versions(&name)? {
        seen_current |= info.version == current.version;
        let definition = log
            .definition(&info.version)?
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        versions.push(json!({
            "version": info.version,
            "version_label": info.label,
            "first_seen": crate::time::rfc3339(info.first_run_at),
            "current": info.version == current.version,
            "pinned": pinned.as_deref() == Some(info.version.as_str()),
            "definition": definition,
        }));
    }
    if !seen_current {
        versions.push(json!({
            "version": current.version,
            "version_label": current.version_label,
            "first_seen": null,
            "current": true,
            "pinned": false,
            "definition": serde_json::from_slice::<Value>(&current.source).ok(),
        }));
    }
    Ok(Json(
        json!({"workflow": name, "pinned": pinned, "versions": versions}),
    ))
}

/// `GET /workflows/{name}/versions/{from}/diff/{to}`: an RFC 6902 JSON
/// Patch that turns one version's definition into the other's.
#[utoipa::path(
    get,
    path = "/workflows/{name}/versions/{from}/diff/{to}",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
        ("from" = String, Path, description = "A version (content hash)."),
        ("to" = String, Path, description = "Another version."),
    ),
    responses(
        (status = 200, description = "The RFC 6902 JSON Patch from one to the other", body = serde_json::Value),
        (status = 404, description = "No such workflow or version", body = crate::api::ErrorBody),
    )
)]
pub async fn diff_versions(
    State(state): State<AppState>,
    Path((name, from, to)): Path<(String, String, String)>,
) -> Result<Json<Value>, Error> {
    let (a, b) = (
        version_of(&state, &name, &from)?,
        version_of(&state, &name, &to)?,
    );
    Ok(Json(json!({
        "workflow": name,
        "from": a.version,
        "to": b.version,
        "patch": pins::diff(&a, &b),
    })))
}

/// `POST /workflows/{name}/pin {"version": hash}`: triggers (and runs by
/// hand, and sub-workflows) use that version until unpinned.
#[utoipa::path(
    post,
    path = "/workflows/{name}/pin",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    request_body(content = serde_json::Value, description = "`{\"version\": \"<hash>\"}`", content_type = "application/json"),
    responses(
        (status = 200, description = "Pinned: triggers run that version", body = serde_json::Value),
        (status = 404, description = "No such workflow or version", body = crate::api::ErrorBody),
    )
)]
pub async fn pin_workflow(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let body = super::json_object(&body)?;
    let Some(Value::String(version)) = body.get("version") else {
        return Err(Error::bad_request(
            "`version` is required: a content hash from GET /workflows/{name}/versions",
        ));
    };
    let workflow = version_of(&state, &name, version)?;
    let pinned = workflow.version.clone();
    let log = state.runtime.log().clone();
    let registry = Arc::clone(&state.registry);
    let key = name.clone();
    tokio::task::spawn_blocking(move || pins::set(&log, &registry, &key, Some(workflow)))
        .await
        .map_err(super::internal)??;
    tracing::info!(workflow = %name, version = %pinned, "Workflow pinned.");
    Ok(Json(json!({"workflow": name, "pinned": pinned})))
}

/// `POST /workflows/{name}/unpin`: back to the file's current version.
#[utoipa::path(
    post,
    path = "/workflows/{name}/unpin",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    responses(
        (status = 200, description = "Unpinned: back to the file's version", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = crate::api::ErrorBody),
    )
)]
pub async fn unpin_workflow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    state.workflow(&name)?;
    let log = state.runtime.log().clone();
    let registry = Arc::clone(&state.registry);
    let key = name.clone();
    tokio::task::spawn_blocking(move || pins::set(&log, &registry, &key, None))
        .await
        .map_err(super::internal)??;
    Ok(Json(json!({"workflow": name, "pinned": null})))
}

/// The version a run by hand uses: `version` if given, else the pinned
/// one, else the current one.
pub fn run_version(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<crate::spec::Workflow>, Error> {
    if let Some(version) = version {
        return version_of(state, name, version);
    }
    state
        .registry()?
        .serving(name)
        .ok_or_else(|| Error::not_found(format!("no workflow named `{name}`")))
}

/// `POST /bindings/backtest {"binding": {…} | "<name>", "since": "7d"}`:
/// what a binding (an edited one too, before it goes live) would have done
/// with the events recorded in the log since then: for each event its
/// trigger could have produced, the params it would have started its
/// workflow with and the dedup key, or why not. Nothing is started.
#[utoipa::path(
    post,
    path = "/bindings/backtest",
    tag = "bindings",
    request_body(content = serde_json::Value, description = "`{\"binding\": {…} | \"<name>\", \"since\": \"7d\", \"limit\": n}`", content_type = "application/json"),
    responses(
        (status = 200, description = "What the binding would have done with each recorded event", body = serde_json::Value),
        (status = 400, description = "A bad binding or body", body = crate::api::ErrorBody),
    )
)]
pub async fn backtest(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let body = super::json_object(&body)?;
    if let Some(key) = body
        .keys()
        .find(|k| !["binding", "since", "limit"].contains(&k.as_str()))
    {
        return Err(Error::bad_request(format!(
            "unknown key `{key}`; the body is {{\"binding\": {{…}} | \"<name>\", \"since\": \"7d\", \"limit\": 1000}}"
        )));
    }
    let since = match body.get("since") {
        None | Some(Value::Null) => std::time::Duration::from_secs(7 * 24 * 3600),
        Some(Value::String(text)) => humantime::parse_duration(text)
            .map_err(|e| Error::bad_request(format!("`since` `{text}`: {e}")))?,
        Some(_) => return Err(Error::bad_request("`since` is a duration such as \"7d\"")),
    };
    let limit = match body.get("limit") {
        None | Some(Value::Null) => 1000,
        Some(v) => {
            v.as_u64()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| Error::bad_request("`limit` is 1 to 10000"))? as usize
        }
    };
    let binding: Arc<Binding> = match body.get("binding") {
        Some(Value::String(name)) => state
            .registry()?
            .binding(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no binding named `{name}`")))?,
        Some(Value::Object(_)) => {
            let text = serde_json::to_vec(&body["binding"]).map_err(super::internal)?;
            let registry = state.registry()?;
            let exists = |name: &str| registry.get(name).is_some();
            let parsed = Binding::parse(
                std::path::Path::new("backtest.json"),
                &text,
                registry.base(),
                &exists,
            )
            .map_err(|d| Error::unprocessable(d.to_string()))?;
            let Some(binding) = parsed.into_iter().next() else {
                return Err(Error::unprocessable("the binding file holds no binding"));
            };
            Arc::new(binding)
        }
        _ => {
            return Err(Error::bad_request(
                "`binding` is required: a binding (as in a binding file) or a binding's name",
            ));
        }
    };
    let now = crate::time::now_millis();
    let cutoff = now.saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    let log = state.runtime.log().clone();
    let events = tokio::task::spawn_blocking(
        move || -> Result<Vec<crate::log::EventRecord>, crate::log::Error> {
            let mut out = Vec::new();
            let mut before = None;
            loop {
                let page = log.events(before, 500)?;
                let Some(last) = page.last() else { break };
                before = Some(last.seq);
                let done = page.len() < 500;
                for record in page {
                    if record.at < cutoff || out.len() >= limit {
                        return Ok(out);
                    }
                    out.push(record);
                }
                if done {
                    break;
                }
            }
            Ok(out)
        },
    )
    .await
    .map_err(super::internal)??;
    let examined = events.len();
    let mut results = Vec::new();
    for record in events {
        let event = &record.event;
        if trigger_accepts(&binding, event).is_err() {
            continue;
        }
        let mut result = json!({
            "event_id": event.get("id"),
            "type": event.get("type"),
            "time": event.get("time"),
        });
        match crate::reactor::evaluate(&binding, event, now) {
            crate::reactor::Evaluation::Matched { params, dedup_key } => {
                result["verdict"] = json!("match");
                result["params"] = Value::Object(params);
                result["dedup_key"] = json!(dedup_key);
            }
            crate::reactor::Evaluation::Filtered { reason } => {
                result["verdict"] = json!("filtered");
                result["reason"] = json!(reason);
            }
            crate::reactor::Evaluation::Failed { error } => {
                result["verdict"] = json!("failed");
                result["reason"] = json!(error);
            }
        }
        results.push(result);
    }
    let matched = results.iter().filter(|r| r["verdict"] == "match").count();
    Ok(Json(json!({
        "binding": binding.name,
        "workflow": binding.workflow,
        "since": humantime::format_duration(since).to_string(),
        "events_examined": examined,
        "from_this_trigger": results.len(),
        "would_start": matched,
        "results": results,
    })))
}

#[derive(Debug, serde::Deserialize)]
pub struct OccurrenceQuery {
    limit: Option<usize>,
    before: Option<String>,
}

/// `GET /bindings/{name}/occurrences`: a cron binding's occurrence log,
/// newest first (`?limit=`, `?before=<scheduled time>` pages back), with
/// its next fire times.
#[utoipa::path(
    get,
    path = "/bindings/{name}/occurrences",
    tag = "bindings",
    params(
        ("name" = String, Path, description = "The binding's name."),
        ("limit" = Option<usize>, Query, description = "At most this many."),
        ("before" = Option<String>, Query, description = "The cursor."),
    ),
    responses(
        (status = 200, description = "A cron binding's scheduled instants and what each did", body = serde_json::Value),
        (status = 404, description = "No such binding", body = crate::api::ErrorBody),
    )
)]
pub async fn binding_occurrences(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<OccurrenceQuery>,
) -> Result<Json<Value>, Error> {
    let limit = super::page_limit(query.limit)?;
    let before = match query.before.as_deref() {
        None => None,
        Some(text) => Some(
            backfill::parse_time(text).map_err(|e| Error::bad_request(format!("`before`: {e}")))?,
        ),
    };
    let (binding, paused) = {
        let registry = state.registry()?;
        let binding = registry
            .binding(&name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no binding named `{name}`")))?;
        let paused = registry.is_paused(&binding);
        (binding, paused)
    };
    let crate::spec::binding::Trigger::Cron(cron) = &binding.trigger else {
        return Err(Error::unprocessable(format!(
            "binding `{name}` is triggered by {}, not a schedule: only cron bindings have occurrences",
            binding.trigger.kind()
        )));
    };
    let now = crate::time::now();
    let next: Vec<String> = cron
        .schedule
        .fires_between(now, now + chrono::Duration::days(3660), 3)
        .into_iter()
        .map(crate::time::format)
        .collect();
    let log = state.runtime.log().clone();
    let lookup = name.clone();
    let occurrences = tokio::task::spawn_blocking(move || {
        crate::triggers::cron::occurrences(&log, &lookup, before, limit)
    })
    .await
    .map_err(super::internal)??;
    let next_page = (occurrences.len() == limit)
        .then(|| occurrences.last().map(|o| o.scheduled_time.clone()))
        .flatten();
    Ok(Json(json!({
        "binding": name,
        "schedule": cron.schedule.describe(),
        "catch_up": format!("{:?}", cron.catch_up).to_lowercase(),
        "paused": paused,
        "next_fires": next,
        "occurrences": occurrences,
        "next": next_page,
    })))
}
