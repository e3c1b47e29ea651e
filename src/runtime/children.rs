//! Sub-workflows: the runtime's side of the `workflow` task. A child run is
//! created in the engine thread, where its id (fixed by the parent's task
//! attempt) is checked against the runs that exist, so a resumed attempt
//! finds its child instead of starting another; its depth is checked
//! against [`MAX_DEPTH`], naming the chain of workflows that got there.

#[allow(unused_imports)]
use super::*;

use crate::executors::workflow::{BoxFuture, ChildEnded, ChildRequest, Children, MAX_DEPTH};
use crate::log::ParentRun;

/// What `workflow` attempts talk to: a handle on the engine thread.
#[derive(Debug, Clone)]
pub(super) struct RuntimeChildren {
    pub(super) handle: RuntimeHandle,
    /// Cancelled once the engine stops reading inputs: a parent attempt
    /// cancelled by shutdown leaves its child alone (both resume at the
    /// next start).
    pub(super) shutdown: CancellationToken,
}

impl Children for RuntimeChildren {
    fn start(&self, request: ChildRequest) -> BoxFuture<Result<Option<RunStatus>, String>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let (reply, started) = oneshot::channel();
            handle
                .send(Input::StartChild { request, reply })
                .map_err(|e| e.to_string())?;
            started
                .await
                .map_err(|_| "switchyard stopped before the child run started".to_string())?
        })
    }

    fn wait(&self, run_id: RunId) -> BoxFuture<Result<ChildEnded, String>> {
        let handle = self.handle.clone();
        Box::pin(async move {
            let (reply, ended) = oneshot::channel();
            handle
                .send(Input::WaitRun { run_id, reply })
                .map_err(|e| e.to_string())?;
            let record = ended
                .await
                .map_err(|_| format!("child run {run_id} cannot be waited for: it is not known"))?;
            Ok(ChildEnded {
                status: record.status,
                vars: record.vars,
                error: record.error,
            })
        })
    }

    fn cancel(&self, run_id: RunId, reason: String) -> BoxFuture<Result<(), String>> {
        let handle = self.handle.clone();
        let shutting_down = self.shutdown.is_cancelled();
        Box::pin(async move {
            if shutting_down {
                return Ok(());
            }
            handle
                .cancel(run_id, reason)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl EngineLoop {
    /// A `workflow` task's child: created unless its id already exists.
    pub(super) fn on_start_child(
        &mut self,
        batch: &mut Batch,
        request: ChildRequest,
        reply: oneshot::Sender<Result<Option<RunStatus>, String>>,
        now: Millis,
    ) -> Result<(), Error> {
        if let Some(run) = self.engine.run(request.id) {
            let _ = reply.send(Ok(Some(run.status)));
            return Ok(());
        }
        if let Some(summary) = self.log.run_summary(request.id)? {
            let status = serde_json::from_slice::<RunRecord>(&summary)
                .map(|r| r.status)
                .unwrap_or(RunStatus::Failed);
            let _ = reply.send(Ok(Some(status)));
            return Ok(());
        }
        if self.draining.is_some() {
            // Not answered: the parent's attempt resumes at the next start
            // and asks again (its result would not be recorded now anyway).
            self.held_child_starts.push(reply);
            return Ok(());
        }
        let Some(parent) = self.engine.run(request.parent) else {
            let _ = reply.send(Err(format!("parent run {} is not active", request.parent)));
            return Ok(());
        };
        // A parent being cancelled starts nothing more; nor does an attempt
        // that is no longer the task's live one.
        let live = parent.workflow.task_index(&request.task).is_some_and(|i| {
            parent.tasks[i].status == TaskStatus::Running
                && parent.tasks[i].attempts == request.attempt
        });
        if parent.cancelling.is_some() || !live {
            let _ = reply.send(Err(format!(
                "run {} is being cancelled: no child started",
                request.parent
            )));
            return Ok(());
        }
        let depth = parent.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if depth > MAX_DEPTH {
            let chain = self.ancestry(request.parent);
            let _ = reply.send(Err(format!(
                "sub-workflows nest deeper than {MAX_DEPTH} levels ({chain} → {}): a workflow that \
                 starts itself, directly or through others, needs a `when` that stops it",
                request.workflow
            )));
            return Ok(());
        }
        let project_vars = parent.project_vars.clone();
        let logical_time = parent.logical_time;
        let workflow = match self.child_workflow(&request) {
            Ok(workflow) => workflow,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Ok(());
            }
        };
        // What a child run records never holds a secret (its params are
        // rendered in the parent's scope, where secrets are visible).
        let mut params = request.params;
        if !self.secrets.is_empty() {
            let mut value = Value::Object(std::mem::take(&mut params));
            self.secrets.redact_json(&mut value);
            if let Value::Object(map) = value {
                params = map;
            }
        }
        let run = NewRun {
            id: Some(request.id),
            parent: Some(ParentRun {
                run_id: request.parent,
                task: request.task.to_string(),
                attempt: request.attempt,
                depth,
            }),
            project_vars: Some(project_vars),
            // A child works on its parent's instant (a nightly run's child
            // processes the same night).
            logical_time: Some(logical_time),
            ..NewRun::new(Arc::clone(&workflow), params)
        };
        let body = self.run_created(run, now)?;
        self.engine.register(workflow);
        self.append(batch, request.id, now, body)?;
        batch.children.push(reply);
        Ok(())
    }

    /// Waits for a run: answered when it ends, or at once from its summary.
    pub(super) fn on_wait_run(
        &mut self,
        run_id: RunId,
        reply: oneshot::Sender<RunRecord>,
    ) -> Result<(), Error> {
        if self.engine.run(run_id).is_some() {
            self.waiters.entry(run_id).or_default().push(reply);
            return Ok(());
        }
        if let Some(summary) = self.log.run_summary(run_id)?
            && let Ok(record) = serde_json::from_slice::<RunRecord>(&summary)
        {
            let _ = reply.send(record);
        }
        // Unknown: the dropped reply tells the caller.
        Ok(())
    }

    /// The definition a child runs: the current one by name, or a pinned
    /// version from the log.
    fn child_workflow(&self, request: &ChildRequest) -> Result<Arc<Workflow>, String> {
        if let Some(version) = &request.version {
            let stored = self
                .log
                .definition(version)
                .map_err(|e| format!("cannot read version {version}: {e}"))?
                .ok_or_else(|| {
                    format!("workflow `{}` has no version {version}", request.workflow)
                })?;
            let workflow = Workflow::parse_stored(
                std::path::Path::new(&format!("{}@{version}", request.workflow)),
                &stored,
            )
            .map_err(|e| format!("version {version} does not load: {e}"))?;
            if workflow.name != request.workflow {
                return Err(format!(
                    "version {version} is of workflow `{}`, not `{}`",
                    workflow.name, request.workflow
                ));
            }
            return Ok(Arc::new(workflow));
        }
        self.workflows
            .as_ref()
            .and_then(|lookup| lookup(&request.workflow))
            .ok_or_else(|| format!("no workflow named `{}`", request.workflow))
    }

    /// `a → b → c`: the workflows from the top-level run down to `run_id`.
    fn ancestry(&self, run_id: RunId) -> String {
        let mut names = Vec::new();
        let mut next = Some(run_id);
        while let Some(id) = next {
            let Some(run) = self.engine.run(id) else {
                break;
            };
            names.push(run.workflow.name.clone());
            next = run.parent.as_ref().map(|p| p.run_id);
            if names.len() > MAX_DEPTH as usize + 1 {
                break;
            }
        }
        names.reverse();
        names.join(" → ")
    }
}
