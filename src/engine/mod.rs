//! The run engine: a pure state machine over log records.
//!
//! [`Engine::apply`] folds one record into the state and returns the
//! [`Effect`]s that record calls for (start an attempt, arm a wake-up, kill an
//! attempt, report a finished run). [`Engine::decide`] looks at the runs that
//! changed and returns the next transitions as record bodies, which the caller
//! appends to the log and applies in turn. Neither does I/O or reads a clock:
//! time comes in as record timestamps and as `now` arguments. Replay is
//! `apply` over a run's records with the effects dropped, so recovery and
//! tests run the same code as production. `crate::runtime` is the I/O shell.
//! Each record kind has its own handler in `apply.rs`.

mod apply;
pub mod replay;
pub mod rerun;
mod scope;
mod state;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

pub use state::{Cancelling, RunRecord, RunState, TaskState, TaskStatus, rfc3339};

use crate::executors;
use crate::log::{Millis, RecordBody, RunId, RunStatus};
use crate::spec::{DepOn, Dependencies, Workflow};
use scope::TaskScope;

/// A side effect a record calls for, carried out only after it is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run attempt `attempt` of task `task` (position in the workflow).
    StartAttempt {
        run_id: RunId,
        task: usize,
        attempt: u32,
        started_at: Millis,
    },
    /// Stop a running attempt (its task was cancelled).
    KillAttempt {
        run_id: RunId,
        task: usize,
        attempt: u32,
    },
    /// Call [`Engine::decide`] again at `at` (retry delays, run timeouts).
    Wake { at: Millis },
    /// The run reached a terminal status.
    RunEnded { run_id: RunId },
}

/// What an attempt needs to run: the rendered config and its limits.
#[derive(Debug, Clone)]
pub struct PreparedAttempt {
    pub workflow: Arc<str>,
    pub task: Arc<str>,
    pub kind: executors::KindName,
    pub config: Value,
    pub timeout: Option<std::time::Duration>,
    /// Run on remote workers consuming this queue.
    pub queue: Option<String>,
    pub start_timeout: Option<std::time::Duration>,
    /// The run's `run.logical_time`.
    pub logical_time: Millis,
    /// The task's last recorded observation (a resumed `check`).
    pub observed: Option<Value>,
}

/// Engine limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Attempts of slot-holding kinds running at once, over all runs.
    pub max_parallel_tasks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_parallel_tasks: crate::spec::config::DEFAULT_MAX_PARALLEL_TASKS,
        }
    }
}

/// The state of every run in memory, and the scheduling around it.
#[derive(Debug, Default)]
pub struct Engine {
    limits: Limits,
    definitions: HashMap<String, Arc<Workflow>>,
    runs: HashMap<RunId, RunState>,
    /// Everything around the runs (slots, timers, admission), apart from
    /// `runs` so a record's handler can change both at once.
    sched: Scheduling,
    dirty: Vec<RunId>,
    /// Shutting down: start no more runs or attempts.
    paused: bool,
    /// In scope as `secrets`.
    secrets: Arc<crate::spec::Secrets>,
}

/// The scheduling state the records' handlers update beside a run.
#[derive(Debug, Default)]
struct Scheduling {
    /// Slot-holding attempts running now.
    running_slots: usize,
    /// Ready tasks waiting for a slot, in the order they became ready.
    ready: VecDeque<(RunId, usize)>,
    /// Wake-ups: retry due times and run deadlines.
    timers: BTreeSet<(Millis, RunId)>,
    /// Each run's entries in `timers`, removed with the run.
    timers_of: HashMap<RunId, Vec<Millis>>,
    /// Queued runs per workflow name, oldest first, waiting for admission.
    waiting: HashMap<String, VecDeque<RunId>>,
    /// Running runs per workflow name, for `max_active_runs`.
    active: HashMap<String, usize>,
}

impl Scheduling {
    /// Arms a wake-up for `run_id` at `at`.
    fn arm(&mut self, run_id: RunId, at: Millis) {
        self.timers.insert((at, run_id));
        self.timers_of.entry(run_id).or_default().push(at);
    }
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Sets the secrets expressions see as `secrets.<name>`.
    pub fn set_secrets(&mut self, secrets: Arc<crate::spec::Secrets>) {
        self.secrets = secrets;
    }

    /// Makes a definition known so that `RunCreated` records naming its
    /// version can be applied.
    pub fn register(&mut self, workflow: Arc<Workflow>) {
        self.definitions
            .entry(workflow.version.clone())
            .or_insert(workflow);
    }

    pub fn definition(&self, version: &str) -> Option<&Arc<Workflow>> {
        self.definitions.get(version)
    }

    pub fn run(&self, run_id: RunId) -> Option<&RunState> {
        self.runs.get(&run_id)
    }

    pub fn runs(&self) -> impl Iterator<Item = &RunState> {
        self.runs.values()
    }

    /// Drops a terminal run from memory.
    pub fn evict(&mut self, run_id: RunId) -> Option<RunState> {
        if self
            .runs
            .get(&run_id)
            .is_some_and(|r| r.status.is_terminal())
        {
            let run = self.runs.remove(&run_id)?;
            // Its wake-ups die with it: a deadline or a retry delay of an
            // ended run would only wake the engine for nothing.
            for at in self.sched.timers_of.remove(&run_id).unwrap_or_default() {
                self.sched.timers.remove(&(at, run_id));
            }
            return Some(run);
        }
        None
    }

    /// Runs in memory (unfinished, and ended ones not yet evicted).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Wake-ups armed (run deadlines, retry delays).
    pub fn timer_count(&self) -> usize {
        self.sched.timers.len()
    }

    /// Stops starting runs and attempts (graceful shutdown); everything
    /// else (finishing, skipping, ending runs) goes on.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Attempts of slot-holding kinds running now.
    pub fn running_slots(&self) -> usize {
        self.sched.running_slots
    }

    fn mark_dirty(&mut self, run_id: RunId) {
        if let Some(run) = self.runs.get_mut(&run_id)
            && !run.dirty
        {
            run.dirty = true;
            self.dirty.push(run_id);
        }
    }

    /// The next transitions of every run that changed (or whose timer is
    /// due at `now`), as `(run, record body)` to append and apply in order.
    /// Call again after applying them until it returns nothing.
    pub fn decide(&mut self, now: Millis) -> Vec<(RunId, RecordBody)> {
        while let Some(&(due, run_id)) = self.sched.timers.first() {
            if due > now {
                break;
            }
            self.sched.timers.pop_first();
            self.mark_dirty(run_id);
        }
        let mut out = Vec::new();
        if !self.paused {
            self.admit(&mut out);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for run_id in dirty {
            let Some(run) = self.runs.get_mut(&run_id) else {
                continue;
            };
            run.dirty = false;
            decide_run(run, now, self.paused, &mut self.sched.ready, &mut out);
        }
        // Fill free slots, oldest ready task first.
        if self.paused {
            return out;
        }
        let mut free = self
            .limits
            .max_parallel_tasks
            .saturating_sub(self.sched.running_slots);
        while let Some(&(run_id, i)) = self.sched.ready.front() {
            let Some(run) = self.runs.get_mut(&run_id) else {
                self.sched.ready.pop_front();
                continue;
            };
            let holds_slot = executors::holds_slot(run.workflow.tasks[i].kind);
            if holds_slot && free == 0 {
                break;
            }
            self.sched.ready.pop_front();
            // A run past its deadline gets `RunTimedOut` this round; start nothing for it.
            let expired = run.deadline.is_some_and(|d| d <= now);
            let state = &mut run.tasks[i];
            if !state.queued || state.status.is_terminal() || run.cancelling.is_some() || expired {
                state.queued = false;
                continue;
            }
            state.queued = false;
            out.push((
                run_id,
                RecordBody::AttemptStarted {
                    task: run.workflow.tasks[i].id.clone(),
                    attempt: state.attempts + 1,
                },
            ));
            if holds_slot {
                free -= 1;
            }
        }
        out
    }

    /// Starts queued runs as `max_active_runs` allows, oldest first per
    /// workflow; with `on_overflow: skip`, a run that cannot start at once ends.
    fn admit(&mut self, out: &mut Vec<(RunId, RecordBody)>) {
        self.sched.waiting.retain(|_, queue| !queue.is_empty());
        for (name, queue) in &self.sched.waiting {
            let mut active = self.sched.active.get(name).copied().unwrap_or(0);
            for run_id in queue {
                let Some(run) = self.runs.get(run_id) else {
                    continue;
                };
                if run.status != RunStatus::Queued || run.cancelling.is_some() {
                    continue; // A cancelled queued run is ended by `decide_run`.
                }
                match run.workflow.max_active_runs {
                    Some(max) if active as u64 >= u64::from(max) => {
                        match run.workflow.on_overflow {
                            crate::spec::workflow::Overflow::Queue => break,
                            crate::spec::workflow::Overflow::Skip => out.push((
                                *run_id,
                                RecordBody::RunEnded {
                                    status: RunStatus::Cancelled,
                                    error: Some(format!(
                                        "skipped: max_active_runs ({max}) of `{name}` reached"
                                    )),
                                },
                            )),
                        }
                    }
                    _ => {
                        active += 1;
                        out.push((*run_id, RecordBody::RunStarted {}));
                    }
                }
            }
        }
    }

    /// After replay: what recovery must do for the attempts that were running
    /// when the process stopped. Attempts of resumable kinds (`sleep`) are
    /// started again from their recorded start; the others are recorded lost.
    pub fn resume(&mut self) -> (Vec<(RunId, RecordBody)>, Vec<Effect>) {
        let mut records = Vec::new();
        let mut effects = Vec::new();
        let mut ids: Vec<RunId> = self.runs.keys().copied().collect();
        ids.sort();
        for run_id in ids {
            let run = &self.runs[&run_id];
            if run.status != RunStatus::Running {
                continue;
            }
            for (i, state) in run.tasks.iter().enumerate() {
                if state.status != TaskStatus::Running {
                    continue;
                }
                let spec = &run.workflow.tasks[i];
                // A remote attempt goes on on its worker: re-attached.
                if spec.queue.is_some() || executors::resumable(spec.kind) {
                    effects.push(Effect::StartAttempt {
                        run_id,
                        task: i,
                        attempt: state.attempts,
                        started_at: state.attempt_started_at.unwrap_or(run.created_at),
                    });
                } else {
                    records.push((
                        run_id,
                        RecordBody::AttemptLost {
                            task: spec.id.clone(),
                            attempt: state.attempts,
                            reason: "switchyard stopped while it ran".into(),
                            shutdown: false,
                        },
                    ));
                }
            }
        }
        if let Some(at) = self.next_timer() {
            effects.push(Effect::Wake { at });
        }
        (records, effects)
    }

    /// The earliest pending wake-up (retry due, run deadline).
    pub fn next_timer(&self) -> Option<Millis> {
        self.sched.timers.first().map(|(at, _)| *at)
    }

    /// Attempts running now, as `(run, task position, attempt)`.
    pub fn running_attempts(&self) -> Vec<(RunId, usize, u32)> {
        let mut out = Vec::new();
        for run in self.runs.values() {
            for (i, state) in run.tasks.iter().enumerate() {
                if state.status == TaskStatus::Running {
                    out.push((run.id, i, state.attempts));
                }
            }
        }
        out
    }

    /// Renders the config of an attempt about to run. An error here fails the
    /// attempt (not retried: the same inputs give the same error).
    pub fn prepare_attempt(
        &self,
        run_id: RunId,
        task: usize,
        now: Millis,
    ) -> Result<PreparedAttempt, String> {
        let run = self
            .runs
            .get(&run_id)
            .ok_or_else(|| format!("run {run_id} is not active"))?;
        let spec = run
            .workflow
            .tasks
            .get(task)
            .ok_or_else(|| format!("task #{task} does not exist"))?;
        let scope = TaskScope::for_attempt(run, task, now, &self.secrets)?;
        let config = spec
            .config
            .render(&scope)
            .map_err(|e| format!("{}{}", spec.kind, with_path(&e.message)))?;
        Ok(PreparedAttempt {
            workflow: run.workflow.name.as_str().into(),
            task: spec.id.as_str().into(),
            kind: spec.kind,
            config,
            timeout: spec.timeout,
            queue: spec.queue.clone(),
            start_timeout: spec.start_timeout,
            logical_time: run.logical_time,
            observed: run.tasks.get(task).and_then(|t| t.observation.clone()),
        })
    }
}

/// A duration in milliseconds, saturating (a "300000000years" timeout means never).
pub(crate) fn duration_millis(duration: std::time::Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

fn unqueue(waiting: &mut HashMap<String, VecDeque<RunId>>, name: &str, run_id: RunId) {
    if let Some(queue) = waiting.get_mut(name) {
        if queue.front() == Some(&run_id) {
            queue.pop_front();
        } else {
            queue.retain(|id| *id != run_id);
        }
    }
}

/// Marks the tasks a rerun keeps as succeeded, with their recorded outputs,
/// and applies their exports in workflow order.
fn reuse_tasks(
    run: &mut RunState,
    reused: &[crate::log::ReusedTask],
    from: Option<RunId>,
    at: Millis,
) {
    for reuse in reused {
        let Some(i) = run.workflow.task_index(&reuse.task) else {
            continue;
        };
        let state = &mut run.tasks[i];
        state.status = TaskStatus::Succeeded;
        state.output = reuse.output.clone();
        state.stdout = reuse.stdout.clone();
        state.reused_from = from;
        state.ended_at = Some(at);
    }
    for i in 0..run.tasks.len() {
        if run.tasks[i].reused_from.is_none() {
            continue;
        }
        if let Ok(exports) = evaluate_exports(run, i, at) {
            for (k, v) in exports {
                run.vars.insert(k, v);
            }
        }
    }
}

fn with_path(message: &str) -> String {
    if message.starts_with('.') {
        message.to_string()
    } else {
        format!(": {message}")
    }
}

fn finish_failed(run: &mut RunState, i: usize, at: Millis, message: String) {
    let spec = &run.workflow.tasks[i];
    let state = &mut run.tasks[i];
    state.status = TaskStatus::Failed;
    state.error = Some(message);
    state.ended_at = Some(at);
    state.retry_due = None;
    if run.workflow.fail_fast
        && !spec.allow_failure
        && !spec.failure_handled
        && run.cancelling.is_none()
    {
        run.cancelling = Some(Cancelling::FailFast {
            task: spec.id.clone(),
        });
    }
}

fn evaluate_exports(run: &RunState, i: usize, now: Millis) -> Result<Vec<(String, Value)>, String> {
    let spec = &run.workflow.tasks[i];
    if spec.export.is_empty() {
        return Ok(Vec::new());
    }
    let mut scope = TaskScope::for_task(run, i, now)?;
    scope.output = Some(run.tasks[i].output.clone());
    spec.export
        .iter()
        .map(|(name, template)| {
            template
                .render(&scope)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("export `{name}`: {}", e.message))
        })
        .collect()
}

/// Whether one dependency holds, given its task reached a terminal status.
fn dependency_holds(status: TaskStatus, on: DepOn) -> bool {
    match on {
        DepOn::Success => status == TaskStatus::Succeeded,
        DepOn::Failure => status == TaskStatus::Failed,
        DepOn::Completion => matches!(status, TaskStatus::Succeeded | TaskStatus::Failed),
    }
}

fn decide_run(
    run: &mut RunState,
    now: Millis,
    paused: bool,
    ready: &mut VecDeque<(RunId, usize)>,
    out: &mut Vec<(RunId, RecordBody)>,
) {
    let run_id = run.id;
    let decided_before = out.len();
    match run.status {
        RunStatus::Queued => {
            // Admission starts queued runs; a cancelled one ends here.
            if let Some(Cancelling::User { reason }) = &run.cancelling {
                out.push((
                    run_id,
                    RecordBody::RunEnded {
                        status: RunStatus::Cancelled,
                        error: Some(reason.clone()),
                    },
                ));
            }
            return;
        }
        RunStatus::Running => {}
        _ => return,
    }
    let workflow = Arc::clone(&run.workflow);
    if let Some(cancelling) = &run.cancelling {
        let reason = cancelling.reason();
        for (i, state) in run.tasks.iter().enumerate() {
            if !state.status.is_terminal() {
                out.push((
                    run_id,
                    RecordBody::TaskCancelled {
                        task: workflow.tasks[i].id.clone(),
                        reason: reason.clone(),
                    },
                ));
            }
        }
    } else if run.deadline.is_some_and(|d| d <= now) {
        out.push((run_id, RecordBody::RunTimedOut {}));
        return;
    } else {
        for i in 0..run.tasks.len() {
            let spec = &workflow.tasks[i];
            let status = run.tasks[i].status;
            match status {
                TaskStatus::Pending if !run.tasks[i].queued => {
                    let deps = spec.after.deps();
                    if deps.iter().any(|d| !run.tasks[d.task].status.is_terminal()) {
                        continue;
                    }
                    let holds =
                        |d: &crate::spec::Dep| dependency_holds(run.tasks[d.task].status, d.on);
                    let satisfied = match &spec.after {
                        Dependencies::None => true,
                        Dependencies::All(deps) => deps.iter().all(holds),
                        Dependencies::Any(deps) => deps.iter().any(holds),
                    };
                    if !satisfied {
                        let reason = describe_unmet(run, &spec.after);
                        out.push((
                            run_id,
                            RecordBody::TaskSkipped {
                                task: spec.id.clone(),
                                reason,
                            },
                        ));
                        continue;
                    }
                    if let Some(when) = &spec.when {
                        let verdict = TaskScope::for_task(run, i, now)
                            .and_then(|scope| when.evaluate(&scope).map_err(|e| e.message));
                        match verdict {
                            Ok(true) => {}
                            Ok(false) => {
                                out.push((
                                    run_id,
                                    RecordBody::TaskSkipped {
                                        task: spec.id.clone(),
                                        reason: format!("`when` is false: {}", when.source()),
                                    },
                                ));
                                continue;
                            }
                            Err(error) => {
                                out.push((
                                    run_id,
                                    RecordBody::TaskFailed {
                                        task: spec.id.clone(),
                                        error: format!("when: {error}"),
                                    },
                                ));
                                continue;
                            }
                        }
                    }
                    make_ready(run, i, paused, ready, out);
                }
                TaskStatus::Retrying => match run.tasks[i].retry_due {
                    None => {
                        let next = run.tasks[i].attempts + 1;
                        let delay = spec.retry.delay_before(next);
                        out.push((
                            run_id,
                            RecordBody::RetryScheduled {
                                task: spec.id.clone(),
                                attempt: next,
                                due_at: now.saturating_add(duration_millis(delay)),
                            },
                        ));
                    }
                    Some(due) if due <= now && !run.tasks[i].queued => {
                        make_ready(run, i, paused, ready, out)
                    }
                    Some(_) => {}
                },
                _ => {}
            }
        }
    }
    if out.len() == decided_before && run.tasks.iter().all(|t| t.status.is_terminal()) {
        let (status, error) = final_status(run);
        out.push((run_id, RecordBody::RunEnded { status, error }));
    }
}

/// A task whose conditions hold: start it now if it holds no slot, else queue it.
fn make_ready(
    run: &mut RunState,
    i: usize,
    paused: bool,
    ready: &mut VecDeque<(RunId, usize)>,
    out: &mut Vec<(RunId, RecordBody)>,
) {
    let spec = &run.workflow.tasks[i];
    if paused || executors::holds_slot(spec.kind) {
        run.tasks[i].queued = true;
        ready.push_back((run.id, i));
    } else {
        out.push((
            run.id,
            RecordBody::AttemptStarted {
                task: spec.id.clone(),
                attempt: run.tasks[i].attempts + 1,
            },
        ));
    }
}

fn describe_unmet(run: &RunState, after: &Dependencies) -> String {
    let parts: Vec<String> = after
        .deps()
        .iter()
        .map(|d| {
            format!(
                "{}:{} ({})",
                run.workflow.tasks[d.task].id,
                d.on.as_str(),
                run.tasks[d.task].status.as_str()
            )
        })
        .collect();
    let mode = if matches!(after, Dependencies::Any(_)) {
        "any"
    } else {
        "all"
    };
    format!("dependencies not met ({mode} of {})", parts.join(", "))
}

/// The run status rule of SPEC §7.
fn final_status(run: &RunState) -> (RunStatus, Option<String>) {
    if let Some(Cancelling::User { reason }) = &run.cancelling {
        return (RunStatus::Cancelled, Some(reason.clone()));
    }
    if matches!(run.cancelling, Some(Cancelling::TimedOut)) {
        let limit = run
            .workflow
            .timeout
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_default();
        return (
            RunStatus::Failed,
            Some(format!("run timed out after {limit}")),
        );
    }
    for (spec, state) in run.workflow.tasks.iter().zip(&run.tasks) {
        if state.status == TaskStatus::Failed && !spec.allow_failure {
            let error = state.error.as_deref().unwrap_or("failed");
            return (
                RunStatus::Failed,
                Some(format!("task `{}` failed: {error}", spec.id)),
            );
        }
    }
    (RunStatus::Succeeded, None)
}

/// Vars map type used in scopes.
pub type Vars = Map<String, Value>;
