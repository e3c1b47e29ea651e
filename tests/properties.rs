//! Property tests of the engine (proptest): random DAGs of up to 30 tasks —
//! every dependency form (`all`/`any` over success, failure, completion),
//! `when`, `allow_failure`, `fail_fast`, retries, lost attempts, a run
//! deadline, cancels — driven with random outcomes, checked against the
//! execution rules (README "Semantics worth knowing"):
//!
//! - every task ends in exactly one terminal state and never leaves it;
//! - no task starts before every task it names is terminal and its
//!   dependency holds (and its `when` is true); skips cascade;
//! - the run's status is what the rules say for the tasks' final states;
//! - replaying the records into a fresh engine gives the live state.

use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard::engine::{Effect, Engine, Limits, TaskStatus};
use switchyard::log::{RecordBody, RunStatus};

use crate::util::{Harness, workflow};

#[derive(Debug, Clone)]
struct TaskSpec {
    /// (earlier task, 0 success / 1 failure / 2 completion)
    deps: Vec<(usize, u8)>,
    any: bool,
    when: Option<bool>,
    allow_failure: bool,
    max_attempts: u32,
}

#[derive(Debug, Clone)]
struct Scenario {
    tasks: Vec<TaskSpec>,
    fail_fast: bool,
    timeout: bool,
    /// Per attempt, in the order attempts finish: 0–5 succeed, 6–8 fail, 9 lost.
    outcomes: Vec<u8>,
    /// Step at which the run is cancelled by hand.
    cancel_at: Option<usize>,
    /// Step at which the clock jumps past the run's deadline.
    deadline_at: Option<usize>,
    max_parallel: usize,
}

fn task_spec(i: usize) -> impl Strategy<Value = TaskSpec> {
    let deps = if i == 0 {
        Just(Vec::new()).boxed()
    } else {
        proptest::collection::vec((0..i, 0u8..3), 0..=3.min(i)).boxed()
    };
    (
        deps,
        any::<bool>(),
        prop_oneof![4 => Just(None), 1 => Just(Some(true)), 1 => Just(Some(false))],
        prop::bool::weighted(0.2),
        1u32..=3,
    )
        .prop_map(|(mut deps, any, when, allow_failure, max_attempts)| {
            deps.sort();
            deps.dedup_by_key(|d| d.0);
            TaskSpec {
                deps,
                any,
                when,
                allow_failure,
                max_attempts,
            }
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..=30)
        .prop_flat_map(|n| {
            let tasks: Vec<_> = (0..n).map(task_spec).collect();
            (
                tasks,
                prop::bool::weighted(0.3),
                prop::bool::weighted(0.3),
                proptest::collection::vec(0u8..10, 1..40),
                prop::option::weighted(0.2, 0usize..60),
                prop::option::weighted(0.2, 0usize..60),
                1usize..=4,
            )
        })
        .prop_map(
            |(tasks, fail_fast, timeout, outcomes, cancel_at, deadline_at, max_parallel)| {
                Scenario {
                    tasks,
                    fail_fast,
                    timeout,
                    outcomes,
                    cancel_at,
                    deadline_at,
                    max_parallel,
                }
            },
        )
}

const ON: [&str; 3] = ["success", "failure", "completion"];

fn definition(s: &Scenario) -> Value {
    let tasks: Vec<Value> = s
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut task = json!({
                "id": format!("t{i}"),
                "shell": {"command": ["true"]},
                "retry": {"max_attempts": t.max_attempts, "delay": "1s"},
            });
            if !t.deps.is_empty() {
                let names: Vec<String> = t
                    .deps
                    .iter()
                    .map(|(d, on)| format!("t{d}:{}", ON[*on as usize]))
                    .collect();
                task["after"] = if t.any {
                    json!({"any": names})
                } else {
                    json!({"all": names})
                };
            }
            if let Some(when) = t.when {
                task["when"] = json!(when.to_string());
            }
            if t.allow_failure {
                task["allow_failure"] = json!(true);
            }
            task
        })
        .collect();
    let mut wf = json!({"name": "prop", "fail_fast": s.fail_fast, "tasks": tasks});
    if s.timeout {
        wf["timeout"] = json!("1h");
    }
    wf
}

fn holds(status: TaskStatus, on: u8) -> bool {
    match on {
        0 => status == TaskStatus::Succeeded,
        1 => status == TaskStatus::Failed,
        _ => matches!(status, TaskStatus::Succeeded | TaskStatus::Failed),
    }
}

/// Whether task `t`'s `after` is satisfied by `statuses` (all named tasks
/// terminal).
fn requirement(t: &TaskSpec, statuses: &[TaskStatus]) -> bool {
    let mut results = t.deps.iter().map(|(d, on)| holds(statuses[*d], *on));
    if t.deps.is_empty() {
        true
    } else if t.any {
        results.any(|x| x)
    } else {
        results.all(|x| x)
    }
}

/// Runs a scenario to its end; returns the harness.
fn drive(s: &Scenario) -> Harness {
    let limits = Limits {
        max_parallel_tasks: s.max_parallel,
    };
    let (mut h, effects) = Harness::start_with(definition(s), json!({}), limits);
    let mut running: Vec<(usize, u32)> = Vec::new();
    let track = |effects: &[Effect], running: &mut Vec<(usize, u32)>| {
        for effect in effects {
            match effect {
                Effect::StartAttempt { task, attempt, .. } => running.push((*task, *attempt)),
                Effect::KillAttempt { task, attempt, .. } => {
                    running.retain(|r| *r != (*task, *attempt))
                }
                _ => {}
            }
        }
    };
    track(&effects, &mut running);
    let mut finished = 0;
    for step in 0..5_000 {
        if h.run_status().is_terminal() {
            return h;
        }
        if s.cancel_at == Some(step) {
            let effects = h.feed(RecordBody::RunCancelRequested {
                reason: "by the property test".into(),
            });
            track(&effects, &mut running);
            continue;
        }
        if s.deadline_at == Some(step) && s.timeout {
            h.now += 2 * 3_600_000;
            let effects = h.settle();
            track(&effects, &mut running);
            continue;
        }
        if running.is_empty() {
            // Only retry delays can be pending: let the clock run.
            h.now += 60_000;
            let effects = h.settle();
            track(&effects, &mut running);
            continue;
        }
        let (task, attempt) = running.remove(0);
        let id = format!("t{task}");
        let outcome = s.outcomes[finished % s.outcomes.len()];
        finished += 1;
        let body = match outcome {
            0..=5 => RecordBody::AttemptFinished {
                task: id,
                attempt,
                succeeded: true,
                output: json!({}),
                stdout: String::new(),
                error: None,
                retryable: true,
            },
            6..=8 => RecordBody::AttemptFinished {
                task: id,
                attempt,
                succeeded: false,
                output: Value::Null,
                stdout: String::new(),
                error: Some("boom".into()),
                retryable: true,
            },
            _ => RecordBody::AttemptLost {
                task: id,
                attempt,
                reason: "crash".into(),
                shutdown: false,
            },
        };
        let effects = h.feed(body);
        track(&effects, &mut running);
    }
    panic!("the run did not end in 5,000 steps: {:?}", h.run_status());
}

fn check(s: &Scenario) -> Result<(), TestCaseError> {
    let h = drive(s);
    let n = s.tasks.len();
    let wf = workflow(definition(s));
    // Re-fold record by record, watching each transition.
    let mut engine = Engine::new(Limits::default());
    engine.register(std::sync::Arc::clone(&wf));
    let mut cancelled_by_hand = false;
    let mut timed_out = false;
    for record in &h.records {
        let before: Vec<TaskStatus> = engine
            .run(h.run_id)
            .map(|r| r.tasks.iter().map(|t| t.status).collect())
            .unwrap_or_default();
        let ended_before = engine.run(h.run_id).is_some_and(|r| r.status.is_terminal());
        match &record.body {
            RecordBody::AttemptStarted { task, .. } => {
                let i: usize = task[1..].parse().unwrap();
                let t = &s.tasks[i];
                for (d, _) in &t.deps {
                    prop_assert!(
                        before[*d].is_terminal(),
                        "t{i} started before t{d} was decided"
                    );
                }
                prop_assert!(
                    requirement(t, &before),
                    "t{i} started with its `after` unmet"
                );
                prop_assert!(t.when != Some(false), "t{i} started with `when` false");
            }
            RecordBody::RunCancelRequested { .. } if !ended_before => cancelled_by_hand = true,
            RecordBody::RunTimedOut {} if !ended_before => timed_out = true,
            _ => {}
        }
        engine.apply(record);
        let after: Vec<TaskStatus> = engine
            .run(h.run_id)
            .unwrap()
            .tasks
            .iter()
            .map(|t| t.status)
            .collect();
        if !before.is_empty() {
            for i in 0..n {
                if before[i].is_terminal() {
                    prop_assert_eq!(before[i], after[i], "t{} left its terminal state", i);
                }
            }
        }
        prop_assert!(
            !ended_before,
            "a record after the run ended: {:?}",
            record.body
        );
    }
    let run = h.engine.run(h.run_id).unwrap();
    let statuses: Vec<TaskStatus> = run.tasks.iter().map(|t| t.status).collect();
    for (i, status) in statuses.iter().enumerate() {
        prop_assert!(status.is_terminal(), "t{i} ended {status:?}");
        let t = &s.tasks[i];
        let deps_terminal = t.deps.iter().all(|(d, _)| statuses[*d].is_terminal());
        prop_assert!(deps_terminal);
        let met = requirement(t, &statuses) && t.when != Some(false);
        if matches!(status, TaskStatus::Succeeded | TaskStatus::Failed) {
            prop_assert!(met, "t{i} ran with its requirement unmet");
        }
        if !met && !cancelled_by_hand && !timed_out && !s.fail_fast {
            prop_assert_eq!(*status, TaskStatus::Skipped, "t{} not skipped", i);
        }
    }
    // The run status rule: cancelled by hand, else failed on a timeout or an unallowed failure.
    let failed = statuses
        .iter()
        .zip(&s.tasks)
        .any(|(st, t)| *st == TaskStatus::Failed && !t.allow_failure);
    let expected = if cancelled_by_hand {
        RunStatus::Cancelled
    } else if timed_out || failed {
        RunStatus::Failed
    } else {
        RunStatus::Succeeded
    };
    prop_assert_eq!(run.status, expected);
    // Replay gives the live state.
    prop_assert_eq!(engine.run(h.run_id).unwrap().record(), run.record());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_dags_keep_the_engines_promises(s in scenario()) {
        check(&s)?;
    }
}
