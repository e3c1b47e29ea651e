//! Folding records into the state: [`Engine::apply`] dispatches each record
//! kind to its own handler, as restate's state machine does. A handler
//! changes one run and the scheduling around it, pushes the effects the
//! record calls for, and says whether anything changed (a record that no
//! longer applies, such as a late result of a cancelled attempt, changes
//! nothing). No I/O, no clock: time is the record's own.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::state::Cancelling;
use super::{
    Effect, Engine, RunState, Scheduling, TaskState, TaskStatus, duration_millis, evaluate_exports,
    finish_failed, reuse_tasks, unqueue,
};
use crate::executors;
use crate::log::{Millis, ParentRun, Record, RecordBody, ReusedTask, RunId, RunStatus};

/// What a handler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Changed,
    /// The record no longer applies to the state (stale or unknown task).
    Ignored,
}
use Applied::{Changed, Ignored};

/// A record's context for its handler.
struct Ctx<'a> {
    run_id: RunId,
    at: Millis,
    effects: &'a mut Vec<Effect>,
}

impl Engine {
    /// Folds one record into the state. Returns the effects it calls for;
    /// replay ignores them.
    pub fn apply(&mut self, record: &Record) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let RecordBody::RunCreated {
            version,
            params,
            project_vars,
            event,
            event_seq,
            rerun_of,
            reused,
            workflow,
            parent,
            logical_time,
            ..
        } = &record.body
        {
            let event = (event.clone(), *event_seq);
            let vars = (project_vars, params);
            let origin = (
                *rerun_of,
                reused.as_slice(),
                parent.as_deref().cloned(),
                *logical_time,
            );
            self.on_run_created(record, workflow, version, vars, event, origin);
            return effects;
        }
        let run_id = record.run_id;
        let Some(run) = self.runs.get_mut(&run_id) else {
            tracing::warn!(run_id = %run_id, seq = record.seq, "Record for an unknown run; ignoring it.");
            return effects;
        };
        let sched = &mut self.sched;
        let mut ctx = Ctx {
            run_id,
            at: record.at,
            effects: &mut effects,
        };
        let applied = match &record.body {
            RecordBody::RunCreated { .. } => Ignored,
            RecordBody::RunStarted {} => on_run_started(run, sched, &mut ctx),
            RecordBody::AttemptStarted { task, attempt } => {
                on_attempt_started(run, sched, &mut ctx, task, *attempt)
            }
            RecordBody::AttemptFinished {
                task,
                attempt,
                succeeded,
                output,
                stdout,
                error,
                retryable,
            } => on_attempt_finished(
                run,
                sched,
                &ctx,
                task,
                *attempt,
                Finished {
                    succeeded: *succeeded,
                    output,
                    stdout,
                    error,
                    retryable: *retryable,
                },
            ),
            RecordBody::CheckObserved {
                task,
                attempt,
                observation,
            } => on_check_observed(run, task, *attempt, observation),
            RecordBody::RetryScheduled { task, due_at, .. } => {
                on_retry_scheduled(run, sched, &mut ctx, task, *due_at)
            }
            RecordBody::TaskSkipped { task, .. } => on_task_skipped(run, &ctx, task),
            RecordBody::TaskFailed { task, error } => on_task_failed(run, &ctx, task, error),
            RecordBody::TaskCancelled { task, reason } => {
                on_task_cancelled(run, sched, &mut ctx, task, reason)
            }
            RecordBody::RunTimedOut {} => on_run_timed_out(run),
            RecordBody::RunCancelRequested { reason } => on_run_cancel_requested(run, reason),
            RecordBody::AttemptLost {
                task,
                attempt,
                reason,
                shutdown,
            } => on_attempt_lost(run, sched, &ctx, task, *attempt, reason, *shutdown),
            RecordBody::RunEnded { status, error } => {
                on_run_ended(run, sched, &mut ctx, *status, error)
            }
        };
        if applied == Changed {
            self.mark_dirty(run_id);
        }
        effects
    }

    #[allow(clippy::too_many_arguments)]
    fn on_run_created(
        &mut self,
        record: &Record,
        workflow: &str,
        version: &str,
        (project_vars, params): (&Map<String, Value>, &Map<String, Value>),
        (event, event_seq): (Option<Value>, Option<u64>),
        (rerun_of, reused, parent, logical_time): (
            Option<RunId>,
            &[ReusedTask],
            Option<ParentRun>,
            Option<Millis>,
        ),
    ) {
        let (run_id, at) = (record.run_id, record.at);
        let Some(definition) = self.definitions.get(version).cloned() else {
            tracing::error!(run_id = %run_id, workflow = %workflow, version = %version,
                "Run names a definition that is not registered; ignoring it.");
            return;
        };
        // Project vars < workflow vars < params.
        let mut vars = project_vars.clone();
        for (k, v) in &definition.vars {
            vars.insert(k.clone(), v.clone());
        }
        for (k, v) in params {
            vars.insert(k.clone(), v.clone());
        }
        let tasks = vec![TaskState::default(); definition.tasks.len()];
        let name = definition.name.clone();
        let mut run = RunState {
            id: run_id,
            workflow: definition,
            status: RunStatus::Queued,
            params: params.clone(),
            event,
            event_seq,
            project_vars: project_vars.clone(),
            vars,
            created_at: at,
            started_at: None,
            ended_at: None,
            deadline: None,
            cancelling: None,
            error: None,
            tasks,
            parent,
            logical_time: logical_time.unwrap_or(at),
            dirty: false,
        };
        reuse_tasks(&mut run, reused, rerun_of, at);
        self.runs.insert(run_id, run);
        self.sched
            .waiting
            .entry(name)
            .or_default()
            .push_back(run_id);
        self.mark_dirty(run_id);
    }
}

/// The task's index, or why the record does not apply.
fn task_index(run: &RunState, task: &str) -> Option<usize> {
    run.workflow.task_index(task)
}

/// A check's observation: kept on its task while that attempt runs.
fn on_check_observed(run: &mut RunState, task: &str, attempt: u32, observation: &Value) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    let state = &mut run.tasks[i];
    if state.status != TaskStatus::Running || state.attempts != attempt {
        return Ignored;
    }
    state.observation = Some(observation.clone());
    Changed
}

fn on_run_started(run: &mut RunState, sched: &mut Scheduling, ctx: &mut Ctx<'_>) -> Applied {
    if run.status != RunStatus::Queued {
        return Ignored;
    }
    let workflow = Arc::clone(&run.workflow);
    run.status = RunStatus::Running;
    run.started_at = Some(ctx.at);
    *sched.active.entry(workflow.name.clone()).or_default() += 1;
    unqueue(&mut sched.waiting, &workflow.name, ctx.run_id);
    if let Some(timeout) = workflow.timeout {
        let deadline = ctx.at.saturating_add(duration_millis(timeout));
        run.deadline = Some(deadline);
        sched.arm(ctx.run_id, deadline);
        ctx.effects.push(Effect::Wake { at: deadline });
    }
    Changed
}

fn on_attempt_started(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &mut Ctx<'_>,
    task: &str,
    attempt: u32,
) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    let holds_slot = executors::holds_slot(run.workflow.tasks[i].kind);
    let state = &mut run.tasks[i];
    state.status = TaskStatus::Running;
    state.attempts = attempt;
    state.queued = false;
    state.retry_due = None;
    state.error = None;
    state.observation = None;
    state.started_at.get_or_insert(ctx.at);
    state.attempt_started_at = Some(ctx.at);
    if holds_slot {
        sched.running_slots += 1;
    }
    ctx.effects.push(Effect::StartAttempt {
        run_id: ctx.run_id,
        task: i,
        attempt,
        started_at: ctx.at,
    });
    Changed
}

/// An `AttemptFinished` record's outcome.
struct Finished<'a> {
    succeeded: bool,
    output: &'a Value,
    stdout: &'a str,
    error: &'a Option<String>,
    retryable: bool,
}

fn on_attempt_finished(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &Ctx<'_>,
    task: &str,
    attempt: u32,
    finished: Finished<'_>,
) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    if run.tasks[i].status != TaskStatus::Running || run.tasks[i].attempts != attempt {
        return Ignored; // A late result of an attempt already cancelled.
    }
    let workflow = Arc::clone(&run.workflow);
    let spec = &workflow.tasks[i];
    if executors::holds_slot(spec.kind) {
        sched.running_slots = sched.running_slots.saturating_sub(1);
    }
    {
        let state = &mut run.tasks[i];
        state.output = finished.output.clone();
        state.stdout = finished.stdout.to_string();
        state.error = finished.error.clone();
    }
    if finished.succeeded {
        match evaluate_exports(run, i, ctx.at) {
            Ok(exports) => {
                for (k, v) in exports {
                    run.vars.insert(k, v);
                }
                let state = &mut run.tasks[i];
                state.status = TaskStatus::Succeeded;
                state.ended_at = Some(ctx.at);
            }
            Err(message) => finish_failed(run, i, ctx.at, message),
        }
    } else if finished.retryable && attempt < spec.retry.max_attempts && run.cancelling.is_none() {
        run.tasks[i].status = TaskStatus::Retrying;
    } else {
        let message = finished.error.clone().unwrap_or_else(|| "failed".into());
        finish_failed(run, i, ctx.at, message);
    }
    Changed
}

fn on_retry_scheduled(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &mut Ctx<'_>,
    task: &str,
    due_at: Millis,
) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    run.tasks[i].status = TaskStatus::Retrying;
    run.tasks[i].retry_due = Some(due_at);
    sched.arm(ctx.run_id, due_at);
    ctx.effects.push(Effect::Wake { at: due_at });
    Changed
}

fn on_task_skipped(run: &mut RunState, ctx: &Ctx<'_>, task: &str) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    let state = &mut run.tasks[i];
    state.status = TaskStatus::Skipped;
    state.queued = false;
    state.ended_at = Some(ctx.at);
    Changed
}

fn on_task_failed(run: &mut RunState, ctx: &Ctx<'_>, task: &str, error: &str) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    run.tasks[i].queued = false;
    finish_failed(run, i, ctx.at, error.to_string());
    Changed
}

fn on_task_cancelled(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &mut Ctx<'_>,
    task: &str,
    reason: &str,
) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    let holds_slot = executors::holds_slot(run.workflow.tasks[i].kind);
    let state = &mut run.tasks[i];
    if state.status.is_terminal() {
        return Ignored;
    }
    if state.status == TaskStatus::Running {
        if holds_slot {
            sched.running_slots = sched.running_slots.saturating_sub(1);
        }
        ctx.effects.push(Effect::KillAttempt {
            run_id: ctx.run_id,
            task: i,
            attempt: state.attempts,
        });
    }
    state.status = TaskStatus::Cancelled;
    state.queued = false;
    state.retry_due = None;
    state.error = Some(format!("cancelled: {reason}"));
    state.ended_at = Some(ctx.at);
    Changed
}

fn on_run_timed_out(run: &mut RunState) -> Applied {
    if run.cancelling.is_none() {
        run.cancelling = Some(Cancelling::TimedOut);
    }
    Changed
}

fn on_run_cancel_requested(run: &mut RunState, reason: &str) -> Applied {
    if !matches!(run.cancelling, Some(Cancelling::User { .. })) {
        run.cancelling = Some(Cancelling::User {
            reason: reason.to_string(),
        });
    }
    Changed
}

fn on_attempt_lost(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &Ctx<'_>,
    task: &str,
    attempt: u32,
    reason: &str,
    shutdown: bool,
) -> Applied {
    let Some(i) = task_index(run, task) else {
        return Ignored;
    };
    if run.tasks[i].status != TaskStatus::Running || run.tasks[i].attempts != attempt {
        return Ignored;
    }
    let workflow = Arc::clone(&run.workflow);
    let spec = &workflow.tasks[i];
    if executors::holds_slot(spec.kind) {
        sched.running_slots = sched.running_slots.saturating_sub(1);
    }
    if run.cancelling.is_none() && (shutdown || attempt < spec.retry.max_attempts) {
        // Run it again as soon as the engine is back.
        let state = &mut run.tasks[i];
        state.status = TaskStatus::Retrying;
        state.retry_due = Some(ctx.at);
        state.error = Some(format!("attempt {attempt} lost: {reason}"));
    } else {
        finish_failed(run, i, ctx.at, format!("attempt {attempt} lost: {reason}"));
    }
    Changed
}

fn on_run_ended(
    run: &mut RunState,
    sched: &mut Scheduling,
    ctx: &mut Ctx<'_>,
    status: RunStatus,
    error: &Option<String>,
) -> Applied {
    if run.status.is_terminal() {
        return Ignored;
    }
    let name = run.workflow.name.clone();
    match run.status {
        RunStatus::Running => {
            if let Some(n) = sched.active.get_mut(&name) {
                *n = n.saturating_sub(1);
            }
        }
        RunStatus::Queued => unqueue(&mut sched.waiting, &name, ctx.run_id),
        _ => {}
    }
    run.status = status;
    run.error = error.clone();
    run.ended_at = Some(ctx.at);
    ctx.effects.push(Effect::RunEnded { run_id: ctx.run_id });
    Changed
}
