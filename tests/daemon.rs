//! The daemon as a child process: CLI against a live server, the data-dir
//! lock, hot reload, graceful shutdown, and SIGKILL crash recovery.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::log::{Log, RecordBody};

use crate::util::{bin, stderr, switchyard, write_workflow};

/// A `switchyard serve` child on an ephemeral port.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) addr: String,
    pub(crate) output: Arc<Mutex<String>>,
}

impl Daemon {
    pub(crate) fn spawn(project: &Path, data: &Path, extra: &[&str]) -> Self {
        Self::try_spawn(project, data, extra)
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    fn try_spawn(project: &Path, data: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(bin())
            .current_dir(project)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("switchyard listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Self {
                child,
                addr,
                output,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(output.lock().unwrap().clone())
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit code.
    fn terminate(mut self) -> (Option<i32>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status.code(), self.output.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that fails (panics) still ends its daemon: no `serve` child
/// outlives the test that started it.
impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub(crate) fn http() -> reqwest::blocking_shim::Client {
    reqwest::blocking_shim::Client
}

/// Minimal blocking HTTP for tests, over a throwaway tokio runtime.
mod reqwest {
    pub mod blocking_shim {
        use serde_json::Value;

        pub struct Client;

        impl Client {
            pub fn send(
                &self,
                method: &str,
                url: &str,
                body: Option<Value>,
            ) -> Result<(u16, Value), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    switchyard::tls::install_provider();
                    let client = ::reqwest::Client::new();
                    let method = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    let mut request = client
                        .request(method, url)
                        .timeout(std::time::Duration::from_secs(10));
                    if let Some(body) = body {
                        request = request.json(&body);
                    }
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    Ok((status, body))
                })
            }
        }
    }
}

fn project(dir: &Path) -> PathBuf {
    let flows = dir.join("workflows");
    std::fs::create_dir_all(&flows).unwrap();
    write_workflow(
        &flows,
        "quick",
        &json!({"name": "quick", "tasks": [
            {"id": "a", "shell": {"command": ["echo", "hi"]}},
        ]}),
    );
    flows
}

fn wait_terminal(daemon: &Daemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, run) = http()
            .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
            .unwrap();
        assert_eq!(status, 200, "{run}");
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn cli_against_a_live_server_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let out = switchyard(dir.path(), &["health", "--server", &daemon.addr]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = switchyard(
        dir.path(),
        &["trigger", "quick", "--server", &daemon.addr, "-p", "n=1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_terminal(&daemon, &id);
    let out = switchyard(
        dir.path(),
        &["runs", "show", &id, "--server", &daemon.addr, "--json"],
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["params"], json!({"n": 1}));
    let out = switchyard(dir.path(), &["runs", "list", "--server", &daemon.addr]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let (_, metrics) = http().send("GET", &daemon.url("/metrics"), None).unwrap();
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("switchyard_runs_created_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_runs_ended_total{status=\"succeeded\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_attempts_started_total 1\n"),
        "{metrics}"
    );
    let out = switchyard(
        dir.path(),
        &["runs", "logs", &id, "a", "--server", &daemon.addr],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi"));
    // While the daemon holds the data dir, offline access is refused clearly.
    let out = switchyard(
        dir.path(),
        &["runs", "list", "--data-dir", data.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    // So is `run` (the Quickstart beside the demo's server), saying what to
    // do instead; and both ways out work.
    let out = switchyard(
        dir.path(),
        &["run", "quick", "--data-dir", data.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("locked by another switchyard process")
            && said.contains("switchyard trigger quick --wait")
            && said.contains("--data-dir <dir>"),
        "{said}"
    );
    let out = switchyard(
        dir.path(),
        &["trigger", "quick", "--wait", "--server", &daemon.addr],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let scratch = dir.path().join("scratch");
    let out = switchyard(
        dir.path(),
        &["run", "quick", "--data-dir", scratch.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A second daemon on the same data dir fails at once.
    let second = Daemon::try_spawn(dir.path(), &data, &[]);
    let message = match second {
        Ok(d) => {
            d.kill();
            panic!("a second daemon started on the same data dir");
        }
        Err(output) => output,
    };
    assert!(
        message.contains("locked by another switchyard process"),
        "{message}"
    );
    let addr = daemon.addr.clone();
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let out = switchyard(dir.path(), &["health", "--server", &addr]);
    assert_eq!(out.status.code(), Some(1));
    // Offline now.
    let out = switchyard(
        dir.path(),
        &[
            "runs",
            "list",
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Ours and the one `trigger --wait` started.
    let ids: Vec<&Value> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&&json!(id)), "{list}");
    let out = switchyard(
        dir.path(),
        &["runs", "history", &id, "--data-dir", data.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("run_ended"));
    let out = switchyard(
        dir.path(),
        &["runs", "show", "nope", "--data-dir", data.to_str().unwrap()],
    );
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn reload_picks_up_valid_edits_for_new_runs_and_rejects_invalid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    let file = write_workflow(
        &flows,
        "evolving",
        &json!({"name": "evolving", "version": 1, "tasks": [
            {"id": "first", "shell": {"command": ["sleep", "1"]}},
        ]}),
    );
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &[]);
    let (_, old_run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/evolving/runs"),
            Some(json!({})),
        )
        .unwrap();
    let (_, before) = http()
        .send("GET", &daemon.url("/api/v1/workflows/evolving"), None)
        .unwrap();
    write_workflow(
        &flows,
        "evolving",
        &json!({"name": "evolving", "version": 2, "tasks": [
            {"id": "first", "shell": {"command": ["true"]}},
            {"id": "second", "after": "first", "noop": {}},
        ]}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let (_, wf) = http()
            .send("GET", &daemon.url("/api/v1/workflows/evolving"), None)
            .unwrap();
        if wf["version"] != before["version"] {
            break wf;
        }
        assert!(Instant::now() < deadline, "edit was not picked up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(after["version_label"], json!(2));
    // The run in flight keeps the definition it started with.
    let old = wait_terminal(&daemon, old_run["id"].as_str().unwrap());
    assert_eq!(old["version"], before["version"]);
    assert!(old["tasks"].get("second").is_none());
    let (_, new_run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/evolving/runs"),
            Some(json!({})),
        )
        .unwrap();
    let new = wait_terminal(&daemon, new_run["id"].as_str().unwrap());
    assert_eq!(new["tasks"]["second"]["status"], "succeeded");
    // Both versions are listed now that both have run.
    let (_, wf) = http()
        .send("GET", &daemon.url("/api/v1/workflows/evolving"), None)
        .unwrap();
    assert_eq!(wf["versions"].as_array().unwrap().len(), 2, "{wf}");

    // An invalid edit is rejected with its errors; the last good version stays.
    std::fs::write(
        &file,
        r#"{"name": "evolving", "tasks": [{"id": "x", "after": "nope", "noop": {}}]}"#,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = http()
            .send("GET", &daemon.url("/api/v1/workflows"), None)
            .unwrap();
        let errors = list["errors"].as_array().unwrap();
        if !errors.is_empty() {
            assert!(
                errors[0]["message"]
                    .as_str()
                    .unwrap()
                    .contains("unknown task id `nope`"),
                "{list}"
            );
            assert!(
                errors[0]["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("evolving.json")
            );
            break;
        }
        assert!(Instant::now() < deadline, "invalid edit was not reported");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/evolving/runs"),
            Some(json!({})),
        )
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(run["version"], after["version"]);
    // A deleted file removes its workflow for new runs.
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http()
            .send("GET", &daemon.url("/api/v1/workflows/evolving"), None)
            .unwrap();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "deleted workflow still served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/evolving/runs"),
            Some(json!({})),
        )
        .unwrap();
    assert_eq!(status, 404);
    let (code, output) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(output.contains("rejected"), "{output}");
}

#[test]
fn graceful_shutdown_lets_tasks_finish_or_records_them_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    write_workflow(
        &flows,
        "second",
        &json!({"name": "second", "tasks": [
            {"id": "work", "shell": {"command": ["sleep", "1"]}},
        ]}),
    );
    write_workflow(
        &flows,
        "long",
        &json!({"name": "long", "tasks": [
            {"id": "work", "shell": {"command": ["sleep", "30"]}},
        ]}),
    );
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (_, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/second/runs"),
            Some(json!({})),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let log = Log::open(&data).unwrap();
    let id = uuid::Uuid::parse_str(run["id"].as_str().unwrap()).unwrap();
    let history = log.run_history(id).unwrap();
    assert!(
        matches!(history.last().unwrap().body, RecordBody::RunEnded { .. }),
        "the task was given its grace period: {history:?}"
    );
    drop(log);

    let daemon = Daemon::spawn(dir.path(), &data, &["--grace", "300ms"]);
    let (_, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/long/runs"),
            Some(json!({})),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(15));
    let log = Log::open(&data).unwrap();
    let id = uuid::Uuid::parse_str(run["id"].as_str().unwrap()).unwrap();
    let history = log.run_history(id).unwrap();
    assert!(
        history
            .iter()
            .any(|r| matches!(&r.body, RecordBody::AttemptLost { shutdown: true, .. })),
        "{history:?}"
    );
    drop(log);
    // On the next start the interrupted task runs again.
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, record) = http()
            .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
            .unwrap();
        if record["tasks"]["work"]["attempts"] == json!(2)
            && record["tasks"]["work"]["status"] == "running"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "interrupted task did not resume: {record}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill();
}

/// A small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_no_success() {
    let cycles: usize = std::env::var("SWITCHYARD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}, {cycles} cycles");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    write_workflow(
        &flows,
        "work",
        &json!({"name": "work", "tasks": [
            {"id": "a", "retry": {"max_attempts": 5, "delay": "100ms"}, "shell": {"script": "sleep 0.$(( $$ % 4 ))", "cwd": "."}},
            {"id": "b", "after": "a", "retry": {"max_attempts": 5}, "shell": {"command": ["sleep", "0.2"]}},
            {"id": "nap", "after": "a", "sleep": {"duration": "300ms"}},
            {"id": "c", "after": ["b", "nap"], "noop": {}},
        ]}),
    );
    let data = dir.path().join("data");
    let mut accepted: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        // Some cycles die during start-up and replay, before serving.
        if rng.next(5) == 0 {
            let mut child = Command::new(bin())
                .current_dir(dir.path())
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    data.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.next(60)));
            let _ = child.kill();
            let _ = child.wait();
        }
        let daemon = match Daemon::try_spawn(dir.path(), &data, &[]) {
            Ok(d) => d,
            Err(output) => panic!("cycle {cycle}: daemon did not start: {output}"),
        };
        // Some cycles die right after start-up.
        if rng.next(4) == 0 {
            daemon.kill();
            continue;
        }
        let posts = 3 + rng.next(6);
        for _ in 0..posts {
            if let Ok((201, run)) = http().send(
                "POST",
                &daemon.url("/api/v1/workflows/work/runs"),
                Some(json!({})),
            ) {
                accepted.push(run["id"].as_str().unwrap().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(rng.next(700)));
        daemon.kill();
    }
    // Final start: everything accepted must finish.
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let mut outcomes = std::collections::HashMap::new();
    for id in &accepted {
        let run = wait_terminal(&daemon, id);
        // A run may only fail by running out of attempts to crashes (SPEC §8:
        // a lost attempt counts); nothing else in this workflow can fail.
        if run["status"] != "succeeded" {
            let error = run["error"].as_str().unwrap_or("");
            assert!(
                error.contains("lost: switchyard stopped while it ran"),
                "seed {seed}: {run}"
            );
        }
        outcomes.insert(id.clone(), run["status"] == "succeeded");
    }
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));

    let log = Log::open(&data).unwrap();
    assert!(log.unfinished_runs().unwrap().is_empty(), "seed {seed}");
    assert!(!accepted.is_empty());
    for id in &accepted {
        let run_id = uuid::Uuid::parse_str(id).unwrap();
        let history = log.run_history(run_id).unwrap();
        assert!(
            matches!(history[0].body, RecordBody::RunCreated { .. }),
            "seed {seed}: run {id} lost its start"
        );
        assert_eq!(
            history
                .iter()
                .filter(|r| matches!(r.body, RecordBody::RunCreated { .. }))
                .count(),
            1,
            "seed {seed}: run {id} created twice"
        );
        let ends: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.body, RecordBody::RunEnded { .. }))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            ends,
            [history.len() - 1],
            "seed {seed}: run {id} must end once, last"
        );
        assert!(
            history.windows(2).all(|w| w[0].seq < w[1].seq),
            "seed {seed}: seqs not increasing"
        );
        let mut succeeded = std::collections::HashSet::new();
        let mut started: std::collections::HashMap<String, u32> = Default::default();
        for record in &history {
            match &record.body {
                RecordBody::AttemptStarted { task, attempt } => {
                    assert!(
                        !succeeded.contains(task),
                        "seed {seed}: run {id} ran {task} again after it succeeded"
                    );
                    let previous = started.insert(task.clone(), *attempt).unwrap_or(0);
                    assert_eq!(
                        *attempt,
                        previous + 1,
                        "seed {seed}: run {id} {task} attempt numbers skip"
                    );
                }
                RecordBody::AttemptFinished {
                    task,
                    attempt,
                    succeeded: ok,
                    ..
                } => {
                    assert_eq!(
                        started.get(task),
                        Some(attempt),
                        "seed {seed}: finish without start"
                    );
                    if *ok {
                        succeeded.insert(task.clone());
                    }
                }
                RecordBody::AttemptLost { task, attempt, .. } => {
                    assert_eq!(
                        started.get(task),
                        Some(attempt),
                        "seed {seed}: lost without start"
                    );
                }
                _ => {}
            }
        }
        if outcomes[id] {
            for task in ["a", "b", "nap", "c"] {
                assert!(
                    succeeded.contains(task),
                    "seed {seed}: run {id}: {task} never succeeded"
                );
            }
        }
    }
}

#[test]
fn offline_cancel_and_rerun_work_on_a_stopped_daemons_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    write_workflow(
        &flows,
        "long",
        &json!({"name": "long", "tasks": [
            {"id": "work", "shell": {"command": ["sleep", "30"]}},
        ]}),
    );
    write_workflow(
        &flows,
        "fails",
        &json!({"name": "fails", "tasks": [
            {"id": "ok", "shell": {"command": ["true"]}},
            {"id": "bad", "after": "ok", "shell": {"command": ["test", "-e", "${params.file}"]}},
        ]}),
    );
    // A cancelled `long` chains into `quick`, even when cancelled offline.
    std::fs::create_dir_all(dir.path().join("bindings")).unwrap();
    std::fs::write(
        dir.path().join("bindings/chain.json"),
        json!({"name": "after-cancel", "on": {"run": {"workflow": "long", "status": ["cancelled"]}},
               "workflow": "quick"})
        .to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let marker = dir.path().join("marker");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (_, long) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/long/runs"),
            Some(json!({})),
        )
        .unwrap();
    let (_, fails) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/fails/runs"),
            Some(json!({"params": {"file": marker.to_str().unwrap()}})),
        )
        .unwrap();
    let fails_id = fails["id"].as_str().unwrap().to_string();
    assert_eq!(wait_terminal(&daemon, &fails_id)["status"], "failed");
    std::thread::sleep(Duration::from_millis(200));
    daemon.kill();
    let data_arg = data.to_str().unwrap();
    let long_id = long["id"].as_str().unwrap().to_string();
    // The unfinished run is listed offline, with its folded status.
    let out = switchyard(
        dir.path(),
        &[
            "runs",
            "list",
            "--data-dir",
            data_arg,
            "--status",
            "running",
            "--json",
        ],
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["runs"][0]["id"], json!(long_id), "{list}");
    let out = switchyard(
        dir.path(),
        &["runs", "cancel", &long_id, "--data-dir", data_arg],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = switchyard(
        dir.path(),
        &["runs", "show", &long_id, "--data-dir", data_arg, "--json"],
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "cancelled");
    let out = switchyard(
        dir.path(),
        &["runs", "cancel", &long_id, "--data-dir", data_arg],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already ended"));
    // Rerun offline: runs in-process to its end, reusing `ok`.
    std::fs::write(&marker, "").unwrap();
    let out = switchyard(
        dir.path(),
        &["runs", "rerun", &fails_id, "--data-dir", data_arg, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rerun: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    assert_eq!(rerun["tasks"]["ok"]["reused_from"], json!(fails_id));
    // And the daemon, started again, sees all of it.
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (_, record) = http()
        .send("GET", &daemon.url(&format!("/api/v1/runs/{long_id}")), None)
        .unwrap();
    assert_eq!(record["status"], "cancelled");
    // The offline cancel went through the commit path: the `on.run` binding
    // saw it, and the chained run (created offline) is resumed and runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    let chained = loop {
        let (_, runs) = http()
            .send("GET", &daemon.url("/api/v1/runs?workflow=quick"), None)
            .unwrap();
        let runs = runs["runs"].as_array().cloned().unwrap_or_default();
        if let Some(run) = runs.first()
            && run["status"] == "succeeded"
        {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "no chained run: {runs:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(chained["event"]["data"]["id"], json!(long_id), "{chained}");
    daemon.kill();
}

/// A project with a webhook and a file binding on a two-noop workflow.
fn trigger_project(dir: &Path) {
    let flows = dir.join("workflows");
    let bindings = dir.join("bindings");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::create_dir_all(&bindings).unwrap();
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    write_workflow(
        &flows,
        "ingest",
        &json!({"name": "ingest", "tasks": [{"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}]}),
    );
    std::fs::write(
        bindings.join("hook.json"),
        json!({"name": "hook", "on": {"webhook": {"path": "/in"}}, "workflow": "ingest",
               "params": {"n": "${event.data.n}"}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        bindings.join("files.json"),
        json!({"name": "files", "on": {"file": {"path": "inbox", "settle": "100ms"}}, "workflow": "ingest",
               "params": {"n": "${event.data.name}"}})
        .to_string(),
    )
    .unwrap();
}

fn all_runs(daemon: &Daemon) -> Vec<Value> {
    let (status, page) = http()
        .send(
            "GET",
            &daemon.url("/api/v1/runs?workflow=ingest&limit=1000"),
            None,
        )
        .unwrap();
    assert_eq!(status, 200, "{page}");
    page["runs"].as_array().unwrap().clone()
}

#[test]
fn an_accepted_webhook_survives_sigkill_right_after_its_202() {
    let dir = tempfile::tempdir().unwrap();
    trigger_project(dir.path());
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let mut accepted = Vec::new();
    for n in 0..20 {
        let (status, reply) = http()
            .send("POST", &daemon.url("/hooks/in"), Some(json!({"n": n})))
            .unwrap();
        assert_eq!(status, 202, "{reply}");
        accepted.push(reply["runs"][0].as_str().unwrap().to_string());
    }
    daemon.kill(); // SIGKILL at once after the last 202
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    for id in &accepted {
        let run = wait_terminal(&daemon, id);
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(all_runs(&daemon).len(), 20);
    daemon.kill();
}

#[test]
fn files_fire_exactly_once_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    trigger_project(dir.path());
    let data = dir.path().join("data");
    let inbox = dir.path().join("inbox");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    for i in 0..150 {
        std::fs::write(inbox.join(format!("f{i:03}.csv")), "x\n").unwrap();
    }
    // Kill while the burst is being recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while all_runs(&daemon).len() < 20 {
        assert!(Instant::now() < deadline, "no runs");
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.kill();
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = all_runs(&daemon);
        if runs.len() >= 150 {
            break;
        }
        // Intermittent under the full suite (not reproduced alone or under
        // CPU load): show the restarted daemon's log when it happens.
        assert!(
            Instant::now() < deadline,
            "{} runs; daemon log:\n{}",
            runs.len(),
            daemon.output.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let runs = all_runs(&daemon);
    let names: std::collections::BTreeSet<String> = runs
        .iter()
        .map(|r| r["params"]["n"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        (runs.len(), names.len()),
        (150, 150),
        "each file exactly once"
    );
    daemon.kill();
}

/// How many `ingest` runs a daemon has.
fn run_count(daemon: &Daemon) -> usize {
    all_runs(daemon).len()
}

#[test]
fn amqp_messages_flowing_through_a_sigkill_each_start_exactly_one_run() {
    use crate::util::broker;
    let _shared = broker::LOCK.blocking_read();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if !rt.block_on(broker::available(
        "amqp_messages_flowing_through_a_sigkill_each_start_exactly_one_run",
    )) {
        return;
    }
    const COUNT: usize = 600;
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    let bindings = dir.path().join("bindings");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::create_dir_all(&bindings).unwrap();
    write_workflow(
        &flows,
        "ingest",
        &json!({"name": "ingest", "tasks": [{"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}}]}),
    );
    std::fs::write(
        bindings.join("orders.json"),
        json!({"name": "orders", "on": {"amqp": {"exchange": exchange, "queue": queue, "prefetch": 50}},
               "workflow": "ingest", "params": {"n": "${event.data.n}"}})
        .to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = http().send("GET", &daemon.url("/metrics"), None).unwrap();
        if text
            .as_str()
            .is_some_and(|t| t.contains("switchyard_amqp_consumers 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the consumer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Publish steadily in the background; SIGKILL once a third has runs.
    let publisher = {
        let exchange = exchange.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut publisher = broker::ResilientPublisher::new();
                for n in 0..COUNT {
                    let body = json!({"n": n}).to_string();
                    publisher
                        .publish(&exchange, "orders.new", &format!("m-{n}"), body.as_bytes())
                        .await;
                    if n % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_count(&daemon) < COUNT / 3 {
        assert!(Instant::now() < deadline, "runs did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.kill();
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    publisher.join().unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let runs = loop {
        let runs = all_runs(&daemon);
        let done = runs.iter().filter(|r| r["status"] == "succeeded").count();
        if runs.len() >= COUNT && done == runs.len() {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs, {done} succeeded, expected {COUNT}",
            runs.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut seen = std::collections::BTreeMap::new();
    for run in &runs {
        *seen
            .entry(run["params"]["n"].as_u64().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(runs.len(), COUNT, "one run per message");
    assert_eq!(seen.len(), COUNT, "every message has a run");
    assert!(seen.values().all(|c| *c == 1));
    daemon.kill();
    rt.block_on(broker::delete_queues(&[&queue]));
}

/// Pids of live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] is the state, fields[2] the process group.
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    members
}

fn wait_group_gone(pgid: i32, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let members = group_members(pgid);
        if members.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes {members:?} of group {pgid} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_sigkilled_daemon_takes_its_attempts_processes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    let effects = dir.path().join("effects");
    // The attempt records its group, then does its side effect after a
    // while, from a child (`sleep`) that the kernel's parent-death signal
    // does not reach on its own.
    write_workflow(
        &flows,
        "slow",
        &json!({"name": "slow", "tasks": [{
            "id": "a",
            "retry": {"max_attempts": 3, "delay": "100ms"},
            "shell": {
                "script": "echo $$ >> \"$EFFECTS.pgids\"; sleep 3; echo \"x $SWITCHYARD_ATTEMPT\" >> \"$EFFECTS\"",
                "env": {"EFFECTS": effects.to_str().unwrap()}
            }
        }]}),
    );
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (status, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/slow/runs"),
            Some(json!({})),
        )
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    let pgids = effects.with_extension("pgids");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pgids.exists() {
        assert!(Instant::now() < deadline, "the attempt did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let first: i32 = std::fs::read_to_string(&pgids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(group_members(first).len() >= 2, "sh and its sleep run");
    daemon.kill();
    // The kernel kills the attempt's shell with the daemon: its side effect
    // never happens.
    let deadline = Instant::now() + Duration::from_secs(1);
    while group_members(first).contains(&first) {
        assert!(
            Instant::now() < deadline,
            "the attempt's shell outlived the daemon by a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The restarted daemon ends the rest of the group before it retries.
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    wait_group_gone(first, Duration::from_secs(1), "after restart");
    let run = wait_terminal(&daemon, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"]["a"]["attempts"], 2, "{run}");
    // Let the lost attempt's `sleep 3` have ended had it survived.
    std::thread::sleep(Duration::from_millis(3500));
    let written = std::fs::read_to_string(&effects).unwrap();
    assert_eq!(
        written, "x 2\n",
        "one side effect, from the attempt that finished"
    );
    daemon.terminate();
}

#[test]
fn serving_off_loopback_without_a_token_is_refused_with_both_ways_out() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let data = dir.path().join("data");
    let serve = |extra: &[&str], token: Option<&str>| {
        let mut command = Command::new(bin());
        command
            .current_dir(dir.path())
            .args([
                "serve",
                "--listen",
                "0.0.0.0:0",
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args(extra)
            .env_remove("SWITCHYARD_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("SWITCHYARD_TOKEN", token);
        }
        command.spawn().unwrap()
    };
    let refused = serve(&[], None).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("0.0.0.0")
            && text.contains("api.token")
            && text.contains("SWITCHYARD_TOKEN")
            && text.contains("--allow-unauthenticated"),
        "{text}"
    );
    // Either way out starts it.
    for (extra, token) in [
        (&["--allow-unauthenticated"][..], None),
        (&[][..], Some("t0ken-for-test")),
    ] {
        let mut child = serve(extra, token);
        let stderr = child.stderr.take().unwrap();
        let line = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on") || l.contains("error"))
            .unwrap_or_default();
        assert!(line.contains("listening on"), "{extra:?} {token:?}: {line}");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_sigkilled_daemon_mid_child_resumes_both_runs_with_one_child() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    let marks = dir.path().join("marks");
    write_workflow(
        &flows,
        "child",
        &json!({"name": "child", "tasks": [
            {"id": "nap", "sleep": {"duration": "2s"}},
            {"id": "mark", "after": "nap",
             "shell": {"script": "echo \"$SWITCHYARD_RUN_ID\" >> \"$MARKS\"; echo '{\"done\": true}' > \"$SWITCHYARD_OUTPUT\"",
                       "env": {"MARKS": marks.to_str().unwrap()}},
             "export": {"done": "${output.done}"}},
        ]}),
    );
    write_workflow(
        &flows,
        "parent",
        &json!({"name": "parent", "tasks": [
            {"id": "call", "workflow": {"name": "child"}, "export": {"child_done": "${output.vars.done}"}},
        ]}),
    );
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (status, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/parent/runs"),
            Some(json!({"params": {}})),
        )
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let parent_id = run["id"].as_str().unwrap().to_string();
    // Kill once the child is sleeping.
    let deadline = Instant::now() + Duration::from_secs(20);
    let child_id = loop {
        let (_, run) = http()
            .send(
                "GET",
                &daemon.url(&format!("/api/v1/runs/{parent_id}")),
                None,
            )
            .unwrap();
        if let Some(child) = run["tasks"]["call"]["child_run_id"].as_str() {
            let (status, child_run) = http()
                .send("GET", &daemon.url(&format!("/api/v1/runs/{child}")), None)
                .unwrap();
            if status == 200 && child_run["tasks"]["nap"]["status"] == "running" {
                break child.to_string();
            }
        }
        assert!(Instant::now() < deadline, "the child did not start: {run}");
        std::thread::sleep(Duration::from_millis(20));
    };
    daemon.kill();

    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let parent = wait_terminal(&daemon, &parent_id);
    assert_eq!(parent["status"], "succeeded", "{parent}");
    assert_eq!(parent["vars"]["child_done"], true);
    assert_eq!(parent["tasks"]["call"]["attempts"], 1, "{parent}");
    assert_eq!(
        parent["tasks"]["call"]["output"]["run_id"],
        child_id.as_str()
    );
    let child = wait_terminal(&daemon, &child_id);
    assert_eq!(child["status"], "succeeded", "{child}");
    assert_eq!(child["parent"]["run_id"], parent_id.as_str());
    // One child run, which did its work once.
    let (_, runs) = http()
        .send("GET", &daemon.url("/api/v1/runs?workflow=child"), None)
        .unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(std::fs::read_to_string(&marks).unwrap().trim(), child_id);
    daemon.kill();
}

#[test]
fn logs_carry_no_colour_codes_when_not_at_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &[]);
    let (_, output) = daemon.terminate();
    assert!(output.contains("listening"), "{output}");
    assert!(
        !output.contains('\u{1b}'),
        "ANSI escapes in piped logs: {output:?}"
    );
}

#[test]
fn trigger_wait_follows_the_run_and_exits_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    write_workflow(
        &flows,
        "broken",
        &json!({"name": "broken", "tasks": [{"id": "x", "shell": {"command": ["false"]}}]}),
    );
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &[]);
    let out = switchyard(
        dir.path(),
        &["trigger", "quick", "--wait", "--server", &daemon.addr],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("of quick succeeded"), "{text}");
    assert!(stderr(&out).contains("a succeeded"), "{}", stderr(&out));
    let out = switchyard(
        dir.path(),
        &["trigger", "broken", "--follow", "--server", &daemon.addr],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("x failed"), "{}", stderr(&out));
    daemon.kill();
}

#[test]
fn runs_logs_follow_shows_a_tasks_output_live_across_retries_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    std::fs::write(dir.path().join("tok.txt"), "hunter2-follow-secret\n").unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"secrets": {"tok": {"file": "tok.txt"}}}).to_string(),
    )
    .unwrap();
    // Attempt 1 prints a line, sleeps, prints another and fails; attempt 2
    // succeeds at once.
    write_workflow(
        &flows,
        "talky",
        &json!({"name": "talky", "tasks": [{"id": "talk",
            "retry": {"max_attempts": 2, "delay": "100ms"},
            "shell": {
                "script": "echo \"first token=$TOK\"; if [ \"$SWITCHYARD_ATTEMPT\" = 1 ]; then sleep 4; echo second; echo boom >&2; exit 3; fi; echo second",
                "env": {"TOK": "${secrets.tok}"}}}]}),
    );
    write_workflow(
        &flows,
        "broken",
        &json!({"name": "broken", "tasks": [{"id": "x",
            "shell": {"script": "echo out; echo bad >&2; exit 1"}}]}),
    );
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &[]);
    let (status, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/talky/runs"),
            Some(json!({})),
        )
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run["id"].as_str().unwrap().to_string();

    let mut follower = Command::new(bin())
        .current_dir(dir.path())
        .args([
            "runs",
            "logs",
            &id,
            "talk",
            "--follow",
            "--server",
            &daemon.addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, "first token=[redacted]");
    // Seen while the first attempt still sleeps.
    let (_, live) = http()
        .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
        .unwrap();
    assert_eq!(live["tasks"]["talk"]["status"], "running", "{live}");
    assert_eq!(live["tasks"]["talk"]["attempts"], 1, "{live}");
    assert!(follower.try_wait().unwrap().is_none());
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        rest.push(line);
    }
    let code = follower.wait().unwrap().code();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        rest,
        ["second", "first token=[redacted]", "second"],
        "{err}"
    );
    assert!(err.contains("boom\n[switchyard] attempt 2\n"), "{err}");
    assert!(
        err.contains("task talk succeeded after 2 attempt(s)"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");

    // A task that already ended: its stored logs, then its outcome.
    let (_, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/broken/runs"),
            Some(json!({})),
        )
        .unwrap();
    let broken = run["id"].as_str().unwrap().to_string();
    wait_terminal(&daemon, &broken);
    let follow = |id: &str, task: &str| {
        switchyard(
            dir.path(),
            &["runs", "logs", id, task, "-f", "--server", &daemon.addr],
        )
    };
    let out = follow(&broken, "x");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(stderr(&out).contains("bad\n"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("task x failed after 1 attempt(s): exit status 1: bad"),
        "{}",
        stderr(&out)
    );

    // Unknown runs and tasks are a clear error, not an endless wait.
    let out = follow(&broken, "nope");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("404 Not Found: run"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("has no task `nope`"),
        "{}",
        stderr(&out)
    );
    let out = follow(&uuid::Uuid::now_v7().to_string(), "x");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = switchyard(
        dir.path(),
        &[
            "runs",
            "logs",
            &broken,
            "x",
            "--follow",
            "--data-dir",
            "data",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("drop --data-dir"), "{}", stderr(&out));
    daemon.kill();
}

#[test]
fn an_open_follow_stream_does_not_hold_up_the_daemons_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let flows = project(dir.path());
    write_workflow(
        &flows,
        "long",
        &json!({"name": "long", "tasks": [{"id": "nap",
            "shell": {"script": "echo napping; sleep 120"}}]}),
    );
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &["--grace", "300ms"]);
    let (_, run) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/workflows/long/runs"),
            Some(json!({})),
        )
        .unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let mut follower = Command::new(bin())
        .current_dir(dir.path())
        .args([
            "runs",
            "logs",
            &id,
            "nap",
            "--follow",
            "--server",
            &daemon.addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follower.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "napping\n");
    let asked = Instant::now();
    let (code, output) = daemon.terminate();
    assert_eq!(code, Some(0), "{output}");
    // Well before the task would have ended.
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "{:?}",
        asked.elapsed()
    );
    let status = follower.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the server is shutting down before task `nap` ended"),
        "{err}"
    );
}

#[test]
fn generate_token_makes_one_token_keeps_it_private_and_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path());
    let data = dir.path().join("data");
    let list = |addr: &str, token: Option<&str>| {
        let mut command = Command::new(bin());
        command
            .current_dir(dir.path())
            .args(["runs", "list", "--server", addr])
            .env_remove("SWITCHYARD_TOKEN");
        if let Some(token) = token {
            command.env("SWITCHYARD_TOKEN", token);
        }
        command.output().unwrap()
    };
    let daemon = Daemon::spawn(dir.path(), &data, &["--generate-token"]);
    let file = data.join("api-token");
    let token = std::fs::read_to_string(&file).unwrap();
    assert_eq!(token.len(), 64, "{token}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, output) = {
        let refused = list(&daemon.addr, None);
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        assert!(stderr(&refused).contains("token"), "{}", stderr(&refused));
        let allowed = list(&daemon.addr, Some(&token));
        assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
        daemon.terminate()
    };
    assert!(!output.contains(&token), "the token was logged");
    // The next start uses the same token.
    let daemon = Daemon::spawn(dir.path(), &data, &["--generate-token"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
    let allowed = list(&daemon.addr, Some(&token));
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    daemon.kill();
}

/// What the live schedule `*/10 1-3 * * *` in Europe/Berlin fires between
/// two UTC instants, worked out from the time zone rules alone: a local time
/// that does not exist (the spring gap) fires at the first instant after
/// the gap, one that happens twice fires once, the first time.
fn berlin_early_hours(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> std::collections::BTreeSet<String> {
    use chrono::{LocalResult, TimeZone};
    let berlin = chrono_tz::Europe::Berlin;
    let mut out = std::collections::BTreeSet::new();
    let mut day = from.with_timezone(&berlin).date_naive() - chrono::Duration::days(1);
    while day <= to.with_timezone(&berlin).date_naive() {
        for hour in 1..=3 {
            for minute in (0..60).step_by(10) {
                let wall = day.and_hms_opt(hour, minute, 0).unwrap();
                let instant = match berlin.from_local_datetime(&wall) {
                    LocalResult::Single(t) => t,
                    LocalResult::Ambiguous(first, _) => first,
                    // In the gap: the first instant after it (03:00 local).
                    LocalResult::None => berlin
                        .from_local_datetime(&day.and_hms_opt(hour + 1, 0, 0).unwrap())
                        .earliest()
                        .unwrap(),
                };
                let instant = instant.with_timezone(&chrono::Utc);
                if instant >= from && instant <= to {
                    out.insert(instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                }
            }
        }
        day += chrono::Duration::days(1);
    }
    out
}

/// Every run of `workflow`, following the list cursor.
fn every_run(daemon: &Daemon, workflow: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = http()
            .send(
                "GET",
                &daemon.url(&format!(
                    "/api/v1/runs?workflow={workflow}&limit=1000{before}"
                )),
                None,
            )
            .unwrap();
        assert_eq!(status, 200, "{page}");
        out.extend(page["runs"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return out,
        }
    }
}

/// POSTs a backfill and waits for the answer (long: it records every instant).
fn post_backfill(url: String, body: Value) -> Result<(u16, Value), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        switchyard::tls::install_provider();
        let response = ::reqwest::Client::new()
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.map_err(|e| e.to_string())?))
    })
}

#[test]
fn a_backfill_across_dst_cut_by_sigkill_and_asked_again_runs_each_instant_once() {
    let dir = tempfile::tempdir().unwrap();
    trigger_project(dir.path());
    std::fs::write(
        dir.path().join("bindings/early.json"),
        json!({"name": "early", "on": {"cron": {"schedule": "*/10 1-3 * * *", "timezone": "Europe/Berlin", "catch_up": "none"}},
               "workflow": "ingest", "params": {"n": "${event.data.scheduled_time}"}})
        .to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    // March and April 2026: the spring change on March 29 (02:00 → 03:00).
    let range = json!({"from": "2026-03-01T00:00:00Z", "to": "2026-04-30T23:59:59Z"});
    let from = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let to = chrono::DateTime::parse_from_rfc3339("2026-04-30T23:59:59Z")
        .unwrap()
        .to_utc();
    let expected = berlin_early_hours(from, to);
    // The model itself: 18 instants a local day over 61 days, less the six
    // of the missing 02:xx hour (its times all fire once, at 03:00 CEST,
    // which is a slot of its own), plus the six of May 1 01:xx CEST, which
    // is still April 30 in UTC.
    assert_eq!(expected.len(), 61 * 18 - 6 + 6);
    let night: Vec<&str> = expected
        .range("2026-03-29T00:00".to_string().."2026-03-29T03:00".to_string())
        .map(|t| &t[11..16])
        .collect();
    assert_eq!(
        night,
        [
            "00:00", "00:10", "00:20", "00:30", "00:40", "00:50", "01:00", "01:10", "01:20",
            "01:30", "01:40", "01:50"
        ]
    );

    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (status, dry) = http()
        .send(
            "POST",
            &daemon.url("/api/v1/bindings/early/backfill"),
            Some(json!({"from": range["from"], "to": range["to"], "dry_run": true})),
        )
        .unwrap();
    assert_eq!(status, 200, "{dry}");
    let listed: std::collections::BTreeSet<String> = dry["instants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, expected,
        "the dry run lists what the zone rules say"
    );

    // The backfill, cut by SIGKILL once some of its runs are in.
    let url = daemon.url("/api/v1/bindings/early/backfill");
    let body = range.clone();
    let first = std::thread::spawn(move || post_backfill(url, body));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = all_runs(&daemon).len();
        if n >= 50 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} backfilled runs");
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.kill();
    let cut = first.join().unwrap();
    assert!(
        cut.is_err(),
        "the backfill finished before the kill: {cut:?}"
    );

    // Asked again after the restart: what ran is a duplicate, the rest runs.
    let daemon = Daemon::spawn(dir.path(), &data, &[]);
    let (status, again) =
        post_backfill(daemon.url("/api/v1/bindings/early/backfill"), range).unwrap();
    assert_eq!(status, 202, "{again}");
    let started = again["started"].as_u64().unwrap();
    let duplicates = again["duplicates"].as_u64().unwrap();
    assert_eq!(
        started + duplicates,
        expected.len() as u64,
        "{}",
        again["backfill"]["id"]
    );
    assert!(duplicates >= 50, "{duplicates} duplicates");

    let deadline = Instant::now() + Duration::from_secs(180);
    let runs = loop {
        let runs = every_run(&daemon, "ingest");
        let done = runs.iter().filter(|r| r["status"] == "succeeded").count();
        if runs.len() >= expected.len() && done == runs.len() {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} runs done",
            runs.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let times: Vec<String> = runs
        .iter()
        .map(|r| r["logical_time"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<String> = times.iter().cloned().collect();
    assert_eq!(times.len(), unique.len(), "an instant ran twice");
    assert_eq!(unique, expected, "exactly the instants the schedule fires");
    // `runs list` shows each run's logical time beside its id.
    let out = switchyard(dir.path(), &["runs", "list", "--server", &daemon.addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap().contains("LOGICAL TIME"),
        "{text}"
    );
    let newest = &runs[0];
    let line = text
        .lines()
        .find(|l| l.starts_with(newest["id"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(newest["logical_time"].as_str().unwrap()),
        "{line}"
    );
    daemon.kill();
}
