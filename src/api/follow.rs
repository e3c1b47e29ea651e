//! `GET /runs/{id}/tasks/{task}/logs?follow=true`: a task's output as it is
//! produced, as server-sent events (`text/event-stream`, what `curl -N`
//! prints and a browser's `EventSource` reads):
//!
//! - `attempt` `{"attempt": n, "live": bool}` before each attempt's output
//!   (`live`: it is running; false: its stored logs follow);
//! - `stdout`, `stderr`: output text, redacted as the stored logs are,
//!   newlines as SSE `data:` lines (a CR LF arrives as LF);
//! - `missed` `{"attempt", "bytes"}`: output dropped before it was sent
//!   (a follower that fell far behind, or stored logs cut to their tail);
//! - `end` `{"task", "status", "attempts", "error", "run_status"}` once
//!   the task is in a final state (then the stream closes);
//! - `closed` `{"reason"}` when the server stops before that.
//!
//! It starts with what is already captured (stored logs of ended attempts,
//! the kept output of the running one) and goes on across retries.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use axum::response::sse::Event;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use crate::executors::live::LiveAttempt;
use crate::log::{Record, RunId};

/// How often a follower looks again even when nothing told it to (a
/// safety net: starts, ends and output all wake it).
const RECHECK: Duration = Duration::from_secs(1);

/// The event stream of one task (the run and task are known to exist).
pub fn follow(state: AppState, run_id: RunId, task: String) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let closing = state.runtime.live().closing();
    tokio::spawn(async move {
        let followed = tokio::select! {
            followed = pump(&state, run_id, &task, &tx) => followed,
            _ = closing.cancelled() => Err(Stop::Closing),
        };
        match followed {
            Err(Stop::Closing) => {
                let data = json!({"reason": "the server is shutting down"});
                let _ = tx.send(json_event("closed", data)).await;
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!(run = %run_id, task = %task, error = %e, "Following task output failed.");
            }
            Ok(()) | Err(Stop::Gone) => {}
        }
    });
    super::stream::sse(rx)
}

enum Stop {
    /// The client went away.
    Gone,
    /// The server is stopping.
    Closing,
    Failed(String),
}

async fn send(tx: &mpsc::Sender<Event>, event: Event) -> Result<(), Stop> {
    tx.send(event).await.map_err(|_| Stop::Gone)
}

fn json_event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

async fn send_text(tx: &mpsc::Sender<Event>, stream: &str, text: &str) -> Result<(), Stop> {
    if text.is_empty() {
        return Ok(());
    }
    let text = text.replace("\r\n", "\n");
    send(tx, Event::default().event(stream).data(text)).await
}

async fn pump(
    state: &AppState,
    run_id: RunId,
    task: &str,
    tx: &mpsc::Sender<Event>,
) -> Result<(), Stop> {
    let mut records = state.runtime.subscribe();
    let mut started = state.runtime.live().watch();
    let mut next: u32 = 1;
    loop {
        started.borrow_and_update();
        // Read before looking for output: an attempt this record shows
        // ended has its logs stored already (they are written first).
        let record = state
            .runtime
            .run_record(run_id)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let Some(record) = record else {
            return Ok(());
        };
        let info = record.tasks.get(task).cloned().unwrap_or(Value::Null);
        let status = info["status"].as_str().unwrap_or("pending").to_string();
        let attempts = info["attempts"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);

        if let Some(live) = state.runtime.live().get(run_id, task, next) {
            let data = json!({"attempt": next, "live": true});
            send(tx, json_event("attempt", data)).await?;
            stream_live(&live, tx).await?;
            next += 1;
            continue;
        }
        let stored = state
            .runtime
            .log()
            .task_logs(run_id, task)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        if let Some(logs) = stored.into_iter().find(|l| l.attempt == next) {
            let data = json!({"attempt": next, "live": false});
            send(tx, json_event("attempt", data)).await?;
            if logs.truncated {
                // Only the tail is stored; how much was cut is not.
                let data = json!({"attempt": next, "bytes": null});
                send(tx, json_event("missed", data)).await?;
            }
            send_text(tx, "stdout", &logs.stdout).await?;
            send_text(tx, "stderr", &logs.stderr).await?;
            next += 1;
            continue;
        }
        // An attempt that ended without output (a kind that captures none,
        // or one cancelled or lost before its logs were stored).
        let over = attempts > next || (attempts == next && status != "running");
        if attempts >= next && over {
            next += 1;
            continue;
        }
        let final_state = matches!(
            status.as_str(),
            "succeeded" | "failed" | "skipped" | "cancelled"
        ) || record.status.is_terminal();
        if final_state && next > attempts {
            let data = json!({
                "task": task,
                "status": status,
                "attempts": attempts,
                "error": info.get("error").cloned().unwrap_or(Value::Null),
                "run_status": record.status,
            });
            return send(tx, json_event("end", data)).await;
        }
        tokio::select! {
            _ = started.changed() => {}
            _ = record_of(&mut records, run_id) => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = tx.closed() => return Err(Stop::Gone),
        }
    }
}

/// Sends an attempt's output as it arrives, until its process is done.
async fn stream_live(live: &Arc<LiveAttempt>, tx: &mpsc::Sender<Event>) -> Result<(), Stop> {
    let mut changed = live.watch();
    let mut from = 0;
    loop {
        changed.borrow_and_update();
        let read = live.read(from);
        if read.missed > 0 {
            let data = json!({"attempt": live.attempt, "bytes": read.missed});
            send(tx, json_event("missed", data)).await?;
        }
        for piece in &read.pieces {
            send_text(tx, piece.stream.as_str(), &piece.text).await?;
        }
        from = read.next;
        if read.finished {
            return Ok(());
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tx.closed() => return Err(Stop::Gone),
        }
    }
}

/// Returns once a record of `run_id` is published (or records were lost
/// to lag, so anything may have happened).
async fn record_of(records: &mut broadcast::Receiver<Arc<Record>>, run_id: RunId) {
    loop {
        match records.recv().await {
            Ok(record) if record.run_id == run_id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
