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
}

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
    Ok(Json(json!({"run_id": run_id, "task": task, "attempts": logs})).into_response())
}

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

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let m = &state.metrics;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (workflows, bindings) = state
        .registry
        .read()
        .map(|r| (r.workflows().count(), r.bindings().count()))
        .unwrap_or((0, 0));
    let e = state.reactor.metrics();
    let text = format!(
        "# HELP switchyard_runs_created_total Runs created.\n\
         # TYPE switchyard_runs_created_total counter\n\
         switchyard_runs_created_total {}\n\
         # HELP switchyard_runs_ended_total Runs ended, by status.\n\
         # TYPE switchyard_runs_ended_total counter\n\
         switchyard_runs_ended_total{{status=\"succeeded\"}} {}\n\
         switchyard_runs_ended_total{{status=\"failed\"}} {}\n\
         switchyard_runs_ended_total{{status=\"cancelled\"}} {}\n\
         # HELP switchyard_attempts_started_total Task attempts started.\n\
         # TYPE switchyard_attempts_started_total counter\n\
         switchyard_attempts_started_total {}\n\
         # HELP switchyard_attempts_failed_total Task attempts that failed.\n\
         # TYPE switchyard_attempts_failed_total counter\n\
         switchyard_attempts_failed_total {}\n\
         # HELP switchyard_log_flushes_total Group commits to the log.\n\
         # TYPE switchyard_log_flushes_total counter\n\
         switchyard_log_flushes_total {}\n\
         # HELP switchyard_log_flush_seconds_total Time spent making group commits durable (fsync).\n\
         # TYPE switchyard_log_flush_seconds_total counter\n\
         switchyard_log_flush_seconds_total {:.6}\n\
         # HELP switchyard_requests_rejected_total HTTP requests answered with a 4xx.\n\
         # TYPE switchyard_requests_rejected_total counter\n\
         switchyard_requests_rejected_total {}\n\
         # HELP switchyard_reloads_total Workflow reloads, and those with rejected files.\n\
         # TYPE switchyard_reloads_total counter\n\
         switchyard_reloads_total {}\n\
         switchyard_reloads_rejected_total {}\n\
         # HELP switchyard_workflows Workflows loaded.\n\
         # TYPE switchyard_workflows gauge\n\
         switchyard_workflows {}\n\
         # HELP switchyard_bindings Bindings loaded.\n\
         # TYPE switchyard_bindings gauge\n\
         switchyard_bindings {}\n\
         # HELP switchyard_events_total Events accepted (recorded in the log).\n\
         # TYPE switchyard_events_total counter\n\
         switchyard_events_total {}\n\
         # HELP switchyard_event_outcomes_total What accepted events did, per binding.\n\
         # TYPE switchyard_event_outcomes_total counter\n\
         switchyard_event_outcomes_total{{outcome=\"started\"}} {}\n\
         switchyard_event_outcomes_total{{outcome=\"duplicate\"}} {}\n\
         switchyard_event_outcomes_total{{outcome=\"filtered\"}} {}\n\
         switchyard_event_outcomes_total{{outcome=\"failed\"}} {}\n\
         switchyard_event_outcomes_total{{outcome=\"unrouted\"}} {}\n\
         switchyard_event_outcomes_total{{outcome=\"paused\"}} {}\n\
         # HELP switchyard_events_rejected_total Events refused at the edge (signature, size, parse).\n\
         # TYPE switchyard_events_rejected_total counter\n\
         switchyard_events_rejected_total {}\n\
         # HELP switchyard_records_missed_total Records the metrics counters missed (they lagged).\n\
         # TYPE switchyard_records_missed_total counter\n\
         switchyard_records_missed_total {}\n\
         # HELP switchyard_amqp_deliveries_total Messages delivered to AMQP consumers.\n\
         # TYPE switchyard_amqp_deliveries_total counter\n\
         switchyard_amqp_deliveries_total {}\n\
         # HELP switchyard_amqp_acked_total Messages acked after their event was durable.\n\
         # TYPE switchyard_amqp_acked_total counter\n\
         switchyard_amqp_acked_total {}\n\
         # HELP switchyard_amqp_rejected_total Messages rejected without requeue (undecodable; dead-lettered where the queue has a DLX).\n\
         # TYPE switchyard_amqp_rejected_total counter\n\
         switchyard_amqp_rejected_total {}\n\
         # HELP switchyard_amqp_too_large_total Messages rejected for a body over the binding's max_body (counted in rejected too).\n\
         # TYPE switchyard_amqp_too_large_total counter\n\
         switchyard_amqp_too_large_total {}\n\
         # HELP switchyard_amqp_acks_lost_total Acks that could not be sent (channel closed); those messages are redelivered and deduplicated.\n\
         # TYPE switchyard_amqp_acks_lost_total counter\n\
         switchyard_amqp_acks_lost_total {}\n\
         # HELP switchyard_amqp_reconnects_total AMQP consumer sessions that failed and were restarted.\n\
         # TYPE switchyard_amqp_reconnects_total counter\n\
         switchyard_amqp_reconnects_total {}\n\
         # HELP switchyard_amqp_consumers AMQP consumers connected now.\n\
         # TYPE switchyard_amqp_consumers gauge\n\
         switchyard_amqp_consumers {}\n\
         # HELP switchyard_amqp_unacked Deliveries received and not yet acked.\n\
         # TYPE switchyard_amqp_unacked gauge\n\
         switchyard_amqp_unacked {}\n\
         # HELP switchyard_amqp_unacked_max The most deliveries one consumer session held unacked.\n\
         # TYPE switchyard_amqp_unacked_max gauge\n\
         switchyard_amqp_unacked_max {}\n\
         # HELP switchyard_outbox_pending Lifecycle events waiting for the broker's confirm.\n\
         # TYPE switchyard_outbox_pending gauge\n\
         switchyard_outbox_pending {}\n\
         # HELP switchyard_retention_deleted_total Deleted by retention, by kind.\n\
         # TYPE switchyard_retention_deleted_total counter\n\
         switchyard_retention_deleted_total{{what=\"runs\"}} {}\n\
         switchyard_retention_deleted_total{{what=\"events\"}} {}\n\
         switchyard_retention_deleted_total{{what=\"task_logs\"}} {}\n\
         # HELP switchyard_engine_runs Runs in the engine's memory (created, not ended).\n\
         # TYPE switchyard_engine_runs gauge\n\
         switchyard_engine_runs {}\n\
         # HELP switchyard_engine_timers Wake-ups armed in the engine (run deadlines, retry delays).\n\
         # TYPE switchyard_engine_timers gauge\n\
         switchyard_engine_timers {}\n",
        get(&m.runs_created),
        get(&m.runs_succeeded),
        get(&m.runs_failed),
        get(&m.runs_cancelled),
        get(&m.attempts_started),
        get(&m.attempts_failed),
        state.runtime.log().flushes(),
        state.runtime.log().flush_time().as_secs_f64(),
        get(&m.requests_rejected),
        get(&m.reloads),
        get(&m.reloads_rejected),
        workflows,
        bindings,
        get(&e.accepted),
        get(&e.started),
        get(&e.duplicates),
        get(&e.filtered),
        get(&e.failed),
        get(&e.unrouted),
        get(&e.paused),
        get(&e.rejected),
        get(&m.records_missed),
        get(&e.amqp.deliveries),
        get(&e.amqp.acked),
        get(&e.amqp.poison),
        get(&e.amqp.too_large),
        get(&e.amqp.acks_lost),
        get(&e.amqp.reconnects),
        get(&e.amqp.consuming),
        get(&e.amqp.unacked),
        get(&e.amqp.unacked_max),
        state.runtime.log().outbox_len(),
        get(&m.retention_runs),
        get(&m.retention_events),
        get(&m.retention_task_logs),
        get(&state.runtime.gauges().runs),
        get(&state.runtime.gauges().timers),
    );
    let mut text = text;
    if let Some(remote) = &state.remote {
        text.push_str(&remote.prometheus());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
