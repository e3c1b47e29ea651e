//! The runtime against a real sled log: durability order, group commit,
//! replay from disk, task logs.

use std::sync::Arc;

use serde_json::{Map, json};
use switchyard::engine::runtime::{Runtime, RuntimeConfig};
use switchyard::engine::{Engine, Limits};
use switchyard::log::{Log, RecordBody, RunStatus};
use switchyard::spec::Workflow;

use crate::util::workflow;

fn config(dir: &std::path::Path) -> RuntimeConfig {
    RuntimeConfig {
        data_dir: dir.to_path_buf(),
        limits: Limits::default(),
        recover: true,
        secrets: Default::default(),
        chain: None,
        broker: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_disk_rebuilds_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    let wf = workflow(
        json!({"name": "replay", "vars": {"region": "eu"}, "tasks": [
            {"id": "flaky", "retry": {"max_attempts": 3, "delay": "20ms"},
             "shell": {"script": "n=$(cat \"$C\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$C\"; echo \"{\\\"n\\\": $n}\" > \"$SWITCHYARD_OUTPUT\"; [ $n -ge 2 ]",
                       "env": {"C": counter.to_str().unwrap()}},
             "export": {"n": "${output.n}"}},
            {"id": "skipped", "after": "flaky:failure", "noop": {}},
            {"id": "last", "after": "flaky", "when": "vars.n == 2", "shell": {"command": ["echo", "${vars.region}"]}},
        ]}),
    );
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let record = runtime
        .handle()
        .run_to_end(wf.clone(), Map::new(), Some(json!({"id": "evt-1"})), |_| {})
        .await
        .unwrap();
    runtime.shutdown().await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    assert_eq!(record.vars["n"], json!(2));

    let log = Log::open(dir.path()).unwrap();
    let history = log.run_history(record.id).unwrap();
    assert!(matches!(
        history.first().unwrap().body,
        RecordBody::RunCreated { .. }
    ));
    assert!(matches!(
        history.last().unwrap().body,
        RecordBody::RunEnded { .. }
    ));
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
    // The definition comes back from the log, not from the file.
    let source = log.definition(&record.version).unwrap().unwrap();
    let stored = Arc::new(Workflow::parse(std::path::Path::new("log"), &source).unwrap());
    assert_eq!(stored.version, wf.version);
    let mut engine = Engine::new(Limits::default());
    engine.register(stored);
    for r in &history {
        engine.apply(r);
    }
    assert_eq!(engine.run(record.id).unwrap().record(), record);
    let summary: switchyard::engine::RunRecord =
        serde_json::from_slice(&log.run_summary(record.id).unwrap().unwrap()).unwrap();
    assert_eq!(summary, record);
    assert!(log.unfinished_runs().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_published_only_after_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "chain", "tasks": [
        {"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}},
    ]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    let mut records = handle.subscribe();
    let log = handle.log().clone();
    let checker = tokio::spawn(async move {
        let mut seen = 0;
        while let Ok(record) = records.recv().await {
            assert!(
                record.seq <= log.durable_seq(),
                "record {} published before its flush",
                record.seq
            );
            seen += 1;
            if seen == 200 {
                break;
            }
        }
        seen
    });
    let mut runs = Vec::new();
    for _ in 0..30 {
        let handle = handle.clone();
        let wf = wf.clone();
        runs.push(tokio::spawn(async move {
            handle.run_to_end(wf, Map::new(), None, |_| {}).await
        }));
    }
    for run in runs {
        assert_eq!(run.await.unwrap().unwrap().status, RunStatus::Succeeded);
    }
    assert_eq!(checker.await.unwrap(), 200);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flush_covers_many_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "chain", "tasks": [
        {"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}},
    ]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    let mut runs = Vec::new();
    for _ in 0..500 {
        let handle = handle.clone();
        let wf = wf.clone();
        runs.push(tokio::spawn(async move {
            handle.run_to_end(wf, Map::new(), None, |_| {}).await
        }));
    }
    let mut ids = Vec::new();
    for run in runs {
        let record = run.await.unwrap().unwrap();
        assert_eq!(record.status, RunStatus::Succeeded);
        ids.push(record.id);
    }
    let log = handle.log().clone();
    let records: usize = ids
        .iter()
        .map(|id| log.run_history(*id).unwrap().len())
        .sum();
    // 500 runs × (created, started, 3 × (started, finished), ended) = 4,500 records.
    assert_eq!(records, 500 * 9);
    let flushes = log.flushes();
    assert!(
        (flushes as usize) < records / 4,
        "{flushes} flushes for {records} records: group commit is not batching"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_logs_are_kept_per_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "logs", "tasks": [
        {"id": "talk", "retry": {"max_attempts": 2, "delay": "10ms"},
         "shell": {"script": "echo \"out $SWITCHYARD_ATTEMPT\"; echo \"err $SWITCHYARD_ATTEMPT\" >&2; [ \"$SWITCHYARD_ATTEMPT\" = 2 ]"}},
        {"id": "big", "shell": {"script": "head -c 3000000 /dev/zero | tr '\\0' 'x'; echo; echo tail-marker"}},
    ]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    let record = handle
        .run_to_end(wf, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let logs = handle.log().task_logs(record.id, "talk").unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].stdout, "out 1\n");
    assert_eq!(logs[0].stderr, "err 1\n");
    assert_eq!(logs[1].stdout, "out 2\n");
    let big = handle.log().task_logs(record.id, "big").unwrap();
    assert!(big[0].truncated);
    assert!(big[0].stdout.len() <= 1024 * 1024);
    assert!(big[0].stdout.ends_with("tail-marker\n"), "the tail is kept");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_runs_are_indexed_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let wf =
        workflow(json!({"name": "nap", "tasks": [{"id": "nap", "sleep": {"duration": "400ms"}}]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    let run_id = handle.start_run(wf, Map::new(), None).await.unwrap();
    assert_eq!(handle.log().unfinished_runs().unwrap(), vec![run_id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !handle.log().unfinished_runs().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "run did not end");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(handle.log().run_summary(run_id).unwrap().is_some());
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_definition_is_missing_is_ended_visibly_at_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let run_id = uuid::Uuid::now_v7();
    {
        let log = Log::open(dir.path()).unwrap();
        log.append(
            run_id,
            1_700_000_000_000,
            RecordBody::RunCreated {
                workflow: "ghost".into(),
                version: "0000000000000000".into(),
                version_label: None,
                params: Map::new(),
                event: None,
                rerun_of: None,
                reused: Vec::new(),
            },
        )
        .unwrap();
        log.flush().unwrap();
    }
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_broken, 1);
    let record = runtime.handle().run_record(run_id).await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    assert!(record.error.unwrap().contains("missing from the log"));
    assert!(runtime.handle().log().unfinished_runs().unwrap().is_empty());
    runtime.shutdown().await;
}
