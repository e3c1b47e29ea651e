//! The runtime against a real sled log: durability order, group commit,
//! replay from disk, task logs.

use std::sync::Arc;

use serde_json::{Map, json};
use switchyard::engine::{Engine, Limits};
use switchyard::log::{Log, RecordBody, RunStatus};
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::spec::Workflow;

use crate::util::workflow;

fn config(dir: &std::path::Path) -> RuntimeConfig {
    RuntimeConfig::new(dir)
}

/// Waits (up to 20 s) until the run has ended; returns its record.
async fn wait_ended(
    handle: &switchyard::runtime::RuntimeHandle,
    run_id: switchyard::log::RunId,
) -> switchyard::engine::RunRecord {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let record = handle.run_record(run_id).await.unwrap().unwrap();
        if record.status.is_terminal() {
            return record;
        }
        assert!(std::time::Instant::now() < deadline, "{record:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
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
                project_vars: Default::default(),
                event: None,
                event_seq: None,
                rerun_of: None,
                reused: Vec::new(),
                parent: None,
                logical_time: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_one_dedup_key_in_one_commit_start_one_run() {
    use switchyard::log::Outcome;
    use switchyard::runtime::{Submission, SubmitCandidate};
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "once", "tasks": [{"id": "a", "noop": {}}]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    // Sent in one poll, so the engine thread finds most of them in one batch.
    let submissions = (0..50).map(|i| {
        handle.accept(Submission {
            event: json!({"id": format!("delivery-{i}")}),
            candidates: vec![SubmitCandidate::Start {
                binding: "orders".into(),
                workflow: wf.clone(),
                params: Map::new(),
                dedup_key: "order-42".into(),
                ttl: std::time::Duration::from_secs(3600),
            }],
            marks: Vec::new(),
            wait: false,
            publish: None,
        })
    });
    // Polled together, so every send happens before any reply is awaited.
    let mut pending: Vec<_> = submissions.map(Box::pin).collect();
    let mut done: Vec<Option<_>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none()
                && let std::task::Poll::Ready(result) = future.as_mut().poll(cx)
            {
                *slot = Some(result);
            }
        }
        if done.iter().all(Option::is_some) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    let accepted: Vec<_> = done.into_iter().map(|a| a.unwrap().unwrap()).collect();
    let started: Vec<_> = accepted.iter().flat_map(|a| a.runs.clone()).collect();
    assert_eq!(started.len(), 1, "one run for one dedup key");
    for a in &accepted {
        match &a.outcomes[..] {
            [Outcome::Started { run_id, .. }] => assert_eq!(*run_id, started[0]),
            [
                Outcome::Duplicate {
                    run_id,
                    first_event,
                    ..
                },
            ] => {
                assert_eq!(*run_id, started[0]);
                assert_ne!(first_event, &a.event_id);
            }
            other => panic!("unexpected outcomes {other:?}"),
        }
    }
    assert_eq!(handle.log().events(None, 100).unwrap().len(), 50);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_ended_at_recovery_get_their_run_failed_event_and_a_corrupt_run_does_not_stop_startup()
{
    let dir = tempfile::tempdir().unwrap();
    let ghost = uuid::Uuid::now_v7();
    let corrupt = uuid::Uuid::now_v7();
    {
        let log = Log::open(dir.path()).unwrap();
        for (run_id, workflow) in [(ghost, "ghost"), (corrupt, "corrupt")] {
            log.append(
                run_id,
                1_700_000_000_000,
                RecordBody::RunCreated {
                    workflow: workflow.into(),
                    version: "0000000000000000".into(),
                    version_label: None,
                    params: Map::from_iter([("n".to_string(), json!(7))]),
                    project_vars: Default::default(),
                    event: None,
                    event_seq: None,
                    rerun_of: None,
                    reused: Vec::new(),
                    parent: None,
                    logical_time: None,
                },
            )
            .unwrap();
        }
        log.flush().unwrap();
    }
    // A record of the second run that is not JSON (a disk fault, a bug).
    {
        let db = sled::open(dir.path().join("log")).unwrap();
        let mut key = corrupt.as_bytes().to_vec();
        key.extend_from_slice(&u64::MAX.to_be_bytes());
        db.open_tree("records")
            .unwrap()
            .insert(key, &b"{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let mut config = config(dir.path());
    // Lifecycle events on; the broker need not be reachable to record them.
    config.broker = Some(switchyard::amqp::Broker::new(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        Some("sy.events".into()),
    ));
    let runtime = Runtime::start(config).unwrap();
    assert_eq!(runtime.recovery().runs_broken, 2);
    let log = runtime.handle().log().clone();
    assert!(log.unfinished_runs().unwrap().is_empty());
    let record = runtime.handle().run_record(ghost).await.unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Failed);
    let pending = log.outbox_pending(10).unwrap();
    let kinds: Vec<(String, String)> = pending
        .iter()
        .map(|(_, m)| {
            (
                m.routing_key.clone(),
                m.event["data"]["run_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("ghost.run.failed".to_string(), ghost.to_string())],
        "the corrupt run has no summary to describe it; the other gets its event"
    );
    let event = &pending[0].1.event;
    assert_eq!(event["data"]["params"]["n"], 7);
    assert!(
        event["data"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot recover")
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_starts_no_run_is_durable_before_it_is_answered() {
    use switchyard::log::{Mark, Outcome};
    use switchyard::runtime::{Submission, SubmitCandidate};
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    // Filtered out, with an adapter mark (a file ledger entry, a cron fire):
    // the adapter acts on the answer, so the mark must be on disk by then.
    let accepted = handle
        .accept(Submission {
            event: json!({"id": "filtered-1"}),
            candidates: vec![SubmitCandidate::Done(Outcome::Filtered {
                binding: "orders".into(),
                reason: "filter `false` is false".into(),
            })],
            marks: vec![Mark {
                key: b"ledger/orders.csv".to_vec(),
                value: Some(b"seen".to_vec()),
            }],
            wait: false,
            publish: None,
        })
        .await
        .unwrap();
    assert!(accepted.runs.is_empty());
    let log = handle.log();
    assert!(
        log.durable_seq() >= accepted.seq,
        "answered before its flush: durable {} < event {}",
        log.durable_seq(),
        accepted.seq
    );
    assert_eq!(
        log.mark(b"ledger/orders.csv").unwrap(),
        Some(b"seen".to_vec())
    );
    runtime.shutdown().await;
}

/// Opens the data dir's sled database as an older binary would have left
/// it (format 2), to write a partial commit into it by hand.
fn with_old_log(dir: &std::path::Path, edit: impl FnOnce(&sled::Db)) {
    let db = sled::open(dir.join("log")).unwrap();
    db.open_tree("meta")
        .unwrap()
        .insert("format", &2u32.to_be_bytes())
        .unwrap();
    edit(&db);
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ended_without_its_summary_and_index_removal_is_finished_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "done", "tasks": [{"id": "a", "noop": {}}]}));
    let record = crate::util::run_once(dir.path(), wf).await;
    // The crash kept the records (ending in RunEnded) but neither the
    // summary nor the removal from `unfinished`.
    with_old_log(dir.path(), |db| {
        db.open_tree("runs")
            .unwrap()
            .remove(record.id.as_bytes())
            .unwrap();
        db.open_tree("unfinished")
            .unwrap()
            .insert(record.id.as_bytes(), &[])
            .unwrap();
    });
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_finished, 1);
    assert_eq!(runtime.recovery().runs_resumed, 0);
    let handle = runtime.handle();
    assert!(handle.log().unfinished_runs().unwrap().is_empty());
    let found = handle.run_record(record.id).await.unwrap().unwrap();
    assert_eq!(found.status, RunStatus::Succeeded);
    assert_eq!(found, record);
    drop(handle);
    runtime.shutdown().await;
    // Finished for good: the next start has nothing to fold.
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_finished, 0);
    assert_eq!(runtime.recovery().records_replayed, 0);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_run_missing_from_the_unfinished_index_is_found_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let wf = workflow(json!({"name": "slow", "tasks": [
        {"id": "a", "shell": {"command": ["sleep", "0.3"]}},
        {"id": "b", "after": "a", "noop": {}},
    ]}));
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let run_id = runtime
        .handle()
        .start_run(Arc::clone(&wf), Map::new(), None)
        .await
        .unwrap();
    // Stop mid-attempt: the run stays unfinished.
    runtime.shutdown().await;
    // The crash kept the run's records but not its index entry.
    with_old_log(dir.path(), |db| {
        db.open_tree("unfinished")
            .unwrap()
            .remove(run_id.as_bytes())
            .unwrap();
    });
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_resumed, 1, "found by the upgrade");
    let handle = runtime.handle();
    let record = wait_ended(&handle, run_id).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_flight_replays_with_its_definition_even_if_validation_got_stricter() {
    // Started by an older build that allowed `${…}` in `shell.cwd` (this
    // build refuses it in files): the run still resumes and finishes.
    let dir = tempfile::tempdir().unwrap();
    let definition = json!({"name": "legacy", "vars": {"dir": "/"}, "tasks": [
        {"id": "a", "shell": {"command": ["pwd"], "cwd": "${vars.dir}"}},
    ]});
    assert!(
        Workflow::parse(
            std::path::Path::new("f.json"),
            definition.to_string().as_bytes()
        )
        .is_err(),
        "this build refuses it in a file"
    );
    let source = serde_json::to_vec(&definition).unwrap();
    let version = switchyard::spec::workflow::content_hash(&source);
    let run_id = uuid::Uuid::now_v7();
    {
        let log = Log::open(dir.path()).unwrap();
        log.put_definition("legacy", &version, None, &source, 1)
            .unwrap();
        log.append(
            run_id,
            1_700_000_000_000,
            RecordBody::RunCreated {
                workflow: "legacy".into(),
                version: version.clone(),
                version_label: None,
                params: Map::new(),
                project_vars: Default::default(),
                event: None,
                event_seq: None,
                rerun_of: None,
                reused: Vec::new(),
                parent: None,
                logical_time: None,
            },
        )
        .unwrap();
        log.flush().unwrap();
    }
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_broken, 0);
    assert_eq!(runtime.recovery().runs_resumed, 1);
    let handle = runtime.handle();
    let record = wait_ended(&handle, run_id).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    drop(handle);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_cut_by_an_output_cap_leaves_nothing_of_it_visible() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "sekret-7Q9Z";
    let secrets =
        switchyard::spec::Secrets::from_values([("api".to_string(), secret.to_string())].into());
    // `logs`: the 1 MiB log tail starts 5 bytes before the secret's end,
    // after mid-stream trims. `var`: the 64 KiB `tasks.var.stdout` tail
    // starts 5 bytes before its end.
    let wf = workflow(json!({"name": "cut", "tasks": [
        {"id": "logs", "shell": {"script": "head -c 2000000 /dev/zero | tr '\\0' x; printf \"$S\"; head -c 1048571 /dev/zero | tr '\\0' y", "env": {"S": "${secrets.api}"}}},
        {"id": "var", "shell": {"script": "printf \"$S\"; head -c 65531 /dev/zero | tr '\\0' y", "env": {"S": "${secrets.api}"}}},
        {"id": "show", "after": ["logs", "var"], "noop": {}, "export": {"tail": "${tasks.var.stdout}"}},
    ]}));
    let mut config = config(dir.path());
    config.secrets = Arc::new(secrets);
    let runtime = Runtime::start(config).unwrap();
    let handle = runtime.handle();
    let record = handle
        .run_to_end(wf, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let tail = record.vars["tail"].as_str().unwrap();
    assert_eq!(tail.len(), 64 * 1024);
    assert!(!tail.contains("7Q9Z"), "{}", &tail[..16]);
    let logs = handle.log().task_logs(record.id, "logs").unwrap();
    let stdout = &logs[0].stdout;
    assert!(logs[0].truncated);
    assert!(stdout.len() <= 1024 * 1024);
    assert!(!stdout.contains("7Q9Z"), "{}", &stdout[..16]);
    assert!(stdout.ends_with('y'));
    drop(handle);
    runtime.shutdown().await;
}

/// Values in every tree of a closed data dir that contain `needle`.
fn stored_copies(dir: &std::path::Path, needle: &str) -> Vec<String> {
    // The runtime's last handles let go of the lock a moment after it stops.
    let mut tries = 0;
    let db = loop {
        match sled::open(dir.join("log")) {
            Ok(db) => break db,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut found = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        for entry in tree.iter() {
            let (key, value) = entry.unwrap();
            if value.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{}/{key:?}", String::from_utf8_lossy(&name)));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_stored_once_and_the_runs_it_starts_refer_to_it() {
    use switchyard::engine::rerun::RerunFrom;
    use switchyard::runtime::{Submission, SubmitCandidate};
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", uuid::Uuid::now_v7());
    // The event reaches each run's scope (the task prints its length, so
    // the marker itself is only ever in the event).
    let wf = workflow(json!({"name": "fan", "tasks": [
        {"id": "wait", "sleep": {"duration": "700ms"}},
        {"id": "use", "after": "wait", "shell": {
            "script": "printf '{\"n\": %d}' \"$${#M}\" > \"$SWITCHYARD_OUTPUT\"",
            "env": {"M": "${event.data.marker}"}}},
    ]}));
    let runs = {
        let runtime = Runtime::start(config(dir.path())).unwrap();
        let handle = runtime.handle();
        let candidates = ["b1", "b2", "b3"]
            .map(|binding| SubmitCandidate::Start {
                binding: binding.into(),
                workflow: wf.clone(),
                params: Map::new(),
                dedup_key: "k".into(),
                ttl: std::time::Duration::from_secs(3600),
            })
            .into();
        let accepted = handle
            .accept(Submission {
                event: json!({"id": "e-fan", "data": {"marker": marker}}),
                candidates,
                marks: Vec::new(),
                wait: false,
                publish: None,
            })
            .await
            .unwrap();
        assert_eq!(accepted.runs.len(), 3);
        // In flight while the runtime stops: they resume from the log.
        drop(handle);
        runtime.shutdown().await;
        accepted.runs
    };
    assert_eq!(
        stored_copies(dir.path(), &marker).len(),
        1,
        "one copy of the event, in `events`: {:?}",
        stored_copies(dir.path(), &marker)
    );
    let runtime = Runtime::start(config(dir.path())).unwrap();
    let handle = runtime.handle();
    for run_id in &runs {
        let record = wait_ended(&handle, *run_id).await;
        assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
        assert_eq!(record.event["data"]["marker"], marker.as_str());
        assert_eq!(record.tasks["use"]["output"]["n"], marker.len());
        // The stored summary and history read back with the event in place.
        let summary: serde_json::Value =
            serde_json::from_slice(&handle.log().run_summary(*run_id).unwrap().unwrap()).unwrap();
        assert_eq!(summary["event"]["data"]["marker"], marker.as_str());
        assert!(summary.get("event_seq").is_none(), "{summary}");
        let history = handle.log().run_history(*run_id).unwrap();
        let RecordBody::RunCreated { event, .. } = &history[0].body else {
            panic!("{history:?}");
        };
        assert_eq!(event.as_ref().unwrap()["data"]["marker"], marker.as_str());
    }
    let listed = handle
        .log()
        .ended_runs_where(Some("fan"), None, None, 10)
        .unwrap();
    assert_eq!(listed.len(), 3);
    for bytes in &listed {
        let summary: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(summary["event"]["data"]["marker"], marker.as_str());
    }
    // A rerun sees the same event.
    let rerun = handle.rerun(runs[0], &RerunFrom::Failed).await;
    assert!(rerun.is_err(), "nothing failed: {rerun:?}");
    let rerun = handle
        .rerun(runs[0], &RerunFrom::Task("use".into()))
        .await
        .unwrap();
    let record = wait_ended(&handle, rerun).await;
    assert_eq!(record.event["data"]["marker"], marker.as_str());
    assert_eq!(record.tasks["use"]["output"]["n"], marker.len());
    drop(handle);
    runtime.shutdown().await;
    let summaries = stored_copies(dir.path(), &marker);
    assert_eq!(
        summaries.len(),
        1 + 2,
        "the rerun keeps its own copy: {summaries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_vars_are_the_lowest_layer_and_a_run_keeps_the_ones_it_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let project = |region: &str| {
        let mut config = config(dir.path());
        config.project_vars =
            serde_json::from_value(json!({"region": region, "tier": "project", "who": "project"}))
                .unwrap();
        config
    };
    let wf = workflow(
        json!({"name": "layers", "vars": {"tier": "workflow", "who": "workflow"},
        "tasks": [
            {"id": "wait", "sleep": {"duration": "600ms"}},
            {"id": "see", "after": "wait", "shell": {
                "script": "printf '{\"region\": \"%s\"}' \"$R\" > \"$SWITCHYARD_OUTPUT\"",
                "env": {"R": "${vars.region}"}}},
        ]}),
    );
    let params: Map<String, serde_json::Value> =
        serde_json::from_value(json!({"who": "params"})).unwrap();
    let run_id = {
        let runtime = Runtime::start(project("eu")).unwrap();
        let handle = runtime.handle();
        let run_id = handle
            .start_run(wf.clone(), params.clone(), None)
            .await
            .unwrap();
        drop(handle);
        // In flight while the project's vars change.
        runtime.shutdown().await;
        run_id
    };
    let runtime = Runtime::start(project("us")).unwrap();
    let handle = runtime.handle();
    let record = wait_ended(&handle, run_id).await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    assert_eq!(
        serde_json::Value::Object(record.vars.clone()),
        json!({"region": "eu", "tier": "workflow", "who": "params"}),
        "params > workflow vars > project vars, as recorded at creation"
    );
    assert_eq!(record.tasks["see"]["output"]["region"], "eu");
    let fresh = handle
        .run_to_end(wf, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(fresh.vars["region"], "us", "a new run gets the vars of now");
    assert_eq!(fresh.vars["who"], "workflow");
    // A rerun repeats its source with the source's project vars.
    let rerun = handle
        .rerun(
            run_id,
            &switchyard::engine::rerun::RerunFrom::Task("see".into()),
        )
        .await
        .unwrap();
    let rerun = wait_ended(&handle, rerun).await;
    assert_eq!(rerun.vars["region"], "eu", "{rerun:?}");
    assert_eq!(rerun.tasks["see"]["output"]["region"], "eu");
    drop(handle);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finished_at_recovery_keeps_referring_to_its_stored_event() {
    use switchyard::runtime::{Submission, SubmitCandidate};
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("marker-{}", uuid::Uuid::now_v7());
    let wf = workflow(json!({"name": "done", "tasks": [{"id": "a", "noop": {}}]}));
    let run_id = {
        let runtime = Runtime::start(config(dir.path())).unwrap();
        let handle = runtime.handle();
        let mut accepted = handle
            .accept(Submission {
                event: json!({"id": "e-rec", "data": {"marker": marker}}),
                candidates: vec![SubmitCandidate::Start {
                    binding: "b".into(),
                    workflow: wf,
                    params: Map::new(),
                    dedup_key: "k".into(),
                    ttl: std::time::Duration::from_secs(3600),
                }],
                marks: Vec::new(),
                wait: true,
                publish: None,
            })
            .await
            .unwrap();
        accepted.ended.pop().unwrap().await.unwrap();
        drop(handle);
        runtime.shutdown().await;
        accepted.runs[0]
    };
    // Ended, but the crash kept neither its summary nor the index removal.
    with_old_log(dir.path(), |db| {
        db.open_tree("runs")
            .unwrap()
            .remove(run_id.as_bytes())
            .unwrap();
        db.open_tree("unfinished")
            .unwrap()
            .insert(run_id.as_bytes(), &[])
            .unwrap();
    });
    let runtime = Runtime::start(config(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_finished, 1);
    let handle = runtime.handle();
    let summary: serde_json::Value =
        serde_json::from_slice(&handle.log().run_summary(run_id).unwrap().unwrap()).unwrap();
    assert_eq!(summary["event"]["data"]["marker"], marker.as_str());
    drop(handle);
    runtime.shutdown().await;
    assert_eq!(
        stored_copies(dir.path(), &marker).len(),
        1,
        "the recovered summary refers to the event instead of copying it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_knows_its_logical_time_and_a_child_and_a_rerun_keep_it() {
    use switchyard::runtime::{Submission, SubmitCandidate};
    let dir = tempfile::tempdir().unwrap();
    let child = workflow(json!({"name": "child", "tasks": [
        {"id": "t", "noop": {}, "export": {"day": "${run.logical_time.substring(0, 10)}"}}]}));
    let nightly = workflow(json!({"name": "nightly", "tasks": [
        {"id": "t", "noop": {}, "export": {"for": "${run.logical_time}"}},
        {"id": "call", "workflow": {"name": "child"}, "export": {"child_day": "${output.vars.day}"}},
    ]}));
    let lookup_child = Arc::clone(&child);
    let runtime = Runtime::start(RuntimeConfig {
        workflows: Some(Arc::new(move |name: &str| {
            (name == "child").then(|| Arc::clone(&lookup_child))
        })),
        ..config(dir.path())
    })
    .unwrap();
    let handle = runtime.handle();
    let start = |event: serde_json::Value| {
        handle.accept(Submission {
            event,
            candidates: vec![SubmitCandidate::Start {
                binding: "b".into(),
                workflow: nightly.clone(),
                params: Map::new(),
                dedup_key: uuid::Uuid::now_v7().to_string(),
                ttl: std::time::Duration::from_secs(60),
            }],
            marks: Vec::new(),
            wait: true,
            publish: None,
        })
    };
    // A cron tick: its scheduled instant, even though it fires later.
    let tick = start(json!({"id": "cron:b:1", "type": "switchyard.cron.tick",
        "time": "2026-12-02T23:31:07Z", "data": {"scheduled_time": "2026-12-01T22:30:00Z"}}))
    .await
    .unwrap();
    let run = wait_ended(&handle, tick.runs[0]).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(
        run.logical_time.as_deref(),
        Some("2026-12-01T22:30:00.000Z")
    );
    assert_eq!(run.vars["for"], "2026-12-01T22:30:00.000Z");
    // The child works on its parent's instant.
    assert_eq!(run.vars["child_day"], "2026-12-01");
    let child_id = run.tasks["call"]["output"]["run_id"].as_str().unwrap();
    let child_run = handle
        .run_record(child_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child_run.logical_time, run.logical_time);
    // Any other event: its own time.
    let other =
        start(json!({"id": "e-2", "type": "order.created", "time": "2026-11-30T08:00:00+01:00"}))
            .await
            .unwrap();
    let other = wait_ended(&handle, other.runs[0]).await;
    assert_eq!(
        other.logical_time.as_deref(),
        Some("2026-11-30T07:00:00.000Z")
    );
    // A rerun keeps its source's.
    let rerun = handle
        .rerun(
            run.id,
            &switchyard::engine::rerun::RerunFrom::Task("t".into()),
        )
        .await
        .unwrap();
    let rerun = wait_ended(&handle, rerun).await;
    assert_eq!(rerun.logical_time, run.logical_time);
    // By hand: when it was created.
    let manual = handle
        .run_to_end(nightly.clone(), Map::new(), None, |_| {})
        .await
        .unwrap();
    assert!(manual.logical_time.is_some());
    runtime.shutdown().await;
}
