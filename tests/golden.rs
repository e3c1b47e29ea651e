//! The golden log: a log written by an earlier build (`tests/golden/`),
//! committed, that every later build must open and replay to the same
//! state. It guards the promise that log records are only ever added to.
//!
//! `golden/log-v<format>.json` is every sled tree of a data dir, key and
//! value as written; `golden/state-v<format>.json` is what folding it gave
//! the build that wrote it: each run's record, the stored summaries, the unfinished runs,
//! the events. A build that bumps the log format adds the golden of its
//! format (never rewrites an older one, and never to make this test pass)
//! with `SWITCHYARD_WRITE_GOLDEN=1 cargo test golden`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use switchyard::engine::replay;
use switchyard::log::Log;
use switchyard::runtime::{Runtime, RuntimeConfig, Submission, SubmitCandidate};

use crate::util::workflow;

/// Run record fields added after some goldens were written.
const ADDED_LATER: &[&str] = &["logical_time"];

/// Every golden committed so far: each must still replay.
const GOLDENS: &[u32] = &[3, 4, 5, 6, 7, 8];

fn log_file(format: u32) -> String {
    format!("tests/golden/log-v{format}.json")
}

fn state_file(format: u32) -> String {
    format!("tests/golden/state-v{format}.json")
}

fn golden(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// What a log folds to, as JSON (compared whole).
fn state_of(log: &Log) -> Value {
    let mut runs = BTreeMap::new();
    let mut summaries = BTreeMap::new();
    let events = log.events(None, 1000).unwrap();
    let mut ids: Vec<_> = log.unfinished_runs().unwrap();
    for event in &events {
        for outcome in &event.outcomes {
            if let switchyard::log::Outcome::Started { run_id, .. } = outcome {
                ids.push(*run_id);
            }
        }
    }
    // Runs started by hand are found through their summaries' ids, listed
    // newest first.
    for bytes in log.ended_runs(None, 1000, |_| true).unwrap() {
        let summary: Value = serde_json::from_slice(&bytes).unwrap();
        let id: switchyard::log::RunId = summary["id"].as_str().unwrap().parse().unwrap();
        summaries.insert(id.to_string(), summary);
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    for id in ids {
        let record = replay::fold(log, id).unwrap().record();
        runs.insert(id.to_string(), serde_json::to_value(record).unwrap());
    }
    let unfinished: Vec<String> = log
        .unfinished_runs()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({
        "runs": runs,
        "summaries": summaries,
        "unfinished": unfinished,
        "events": events.iter().map(|e| e.to_json()).collect::<Vec<_>>(),
    })
}

/// Every tree of a sled database: `{tree: [[key hex, value hex], …]}`.
fn export(dir: &Path) -> Value {
    let db = sled::open(dir.join("log")).unwrap();
    let mut trees = Map::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        let entries: Vec<Value> = tree
            .iter()
            .map(|entry| {
                let (k, v) = entry.unwrap();
                json!([hex::encode(k), hex::encode(v)])
            })
            .collect();
        trees.insert(
            String::from_utf8_lossy(&name).into_owned(),
            Value::Array(entries),
        );
    }
    Value::Object(trees)
}

fn import(export: &Value, dir: &Path) {
    let db = sled::open(dir.join("log")).unwrap();
    for (name, entries) in export.as_object().unwrap() {
        let tree = db.open_tree(name.as_bytes()).unwrap();
        for entry in entries.as_array().unwrap() {
            let key = hex::decode(entry[0].as_str().unwrap()).unwrap();
            let value = hex::decode(entry[1].as_str().unwrap()).unwrap();
            tree.insert(key, value).unwrap();
        }
    }
    db.flush().unwrap();
}

/// Writes a log touching every record kind: runs that succeed (with an
/// export), fail after retries, are cancelled, are skipped into, and one
/// left unfinished with a retry pending; an event with a dedup entry, a
/// duplicate and a mark; project vars in every run; a sub-workflow's run; a check that observed before it held.
async fn write_scenario(dir: &Path) {
    let mut config = RuntimeConfig::new(dir);
    // Project vars (format 6): recorded in every run created.
    config.project_vars = Map::from_iter([("project".to_string(), json!("golden"))]);
    // A sub-workflow (format 7): its run carries `parent`.
    let leaf = workflow(json!({"name": "leaf", "tasks": [
        {"id": "give", "shell": {"script": "echo '{\"n\": 7}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"n": "${output.n}"}},
    ]}));
    let nested = workflow(json!({"name": "nested", "tasks": [
        {"id": "call", "workflow": {"name": "leaf", "params": {"from": "nested"}}, "export": {"n": "${output.vars.n}"}},
    ]}));
    {
        let leaf = Arc::clone(&leaf);
        config.workflows = Some(Arc::new(move |name: &str| {
            (name == "leaf").then(|| Arc::clone(&leaf))
        }));
    }
    let runtime = Runtime::start(config).unwrap();
    let handle = runtime.handle();
    let etl = workflow(
        json!({"name": "etl", "vars": {"region": "eu"}, "timeout": "1h", "tasks": [
            {"id": "extract", "shell": {"script": "echo '{\"rows\": 3}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"rows": "${output.rows}"}},
            {"id": "load", "after": "extract", "when": "vars.rows > 1", "noop": {}},
            {"id": "alert", "after": "extract:failure", "noop": {}},
            {"id": "nap", "after": "load", "sleep": {"duration": "10ms"}},
        ]}),
    );
    let flaky = workflow(json!({"name": "flaky", "tasks": [
        {"id": "try", "retry": {"max_attempts": 2, "delay": "10ms"}, "shell": {"command": ["false"]}},
        {"id": "cleanup", "after": "try:completion", "noop": {}},
    ]}));
    let long = workflow(json!({"name": "long", "tasks": [
        {"id": "wait", "shell": {"command": ["sleep", "30"]}},
    ]}));
    let retrying = workflow(json!({"name": "retrying", "tasks": [
        {"id": "later", "retry": {"max_attempts": 3, "delay": "1h"}, "shell": {"command": ["false"]}},
    ]}));
    // A check (format 8): it records what it saw before the file came.
    let arrival = dir.join("arrival.csv");
    let waiting = workflow(json!({"name": "waiting", "tasks": [
        {"id": "ready", "timeout": "30s",
         "check": {"file": {"path": arrival.to_str().unwrap()}, "interval": "20ms"}},
    ]}));
    for wf in [&etl, &flaky, &nested] {
        handle
            .run_to_end(Arc::clone(wf), Map::new(), None, |_| {})
            .await
            .unwrap();
    }
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(arrival, "id\n1\n").unwrap();
    });
    handle
        .run_to_end(waiting, Map::new(), None, |_| {})
        .await
        .unwrap();
    writer.await.unwrap();
    let cancelled = handle.start_run(long, Map::new(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.cancel(cancelled, "golden").await.unwrap();
    // Left unfinished: its retry is due in an hour.
    handle.start_run(retrying, Map::new(), None).await.unwrap();
    let event = |id: &str| {
        json!({"specversion": "1.0", "id": id, "source": "golden",
        "type": "golden.event", "data": {"n": 1}})
    };
    for id in ["e-1", "e-1"] {
        let submission = Submission {
            event: event(id),
            candidates: vec![SubmitCandidate::Start {
                binding: "golden-binding".into(),
                workflow: Arc::clone(&etl),
                params: Map::from_iter([("n".to_string(), json!(1))]),
                dedup_key: id.into(),
                ttl: Duration::from_secs(3600 * 24 * 365 * 50),
            }],
            marks: vec![switchyard::log::Mark {
                key: b"golden\0mark".to_vec(),
                value: Some(b"1".to_vec()),
            }],
            wait: false,
            publish: None,
        };
        handle.accept(submission).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(handle);
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_log_replays_to_the_state_it_was_written_with() {
    if std::env::var_os("SWITCHYARD_WRITE_GOLDEN").is_some() {
        let format = switchyard::log::FORMAT_VERSION;
        let dir = tempfile::tempdir().unwrap();
        write_scenario(dir.path()).await;
        let log = export(dir.path());
        let state = state_of(&Log::open(dir.path()).unwrap());
        std::fs::create_dir_all(golden("tests/golden")).unwrap();
        std::fs::write(
            golden(&log_file(format)),
            serde_json::to_string_pretty(&log).unwrap(),
        )
        .unwrap();
        std::fs::write(
            golden(&state_file(format)),
            serde_json::to_string_pretty(&state).unwrap(),
        )
        .unwrap();
        eprintln!("wrote the format {format} golden");
    }
    for format in GOLDENS {
        replays(*format).await;
    }
}

async fn replays(format: u32) {
    let exported: Value =
        serde_json::from_str(&std::fs::read_to_string(golden(&log_file(format))).unwrap()).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(golden(&state_file(format))).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    import(&exported, dir.path());
    {
        let log = Log::open(dir.path()).unwrap();
        let mut state = state_of(&log);
        // Fields a later build added to the run record (never changed or
        // removed ones) are not in an older golden's state.
        if let (Some(runs), Some(expected_runs)) =
            (state["runs"].as_object_mut(), expected["runs"].as_object())
        {
            for (id, run) in runs.iter_mut() {
                let (Some(run), Some(old)) = (run.as_object_mut(), expected_runs[id].as_object())
                else {
                    continue;
                };
                for added in ADDED_LATER {
                    if !old.contains_key(*added) {
                        run.remove(*added);
                    }
                }
            }
        }
        assert_eq!(
            state["runs"], expected["runs"],
            "format {format}: the golden runs fold to another state"
        );
        assert_eq!(state["summaries"], expected["summaries"], "format {format}");
        assert_eq!(
            state["unfinished"], expected["unfinished"],
            "format {format}"
        );
        assert_eq!(state["events"], expected["events"], "format {format}");
        // What the scenario promised is in it.
        let statuses: Vec<&str> = expected["runs"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        for status in ["succeeded", "failed", "cancelled", "running"] {
            assert!(statuses.contains(&status), "{statuses:?}");
        }
        assert!(expected["events"].as_array().unwrap().len() >= 2);
        // The indexes (built on upgrade for older formats) find the same.
        for summary in expected["summaries"].as_object().unwrap().values() {
            let workflow = summary["workflow"].as_str().unwrap();
            let status: switchyard::log::RunStatus =
                serde_json::from_value(summary["status"].clone()).unwrap();
            let found = log
                .ended_runs_where(Some(workflow), Some(status), None, 100)
                .unwrap();
            let ids: Vec<Value> = found
                .iter()
                .map(|b| serde_json::from_slice::<Value>(b).unwrap()["id"].clone())
                .collect();
            assert!(
                ids.contains(&summary["id"]),
                "format {format}: {workflow} {status:?}"
            );
        }
        for event in expected["events"].as_array().unwrap() {
            let id = event["event"]["id"].as_str().unwrap();
            assert!(
                log.event_by_id(id).unwrap().is_some(),
                "format {format}: event {id}"
            );
        }
    }
    // And the daemon starts on it: nothing is broken, the unfinished run
    // is resumed.
    let runtime = Runtime::start(RuntimeConfig::new(dir.path())).unwrap();
    assert_eq!(runtime.recovery().runs_broken, 0, "format {format}");
    assert_eq!(
        runtime.recovery().runs_resumed,
        expected["unfinished"].as_array().unwrap().len(),
        "format {format}"
    );
    runtime.shutdown().await;
}
