//! Shared helpers for the integration tests.

#![allow(dead_code)]

pub mod broker;
pub mod db;
pub mod tls_proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use switchyard::engine::{Effect, Engine, Limits, TaskStatus};
use switchyard::log::{Millis, Record, RecordBody, RunId, RunStatus};
use switchyard::spec::Workflow;

/// Compiles a workflow from JSON, panicking with the diagnostics if invalid.
pub fn workflow(definition: Value) -> Arc<Workflow> {
    let text = serde_json::to_vec(&definition).unwrap();
    match Workflow::parse(Path::new("test.json"), &text) {
        Ok(w) => Arc::new(w),
        Err(d) => panic!("invalid test workflow:\n{d}"),
    }
}

/// Drives the pure engine the way the runtime does, without I/O: every
/// record is numbered and kept, decisions are applied until none remain.
pub struct Harness {
    pub engine: Engine,
    pub records: Vec<Record>,
    pub now: Millis,
    pub run_id: RunId,
    seq: u64,
}

impl Harness {
    pub fn start(definition: Value, params: Value) -> (Self, Vec<Effect>) {
        Self::start_with(definition, params, Limits::default())
    }

    pub fn start_with(definition: Value, params: Value, limits: Limits) -> (Self, Vec<Effect>) {
        let workflow = workflow(definition);
        let mut engine = Engine::new(limits);
        let body = RecordBody::RunCreated {
            workflow: workflow.name.clone(),
            version: workflow.version.clone(),
            version_label: None,
            params: params.as_object().cloned().unwrap_or_default(),
            project_vars: Default::default(),
            event: None,
            event_seq: None,
            rerun_of: None,
            reused: Vec::new(),
            parent: None,
            logical_time: None,
        };
        engine.register(workflow);
        let mut harness = Self {
            engine,
            records: Vec::new(),
            now: 1_700_000_000_000,
            run_id: uuid::Uuid::now_v7(),
            seq: 0,
        };
        let effects = harness.feed(body);
        (harness, effects)
    }

    /// Appends one input record, then every decision that follows.
    pub fn feed(&mut self, body: RecordBody) -> Vec<Effect> {
        let mut effects = self.apply(self.run_id, body);
        effects.extend(self.settle());
        effects
    }

    /// Lets the engine decide at the current `now` (e.g. after advancing time).
    pub fn settle(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        loop {
            let decisions = self.engine.decide(self.now);
            if decisions.is_empty() {
                return effects;
            }
            for (run_id, body) in decisions {
                effects.extend(self.apply(run_id, body));
            }
        }
    }

    fn apply(&mut self, run_id: RunId, body: RecordBody) -> Vec<Effect> {
        self.seq += 1;
        let record = Record {
            seq: self.seq,
            at: self.now,
            run_id,
            body,
        };
        let effects = self.engine.apply(&record);
        self.records.push(record);
        effects
    }

    pub fn attempt(&self, task: &str) -> u32 {
        self.task(task).attempts
    }

    pub fn succeed(&mut self, task: &str, output: Value) -> Vec<Effect> {
        let attempt = self.attempt(task);
        self.feed(RecordBody::AttemptFinished {
            task: task.into(),
            attempt,
            succeeded: true,
            output,
            stdout: String::new(),
            error: None,
            retryable: true,
        })
    }

    pub fn fail(&mut self, task: &str, error: &str) -> Vec<Effect> {
        let attempt = self.attempt(task);
        self.feed(RecordBody::AttemptFinished {
            task: task.into(),
            attempt,
            succeeded: false,
            output: Value::Null,
            stdout: String::new(),
            error: Some(error.into()),
            retryable: true,
        })
    }

    pub fn task(&self, id: &str) -> switchyard::engine::TaskState {
        let run = self.engine.run(self.run_id).expect("run in memory");
        let i = run.workflow.task_index(id).expect("task id");
        run.tasks[i].clone()
    }

    pub fn status(&self, id: &str) -> TaskStatus {
        self.task(id).status
    }

    pub fn run_status(&self) -> RunStatus {
        self.engine.run(self.run_id).expect("run in memory").status
    }

    pub fn vars(&self) -> Map<String, Value> {
        self.engine.run(self.run_id).expect("run").vars.clone()
    }

    /// Task ids of the attempts `effects` start.
    pub fn started(&self, effects: &[Effect]) -> Vec<String> {
        let run = self.engine.run(self.run_id).expect("run");
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::StartAttempt { task, .. } => Some(run.workflow.tasks[*task].id.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn killed(&self, effects: &[Effect]) -> Vec<String> {
        let run = self.engine.run(self.run_id).expect("run");
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::KillAttempt { task, .. } => Some(run.workflow.tasks[*task].id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The rendered config the attempt of `task` would run with.
    pub fn rendered(&self, task: &str) -> Result<Value, String> {
        let run = self.engine.run(self.run_id).expect("run");
        let i = run.workflow.task_index(task).expect("task");
        self.engine
            .prepare_attempt(self.run_id, i, self.now)
            .map(|p| p.config)
    }

    /// Record bodies of a given type name, e.g. "task_skipped".
    pub fn bodies(&self, kind: &str) -> Vec<Value> {
        self.records
            .iter()
            .map(|r| serde_json::to_value(&r.body).unwrap())
            .filter(|v| v["type"] == kind)
            .collect()
    }
}

/// A shell task.
pub fn sh(id: &str, script: &str) -> Value {
    json!({"id": id, "shell": {"script": script}})
}

/// Path to the built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// Runs the binary in `dir` with `args`.
pub fn switchyard(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run switchyard")
}

/// Writes a workflow file into `dir` and returns its path.
pub fn write_workflow(dir: &Path, name: &str, definition: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(definition).unwrap()).unwrap();
    path
}

/// Runs a workflow file with `--json` and returns (exit code, run record).
pub fn run_json(dir: &Path, file: &Path, extra: &[&str]) -> (i32, Value) {
    let data_dir = dir.join("data");
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--json",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = switchyard(dir, &args);
    let code = out.status.code().unwrap_or(-1);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "run --json printed no record ({e}); exit {code}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, record)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts a runtime on `dir`, runs `wf` to its end with no params, stops
/// the runtime; returns the run.
pub async fn run_once(dir: &Path, wf: Arc<Workflow>) -> switchyard::engine::RunRecord {
    let runtime =
        switchyard::runtime::Runtime::start(switchyard::runtime::RuntimeConfig::new(dir)).unwrap();
    let record = runtime
        .handle()
        .run_to_end(wf, serde_json::Map::new(), None, |_| {})
        .await
        .unwrap();
    runtime.shutdown().await;
    record
}

/// A python that can `import module`: the one `env` names (set by
/// `.ci/run`, which installs the test clients), else `python3` if it can.
pub fn python_with(env: &str, module: &str) -> Option<String> {
    if let Ok(python) = std::env::var(env) {
        return Some(python);
    }
    let found = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| "python3".to_string())
}

/// Runs `tests/clients/<script>` with `input` on stdin: its stdout, or
/// its stderr as the error when it fails.
pub fn python_client(python: &str, script: &str, input: &str) -> Result<String, String> {
    use std::io::Write as _;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}
