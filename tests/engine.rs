//! Engine tests driven by data: records in, effects and state out.

use serde_json::json;
use switchyard::engine::{Effect, Engine, Limits, TaskStatus};
use switchyard::log::{RecordBody, RunStatus};

use crate::util::{Harness, sh};

fn noop(id: &str) -> serde_json::Value {
    json!({"id": id, "noop": {}})
}

#[test]
fn chain_runs_in_order_and_succeeds() {
    let (mut h, effects) = Harness::start(
        json!({"name": "chain", "tasks": [
            sh("a", "true"),
            {"id": "b", "after": "a", "shell": {"script": "true"}},
            {"id": "c", "after": ["b"], "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    assert_eq!(h.started(&effects), ["a"]);
    assert_eq!(h.run_status(), RunStatus::Running);
    assert_eq!(h.status("b"), TaskStatus::Pending);
    let effects = h.succeed("a", json!({}));
    assert_eq!(h.started(&effects), ["b"]);
    let effects = h.succeed("b", json!({}));
    assert_eq!(h.started(&effects), ["c"]);
    let effects = h.succeed("c", json!({}));
    assert!(effects.contains(&Effect::RunEnded { run_id: h.run_id }));
    assert_eq!(h.run_status(), RunStatus::Succeeded);
}

#[test]
fn independent_roots_start_together() {
    let (h, effects) = Harness::start(
        json!({"name": "fan", "tasks": [sh("a", "true"), sh("b", "true"), sh("c", "true")]}),
        json!({}),
    );
    assert_eq!(h.started(&effects), ["a", "b", "c"]);
}

#[test]
fn list_after_waits_for_every_dependency() {
    let (mut h, _) = Harness::start(
        json!({"name": "join", "tasks": [
            sh("a", "true"), sh("b", "true"),
            {"id": "c", "after": ["a", "b"], "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let effects = h.succeed("a", json!({}));
    assert!(h.started(&effects).is_empty());
    assert_eq!(h.status("c"), TaskStatus::Pending);
    let effects = h.succeed("b", json!({}));
    assert_eq!(h.started(&effects), ["c"]);
}

#[test]
fn all_with_completion_runs_after_a_failure() {
    let (mut h, _) = Harness::start(
        json!({"name": "all", "tasks": [
            sh("a", "true"), sh("b", "false"),
            {"id": "c", "after": {"all": ["a:success", "b:completion"]}, "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    h.succeed("a", json!({}));
    let effects = h.fail("b", "exit status 1");
    assert_eq!(h.started(&effects), ["c"]);
    h.succeed("c", json!({}));
    // b failed without allow_failure: the run failed even though c ran.
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn any_is_judged_only_when_every_named_task_is_terminal() {
    let (mut h, _) = Harness::start(
        json!({"name": "any", "tasks": [
            sh("a", "true"), sh("b", "true"),
            {"id": "recover", "after": {"any": ["a:failure", "b:failure"]}, "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    // a failing satisfies `any`, but b is still running: no racing.
    let effects = h.fail("a", "boom");
    assert!(h.started(&effects).is_empty());
    assert_eq!(h.status("recover"), TaskStatus::Pending);
    let effects = h.succeed("b", json!({}));
    assert_eq!(h.started(&effects), ["recover"]);
}

#[test]
fn any_not_met_skips() {
    let (mut h, _) = Harness::start(
        json!({"name": "any", "tasks": [
            sh("a", "true"), sh("b", "true"),
            {"id": "recover", "after": {"any": ["a:failure", "b:failure"]}, "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    h.succeed("a", json!({}));
    h.succeed("b", json!({}));
    assert_eq!(h.status("recover"), TaskStatus::Skipped);
    assert_eq!(h.run_status(), RunStatus::Succeeded);
    let skipped = h.bodies("task_skipped");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("a:failure (succeeded)"),
        "{skipped:?}"
    );
}

#[test]
fn skips_cascade_through_every_edge_kind() {
    let (mut h, _) = Harness::start(
        json!({"name": "cascade", "tasks": [
            sh("a", "false"),
            {"id": "b", "after": "a", "shell": {"script": "true"}},
            {"id": "c", "after": "b:completion", "shell": {"script": "true"}},
            {"id": "d", "after": "c:failure", "shell": {"script": "true"}},
            {"id": "e", "after": {"any": ["c:success", "d:completion"]}, "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    h.fail("a", "exit status 1");
    for id in ["b", "c", "d", "e"] {
        assert_eq!(h.status(id), TaskStatus::Skipped, "{id}");
    }
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn when_false_skips_and_when_error_fails() {
    let (mut h, effects) = Harness::start(
        json!({"name": "when", "vars": {"n": 3}, "tasks": [
            {"id": "big", "when": "vars.n > 10", "shell": {"script": "true"}},
            {"id": "small", "when": "vars.n <= 10", "shell": {"script": "true"}},
            {"id": "broken", "when": "vars.missing > 1", "shell": {"script": "true"}},
            {"id": "not_bool", "when": "vars.n", "shell": {"script": "true"}},
            {"id": "after_big", "after": "big", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    assert_eq!(h.started(&effects), ["small"]);
    assert_eq!(h.status("big"), TaskStatus::Skipped);
    assert_eq!(h.status("after_big"), TaskStatus::Skipped);
    assert_eq!(h.status("broken"), TaskStatus::Failed);
    let error = h.task("broken").error.unwrap();
    assert!(error.contains("vars.missing"), "{error}");
    assert!(h.task("not_bool").error.unwrap().contains("must be a bool"));
    h.succeed("small", json!({}));
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn when_sees_outputs_of_earlier_tasks() {
    let (mut h, _) = Harness::start(
        json!({"name": "when2", "tasks": [
            sh("probe", "true"),
            {"id": "publish", "after": "probe", "when": "tasks.probe.output.count > 0", "shell": {"script": "true"}},
            {"id": "idle", "after": "probe", "when": "tasks.probe.output.count == 0", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let effects = h.succeed("probe", json!({"count": 2}));
    assert_eq!(h.started(&effects), ["publish"]);
    assert_eq!(h.status("idle"), TaskStatus::Skipped);
}

#[test]
fn vars_resolve_task_vars_over_exports_over_params_over_workflow_vars() {
    let (mut h, _) = Harness::start(
        json!({"name": "scope", "vars": {"w": "workflow", "p": "workflow", "e": "workflow", "t": "workflow"},
        "tasks": [
            {"id": "a", "shell": {"command": ["true"]}, "export": {"e": "export", "t": "export", "n": "${output.n}"}},
            {"id": "b", "after": "a", "vars": {"t": "task", "derived": "${vars.p}-x"},
             "shell": {"command": ["echo"], "env": {"W": "${vars.w}", "P": "${vars.p}", "E": "${vars.e}", "T": "${vars.t}", "D": "${vars.derived}"}}},
            {"id": "c", "after": "b", "shell": {"command": ["echo"], "env": {"T": "${vars.t}", "N": "${vars.n}"}}},
        ]}),
        json!({"p": "param", "e": "param", "t": "param"}),
    );
    h.succeed("a", json!({"n": 7}));
    let b = h.rendered("b").unwrap();
    assert_eq!(
        b["env"],
        json!({"W": "workflow", "P": "param", "E": "export", "T": "task", "D": "param-x"})
    );
    h.succeed("b", json!({}));
    // Task vars are scoped to their task: c sees the export again.
    let c = h.rendered("c").unwrap();
    assert_eq!(c["env"]["T"], "export");
    // Whole-value templates keep JSON types; the export of a number stays a number.
    assert_eq!(h.vars()["n"], json!(7));
}

#[test]
fn latest_export_wins() {
    let (mut h, _) = Harness::start(
        json!({"name": "exports", "tasks": [
            {"id": "a", "shell": {"command": ["true"]}, "export": {"v": "${output.v}"}},
            {"id": "b", "after": "a", "shell": {"command": ["true"]}, "export": {"v": "${output.v}"}},
        ]}),
        json!({}),
    );
    h.succeed("a", json!({"v": 1}));
    assert_eq!(h.vars()["v"], json!(1));
    h.succeed("b", json!({"v": 2}));
    assert_eq!(h.vars()["v"], json!(2));
}

#[test]
fn failed_export_fails_the_task() {
    let (mut h, _) = Harness::start(
        json!({"name": "exports", "tasks": [
            {"id": "a", "shell": {"command": ["true"]}, "export": {"v": "${output.missing.deep}"}},
        ]}),
        json!({}),
    );
    h.succeed("a", json!({}));
    assert_eq!(h.status("a"), TaskStatus::Failed);
    assert!(h.task("a").error.unwrap().contains("export `v`"));
}

#[test]
fn template_error_surfaces_when_preparing_the_attempt() {
    let (h, _) = Harness::start(
        json!({"name": "tpl", "tasks": [
            {"id": "a", "shell": {"command": ["echo", "${params.nope.deeper}"]}},
        ]}),
        json!({}),
    );
    let error = h.rendered("a").unwrap_err();
    assert!(error.contains("command[1]"), "{error}");
}

#[test]
fn retries_count_attempts_and_back_off() {
    let (mut h, effects) = Harness::start(
        json!({"name": "retry", "tasks": [
            {"id": "a", "retry": {"max_attempts": 3, "delay": "2s", "backoff": 3.0}, "shell": {"script": "false"}},
        ]}),
        json!({}),
    );
    assert_eq!(h.started(&effects), ["a"]);
    let start = h.now;
    let effects = h.fail("a", "first");
    assert!(h.started(&effects).is_empty());
    assert_eq!(h.status("a"), TaskStatus::Retrying);
    assert!(effects.contains(&Effect::Wake { at: start + 2_000 }));
    // Not due yet.
    h.now = start + 1_999;
    let effects = h.settle();
    assert!(h.started(&effects).is_empty());
    h.now = start + 2_000;
    let effects = h.settle();
    assert_eq!(h.started(&effects), ["a"]);
    assert_eq!(h.attempt("a"), 2);
    let effects = h.fail("a", "second");
    // Second delay is 2s * 3.
    assert!(effects.contains(&Effect::Wake {
        at: start + 2_000 + 6_000
    }));
    h.now = start + 8_000;
    h.settle();
    assert_eq!(h.attempt("a"), 3);
    h.fail("a", "third");
    assert_eq!(h.status("a"), TaskStatus::Failed);
    assert_eq!(h.task("a").attempts, 3);
    assert_eq!(h.task("a").error.as_deref(), Some("third"));
    assert_eq!(h.run_status(), RunStatus::Failed);
    assert_eq!(h.bodies("retry_scheduled").len(), 2);
}

#[test]
fn non_retryable_failure_is_final() {
    let (mut h, _) = Harness::start(
        json!({"name": "retry", "tasks": [
            {"id": "a", "retry": {"max_attempts": 5}, "shell": {"command": ["nope"]}},
        ]}),
        json!({}),
    );
    h.feed(RecordBody::AttemptFinished {
        task: "a".into(),
        attempt: 1,
        succeeded: false,
        output: serde_json::Value::Null,
        stdout: String::new(),
        error: Some("cannot start `nope`".into()),
        retryable: false,
    });
    assert_eq!(h.status("a"), TaskStatus::Failed);
    assert_eq!(h.attempt("a"), 1);
}

#[test]
fn defaults_apply_unless_the_task_overrides() {
    let workflow = crate::util::workflow(json!({"name": "d",
    "defaults": {"retry": {"max_attempts": 4}, "timeout": "7s"},
    "tasks": [
        sh("a", "true"),
        {"id": "b", "retry": {"max_attempts": 1}, "timeout": "1s", "shell": {"script": "true"}},
    ]}));
    assert_eq!(workflow.tasks[0].retry.max_attempts, 4);
    assert_eq!(
        workflow.tasks[0].timeout,
        Some(std::time::Duration::from_secs(7))
    );
    assert_eq!(workflow.tasks[1].retry.max_attempts, 1);
    assert_eq!(
        workflow.tasks[1].timeout,
        Some(std::time::Duration::from_secs(1))
    );
}

#[test]
fn run_timeout_cancels_what_is_left_and_fails_the_run() {
    let (mut h, effects) = Harness::start(
        json!({"name": "slow", "timeout": "10s", "tasks": [
            sh("a", "sleep 100"),
            {"id": "b", "after": "a", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let start = h.now;
    assert!(effects.contains(&Effect::Wake { at: start + 10_000 }));
    h.now = start + 10_000;
    let effects = h.settle();
    assert_eq!(h.killed(&effects), ["a"]);
    assert_eq!(h.status("a"), TaskStatus::Cancelled);
    assert_eq!(h.status("b"), TaskStatus::Cancelled);
    assert_eq!(h.run_status(), RunStatus::Failed);
    let run = h.engine.run(h.run_id).unwrap();
    assert!(run.error.as_deref().unwrap().contains("timed out"));
    // The late result of the killed attempt changes nothing.
    h.fail("a", "killed by signal 15");
    assert_eq!(h.status("a"), TaskStatus::Cancelled);
}

#[test]
fn fail_fast_cancels_the_rest() {
    let (mut h, _) = Harness::start(
        json!({"name": "ff", "fail_fast": true, "tasks": [
            sh("a", "false"), sh("b", "sleep 10"),
            {"id": "c", "after": "b", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let effects = h.fail("a", "boom");
    assert_eq!(h.killed(&effects), ["b"]);
    assert_eq!(h.status("b"), TaskStatus::Cancelled);
    assert_eq!(h.status("c"), TaskStatus::Cancelled);
    assert!(
        h.task("c")
            .error
            .unwrap()
            .contains("fail_fast: task `a` failed")
    );
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn without_fail_fast_independent_branches_go_on() {
    let (mut h, _) = Harness::start(
        json!({"name": "nff", "tasks": [
            sh("a", "false"), sh("b", "true"),
            {"id": "c", "after": "b", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    h.fail("a", "boom");
    assert_eq!(h.status("b"), TaskStatus::Running);
    let effects = h.succeed("b", json!({}));
    assert_eq!(h.started(&effects), ["c"]);
    h.succeed("c", json!({}));
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn fail_fast_lets_a_handled_failure_be_handled() {
    let (mut h, _) = Harness::start(
        json!({"name": "ffh", "fail_fast": true, "tasks": [
            sh("a", "false"), sh("b", "true"),
            {"id": "recover", "after": "a:failure", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let effects = h.fail("a", "boom");
    assert_eq!(h.started(&effects), ["recover"]);
    assert_eq!(h.status("b"), TaskStatus::Running);
}

#[test]
fn allow_failure_does_not_fail_the_run() {
    let (mut h, _) = Harness::start(
        json!({"name": "af", "fail_fast": true, "tasks": [
            {"id": "flaky", "allow_failure": true, "shell": {"script": "false"}},
            sh("b", "true"),
            {"id": "after_flaky", "after": "flaky", "shell": {"script": "true"}},
            {"id": "always", "after": "flaky:completion", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    let effects = h.fail("flaky", "boom");
    assert_eq!(h.started(&effects), ["always"]);
    assert_eq!(h.status("flaky"), TaskStatus::Failed);
    assert_eq!(h.status("after_flaky"), TaskStatus::Skipped);
    assert_eq!(
        h.status("b"),
        TaskStatus::Running,
        "fail_fast ignores allowed failures"
    );
    h.succeed("b", json!({}));
    h.succeed("always", json!({}));
    assert_eq!(h.run_status(), RunStatus::Succeeded);
}

#[test]
fn max_parallel_tasks_bounds_slot_holding_attempts() {
    let (mut h, effects) = Harness::start_with(
        json!({"name": "bounded", "tasks": [
            sh("a", "true"), sh("b", "true"), sh("c", "true"), sh("d", "true"),
            noop("n1"), noop("n2"),
        ]}),
        json!({}),
        Limits {
            max_parallel_tasks: 2,
        },
    );
    // noop holds no slot, so both start besides the first two shell tasks.
    assert_eq!(h.started(&effects), ["n1", "n2", "a", "b"]);
    assert_eq!(h.engine.running_slots(), 2);
    let effects = h.succeed("a", json!({}));
    assert_eq!(h.started(&effects), ["c"]);
    let effects = h.succeed("b", json!({}));
    assert_eq!(h.started(&effects), ["d"]);
}

#[test]
fn slots_are_shared_by_all_runs() {
    let limits = Limits {
        max_parallel_tasks: 1,
    };
    let (mut h, effects) = Harness::start_with(
        json!({"name": "one", "tasks": [sh("a", "true")]}),
        json!({}),
        limits,
    );
    assert_eq!(h.started(&effects).len(), 1);
    // A second run of the same workflow must wait for the slot.
    let version = h.engine.run(h.run_id).unwrap().workflow.version.clone();
    let first = h.run_id;
    h.run_id = uuid::Uuid::now_v7();
    let effects = h.feed(RecordBody::RunCreated {
        workflow: "one".into(),
        version,
        version_label: None,
        params: Default::default(),
        project_vars: Default::default(),
        event: None,
        event_seq: None,
        rerun_of: None,
        reused: Vec::new(),
        parent: None,
        logical_time: None,
    });
    assert!(h.started(&effects).is_empty());
    let second = h.run_id;
    h.run_id = first;
    let effects = h.succeed("a", json!({}));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::StartAttempt { run_id, .. } if *run_id == second))
    );
}

#[test]
fn replaying_the_records_rebuilds_the_same_state() {
    let (mut h, _) = Harness::start(
        json!({"name": "replay", "vars": {"x": 1}, "tasks": [
            {"id": "a", "retry": {"max_attempts": 2, "delay": "1s"}, "shell": {"script": "true"}, "export": {"y": "${output.y}"}},
            {"id": "b", "after": "a", "when": "vars.y == 2", "shell": {"script": "true"}},
            {"id": "c", "after": "a:failure", "shell": {"script": "true"}},
            {"id": "d", "after": {"any": ["b:completion", "c:completion"]}, "noop": {}},
        ]}),
        json!({"p": true}),
    );
    h.fail("a", "flaky");
    h.now += 1_000;
    h.settle();
    h.succeed("a", json!({"y": 2}));
    h.succeed("b", json!({}));
    h.succeed("d", json!({}));
    let live = h.engine.run(h.run_id).unwrap().clone();
    assert_eq!(live.status, RunStatus::Succeeded);

    let mut replayed = Engine::new(Limits::default());
    replayed.register(live.workflow.clone());
    for record in &h.records {
        replayed.apply(record);
    }
    let folded = replayed.run(h.run_id).unwrap();
    assert_eq!(*folded, live);
    assert_eq!(folded.record(), live.record());
    // Nothing is left to decide after replaying a finished run.
    assert!(replayed.decide(h.now).is_empty());
}

#[test]
fn replaying_an_unfinished_run_decides_what_was_pending() {
    let (mut h, _) = Harness::start(
        json!({"name": "resume", "tasks": [
            sh("a", "true"),
            {"id": "b", "after": "a", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    // Keep only the records up to a's completion, as if the process died
    // before b's start was appended.
    h.succeed("a", json!({}));
    let cut = h
        .records
        .iter()
        .position(|r| matches!(&r.body, RecordBody::AttemptFinished { .. }))
        .unwrap();
    let workflow = h.engine.run(h.run_id).unwrap().workflow.clone();
    let mut replayed = Engine::new(Limits::default());
    replayed.register(workflow);
    for record in &h.records[..=cut] {
        replayed.apply(record);
    }
    let decisions = replayed.decide(h.now);
    assert_eq!(
        decisions.into_iter().map(|(_, b)| b).collect::<Vec<_>>(),
        [RecordBody::AttemptStarted {
            task: "b".into(),
            attempt: 1
        }]
    );
}

fn lost(task: &str, attempt: u32, shutdown: bool) -> RecordBody {
    RecordBody::AttemptLost {
        task: task.into(),
        attempt,
        reason: "test".into(),
        shutdown,
    }
}

#[test]
fn cancel_kills_running_attempts_and_cancels_the_rest() {
    let (mut h, _) = Harness::start(
        json!({"name": "c", "tasks": [
            sh("a", "sleep 10"), sh("b", "true"),
            {"id": "c", "after": "a", "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    h.succeed("b", json!({}));
    let effects = h.feed(RecordBody::RunCancelRequested {
        reason: "cancelled by alice".into(),
    });
    assert_eq!(h.killed(&effects), ["a"]);
    assert_eq!(h.status("a"), TaskStatus::Cancelled);
    assert_eq!(h.status("b"), TaskStatus::Succeeded);
    assert_eq!(h.status("c"), TaskStatus::Cancelled);
    assert_eq!(h.run_status(), RunStatus::Cancelled);
    let run = h.engine.run(h.run_id).unwrap();
    assert_eq!(run.error.as_deref(), Some("cancelled by alice"));
}

#[test]
fn a_lost_attempt_is_retried_while_attempts_remain() {
    let (mut h, _) = Harness::start(
        json!({"name": "l", "tasks": [
            {"id": "a", "retry": {"max_attempts": 2, "delay": "1h"}, "shell": {"script": "true"}},
        ]}),
        json!({}),
    );
    // Retried at once, not after the retry delay.
    let effects = h.feed(lost("a", 1, false));
    assert_eq!(h.started(&effects), ["a"]);
    assert_eq!(h.attempt("a"), 2);
    h.feed(lost("a", 2, false));
    assert_eq!(h.status("a"), TaskStatus::Failed);
    assert!(h.task("a").error.unwrap().contains("attempt 2 lost"));
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn an_attempt_interrupted_by_shutdown_always_runs_again() {
    let (mut h, _) = Harness::start(json!({"name": "l", "tasks": [sh("a", "true")]}), json!({}));
    let effects = h.feed(lost("a", 1, true));
    assert_eq!(h.started(&effects), ["a"]);
    assert_eq!(h.attempt("a"), 2);
}

#[test]
fn resume_loses_running_attempts_but_resumes_timers() {
    let (h, _) = Harness::start(
        json!({"name": "r", "tasks": [sh("a", "sleep 5"), {"id": "nap", "sleep": {"duration": "1h"}}]}),
        json!({}),
    );
    let mut replayed = Engine::new(Limits::default());
    replayed.register(h.engine.run(h.run_id).unwrap().workflow.clone());
    for record in &h.records {
        replayed.apply(record);
    }
    let (records, effects) = replayed.resume();
    assert_eq!(records.len(), 1);
    assert!(
        matches!(&records[0].1, RecordBody::AttemptLost { task, attempt: 1, shutdown: false, .. } if task == "a")
    );
    // The sleep restarts from its recorded start, so it ends on time.
    assert!(effects.iter().any(|e| matches!(e,
        Effect::StartAttempt { task: 1, attempt: 1, started_at, .. } if *started_at == h.now)));
}

#[test]
fn max_active_runs_queues_runs_in_order() {
    let (mut h, effects) = Harness::start(
        json!({"name": "one_at_a_time", "max_active_runs": 1, "tasks": [sh("a", "true")]}),
        json!({}),
    );
    assert_eq!(h.started(&effects), ["a"]);
    let first = h.run_id;
    let version = h.engine.run(first).unwrap().workflow.version.clone();
    let mut queued = Vec::new();
    for _ in 0..2 {
        h.run_id = uuid::Uuid::now_v7();
        let effects = h.feed(RecordBody::RunCreated {
            workflow: "one_at_a_time".into(),
            version: version.clone(),
            version_label: None,
            params: Default::default(),
            project_vars: Default::default(),
            event: None,
            event_seq: None,
            rerun_of: None,
            reused: Vec::new(),
            parent: None,
            logical_time: None,
        });
        assert!(effects.is_empty());
        assert_eq!(h.run_status(), RunStatus::Queued);
        queued.push(h.run_id);
    }
    h.run_id = first;
    let effects = h.succeed("a", json!({}));
    // The oldest queued run starts, the newer one keeps waiting.
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::StartAttempt { run_id, .. } if *run_id == queued[0]))
    );
    assert_eq!(h.engine.run(queued[1]).unwrap().status, RunStatus::Queued);
    // Cancelling a queued run ends it without starting it.
    h.run_id = queued[1];
    h.feed(RecordBody::RunCancelRequested {
        reason: "no longer needed".into(),
    });
    assert_eq!(h.run_status(), RunStatus::Cancelled);
}

#[test]
fn max_active_runs_with_skip_ends_the_extra_run() {
    let (mut h, _) = Harness::start(
        json!({"name": "single", "max_active_runs": 1, "on_overflow": "skip", "tasks": [sh("a", "true")]}),
        json!({}),
    );
    let version = h.engine.run(h.run_id).unwrap().workflow.version.clone();
    h.run_id = uuid::Uuid::now_v7();
    h.feed(RecordBody::RunCreated {
        workflow: "single".into(),
        version,
        version_label: None,
        params: Default::default(),
        project_vars: Default::default(),
        event: None,
        event_seq: None,
        rerun_of: None,
        reused: Vec::new(),
        parent: None,
        logical_time: None,
    });
    assert_eq!(h.run_status(), RunStatus::Cancelled);
    let run = h.engine.run(h.run_id).unwrap();
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("skipped: max_active_runs (1)")
    );
}

#[test]
fn paused_engine_starts_nothing_new() {
    let (mut h, _) = Harness::start(
        json!({"name": "p", "tasks": [sh("a", "true"), {"id": "b", "after": "a", "noop": {}}]}),
        json!({}),
    );
    h.engine.pause();
    let effects = h.succeed("a", json!({}));
    assert!(h.started(&effects).is_empty());
    assert_eq!(h.status("b"), TaskStatus::Pending);
}

#[test]
fn rerun_from_failed_reuses_successes_and_reruns_downstream() {
    use switchyard::engine::rerun::{RerunFrom, plan};
    let definition = json!({"name": "rr", "tasks": [
        {"id": "probe", "shell": {"script": "true"}, "export": {"id": "${output.id}"}},
        {"id": "publish", "after": "probe", "shell": {"script": "false"}},
        {"id": "mark", "after": "publish", "shell": {"script": "true"}},
        {"id": "recover", "after": "publish:failure", "shell": {"script": "true"}},
        {"id": "side", "shell": {"script": "true"}},
    ]});
    let (mut h, _) = Harness::start(definition.clone(), json!({"p": 1}));
    h.succeed("probe", json!({"id": 42}));
    h.succeed("side", json!({}));
    h.fail("publish", "boom");
    h.succeed("recover", json!({}));
    assert_eq!(h.run_status(), RunStatus::Failed);
    let source = h.engine.run(h.run_id).unwrap().clone();

    let reused = plan(&source, &RerunFrom::Failed).unwrap();
    let kept: Vec<&str> = reused.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(
        kept,
        ["probe", "side"],
        "recover depends on publish, so it runs again"
    );
    // The rerun starts at publish, with probe's export in scope.
    let rerun_id = uuid::Uuid::now_v7();
    h.run_id = rerun_id;
    let effects = h.feed(RecordBody::RunCreated {
        workflow: "rr".into(),
        version: source.workflow.version.clone(),
        version_label: None,
        params: source.params.clone(),
        project_vars: Default::default(),
        event: None,
        event_seq: None,
        rerun_of: Some(source.id),
        reused,
        parent: None,
        logical_time: None,
    });
    assert_eq!(h.started(&effects), ["publish"]);
    assert_eq!(h.vars()["id"], json!(42));
    assert_eq!(h.task("probe").reused_from, Some(source.id));
    h.succeed("publish", json!({}));
    h.succeed("mark", json!({}));
    assert_eq!(h.status("recover"), TaskStatus::Skipped);
    assert_eq!(h.run_status(), RunStatus::Succeeded);

    let named = plan(&source, &RerunFrom::Task("probe".into())).unwrap();
    assert_eq!(
        named.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
        ["side"]
    );
    assert!(plan(&source, &RerunFrom::Task("nope".into())).is_err());
}

#[test]
fn nothing_starts_for_a_run_whose_deadline_passed_in_the_same_round() {
    let (mut h, effects) = Harness::start_with(
        json!({"name": "late", "timeout": "10s", "tasks": [sh("a", "true"), sh("b", "true")]}),
        json!({}),
        Limits {
            max_parallel_tasks: 1,
        },
    );
    assert_eq!(h.started(&effects), ["a"]);
    // a finishes exactly at the deadline, freeing the slot b waits for.
    h.now += 10_000;
    let effects = h.succeed("a", json!({}));
    assert!(
        h.started(&effects).is_empty(),
        "b started after the run timed out"
    );
    assert_eq!(h.status("b"), TaskStatus::Cancelled);
    assert_eq!(h.run_status(), RunStatus::Failed);
}

#[test]
fn a_timer_not_yet_due_stays_armed() {
    let (mut h, _) = Harness::start(
        json!({"name": "t", "tasks": [{"id": "a", "retry": {"max_attempts": 2, "delay": "5s"}, "shell": {"script": "false"}}]}),
        json!({}),
    );
    h.fail("a", "boom");
    let due = h.now + 5_000;
    assert_eq!(h.engine.next_timer(), Some(due));
    // A wake-up that comes early (clock skew) must not forget the timer.
    h.now += 1_000;
    h.settle();
    assert_eq!(h.engine.next_timer(), Some(due));
    h.now = due;
    let effects = h.settle();
    assert_eq!(h.started(&effects), ["a"]);
}

#[test]
fn an_ended_runs_deadline_and_retry_timers_are_removed_with_it() {
    // A run deadline an hour out, and a retry delay pending when the run is
    // cancelled: neither may outlive the run.
    let (mut h, _) = Harness::start(
        json!({"name": "t", "timeout": "1h", "tasks": [
            {"id": "a", "retry": {"max_attempts": 3, "delay": "10m"}, "shell": {"command": ["true"]}},
        ]}),
        json!({}),
    );
    assert_eq!(h.engine.timer_count(), 1, "the run deadline");
    h.fail("a", "boom");
    assert_eq!(h.status("a"), TaskStatus::Retrying);
    assert_eq!(h.engine.timer_count(), 2, "deadline and retry delay");
    h.feed(RecordBody::RunCancelRequested {
        reason: "by hand".into(),
    });
    assert_eq!(h.run_status(), RunStatus::Cancelled);
    assert!(h.engine.evict(h.run_id).is_some());
    assert_eq!(h.engine.timer_count(), 0);
    assert_eq!(h.engine.run_count(), 0);
    assert_eq!(h.engine.next_timer(), None);

    // A run that succeeds leaves no timer either.
    let (mut h, _) = Harness::start(
        json!({"name": "t", "timeout": "1h", "tasks": [{"id": "a", "shell": {"command": ["true"]}}]}),
        json!({}),
    );
    h.succeed("a", json!({}));
    assert_eq!(h.run_status(), RunStatus::Succeeded);
    h.engine.evict(h.run_id);
    assert_eq!(h.engine.timer_count(), 0);
}
