//! The names expressions see while a run executes (SPEC §6).

use serde_json::{Map, Value, json};

use super::state::{RunState, rfc3339};
use crate::expr::Scope;
use crate::log::Millis;

/// The scope of one task: `vars` include the task's own `vars`.
pub(crate) struct TaskScope<'a> {
    run: &'a RunState,
    secrets: Option<&'a crate::spec::Secrets>,
    vars: Map<String, Value>,
    pub output: Option<Value>,
    now: Millis,
}

impl<'a> TaskScope<'a> {
    /// Builds the scope of task `i`, rendering its `vars` over the run's.
    pub fn for_task(run: &'a RunState, i: usize, now: Millis) -> Result<Self, String> {
        Self::build(run, i, now, None)
    }

    /// The scope an attempt's config renders in: like [`Self::for_task`],
    /// plus `secrets` (never in `when` or `export`, whose results are logged).
    pub fn for_attempt(
        run: &'a RunState,
        i: usize,
        now: Millis,
        secrets: &'a crate::spec::Secrets,
    ) -> Result<Self, String> {
        Self::build(run, i, now, Some(secrets))
    }

    fn build(
        run: &'a RunState,
        i: usize,
        now: Millis,
        secrets: Option<&'a crate::spec::Secrets>,
    ) -> Result<Self, String> {
        let mut scope = Self {
            run,
            secrets,
            vars: Map::new(),
            output: None,
            now,
        };
        let task_vars = &run.workflow.tasks[i].vars;
        if task_vars.is_empty() {
            return Ok(scope);
        }
        // Task vars are rendered against the run's vars, then layered on top.
        let mut rendered = Vec::with_capacity(task_vars.len());
        for (name, template) in task_vars {
            let value = template
                .render(&scope)
                .map_err(|e| format!("vars.{name}: {}", e.message))?;
            rendered.push((name.clone(), value));
        }
        scope.vars = run.vars.clone();
        for (name, value) in rendered {
            scope.vars.insert(name, value);
        }
        Ok(scope)
    }

    fn vars(&self) -> &Map<String, Value> {
        if self.vars.is_empty() {
            &self.run.vars
        } else {
            &self.vars
        }
    }
}

impl Scope for TaskScope<'_> {
    fn lookup(&self, name: &str) -> Option<Value> {
        let run = self.run;
        Some(match name {
            "vars" => Value::Object(self.vars().clone()),
            "params" => Value::Object(run.params.clone()),
            "event" => run.event.clone().unwrap_or(Value::Null),
            "tasks" => {
                let mut tasks = Map::new();
                for (spec, state) in run.workflow.tasks.iter().zip(&run.tasks) {
                    tasks.insert(
                        spec.id.clone(),
                        json!({
                            "status": state.status.as_str(),
                            "output": state.output,
                            "stdout": state.stdout,
                            "attempts": state.attempts,
                            "error": state.error,
                        }),
                    );
                }
                Value::Object(tasks)
            }
            "run" => json!({
                "id": run.id.to_string(),
                "workflow": run.workflow.name,
                "started_at": run.started_at.map(rfc3339),
                "logical_time": rfc3339(run.logical_time),
            }),
            "secrets" => self
                .secrets
                .map(|s| s.to_json())
                .unwrap_or_else(|| Value::Object(Map::new())),
            "output" => self.output.clone()?,
            _ => return None,
        })
    }

    fn now(&self) -> i64 {
        self.now
    }
}
