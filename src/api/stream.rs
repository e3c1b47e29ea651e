//! Runs as they change, as server-sent events (`text/event-stream`, what a
//! browser's `EventSource` and `curl -N` read):
//!
//! - `GET /stream`: a `run` event `{id, workflow, status, started_at,
//!   ended_at, tasks: {task: status}}` each time a run changes (changes
//!   within 150 ms are sent once);
//! - `GET /runs/{id}/stream`: the run's whole record as a `run` event at
//!   once, then after each change, until the run has ended.
//!
//! A follower that fell behind the log gets `resync` (reload the state);
//! `closed` `{"reason"}` says the server is stopping.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{AppState, Error};
use crate::engine::RunRecord;
use crate::log::RunId;
use crate::log::RunStatus;

/// How long changes gather before they are sent.
const GATHER: Duration = Duration::from_millis(150);

/// A server-sent event response fed by `rx` (kept alive with comments),
/// ending when the sender is dropped. Also the task-output follower's.
pub(super) fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let events = futures_lite::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn run_event(data: &impl serde::Serialize) -> Event {
    Event::default()
        .event("run")
        .data(serde_json::to_string(data).unwrap_or_default())
}

fn summary(run: &RunRecord) -> Value {
    let tasks: serde_json::Map<String, Value> = run
        .tasks
        .iter()
        .map(|(task, info)| (task.clone(), info["status"].clone()))
        .collect();
    json!({
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "tasks": tasks,
    })
}

/// Waits for the next records and returns the runs they touched (the first
/// one, then whatever else arrives within [`GATHER`]); `None` once the
/// server stops, `Some(Err)` when records were missed.
async fn changed(
    records: &mut broadcast::Receiver<std::sync::Arc<crate::log::Record>>,
    only: Option<RunId>,
) -> Option<Result<BTreeSet<RunId>, ()>> {
    let mut runs = BTreeSet::new();
    loop {
        match records.recv().await {
            Ok(record) if only.is_none_or(|id| id == record.run_id) => {
                runs.insert(record.run_id);
                break;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return Some(Err(())),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
    let deadline = tokio::time::Instant::now() + GATHER;
    loop {
        match tokio::time::timeout_at(deadline, records.recv()).await {
            Err(_) => return Some(Ok(runs)),
            Ok(Ok(record)) => {
                if only.is_none_or(|id| id == record.run_id) {
                    runs.insert(record.run_id);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Some(Err(())),
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
        }
    }
}

fn closed() -> Event {
    Event::default()
        .event("closed")
        .data(json!({"reason": "the server is shutting down"}).to_string())
}

/// `GET /stream`: every run's changes, summarised.
#[utoipa::path(
    get,
    path = "/stream",
    tag = "runs",
    responses(
        (status = 200, description = "text/event-stream: a `run` event per change of any run", body = serde_json::Value),
    )
)]
pub async fn all_runs(State(state): State<AppState>) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let closing = state.runtime.live().closing();
    let mut records = state.runtime.subscribe();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = changed(&mut records, None) => next,
                _ = closing.cancelled() => { let _ = tx.send(closed()).await; return; }
            };
            let events = match next {
                None => return,
                Some(Err(())) => vec![Event::default().event("resync").data("{}")],
                Some(Ok(runs)) => {
                    let mut events = Vec::with_capacity(runs.len());
                    for run_id in runs {
                        if let Ok(Some(run)) = state.runtime.run_record(run_id).await {
                            events.push(run_event(&summary(&run)));
                        }
                    }
                    events
                }
            };
            for event in events {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    sse(rx)
}

/// `GET /runs/{id}/stream`: one run's record on every change, until it ends.
#[utoipa::path(
    get,
    path = "/runs/{id}/stream",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run id (a UUID)."),
    ),
    responses(
        (status = 200, description = "text/event-stream: the run record on every change until it ends", body = serde_json::Value),
        (status = 404, description = "No such run", body = crate::api::ErrorBody),
    )
)]
pub async fn one_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let run_id = RunId::parse_str(&id)
        .map_err(|_| Error::bad_request(format!("`{id}` is not a run id (a UUID)")))?;
    // Subscribed before the first read: no change falls between the two.
    let mut records = state.runtime.subscribe();
    let first = state
        .runtime
        .run_record(run_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("run {run_id} not found")))?;
    let (tx, rx) = mpsc::channel::<Event>(16);
    let closing = state.runtime.live().closing();
    tokio::spawn(async move {
        let mut run = first;
        loop {
            if tx.send(run_event(&run)).await.is_err() {
                return;
            }
            if !matches!(run.status, RunStatus::Queued | RunStatus::Running) {
                return;
            }
            let next = tokio::select! {
                next = changed(&mut records, Some(run_id)) => next,
                _ = closing.cancelled() => { let _ = tx.send(closed()).await; return; }
            };
            match next {
                None => return,
                // Missed records change nothing here: the record is read
                // whole again.
                Some(_) => match state.runtime.run_record(run_id).await {
                    Ok(Some(now)) => run = now,
                    _ => return,
                },
            }
        }
    });
    Ok(sse(rx))
}
