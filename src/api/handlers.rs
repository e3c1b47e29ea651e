//! Request handlers of the API.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AppState, Error};
use crate::engine::RunRecord;
use crate::engine::rerun::RerunFrom;
use crate::log::{RunId, RunStatus};

pub async fn not_found() -> Error {
    Error::not_found("no such endpoint")
}

/// 200 when the engine runs, its log flushes and every trigger adapter
/// lives; 503 naming the problem otherwise (while the log cannot be
/// flushed, nothing is acknowledged; a dead adapter is being restarted,
/// and is listed until a restart has run for a while). An AMQP consumer
/// waiting for the broker is not dead: it is `GET /bindings`' `consumer`.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let log = state.runtime.gauges().log_error();
    let engine = state.runtime.fatal();
    let dead = state.reactor.metrics().adapters.dead();
    if log.is_none() && engine.is_none() && dead.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let body = json!({"status": "unhealthy", "log": log, "engine": engine, "adapters": dead});
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `GET /workers`: the workers heard from (queues, concurrency, running
/// attempts, last heartbeat) and the remote attempts waiting per queue.
#[utoipa::path(
    get,
    path = "/workers",
    tag = "workers",
    responses(
        (status = 200, description = "Remote workers heard from and remote attempts per queue", body = serde_json::Value),
    )
)]
pub async fn list_workers(State(state): State<AppState>) -> Json<Value> {
    match &state.remote {
        Some(remote) => Json(remote.workers_json()),
        None => Json(json!({"workers": [], "error": "no usable broker URL (amqp.url)"})),
    }
}

fn parse_run_id(text: &str) -> Result<RunId, Error> {
    RunId::parse_str(text)
        .map_err(|_| Error::bad_request(format!("`{text}` is not a run id (a UUID)")))
}

fn workflow_summary(workflow: &crate::spec::Workflow) -> Value {
    json!({
        "name": workflow.name,
        "description": workflow.description,
        "version": workflow.version,
        "version_label": workflow.version_label,
        "file": workflow.file.as_ref().map(|f| f.display().to_string()),
        "tasks": workflow.tasks.len(),
    })
}

#[utoipa::path(
    get,
    path = "/workflows",
    tag = "workflows",
    responses(
        (status = 200, description = "The workflows loaded and the errors of rejected files", body = serde_json::Value),
    )
)]
pub async fn list_workflows(State(state): State<AppState>) -> Result<Json<Value>, Error> {
    let registry = state.registry()?;
    let workflows: Vec<Value> = registry
        .workflows()
        .map(|e| {
            let mut summary = workflow_summary(&e.current);
            summary["paused"] = json!(registry.paused().workflows.contains(&e.current.name));
            summary["pinned"] = json!(registry.pinned(&e.current.name).map(|w| &w.version));
            summary
        })
        .collect();
    let errors = super::diagnostics_json(&registry.errors);
    Ok(Json(json!({"workflows": workflows, "errors": errors})))
}

#[utoipa::path(
    get,
    path = "/workflows/{name}",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    responses(
        (status = 200, description = "Definition, graph and versions", body = serde_json::Value),
        (status = 404, description = "No such workflow", body = crate::api::ErrorBody),
    )
)]
pub async fn show_workflow(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Error> {
    let entry = state.workflow(&name)?;
    let workflow = &entry.current;
    let mut versions: Vec<Value> = state
        .runtime
        .log()
        .versions(&name)?
        .into_iter()
        .map(|v| {
            json!({
                "version": v.version,
                "version_label": v.label,
                "first_run_at": crate::engine::rfc3339(v.first_run_at),
                "current": v.version == workflow.version,
            })
        })
        .collect();
    if !versions
        .iter()
        .any(|v| v["version"] == workflow.version.as_str())
    {
        versions.push(json!({
            "version": workflow.version,
            "version_label": workflow.version_label,
            "first_run_at": null,
            "current": true,
        }));
    }
    let edges: Vec<Value> = workflow
        .tasks
        .iter()
        .flat_map(|task| {
            task.after.deps().iter().map(|dep| {
                json!({"from": workflow.tasks[dep.task].id, "to": task.id, "on": dep.on.as_str(),
                       "mode": if matches!(task.after, crate::spec::Dependencies::Any(_)) { "any" } else { "all" }})
            })
        })
        .collect();
    let nodes: Vec<Value> = workflow
        .tasks
        .iter()
        .map(|t| json!({"id": t.id, "kind": t.kind}))
        .collect();
    let definition: Value = serde_json::from_slice(&workflow.source).unwrap_or(Value::Null);
    let mut summary = workflow_summary(workflow);
    summary["versions"] = Value::Array(versions);
    summary["graph"] =
        json!({"nodes": nodes, "edges": edges, "mermaid": crate::spec::graph::mermaid(workflow)});
    summary["definition"] = definition;
    Ok(Json(summary))
}

#[utoipa::path(
    post,
    path = "/workflows/{name}/runs",
    tag = "runs",
    params(
        ("name" = String, Path, description = "The workflow's name."),
    ),
    request_body(content = serde_json::Value, description = "`{\"params\": {…}, \"version\": \"<hash>\"}` (both optional)", content_type = "application/json"),
    responses(
        (status = 201, description = "The run record, once the run is durable", body = serde_json::Value),
        (status = 400, description = "A bad body", body = crate::api::ErrorBody),
        (status = 404, description = "No such workflow or version", body = crate::api::ErrorBody),
    )
)]
pub async fn start_run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let body = super::json_object(&body)?;
    let params = match body.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => return Err(Error::bad_request("`params` must be a JSON object")),
    };
    let version = match body.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => return Err(Error::bad_request("`version` must be a content hash")),
    };
    if let Some(key) = body.keys().find(|k| *k != "params" && *k != "version") {
        return Err(Error::bad_request(format!(
            "unknown key `{key}`; the body is {{\"params\": {{…}}, \"version\": \"<hash>\"}}"
        )));
    }
    let workflow = super::operations::run_version(&state, &name, version.as_deref())?;
    let run_id = state.runtime.start_run(workflow, params, None).await?;
    created(&state, run_id).await
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    /// Cursor: list runs older than this run id.
    before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    params(
        ("workflow" = Option<String>, Query, description = "Only runs of this workflow."),
        ("status" = Option<String>, Query, description = "queued, running, succeeded, failed or cancelled."),
        ("limit" = Option<usize>, Query, description = "At most this many (1 to 1000, default 50)."),
        ("before" = Option<String>, Query, description = "The cursor: runs older than this run id."),
    ),
    responses(
        (status = 200, description = "`{\"runs\": […], \"next\": cursor}`, newest first", body = serde_json::Value),
        (status = 400, description = "A bad query", body = crate::api::ErrorBody),
    )
)]
pub async fn list_runs(
    State(state): State<AppState>,
    super::ApiQuery(query): super::ApiQuery<ListQuery>,
) -> Result<Json<Value>, Error> {
    let limit = super::page_limit(query.limit)?;
    let status: Option<RunStatus> = match &query.status {
        None => None,
        Some(s) => Some(
            serde_json::from_value(Value::String(s.clone())).map_err(|_| {
                Error::bad_request(format!(
                    "unknown status `{s}`: use queued, running, succeeded, failed or cancelled"
                ))
            })?,
        ),
    };
    let before = query.before.as_deref().map(parse_run_id).transpose()?;
    let (runs, next) = runs_page(&state, query.workflow.clone(), status, before, limit).await?;
    Ok(Json(
        json!({"runs": runs, "next": next.map(|id| id.to_string())}),
    ))
}

/// A page of runs, newest first (active ones from the engine, ended ones
/// through the run index), and the cursor of the next page.
pub(crate) async fn runs_page(
    state: &AppState,
    workflow: Option<String>,
    status: Option<RunStatus>,
    before: Option<RunId>,
    limit: usize,
) -> Result<(Vec<RunRecord>, Option<RunId>), Error> {
    let filter = crate::runtime::RunFilter {
        workflow,
        status,
        before,
        limit,
    };
    // Active runs from the engine (only the page is copied); ended ones
    // through the run index, off the async workers.
    let mut runs: Vec<RunRecord> = state.runtime.active_runs(filter.clone()).await?;
    let log = state.runtime.log().clone();
    let stored = tokio::task::spawn_blocking(move || {
        log.ended_runs_where(
            filter.workflow.as_deref(),
            filter.status,
            filter.before,
            filter.limit,
        )
    })
    .await
    .map_err(super::internal)??;
    runs.extend(
        stored
            .iter()
            .filter_map(|bytes| serde_json::from_slice::<RunRecord>(bytes).ok()),
    );
    runs.sort_by_key(|r| std::cmp::Reverse(r.id));
    runs.dedup_by_key(|r| r.id);
    runs.truncate(limit);
    let next = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.id))
        .flatten();
    Ok((runs, next))
}

#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
    ),
    responses(
        (status = 200, description = "The run record", body = serde_json::Value),
        (status = 404, description = "No such run", body = crate::api::ErrorBody),
    )
)]
pub async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, Error> {
    let run_id = parse_run_id(&id)?;
    match state.runtime.run_record(run_id).await? {
        Some(record) => Ok(Json(record)),
        None => {
            // Not active and not ended: a run only in the log (the daemon
            // could not recover it) or none at all.
            Err(Error::not_found(format!("run {run_id} not found")))
        }
    }
}

#[utoipa::path(
    get,
    path = "/runs/{id}/history",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
    ),
    responses(
        (status = 200, description = "The run's records as written to the log", body = serde_json::Value),
        (status = 404, description = "No such run", body = crate::api::ErrorBody),
    )
)]
pub async fn run_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Error> {
    let run_id = parse_run_id(&id)?;
    let log = state.runtime.log().clone();
    let history = tokio::task::spawn_blocking(move || log.run_history(run_id))
        .await
        .map_err(super::internal)??;
    if history.is_empty() {
        return Err(Error::not_found(format!("run {run_id} not found")));
    }
    let records: Vec<Value> = history.iter().map(crate::log::Record::to_json).collect();
    Ok(Json(json!({"run_id": run_id, "records": records})))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// Stream the output as it is produced (server-sent events) until the
    /// task ends.
    #[serde(default)]
    follow: Option<String>,
    /// Only the lines holding this text (case-insensitive), with where
    /// they are: `matches` `[{attempt, stream, line, text}]`.
    #[serde(default)]
    q: Option<String>,
    /// `text`: the logs as one plain-text file (a download), attempts and
    /// streams headed.
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(
    get,
    path = "/runs/{id}/tasks/{task}/logs",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
        ("task" = String, Path, description = "The task id."),
        ("follow" = Option<bool>, Query, description = "true: stream the output as server-sent events until the task ends."),
        ("q" = Option<String>, Query, description = "Only the lines holding this text (case-insensitive): `matches` [{attempt, stream, line, text}]."),
        ("format" = Option<String>, Query, description = "text: the logs as one plain-text download."),
    ),
    responses(
        (status = 200, description = "Stored stdout and stderr per attempt, or (follow) a text/event-stream", body = serde_json::Value),
        (status = 404, description = "No such run or task", body = crate::api::ErrorBody),
    )
)]
pub async fn task_logs(
    State(state): State<AppState>,
    Path((id, task)): Path<(String, String)>,
    super::ApiQuery(query): super::ApiQuery<LogsQuery>,
) -> Result<Response, Error> {
    let follow = match query.follow.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "`follow` must be true or false, not `{other}`"
            )));
        }
    };
    let run_id = parse_run_id(&id)?;
    let record = state
        .runtime
        .run_record(run_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("run {run_id} not found")))?;
    if !record.tasks.contains_key(&task) {
        return Err(Error::not_found(format!(
            "run {run_id} has no task `{task}`"
        )));
    }
    if follow {
        return Ok(super::follow::follow(state, run_id, task));
    }
    let logs = state.runtime.log().task_logs(run_id, &task)?;
    if query.format.as_deref() == Some("text") {
        let mut text = String::new();
        for attempt in &logs {
            for (stream, output) in [("stdout", &attempt.stdout), ("stderr", &attempt.stderr)] {
                if !output.is_empty() {
                    text.push_str(&format!(
                        "== attempt {} {stream}\n{output}",
                        attempt.attempt
                    ));
                    if !output.ends_with('\n') {
                        text.push('\n');
                    }
                }
            }
        }
        let file = format!("attachment; filename=\"{run_id}-{task}.log\"");
        return Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (axum::http::header::CONTENT_DISPOSITION, file),
            ],
            text,
        )
            .into_response());
    }
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        let needle = q.to_lowercase();
        let matches: Vec<Value> = logs
            .iter()
            .flat_map(|a| {
                [("stdout", &a.stdout), ("stderr", &a.stderr)]
                    .into_iter()
                    .flat_map(move |(stream, output)| {
                        output.lines().enumerate().map(move |(i, line)| (a.attempt, stream, i + 1, line))
                    })
            })
            .filter(|(_, _, _, line)| line.to_lowercase().contains(&needle))
            .take(10_000)
            .map(|(attempt, stream, line, text)| {
                json!({"attempt": attempt, "stream": stream, "line": line, "text": text})
            })
            .collect();
        return Ok(
            Json(json!({"run_id": run_id, "task": task, "q": q, "matches": matches}))
                .into_response(),
        );
    }
    Ok(Json(json!({"run_id": run_id, "task": task, "attempts": logs})).into_response())
}

#[utoipa::path(
    post,
    path = "/runs/{id}/cancel",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
    ),
    responses(
        (status = 202, description = "Cancelling: running attempts are killed, the rest cancelled", body = serde_json::Value),
        (status = 404, description = "No such run", body = crate::api::ErrorBody),
        (status = 409, description = "The run has ended", body = crate::api::ErrorBody),
    )
)]
pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let run_id = parse_run_id(&id)?;
    state
        .runtime
        .cancel(run_id, "cancelled through the API")
        .await?;
    let record = state.runtime.run_record(run_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": run_id, "run": record})),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/runs/{id}/rerun",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
    ),
    request_body(content = serde_json::Value, description = "`{\"from\": \"failed\" | \"<task>\", \"params\": {…}}` (both optional)", content_type = "application/json"),
    responses(
        (status = 201, description = "The new run", body = serde_json::Value),
        (status = 404, description = "No such run", body = crate::api::ErrorBody),
        (status = 422, description = "Nothing to rerun from there", body = crate::api::ErrorBody),
    )
)]
pub async fn rerun(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let run_id = parse_run_id(&id)?;
    let body = super::json_object(&body)?;
    let from = match body.get("from") {
        None | Some(Value::Null) => RerunFrom::Failed,
        Some(Value::String(from)) => RerunFrom::parse(from),
        Some(_) => return Err(Error::bad_request("`from` must be \"failed\" or a task id")),
    };
    let patch = match body.get("params") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(patch)) => patch.clone(),
        Some(_) => {
            return Err(Error::bad_request(
                "`params` must be an object: the keys to change (null removes one)",
            ));
        }
    };
    if let Some(key) = body.keys().find(|k| *k != "from" && *k != "params") {
        return Err(Error::bad_request(format!(
            "unknown key `{key}`; the body is {{\"from\": \"failed\"|\"<task>\", \"params\": {{…}}}}"
        )));
    }
    let new_id = state.runtime.rerun_with(run_id, &from, patch).await?;
    created(&state, new_id).await
}

/// 201 with the record of a run just made durable.
async fn created(state: &AppState, run_id: RunId) -> Result<Response, Error> {
    let body = match state.runtime.run_record(run_id).await? {
        Some(record) => serde_json::to_value(record).map_err(super::internal)?,
        None => json!({"id": run_id}),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /metrics`: everything counted, as OpenMetrics text (which
/// Prometheus reads), encoded by prometheus-client.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let labelled = |label: &'static str, samples: &[(&str, u64)]| -> Vec<crate::metrics::Sample> {
        samples
            .iter()
            .map(|(value, n)| (vec![(label, (*value).to_string())], (*n).into()))
            .collect()
    };
    let (workflows, bindings) = state
        .registry
        .read()
        .map(|r| (r.workflows().count(), r.bindings().count()))
        .unwrap_or((0, 0));
    let e = state.reactor.metrics();
    let log = state.runtime.log();
    let mut s = crate::metrics::Snapshot::default();
    s.counter("runs_created", "Runs created.", get(&m.runs_created));
    s.counters(
        "runs_ended",
        "Runs ended, by status.",
        labelled(
            "status",
            &[
                ("succeeded", get(&m.runs_succeeded)),
                ("failed", get(&m.runs_failed)),
                ("cancelled", get(&m.runs_cancelled)),
            ],
        ),
    );
    s.counter(
        "attempts_started",
        "Task attempts started.",
        get(&m.attempts_started),
    );
    s.counter(
        "attempts_failed",
        "Task attempts that failed.",
        get(&m.attempts_failed),
    );
    s.counter(
        "log_flushes",
        "Group commits to the log.",
        log.flushes() as f64,
    );
    s.counter(
        "log_flush_seconds",
        "Time spent making group commits durable (fsync).",
        log.flush_time().as_secs_f64(),
    );
    s.counter(
        "requests_rejected",
        "HTTP requests answered with a 4xx.",
        get(&m.requests_rejected),
    );
    s.counter("reloads", "Workflow and binding reloads.", get(&m.reloads));
    s.counter(
        "reloads_rejected",
        "Reloads that rejected a file.",
        get(&m.reloads_rejected),
    );
    s.gauge("workflows", "Workflows loaded.", workflows);
    s.gauge("bindings", "Bindings loaded.", bindings);
    s.counter(
        "events",
        "Events accepted (recorded in the log).",
        get(&e.accepted),
    );
    s.counters(
        "event_outcomes",
        "What accepted events did, per binding.",
        labelled(
            "outcome",
            &[
                ("started", get(&e.started)),
                ("duplicate", get(&e.duplicates)),
                ("filtered", get(&e.filtered)),
                ("failed", get(&e.failed)),
                ("unrouted", get(&e.unrouted)),
                ("paused", get(&e.paused)),
            ],
        ),
    );
    s.counter(
        "events_rejected",
        "Events refused at the edge (signature, size, parse).",
        get(&e.rejected),
    );
    s.counters(
        "events_refused",
        "Events refused at the edge, by reason.",
        labelled(
            "reason",
            &[
                ("signature", get(&e.refused.signature)),
                ("too_large", get(&e.refused.too_large)),
                ("bad_body", get(&e.refused.bad_body)),
                ("no_route", get(&e.refused.no_route)),
            ],
        ),
    );
    s.counter(
        "records_missed",
        "Records the metrics counters missed (they lagged).",
        get(&m.records_missed),
    );
    s.counter(
        "amqp_deliveries",
        "Messages delivered to AMQP consumers.",
        get(&e.amqp.deliveries),
    );
    s.counter(
        "amqp_acked",
        "Messages acked after their event was durable.",
        get(&e.amqp.acked),
    );
    s.counter(
        "amqp_rejected",
        "Messages rejected without requeue (undecodable; dead-lettered where the queue has a DLX).",
        get(&e.amqp.poison),
    );
    s.counter(
        "amqp_too_large",
        "Messages rejected for a body over the binding's max_body (counted in rejected too).",
        get(&e.amqp.too_large),
    );
    s.counter(
        "amqp_acks_lost",
        "Acks that could not be sent (channel closed); those messages are redelivered and deduplicated.",
        get(&e.amqp.acks_lost),
    );
    s.counter(
        "amqp_reconnects",
        "AMQP consumer sessions that failed and were restarted.",
        get(&e.amqp.reconnects),
    );
    s.gauge(
        "amqp_consumers",
        "AMQP consumers connected now.",
        get(&e.amqp.consuming),
    );
    s.gauge(
        "amqp_unacked",
        "Deliveries received and not yet acked.",
        get(&e.amqp.unacked),
    );
    s.gauge(
        "amqp_unacked_max",
        "The most deliveries one consumer session held unacked.",
        get(&e.amqp.unacked_max),
    );
    s.gauge(
        "outbox_pending",
        "Lifecycle events waiting for the broker's confirm.",
        log.outbox_len(),
    );
    s.counters(
        "retention_deleted",
        "Deleted by retention, by kind.",
        labelled(
            "what",
            &[
                ("runs", get(&m.retention_runs)),
                ("events", get(&m.retention_events)),
                ("task_logs", get(&m.retention_task_logs)),
            ],
        ),
    );
    s.gauge(
        "engine_runs",
        "Runs in the engine's memory (created, not ended).",
        get(&state.runtime.gauges().runs),
    );
    s.gauge(
        "engine_timers",
        "Wake-ups armed in the engine (run deadlines, retry delays).",
        get(&state.runtime.gauges().timers),
    );
    if let Some(remote) = &state.remote {
        remote.collect(&mut s);
    }
    let mut registry = prometheus_client::registry::Registry::with_prefix("switchyard");
    registry.register_collector(Box::new(s));
    let h = &m.histograms;
    registry.register(
        "task_attempt_seconds",
        "Task attempts from start to end, by workflow, task and kind",
        h.attempt_seconds.clone(),
    );
    registry.register(
        "event_to_run_start_seconds",
        "From an event's time to the start of the run it started, by trigger",
        h.event_to_start_seconds.clone(),
    );
    registry.register(
        "http_request_seconds",
        "HTTP requests until the response's head, by method, route and status",
        h.http_request_seconds.clone(),
    );
    let commits = log.commit_histograms();
    registry.register(
        "log_commit_seconds",
        "Group commits: time to make them durable",
        commits.seconds.clone(),
    );
    registry.register(
        "log_commit_records",
        "Group commits: records made durable by each",
        commits.records.clone(),
    );
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return super::internal(e).into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
