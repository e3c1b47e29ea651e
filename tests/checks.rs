//! The `check` task: one condition (sql, http, file, run) polled until it
//! holds or the task's timeout passes; observations recorded only when
//! they change; no `max_parallel_tasks` slot held while waiting; a wait
//! that survives a SIGKILL of the daemon with one attempt; bad configs
//! named by their path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use sqlx::Connection as _;
use switchyard::engine::{Limits, RunRecord};
use switchyard::executors::sql::{Connection, Databases};
use switchyard::log::{Record, RecordBody, RunId, RunStatus};
use switchyard::runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use switchyard::spec::Workflow;

use crate::daemon::{Daemon, http};
use crate::util::db::{self, POSTGRES};
use crate::util::{sh, workflow, write_workflow};

// ---------------------------------------------------------------------------
// Fixtures

/// A runtime on `dir/data`, `configure`d first.
fn start(dir: &Path, configure: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let mut config = RuntimeConfig::new(dir.join("data"));
    configure(&mut config);
    Runtime::start(config).unwrap()
}

fn params(value: Value) -> Map<String, Value> {
    serde_json::from_value(value).unwrap()
}

/// A run of `wf` with `params`, started by an event at logical time
/// `time`, to its end.
async fn run_at(
    handle: &RuntimeHandle,
    wf: &Arc<Workflow>,
    params: Map<String, Value>,
    event_id: &str,
    time: &str,
) -> RunRecord {
    let event = json!({"id": event_id, "type": "test.day", "time": time});
    handle
        .run_to_end(Arc::clone(wf), params, Some(event), |_| {})
        .await
        .unwrap()
}

/// Polls the run's record until `done` holds (panics with `what` after `within`).
async fn wait_until(
    handle: &RuntimeHandle,
    run_id: RunId,
    what: &str,
    within: Duration,
    done: impl Fn(&RunRecord) -> bool,
) -> RunRecord {
    let deadline = Instant::now() + within;
    loop {
        let record = handle.run_record(run_id).await.unwrap().unwrap();
        if done(&record) {
            return record;
        }
        assert!(Instant::now() < deadline, "{what}: {record:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The run once its check `wait` has observed something (or it ended).
async fn observed_or_ended(handle: &RuntimeHandle, run_id: RunId) -> RunRecord {
    wait_until(
        handle,
        run_id,
        "no observation",
        Duration::from_secs(30),
        |r| !summary(r, "wait").is_empty() || r.status.is_terminal(),
    )
    .await
}

async fn wait_ended(handle: &RuntimeHandle, run_id: RunId, within: Duration) -> RunRecord {
    wait_until(handle, run_id, "the run did not end", within, |r| {
        r.status.is_terminal()
    })
    .await
}

/// The summary of the task's last observation, as its run record shows it
/// ("" when it has none yet).
fn summary(record: &RunRecord, task: &str) -> String {
    record.tasks[task]["observation"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The run's history as the API shows it (`type`, the body's fields, `seq`, `at`).
fn history(handle: &RuntimeHandle, run_id: RunId) -> Vec<Value> {
    handle
        .log()
        .run_history(run_id)
        .unwrap()
        .iter()
        .map(Record::to_json)
        .collect()
}

/// Records of type `kind` for `task`.
fn of_type<'a>(history: &'a [Value], kind: &str, task: &str) -> Vec<&'a Value> {
    history
        .iter()
        .filter(|r| r["type"] == kind && r["task"] == task)
        .collect()
}

/// The summaries of the task's `check_observed` records, in order.
fn observed(history: &[Value], task: &str) -> Vec<String> {
    of_type(history, "check_observed", task)
        .iter()
        .map(|r| {
            r["observation"]["summary"]
                .as_str()
                .unwrap_or_else(|| panic!("an observation without a summary: {r}"))
                .to_string()
        })
        .collect()
}

/// A server whose `/ready` answers by `phase` — 0: 404 `{"ready": false}`,
/// 1: 200 `{"ready": false}`, 2: 200 `{"ready": true}` — and always
/// `{"ready": true}` from request number `ready_after` on. Counts requests.
#[derive(Clone)]
struct Ready {
    phase: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    ready_after: usize,
}

async fn ready(State(state): State<Ready>) -> Response {
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let phase = if n >= state.ready_after {
        2
    } else {
        state.phase.load(Ordering::SeqCst)
    };
    match phase {
        0 => (StatusCode::NOT_FOUND, Json(json!({"ready": false}))).into_response(),
        1 => (StatusCode::OK, Json(json!({"ready": false}))).into_response(),
        _ => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
    }
}

async fn ready_server(ready_after: usize) -> (String, Ready) {
    let state = Ready {
        phase: Arc::new(AtomicU8::new(0)),
        hits: Arc::new(AtomicUsize::new(0)),
        ready_after,
    };
    let app = Router::new()
        .route("/ready", get(ready))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/ready"), state)
}

/// Runs `sql` on PostgreSQL over a connection of its own.
async fn pg(sql: String) {
    let mut c = sqlx::PgConnection::connect(POSTGRES).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut c)
        .await
        .unwrap();
}

/// PostgreSQL as the named connection `main`.
fn postgres_main(dir: &Path) -> Databases {
    Databases::new(
        BTreeMap::from([(
            "main".to_string(),
            Connection {
                url: POSTGRES.to_string(),
                max_connections: None,
            },
        )]),
        dir,
    )
}

// ---------------------------------------------------------------------------
// sql

/// A sql check outlives a missing table (an `error:` observation, polling
/// goes on), binds its params, and succeeds once the row it counts is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_polls_past_a_missing_table_until_its_row_exists() {
    let dir = tempfile::tempdir().unwrap();
    if db::available("checks::sql_row", POSTGRES).await.is_none() {
        return;
    }
    let t = db::table("ready");
    let wf = workflow(
        json!({"name": "wait_row", "vars": {"day": "2026-12-01"}, "tasks": [
            {"id": "wait", "timeout": "60s", "check": {
                "sql": {"connection": "main",
                        "query": format!("select count(*) from {t} where day = $1"),
                        "params": ["${vars.day}"]},
                "interval": "100ms"}},
        ]}),
    );
    let databases = postgres_main(dir.path());
    let runtime = start(dir.path(), |c| c.databases = databases);
    let handle = runtime.handle();
    let started = Instant::now();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();

    // The table does not exist yet: an error, observed, and the check waits on.
    let record = wait_until(
        &handle,
        run_id,
        "no error observation",
        Duration::from_secs(30),
        |r| summary(r, "wait").starts_with("error:"),
    )
    .await;
    assert_eq!(record.status, RunStatus::Running, "{record:?}");
    assert_eq!(record.tasks["wait"]["status"], "running", "{record:?}");
    pg(format!("create table {t} (day text, status text)")).await;
    // Now it holds a count of 0: a new observation that is not an error.
    wait_until(
        &handle,
        run_id,
        "the created table was not observed",
        Duration::from_secs(30),
        |r| {
            let s = summary(r, "wait");
            !s.is_empty() && !s.starts_with("error:")
        },
    )
    .await;
    // A row for another day does not count (the param is bound).
    pg(format!(
        "insert into {t} (day, status) values ('2026-11-30', 'done')"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = handle.run_record(run_id).await.unwrap().unwrap();
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on another day's row: {record:?}"
    );
    pg(format!(
        "insert into {t} (day, status) values ('2026-12-01', 'done')"
    ))
    .await;

    let record = wait_ended(&handle, run_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert!(output["scalar"].as_i64().unwrap() >= 1, "{output}");
    assert_eq!(output["row_count"], 1, "{output}");
    assert!(output["rows"].is_array(), "{output}");
    assert!(output["polls"].as_u64().unwrap() > 1, "{output}");
    let waited = output["waited_ms"].as_u64().unwrap();
    assert!(
        waited >= 500 && u128::from(waited) <= started.elapsed().as_millis() + 1000,
        "waited_ms {waited}, test ran {:?}",
        started.elapsed()
    );
    assert_eq!(record.tasks["wait"]["attempts"], 1, "{record:?}");
    // The history keeps the error and the change after it, once each.
    let history = history(&handle, run_id);
    let seen = observed(&history, "wait");
    assert!(
        seen.iter().any(|s| s.starts_with("error:")),
        "no error observation recorded: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| !s.starts_with("error:")),
        "no observation of the table recorded: {seen:?}"
    );
    assert!(seen.len() <= 6, "observations not deduplicated: {seen:?}");
    runtime.shutdown().await;
    pg(format!("drop table {t}")).await;
}

/// With `until` over `rows`, a truthy scalar is not enough: the check waits
/// for the condition, here a status column turning to 'done' (url form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_check_with_until_waits_for_its_condition_over_rows() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = db::available("checks::sql_until", POSTGRES).await else {
        return;
    };
    let t = db::table("until");
    pg(format!(
        "create table {t} (day text, status text); \
         insert into {t} (day, status) values ('2026-12-01', 'pending')"
    ))
    .await;
    let wf = workflow(json!({"name": "wait_done", "tasks": [
        {"id": "wait", "timeout": "60s", "check": {
            "sql": {"url": url,
                    "query": format!("select status from {t} where day = $1"),
                    "params": ["2026-12-01"]},
            "until": "row_count > 0 && rows[0].status == 'done'",
            "interval": "100ms"}},
    ]}));
    let runtime = start(dir.path(), |c| {
        c.databases = Databases::new(BTreeMap::new(), dir.path())
    });
    let handle = runtime.handle();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();
    wait_until(
        &handle,
        run_id,
        "no observation",
        Duration::from_secs(30),
        |r| !summary(r, "wait").is_empty(),
    )
    .await;
    // 'pending' is a truthy scalar, but `until` is false: still waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = handle.run_record(run_id).await.unwrap().unwrap();
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on a truthy scalar though `until` was false: {record:?}"
    );
    pg(format!("update {t} set status = 'done'")).await;
    let record = wait_ended(&handle, run_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert_eq!(output["rows"], json!([{"status": "done"}]), "{output}");
    assert_eq!(output["scalar"], "done", "{output}");
    assert_eq!(output["row_count"], 1, "{output}");
    assert!(output["polls"].as_u64().unwrap() > 1, "{output}");
    runtime.shutdown().await;
    pg(format!("drop table {t}")).await;
}

/// An `until` that cannot be evaluated yet (no row to index) is a poll
/// that saw nothing ready, not a failure: the check waits for the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_until_that_cannot_be_evaluated_yet_keeps_the_check_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = db::available("checks::until_error", POSTGRES).await else {
        return;
    };
    let t = db::table("until_err");
    pg(format!("create table {t} (status text)")).await;
    let wf = workflow(json!({"name": "wait_row", "tasks": [
        {"id": "wait", "timeout": "60s", "check": {
            "sql": {"url": url, "query": format!("select status from {t}")},
            "until": "rows[0].status == 'done'",
            "interval": "100ms"}},
    ]}));
    let runtime = start(dir.path(), |c| {
        c.databases = Databases::new(BTreeMap::new(), dir.path())
    });
    let handle = runtime.handle();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();
    let record = observed_or_ended(&handle, run_id).await;
    assert_eq!(record.tasks["wait"]["status"], "running", "{record:?}");
    assert!(summary(&record, "wait").contains("until:"), "{record:?}");
    pg(format!("insert into {t} (status) values ('done')")).await;
    let record = wait_ended(&handle, run_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    runtime.shutdown().await;
    pg(format!("drop table {t}")).await;
}

// ---------------------------------------------------------------------------
// http

/// An http check with `until` waits through a 404 and a 200 that is not
/// ready; each change is recorded once, and the record shows the
/// observation while it waits and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_waits_until_its_condition_and_records_what_it_saw() {
    let (url, server) = ready_server(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "wait_http", "tasks": [
        {"id": "wait", "timeout": "60s", "check": {
            "http": {"url": url, "method": "GET"},
            "until": "status == 200 && body.ready == true",
            "interval": "100ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();

    let record = wait_until(
        &handle,
        run_id,
        "the 404 was not observed",
        Duration::from_secs(30),
        |r| summary(r, "wait").contains("http 404"),
    )
    .await;
    assert_eq!(record.tasks["wait"]["status"], "running", "{record:?}");
    assert!(
        record.tasks["wait"]["observation"].is_object(),
        "{record:?}"
    );
    // 200 but not ready: `until` is false, so the 2xx default does not apply.
    server.phase.store(1, Ordering::SeqCst);
    let record = wait_until(
        &handle,
        run_id,
        "the 200 was not observed",
        Duration::from_secs(30),
        |r| summary(r, "wait").contains("http 200") || r.status.is_terminal(),
    )
    .await;
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on a 200 whose body was not ready: {record:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.phase.store(2, Ordering::SeqCst);

    let record = wait_ended(&handle, run_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let task = &record.tasks["wait"];
    assert_eq!(task["attempts"], 1, "{record:?}");
    let output = &task["output"];
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(output["body"], json!({"ready": true}), "{output}");
    assert_eq!(
        output["headers"]["content-type"], "application/json",
        "{output}"
    );
    let polls = output["polls"].as_u64().unwrap();
    assert!(polls >= 3, "{output}");
    assert!(
        server.hits.load(Ordering::SeqCst) as u64 >= polls,
        "more polls than requests: {output}"
    );
    assert!(output["waited_ms"].as_u64().is_some(), "{output}");
    // The last observation stays on the record.
    assert!(!summary(&record, "wait").is_empty(), "{record:?}");

    let history = history(&handle, run_id);
    let records = of_type(&history, "check_observed", "wait");
    assert!(records.iter().all(|r| r["attempt"] == 1), "{records:?}");
    let seen = observed(&history, "wait");
    assert!(
        seen.iter().any(|s| s.contains("http 404")),
        "no 404 observation recorded: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains("http 200")),
        "no 200 observation recorded: {seen:?}"
    );
    // Several polls of each answer, each answer recorded about once.
    assert!(
        seen.len() <= 4 && (seen.len() as u64) < polls,
        "observations not deduplicated ({polls} polls): {seen:?}"
    );
    runtime.shutdown().await;
}

/// A check that never holds fails at its task timeout, saying it timed out
/// and what it last saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_never_holds_fails_at_its_timeout_with_the_last_observation() {
    let (url, server) = ready_server(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "never", "tasks": [
        {"id": "wait", "timeout": "1s", "check": {"http": {"url": url}, "interval": "100ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let started = Instant::now();
    let record = tokio::time::timeout(
        Duration::from_secs(30),
        handle.run_to_end(wf, Map::new(), None, |_| {}),
    )
    .await
    .expect("the check outlived its timeout")
    .unwrap();
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    let task = &record.tasks["wait"];
    assert_eq!(task["status"], "failed", "{record:?}");
    let error = task["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("timed out after") && error.contains("404"),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "ended before its timeout: {:?}",
        started.elapsed()
    );
    assert!(server.hits.load(Ordering::SeqCst) >= 2, "it did not poll");
    runtime.shutdown().await;
}

/// A thousand polls in which nothing changes add a bounded number of
/// records to the run's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_polls_that_see_nothing_new_add_a_bounded_number_of_records() {
    let (url, server) = ready_server(1000).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "patient", "tasks": [
        {"id": "wait", "timeout": "150s", "check": {"http": {"url": url}, "interval": "10ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let record = tokio::time::timeout(
        Duration::from_secs(200),
        handle.run_to_end(wf, Map::new(), None, |_| {}),
    )
    .await
    .expect("the check did not end")
    .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert!(output["polls"].as_u64().unwrap() >= 1000, "{output}");
    assert!(server.hits.load(Ordering::SeqCst) >= 1000);
    let history = history(&handle, record.id);
    let seen = observed(&history, "wait");
    assert!(
        !seen.is_empty() && seen.len() <= 3,
        "a 404 repeated 999 times is one observation: {seen:?}"
    );
    assert!(
        history.len() < 20,
        "{} records for one wait: {:?}",
        history.len(),
        history
            .iter()
            .map(|r| r["type"].clone())
            .collect::<Vec<_>>()
    );
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------
// file

/// A file check with `settle` and `non_empty` passes neither an empty file
/// nor one still being written: it holds only once the writes have stopped
/// for the settle time, and outputs the matching files only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_check_waits_for_a_non_empty_file_to_settle() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("notes.txt"), "not a csv").unwrap();
    // The directory and the glob under it (`path` alone may be a glob too).
    let wf = workflow(json!({"name": "wait_file", "tasks": [
        {"id": "wait", "timeout": "60s", "check": {
            "file": {"path": inbox.to_str().unwrap(), "pattern": "*.csv",
                     "settle": "400ms", "non_empty": true},
            "interval": "50ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();
    wait_until(
        &handle,
        run_id,
        "no observation",
        Duration::from_secs(30),
        |r| !summary(r, "wait").is_empty(),
    )
    .await;

    // An empty file, left alone longer than the settle time, then written
    // in chunks 100 ms apart.
    let file = inbox.join("orders.csv");
    let writer = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            std::fs::File::create(&file).unwrap();
            std::thread::sleep(Duration::from_millis(800));
            let mut last_write = 0;
            for i in 0..5 {
                last_write = switchyard::time::now_millis();
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                writeln!(f, "row,{i}").unwrap();
                f.sync_all().unwrap();
                drop(f);
                std::thread::sleep(Duration::from_millis(100));
            }
            last_write
        })
    };
    let last_write = writer.await.unwrap();
    let record = wait_ended(&handle, run_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    let files = output["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{output}");
    assert!(
        files[0].as_str().unwrap().ends_with("orders.csv"),
        "{output}"
    );
    assert_eq!(output["count"], 1, "{output}");
    // It held only after the last write plus the settle time (50 ms for
    // the coarse clock a file's mtime is stamped from).
    let finished_at = handle
        .log()
        .run_history(run_id)
        .unwrap()
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::AttemptFinished { task, .. } if task == "wait" => Some(r.at),
            _ => None,
        })
        .expect("the check's attempt finished");
    assert!(
        finished_at >= last_write + 400 - 50,
        "held {} ms after the last write began; settle is 400 ms",
        finished_at - last_write
    );
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------
// run

/// A run check waits for a run of another workflow with its own logical
/// time and the status asked for (default succeeded): another day's run
/// and a failed run of the same day do not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_check_waits_for_the_upstream_run_of_its_logical_time() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = workflow(json!({"name": "upstream", "tasks": [
        {"id": "t", "shell": {"command": ["test", "${params.ok}", "=", "yes"]},
         "export": {"day": "${run.logical_time.substring(0, 10)}"}},
    ]}));
    let downstream = workflow(json!({"name": "downstream", "tasks": [
        {"id": "wait", "timeout": "60s",
         "check": {"run": {"workflow": "upstream"}, "interval": "100ms"}},
    ]}));
    let by_name: HashMap<String, Arc<Workflow>> = [&upstream, &downstream]
        .into_iter()
        .map(|w| (w.name.clone(), Arc::clone(w)))
        .collect();
    let runtime = start(dir.path(), |c| {
        c.workflows = Some(Arc::new(move |name: &str| by_name.get(name).cloned()))
    });
    let handle = runtime.handle();
    let at = |id: &str, time: &str| Some(json!({"id": id, "type": "test.day", "time": time}));

    // Upstream for another day, succeeded.
    let other_day = run_at(
        &handle,
        &upstream,
        params(json!({"ok": "yes"})),
        "e-up-1",
        "2026-11-30T00:00:00Z",
    )
    .await;
    assert_eq!(other_day.status, RunStatus::Succeeded, "{other_day:?}");

    let down_id = handle
        .start_run(
            downstream.clone(),
            Map::new(),
            at("e-down", "2026-12-01T00:00:00Z"),
        )
        .await
        .unwrap();
    let record = observed_or_ended(&handle, down_id).await;
    assert_eq!(
        record.logical_time.as_deref(),
        Some("2026-12-01T00:00:00.000Z")
    );
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on another day's run: {record:?}"
    );

    // Upstream for the same day, failed: not what it waits for.
    let failed = run_at(
        &handle,
        &upstream,
        params(json!({"ok": "no"})),
        "e-up-2",
        "2026-12-01T00:00:00Z",
    )
    .await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let record = handle.run_record(down_id).await.unwrap().unwrap();
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on a failed run: {record:?}"
    );

    // Upstream for the same day, succeeded.
    let same_day = run_at(
        &handle,
        &upstream,
        params(json!({"ok": "yes"})),
        "e-up-3",
        "2026-12-01T00:00:00Z",
    )
    .await;
    assert_eq!(same_day.status, RunStatus::Succeeded, "{same_day:?}");
    let record = wait_ended(&handle, down_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert_eq!(output["run_id"], same_day.id.to_string(), "{output}");
    assert_eq!(output["status"], "succeeded", "{output}");
    assert_eq!(output["vars"]["day"], "2026-12-01", "{output}");
    assert!(output["polls"].as_u64().unwrap() > 1, "{output}");

    // Explicit status and logical time: the failed run, from a run of
    // another day.
    let explicit = workflow(json!({"name": "explicit", "tasks": [
        {"id": "wait", "timeout": "30s", "check": {"interval": "100ms", "run": {
            "workflow": "upstream", "status": "failed",
            "logical_time": "2026-12-01T00:00:00Z"}}},
    ]}));
    let record = run_at(
        &handle,
        &explicit,
        Map::new(),
        "e-x",
        "2027-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert_eq!(output["run_id"], failed.id.to_string(), "{output}");
    assert_eq!(output["status"], "failed", "{output}");
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------
// slots

/// With `same: day`, workflows on different schedules depend on each
/// other by day: a 02:00 downstream finds the 01:00 upstream of its UTC
/// day, not the previous day's late one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_check_with_same_day_matches_an_upstream_of_another_hour() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = workflow(json!({"name": "upstream", "tasks": [{"id": "t", "noop": {}}]}));
    let downstream = workflow(json!({"name": "downstream", "tasks": [
        {"id": "wait", "timeout": "60s",
         "check": {"run": {"workflow": "upstream", "same": "day"}, "interval": "100ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let at = |id: &str, time: &str| Some(json!({"id": id, "type": "test.day", "time": time}));
    let late = run_at(
        &handle,
        &upstream,
        Map::new(),
        "e-late",
        "2026-11-30T23:30:00Z",
    )
    .await;
    let down_id = handle
        .start_run(downstream, Map::new(), at("e-down", "2026-12-01T02:00:00Z"))
        .await
        .unwrap();
    let record = observed_or_ended(&handle, down_id).await;
    assert_eq!(
        record.tasks["wait"]["status"], "running",
        "held on the previous day's run: {record:?}"
    );
    assert!(summary(&record, "wait").contains("same day"), "{record:?}");
    let early = run_at(
        &handle,
        &upstream,
        Map::new(),
        "e-early",
        "2026-12-01T01:00:00Z",
    )
    .await;
    let record = wait_ended(&handle, down_id, Duration::from_secs(60)).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["wait"]["output"];
    assert_eq!(output["run_id"], early.id.to_string(), "{output}");
    assert_ne!(output["run_id"], late.id.to_string(), "{output}");
    assert_eq!(
        output["logical_time"], "2026-12-01T01:00:00.000Z",
        "{output}"
    );
    runtime.shutdown().await;
}

/// Fifty waiting checks with `max_parallel_tasks` 2 hold no slot: a shell
/// task still runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_checks_hold_no_slot() {
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never");
    let waiter = workflow(json!({"name": "waiter", "tasks": [
        {"id": "wait", "timeout": "60s", "check": {
            "file": {"path": format!("{}/*.csv", never.display())}, "interval": "1s"}},
    ]}));
    let quick = workflow(json!({"name": "quick", "tasks": [sh("hi", "echo hi")]}));
    let runtime = start(dir.path(), |c| {
        c.limits = Limits {
            max_parallel_tasks: 2,
        }
    });
    let handle = runtime.handle();
    let mut waiting = Vec::new();
    for _ in 0..50 {
        waiting.push(
            handle
                .start_run(Arc::clone(&waiter), Map::new(), None)
                .await
                .unwrap(),
        );
    }
    // All fifty are polling at once (two slots would run two).
    for run_id in &waiting {
        wait_until(
            &handle,
            *run_id,
            "a check is not running",
            Duration::from_secs(30),
            |r| r.tasks["wait"]["status"] == "running",
        )
        .await;
    }
    let record = tokio::time::timeout(
        Duration::from_secs(20),
        handle.run_to_end(quick, Map::new(), None, |_| {}),
    )
    .await
    .expect("the shell task waited for a slot the checks hold")
    .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    for run_id in &waiting {
        let record = handle.run_record(*run_id).await.unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Running, "{record:?}");
        assert_eq!(record.tasks["wait"]["status"], "running", "{record:?}");
    }
    for run_id in &waiting {
        handle.cancel(*run_id, "test over").await.unwrap();
    }
    for run_id in &waiting {
        let record = wait_ended(&handle, *run_id, Duration::from_secs(30)).await;
        assert_eq!(record.status, RunStatus::Cancelled, "{record:?}");
    }
    runtime.shutdown().await;
}

// ---------------------------------------------------------------------------
// durability

/// A check waiting when the daemon is SIGKILLed resumes after the restart
/// (its wait counted from the attempt's recorded start) and succeeds with
/// its one attempt: no second attempt_started, no attempt_lost.
#[test]
fn a_check_resumes_after_sigkill_with_its_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    let flag = inbox.join("ready.flag");
    write_workflow(
        &flows,
        "waiter",
        &json!({"name": "waiter", "tasks": [
            {"id": "wait", "timeout": "120s",
             "check": {"file": {"path": flag.to_str().unwrap()}, "interval": "50ms"}},
        ]}),
    );
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (status, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/waiter/runs"),
            Some(json!({})),
        )
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = http()
            .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
            .unwrap();
        let task = &run["tasks"]["wait"];
        if task["status"] == "running" && task["observation"]["summary"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the check did not poll: {run}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen_polling = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&flag, "go").unwrap();
    let down_for = seen_polling.elapsed();

    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let (status, run) = http()
            .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
            .unwrap();
        assert_eq!(status, 200, "{run}");
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            break run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        std::thread::sleep(Duration::from_millis(30));
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    let task = &run["tasks"]["wait"];
    assert_eq!(task["attempts"], 1, "{run}");
    let output = &task["output"];
    assert_eq!(output["count"], 1, "{output}");
    assert!(
        output["files"][0]
            .as_str()
            .unwrap_or_default()
            .ends_with("ready.flag"),
        "{output}"
    );
    // Counted from the attempt's recorded start, across the downtime.
    let waited = output["waited_ms"].as_u64().unwrap();
    assert!(
        u128::from(waited) >= down_for.as_millis(),
        "waited_ms {waited} < {} ms since it was seen polling: the wait restarted",
        down_for.as_millis()
    );
    let (status, history) = http()
        .send(
            "GET",
            &daemon.url(&format!("/api/v1/runs/{id}/history")),
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{history}");
    let records = history["records"].as_array().unwrap();
    let count = |kind: &str| {
        records
            .iter()
            .filter(|r| r["type"] == kind && r["task"] == "wait")
            .count()
    };
    assert_eq!(count("attempt_started"), 1, "{history}");
    assert_eq!(count("attempt_lost"), 0, "{history}");
    assert_eq!(count("attempt_finished"), 1, "{history}");
    daemon.kill();
}

// ---------------------------------------------------------------------------
// validation

/// A file path filled from outside (a param, an event) cannot climb out of
/// its directory: a rendered `..` fails the task before any poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendered_file_path_with_dot_dot_fails_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let wf = workflow(json!({"name": "from_event", "tasks": [
        {"id": "wait", "timeout": "30s", "check": {
            "file": {"path": inbox.to_str().unwrap(), "pattern": "${params.name}"},
            "interval": "50ms"}},
    ]}));
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle();
    let record = handle
        .run_to_end(wf, params(json!({"name": "../../etc/*"})), None, |_| {})
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    let error = record.tasks["wait"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("must not contain `..`"), "{error}");
    assert_eq!(
        record.tasks["wait"]["attempts"], 1,
        "not retried: {record:?}"
    );
    runtime.shutdown().await;
}

/// A bad check is refused at load, naming its path: two conditions, none,
/// a bad interval or max_interval, a backoff under 1, an `until` that does
/// not parse, an unknown key, a bad run status; the good shapes pass.
#[test]
fn a_bad_check_is_refused_at_load_naming_the_path() {
    let parse = |check: Value| {
        let text = json!({"name": "w", "vars": {"day": "d"}, "tasks": [
            {"id": "t", "timeout": "10s", "check": check}]})
        .to_string();
        Workflow::parse(Path::new("w.json"), text.as_bytes())
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    let file = json!({"path": "/tmp/x/*.csv"});
    for (check, expected) in [
        (
            json!({"file": file, "http": {"url": "http://127.0.0.1:1/x"}}),
            "tasks[0].check",
        ),
        (json!({"interval": "1s"}), "tasks[0].check"),
        (json!({}), "tasks[0].check"),
        (
            json!({"file": file, "interval": "soon"}),
            "tasks[0].check.interval",
        ),
        (
            json!({"file": file, "max_interval": "later"}),
            "tasks[0].check.max_interval",
        ),
        (
            json!({"file": file, "backoff": 0.5}),
            "tasks[0].check.backoff",
        ),
        (
            json!({"http": {"url": "http://127.0.0.1:1/x"}, "until": "status =="}),
            "tasks[0].check.until",
        ),
        (json!({"file": file, "intervl": "1s"}), "intervl"),
        (
            json!({"run": {"workflow": "up", "status": "finished"}}),
            "tasks[0].check.run",
        ),
        (
            json!({"run": {"workflow": "up", "same": "week"}}),
            "tasks[0].check.run.same",
        ),
        // Event data must not become code, nor walk out of a directory.
        (
            json!({"http": {"url": "http://127.0.0.1:1/x"}, "until": "body.state == '${event.data.state}'"}),
            "tasks[0].check.until",
        ),
        (
            json!({"file": {"path": "/data/in/../../etc/*"}}),
            "tasks[0].check.file.path",
        ),
        (
            json!({"file": {"path": "/data/in", "pattern": "../*"}}),
            "tasks[0].check.file.pattern",
        ),
        (
            json!({"file": {"path": "/data/in", "pattern": "/etc/*"}}),
            "tasks[0].check.file.pattern",
        ),
        // Settings that would be ignored, or poll without pause.
        (
            json!({"http": {"url": "http://127.0.0.1:1/x", "expect_status": 404}, "until": "status == 200"}),
            "tasks[0].check.http.expect_status",
        ),
        (
            json!({"sql": {"url": "postgres://u@h/db", "query": "select 1", "transaction": true}}),
            "tasks[0].check.sql.transaction",
        ),
        (
            json!({"file": file, "interval": "1ms"}),
            "tasks[0].check.interval",
        ),
        (
            json!({"file": file, "interval": "1m", "max_interval": "10s"}),
            "tasks[0].check.max_interval",
        ),
        (
            json!({"sql": {"url": "postgres://u@h/db", "query": "select * from t where d = '${vars.day}'"}}),
            "tasks[0].check.sql.query",
        ),
    ] {
        let error = parse(check.clone());
        assert!(error.contains(expected), "{check}: {error:?}");
    }
    // A check for another workflow's run reads the daemon's log: no queue
    // (a workflow-wide `defaults.queue` leaves it on the daemon).
    let queued = |task_queue: bool| {
        let mut task = json!({"id": "t", "check": {"run": {"workflow": "up"}}});
        if task_queue {
            task["queue"] = json!("q");
        }
        let text = json!({"name": "w", "defaults": {"queue": "q"}, "tasks": [task]}).to_string();
        Workflow::parse(Path::new("w.json"), text.as_bytes())
    };
    let error = queued(true)
        .err()
        .map(|d| d.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("tasks[0].queue") && error.contains("daemon"),
        "{error:?}"
    );
    let workflow = queued(false).unwrap();
    assert_eq!(workflow.tasks[0].queue, None);
    for good in [
        json!({"sql": {"url": "postgres://u@127.0.0.1/db",
                       "query": "select count(*) from t where day = $1",
                       "params": ["${vars.day}"]},
               "interval": "30s", "backoff": 2.0, "max_interval": "5m"}),
        json!({"sql": {"connection": "main", "query": "select status from t"},
               "until": "row_count > 0 && rows[0].status == 'done'"}),
        json!({"http": {"url": "http://127.0.0.1:1/ready", "method": "GET"},
               "until": "status == 200 && body.ready == true", "interval": "100ms"}),
        json!({"file": {"path": "/tmp/x/*.csv", "settle": "300ms", "non_empty": true}}),
        json!({"run": {"workflow": "upstream", "status": "succeeded",
                       "logical_time": "2026-12-01T00:00:00Z"}}),
        json!({"run": {"workflow": "upstream"}}),
    ] {
        assert_eq!(parse(good.clone()), "", "{good}");
    }
}
