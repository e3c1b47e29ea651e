//! The `workflow` task: a child run with params in and vars out, linked both
//! ways; `wait: false`; cancel reaching the child; the depth limit ending a
//! cycle; a failed child failing its task; a parent waiting without holding
//! a slot; a pinned version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchyard::engine::{Limits, RunRecord};
use switchyard::log::{RunId, RunStatus};
use switchyard::runtime::{Runtime, RuntimeConfig, RuntimeHandle};
use switchyard::spec::Workflow;

use crate::util::workflow;

/// A runtime whose `workflow` tasks find `workflows` by name.
fn start(dir: &std::path::Path, workflows: &[Arc<Workflow>], limits: Limits) -> Runtime {
    let by_name: HashMap<String, Arc<Workflow>> = workflows
        .iter()
        .map(|w| (w.name.clone(), Arc::clone(w)))
        .collect();
    Runtime::start(RuntimeConfig {
        limits,
        workflows: Some(Arc::new(move |name: &str| by_name.get(name).cloned())),
        ..RuntimeConfig::new(dir)
    })
    .unwrap()
}

async fn record(handle: &RuntimeHandle, id: &str) -> RunRecord {
    let id: RunId = id.parse().unwrap();
    handle.run_record(id).await.unwrap().unwrap()
}

async fn wait_ended(handle: &RuntimeHandle, id: &str) -> RunRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = record(handle, id).await;
        if run.status.is_terminal() {
            return run;
        }
        assert!(Instant::now() < deadline, "{run:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn params(value: Value) -> Map<String, Value> {
    serde_json::from_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_takes_params_and_gives_back_its_vars_linked_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let child = workflow(
        json!({"name": "promo", "vars": {"channel": "email"}, "tasks": [
            {"id": "find", "shell": {"script": "echo \"{\\\"id\\\": $((ID + 1))}\" > \"$SWITCHYARD_OUTPUT\"",
                "env": {"ID": "${params.base}"}},
             "export": {"promo_id": "${output.id}", "via": "${vars.channel}"}},
        ]}),
    );
    let parent = workflow(json!({"name": "nightly", "tasks": [
        {"id": "call", "workflow": {"name": "promo", "params": {"base": "${vars.base}"}},
         "export": {"promo_id": "${output.vars.promo_id}"}},
        {"id": "after", "after": "call", "shell": {"command": ["test", "${vars.promo_id}", "=", "42"]}},
    ]}));
    // One slot: a waiting parent must not hold it from its child.
    let runtime = start(
        dir.path(),
        &[child, parent.clone()],
        Limits {
            max_parallel_tasks: 1,
        },
    );
    let handle = runtime.handle();
    let run = handle
        .run_to_end(parent, params(json!({"base": 41})), None, |_| {})
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.vars["promo_id"], 42);
    let output = &run.tasks["call"]["output"];
    assert_eq!(output["status"], "succeeded");
    assert_eq!(output["vars"]["via"], "email");
    let child_id = output["run_id"].as_str().unwrap();
    // The parent's task links the child, the child links its parent.
    assert_eq!(run.tasks["call"]["child_run_id"], child_id);
    let child = record(&handle, child_id).await;
    assert_eq!(child.workflow, "promo");
    assert_eq!(child.params, params(json!({"base": 41})));
    let link = child.parent.clone().unwrap();
    assert_eq!(
        (link.run_id, link.task.as_str(), link.attempt, link.depth),
        (run.id, "call", 1, 1)
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_false_goes_on_and_a_failed_child_fails_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let slow =
        workflow(json!({"name": "slow", "tasks": [{"id": "nap", "sleep": {"duration": "300ms"}}]}));
    let broken = workflow(json!({"name": "broken", "tasks": [
        {"id": "boom", "shell": {"script": "echo no >&2; exit 3"}}]}));
    let parent = workflow(json!({"name": "fanout", "tasks": [
        {"id": "fire", "workflow": {"name": "slow", "wait": false}},
        {"id": "bad", "allow_failure": true, "workflow": {"name": "broken"}},
        {"id": "missing", "allow_failure": true, "workflow": {"name": "nowhere"}},
    ]}));
    let runtime = start(
        dir.path(),
        &[slow, broken, parent.clone()],
        Limits::default(),
    );
    let handle = runtime.handle();
    let run = handle
        .run_to_end(parent, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let fired = &run.tasks["fire"]["output"];
    assert_eq!(fired["status"], "queued");
    let fired_id = fired["run_id"].as_str().unwrap();
    // Still going when the parent ended; it ends on its own.
    assert!(!record(&handle, fired_id).await.status.is_terminal());
    assert_eq!(
        wait_ended(&handle, fired_id).await.status,
        RunStatus::Succeeded
    );

    let error = run.tasks["bad"]["error"].as_str().unwrap();
    assert!(error.contains("of `broken` failed"), "{error}");
    assert_eq!(run.tasks["bad"]["output"]["status"], "failed");
    let error = run.tasks["missing"]["error"].as_str().unwrap();
    assert!(error.contains("no workflow named `nowhere`"), "{error}");
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let child =
        workflow(json!({"name": "long", "tasks": [{"id": "wait", "sleep": {"duration": "60s"}}]}));
    let parent =
        workflow(json!({"name": "outer", "tasks": [{"id": "call", "workflow": {"name": "long"}}]}));
    let runtime = start(dir.path(), &[child, parent.clone()], Limits::default());
    let handle = runtime.handle();
    let parent_id = handle.start_run(parent, Map::new(), None).await.unwrap();
    // Wait for the child to exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    let child_id = loop {
        let run = handle.run_record(parent_id).await.unwrap().unwrap();
        if let Some(id) = run.tasks["call"]["child_run_id"].as_str()
            && handle
                .run_record(id.parse().unwrap())
                .await
                .unwrap()
                .is_some()
        {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "{run:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    handle.cancel(parent_id, "by the test").await.unwrap();
    let parent_run = wait_ended(&handle, &parent_id.to_string()).await;
    assert_eq!(parent_run.status, RunStatus::Cancelled);
    let child = wait_ended(&handle, &child_id).await;
    assert_eq!(child.status, RunStatus::Cancelled, "{child:?}");
    assert!(
        child.tasks["wait"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("its parent was cancelled"),
        "{child:?}"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_of_workflows_ends_at_the_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ping =
        workflow(json!({"name": "ping", "tasks": [{"id": "call", "workflow": {"name": "pong"}}]}));
    let pong =
        workflow(json!({"name": "pong", "tasks": [{"id": "call", "workflow": {"name": "ping"}}]}));
    let runtime = start(dir.path(), &[ping.clone(), pong], Limits::default());
    let handle = runtime.handle();
    let started = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        handle.run_to_end(ping, Map::new(), None, |_| {}),
    )
    .await
    .expect("the cycle hung")
    .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(started.elapsed() < Duration::from_secs(30));
    // Down the chain to the run that could not start its child.
    let mut depth = 0;
    let mut current = run;
    while let Some(id) = current.tasks["call"]["output"]["run_id"].as_str() {
        current = record(&handle, id).await;
        depth += 1;
        assert_eq!(current.parent.as_ref().unwrap().depth, depth);
    }
    assert_eq!(depth, 16);
    let error = current.tasks["call"]["error"].as_str().unwrap();
    assert!(
        error.contains("nest deeper than 16 levels") && error.contains("ping → pong → ping"),
        "{error}"
    );
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_runs_the_definition_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = workflow(json!({"name": "report", "tasks": [
        {"id": "t", "shell": {"script": "echo '{\"v\": 1}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"v": "${output.v}"}}]}));
    let v2 = workflow(json!({"name": "report", "tasks": [
        {"id": "t", "shell": {"script": "echo '{\"v\": 2}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"v": "${output.v}"}}]}));
    let parent = workflow(json!({"name": "caller", "tasks": [
        {"id": "current", "workflow": {"name": "report"}},
        {"id": "pinned", "workflow": {"name": "report", "version": v1.version}},
        {"id": "bogus", "allow_failure": true, "workflow": {"name": "report", "version": "0000000000000000"}},
    ]}));
    let runtime = start(dir.path(), &[v2, parent.clone()], Limits::default());
    let handle = runtime.handle();
    // v1 ran once, so the log knows its definition.
    let first = handle
        .run_to_end(v1, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(first.vars["v"], 1);
    let run = handle
        .run_to_end(parent, Map::new(), None, |_| {})
        .await
        .unwrap();
    assert_eq!(run.tasks["current"]["output"]["vars"]["v"], 2, "{run:?}");
    assert_eq!(run.tasks["pinned"]["output"]["vars"]["v"], 1, "{run:?}");
    let error = run.tasks["bogus"]["error"].as_str().unwrap();
    assert!(error.contains("has no version 0000000000000000"), "{error}");
    runtime.shutdown().await;
}
