//! Remote tasks on `switchyard worker` processes, against the real broker:
//! spread over workers with each result recorded once, a worker SIGKILLed
//! mid-task (lost after the heartbeat window, retried elsewhere), remote
//! timeout and cancel killing the attempt's process group on the worker.
//!
//! Every test needs the broker: without one they print SKIPPED, unless
//! `SWITCHYARD_REQUIRE_BROKER=1` (CI), where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::triggers::{Daemon, Project};
use crate::util::{bin, broker, write_workflow};

/// A `switchyard worker` child process; killed when dropped.
pub(crate) struct Worker {
    child: Child,
}

impl Worker {
    pub(crate) fn spawn(project: &Path, queue: &str, concurrency: usize) -> Self {
        Self::spawn_with_env(project, queue, concurrency, &[])
    }

    pub(crate) fn spawn_with_env(
        project: &Path,
        queue: &str,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(bin())
            .envs(env.iter().copied())
            .current_dir(project)
            .args([
                "worker",
                "--queue",
                queue,
                "--concurrency",
                &concurrency.to_string(),
                "--data-dir",
                project.join("workers").to_str().unwrap(),
                "--grace",
                "2s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// SIGTERM, then waits (up to 20 s) for the worker to exit.
    pub(crate) async fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        let sent = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(20),
                "worker did not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes a test's task queue and result queue.
async fn delete_queues(queue: &str) {
    broker::delete_queues(&[
        &format!("switchyard.tasks.{queue}"),
        &format!("switchyard.tasks.{queue}.waits"),
        &format!("{queue}.results"),
    ])
    .await;
}

fn remote_project(queue: &str, heartbeat: &str) -> Project {
    let project = Project::with_config(
        &[],
        &[],
        json!({"workers": {"heartbeat": heartbeat, "results_queue": format!("{queue}.results")}}),
    );
    let flows = project.root().join("workflows");
    // Each task says which worker process ran it (its parent).
    let task = |id: &str, after: Option<&str>| {
        let mut task = json!({"id": id, "queue": queue,
            "shell": {"script": "echo \"{\\\"pid\\\": $PPID}\" > \"$SWITCHYARD_OUTPUT\""},
            "export": {id: "${output.pid}"}});
        if let Some(after) = after {
            task["after"] = json!(after);
        }
        task
    };
    write_workflow(
        &flows,
        "remote3",
        &json!({"name": "remote3", "tasks": [task("a", None), task("b", Some("a")), task("c", Some("b"))]}),
    );
    write_workflow(
        &flows,
        "slow",
        &json!({"name": "slow", "tasks": [{"id": "wait", "queue": queue,
            "retry": {"max_attempts": 3, "delay": "100ms"},
            "shell": {"script": "echo $$ > \"$MARK\"; sleep \"$SECS\"; echo done", "env": {"MARK": "${params.mark}", "SECS": "${params.secs}"}}}]}),
    );
    write_workflow(
        &flows,
        "limited",
        &json!({"name": "limited", "tasks": [{"id": "wait", "queue": queue, "timeout": "1s",
            "shell": {"script": "echo $$ > \"$MARK\"; sleep 30", "env": {"MARK": "${params.mark}"}}}]}),
    );
    project
}

async fn start_run(daemon: &Daemon, workflow: &str, params: Value) -> String {
    let body = json!({"params": params}).to_string();
    let (status, run) = daemon
        .post(
            &format!("/api/v1/workflows/{workflow}/runs"),
            body.as_bytes(),
            &[("content-type", "application/json".into())],
        )
        .await;
    assert_eq!(status, 201, "{run}");
    run["id"].as_str().unwrap().to_string()
}

async fn wait_run(daemon: &Daemon, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
        if matches!(
            run["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return run;
        }
        assert!(Instant::now() < deadline, "run did not end: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a run's record until `done` holds (60 s at most).
async fn wait_run_until(
    daemon: &Daemon,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
        if done(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "{what}: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A remote check's workflow `gate`, with `tasks` beside its check `wait`
/// for the file this returns.
fn check_workflow(project: &Project, queue: &str, tasks: Vec<Value>) -> std::path::PathBuf {
    let arrival = project.root().join("arrival.txt");
    let mut tasks = tasks;
    tasks.push(json!({"id": "wait", "queue": queue, "timeout": "120s",
        "check": {"file": {"path": arrival.to_str().unwrap()}, "interval": "100ms"}}));
    write_workflow(
        &project.root().join("workflows"),
        "gate",
        &json!({"name": "gate", "tasks": tasks}),
    );
    arrival
}

/// Writes the file a remote check waits for; the run succeeds with the
/// check's one attempt; returns the run's record kinds.
async fn arrive(daemon: &Daemon, id: &str, arrival: &Path) -> Vec<String> {
    std::fs::write(arrival, "here").unwrap();
    let run = wait_run(daemon, id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"]["wait"]["output"]["count"], 1, "{run}");
    assert_eq!(run["tasks"]["wait"]["attempts"], 1, "{run}");
    history_kinds(&daemon.get(&format!("/api/v1/runs/{id}/history")).await)
}

fn history_kinds(history: &Value) -> Vec<String> {
    history["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn process_alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

async fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived its attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_runs_of_three_remote_tasks_spread_over_three_workers_each_result_once() {
    let Some(_shared) = broker::shared("workers_spread").await else {
        return;
    };
    let queue = broker::unique("spread");
    let project = remote_project(&queue, "1s");
    let daemon = project.start(None).await;
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(project.root(), &queue, 4))
        .collect();
    let pids: BTreeSet<u32> = workers.iter().map(Worker::pid).collect();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(start_run(&daemon, "remote3", json!({})).await);
    }
    let mut ran_on: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &ids {
        let run = wait_run(&daemon, id, Duration::from_secs(120)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        for task in ["a", "b", "c"] {
            let pid = run["vars"][task]
                .as_u64()
                .unwrap_or_else(|| panic!("{run}"));
            *ran_on.entry(pid).or_default() += 1;
            assert_eq!(run["tasks"][task]["attempts"], 1, "{run}");
        }
    }
    let used: BTreeSet<u32> = ran_on.keys().map(|p| *p as u32).collect();
    assert_eq!(
        used, pids,
        "every task on one of the workers, and each worker used: {ran_on:?}"
    );
    // Each attempt's end recorded once.
    for id in ids.iter().take(20) {
        let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
        let finished = history_kinds(&history)
            .iter()
            .filter(|k| *k == "attempt_finished")
            .count();
        assert_eq!(finished, 3, "{history}");
    }
    // The workers are visible.
    let seen = daemon.get("/api/v1/workers").await;
    let listed: BTreeSet<u64> = seen["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        listed,
        pids.iter()
            .map(|p| u64::from(*p))
            .collect::<BTreeSet<u64>>(),
        "{seen}"
    );
    daemon.stop().await;
    drop(workers);
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_loses_the_attempt_which_succeeds_on_another() {
    let Some(_shared) = broker::shared("workers_killed").await else {
        return;
    };
    let queue = broker::unique("killed");
    let project = remote_project(&queue, "300ms");
    let daemon = project.start(None).await;
    let mut first = Worker::spawn(project.root(), &queue, 1);
    let mark = project.root().join("first.pid");
    let id = start_run(
        &daemon,
        "slow",
        json!({"secs": 3, "mark": mark.to_str().unwrap()}),
    )
    .await;
    let pid = wait_file(&mark).await;
    let second = Worker::spawn(project.root(), &queue, 1);
    first.kill(); // SIGKILL, mid-task
    // The attempt's process died with its worker.
    wait_gone(&pid).await;
    let run = wait_run(&daemon, &id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"]["wait"]["attempts"], 2, "{run}");
    let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
    let kinds = history_kinds(&history);
    let lost: Vec<&Value> = history["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "attempt_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{history}");
    assert!(
        lost[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no heartbeat from worker"),
        "{history}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "attempt_finished").count(),
        1,
        "{history}"
    );
    daemon.stop().await;
    drop(second);
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_timeout_and_cancel_kill_the_attempts_processes_on_the_worker() {
    let Some(_shared) = broker::shared("workers_stop").await else {
        return;
    };
    let queue = broker::unique("stop");
    let project = remote_project(&queue, "500ms");
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 2);

    // Timeout: the daemon's deadline, the worker kills the group.
    let mark = project.root().join("timeout.pid");
    let id = start_run(&daemon, "limited", json!({"mark": mark.to_str().unwrap()})).await;
    let pid = wait_file(&mark).await;
    let run = wait_run(&daemon, &id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["tasks"]["wait"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out after 1s"), "{run}");
    wait_gone(&pid).await;

    // Cancel.
    let mark = project.root().join("cancel.pid");
    let id = start_run(
        &daemon,
        "slow",
        json!({"secs": 30, "mark": mark.to_str().unwrap()}),
    )
    .await;
    let pid = wait_file(&mark).await;
    let (status, answer) = daemon
        .post(&format!("/api/v1/runs/{id}/cancel"), b"", &[])
        .await;
    assert_eq!(status, 202, "{answer}");
    let run = wait_run(&daemon, &id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    wait_gone(&pid).await;
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[test]
fn a_daemon_sigkilled_while_workers_are_busy_applies_every_result_once_after_restart() {
    use crate::daemon::{Daemon as Child, http};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(_shared) = rt.block_on(broker::shared("workers_daemon_killed")) else {
        return;
    };
    let queue = rt.block_on(async { broker::unique("dkill") });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("workflows")).unwrap();
    std::fs::write(
        root.join("switchyard.json"),
        json!({"workflows": ["workflows"],
               "workers": {"heartbeat": "1s", "results_queue": format!("{queue}.results")}})
        .to_string(),
    )
    .unwrap();
    // No retries: a lost or doubled attempt shows.
    let executions = root.join("executions.log");
    let step = |id: &str, after: Option<&str>| {
        let mut task = json!({"id": id, "queue": queue,
            "shell": {"script": "echo \"$SWITCHYARD_RUN_ID $SWITCHYARD_TASK $SWITCHYARD_ATTEMPT\" >> \"$EXECUTIONS\"; sleep \"$SECS\"",
                      // The first task still runs when the daemon is back.
                      "env": {"EXECUTIONS": executions.to_str().unwrap(),
                              "SECS": if after.is_none() { "3" } else { "0.4" }}}});
        if let Some(after) = after {
            task["after"] = json!(after);
        }
        task
    };
    write_workflow(
        &root.join("workflows"),
        "busy",
        &json!({"name": "busy", "tasks": [step("a", None), step("b", Some("a"))]}),
    );
    let data = root.join("data");
    let daemon = Child::spawn(root, &data, &[]);
    let _workers: Vec<Worker> = (0..2).map(|_| Worker::spawn(root, &queue, 4)).collect();
    let mut ids = Vec::new();
    for _ in 0..16 {
        let (status, run) = http()
            .send(
                "POST",
                &daemon.url("/api/v1/workflows/busy/runs"),
                Some(json!({})),
            )
            .unwrap();
        assert_eq!(status, 201, "{run}");
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    std::thread::sleep(Duration::from_millis(700));
    daemon.kill(); // SIGKILL while attempts run and results are in flight
    std::thread::sleep(Duration::from_millis(1200));
    let daemon = Child::spawn(root, &data, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &ids {
        let run = loop {
            let (_, run) = http()
                .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
                .unwrap();
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break run;
            }
            assert!(Instant::now() < deadline, "run did not end: {run}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(run["status"], "succeeded", "{run}");
        let (_, history) = http()
            .send(
                "GET",
                &daemon.url(&format!("/api/v1/runs/{id}/history")),
                None,
            )
            .unwrap();
        let kinds = history_kinds(&history);
        assert_eq!(
            kinds.iter().filter(|k| *k == "attempt_finished").count(),
            2,
            "{history}"
        );
        assert!(!kinds.iter().any(|k| k == "attempt_lost"), "{history}");
    }
    // Republished jobs (after the restart) had time to be claimed: every
    // attempt's script still ran exactly once.
    std::thread::sleep(Duration::from_secs(4));
    let log = std::fs::read_to_string(&executions).unwrap();
    let mut seen = BTreeMap::new();
    for line in log.lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), ids.len() * 2, "{log}");
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        twice.is_empty(),
        "attempts ran twice: {twice:?}; daemon log:\n{}",
        daemon.output.lock().unwrap()
    );
    daemon.kill();
    rt.block_on(delete_queues(&queue));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_jobs_and_results_in_flight_finishes_every_run_once() {
    let Some(_exclusive) = broker::exclusive("workers_broker_restart").await else {
        return;
    };
    let queue = broker::unique("brestart");
    let project = remote_project(&queue, "500ms");
    // No retries: a lost or doubled attempt shows.
    write_workflow(
        &project.root().join("workflows"),
        "busy",
        &json!({"name": "busy", "tasks": [
            {"id": "a", "queue": queue, "shell": {"script": "sleep 0.3"}},
            {"id": "b", "after": "a", "queue": queue, "shell": {"script": "sleep 0.3"}}]}),
    );
    let daemon = project.start(None).await;
    let _workers: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn(project.root(), &queue, 3))
        .collect();
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(start_run(&daemon, "busy", json!({})).await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stopped = tokio::task::spawn_blocking(broker::StoppedBroker::stop)
        .await
        .unwrap();
    // More runs while the broker is away: their jobs wait to be published.
    for _ in 0..5 {
        ids.push(start_run(&daemon, "busy", json!({})).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();
    for id in &ids {
        let run = wait_run(&daemon, id, Duration::from_secs(120)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
        let kinds = history_kinds(&history);
        assert_eq!(
            kinds.iter().filter(|k| *k == "attempt_finished").count(),
            2,
            "{history}"
        );
        assert!(!kinds.iter().any(|k| k == "attempt_lost"), "{history}");
    }
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_unfinished_attempts_back_and_they_finish_elsewhere() {
    let Some(_shared) = broker::shared("workers_sigterm").await else {
        return;
    };
    let queue = broker::unique("term");
    let project = remote_project(&queue, "500ms");
    // The first attempt would take a minute; the next is quick.
    write_workflow(
        &project.root().join("workflows"),
        "handback",
        &json!({"name": "handback", "tasks": [{"id": "t", "queue": queue,
            "retry": {"max_attempts": 2, "delay": "100ms"},
            "shell": {"script": "echo $$ > \"$MARK\"; if [ \"$SWITCHYARD_ATTEMPT\" = 1 ]; then sleep 60; fi",
                      "env": {"MARK": "${params.mark}"}}}]}),
    );
    let daemon = project.start(None).await;
    let mut first = Worker::spawn(project.root(), &queue, 1);
    let mark = project.root().join("first.pid");
    let id = start_run(&daemon, "handback", json!({"mark": mark.to_str().unwrap()})).await;
    let pid = wait_file(&mark).await;
    let _second = Worker::spawn(project.root(), &queue, 1);
    let stopped_at = Instant::now();
    // The worker exits after its 2 s grace, having stopped the attempt.
    let status = first.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        !process_alive(&pid),
        "the attempt's process outlived its worker"
    );
    let run = wait_run(&daemon, &id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
    let lost: Vec<&Value> = history["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "attempt_lost")
        .collect();
    assert_eq!(lost.len(), 1, "{history}");
    assert!(
        lost[0]["reason"].as_str().unwrap().contains("handed back"),
        "{history}"
    );
    // Handed back at once, not after the heartbeat window.
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outlasting_many_heartbeat_windows_completes_once() {
    let Some(_shared) = broker::shared("workers_long").await else {
        return;
    };
    let queue = broker::unique("long");
    let project = remote_project(&queue, "200ms");
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 1);
    let mark = project.root().join("long.pid");
    // 4 s: twenty heartbeat intervals, nearly seven lost windows. The job
    // was acked at its grant, so no broker ack timeout applies either.
    let id = start_run(
        &daemon,
        "slow",
        json!({"secs": 4, "mark": mark.to_str().unwrap()}),
    )
    .await;
    wait_file(&mark).await;
    // While it runs, the broker holds no unacked job for it.
    let queues = tokio::task::spawn_blocking(|| {
        broker::ctl(&["list_queues", "name", "messages_unacknowledged"])
    })
    .await
    .unwrap();
    let line = queues
        .lines()
        .find(|l| l.starts_with(&format!("switchyard.tasks.{queue}")))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.split_whitespace().nth(1) == Some("0"),
        "a job held unacked: {line}"
    );
    let run = wait_run(&daemon, &id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"]["wait"]["attempts"], 1, "{run}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

async fn metric(daemon: &Daemon, line_start: &str) -> f64 {
    let response = daemon
        .client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_another_protocol_version_are_refused_on_both_sides() {
    let Some(_shared) = broker::shared("workers_protocol").await else {
        return;
    };
    let queue = broker::unique("proto");
    let project = remote_project(&queue, "500ms");
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 1);
    // A first run declares the queues and shows the worker works.
    let id = start_run(&daemon, "remote3", json!({})).await;
    assert_eq!(
        wait_run(&daemon, &id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    let future = |kind: &str| {
        json!({"protocol": 2, "type": kind, "worker": "from-the-future", "job_id": "j",
               "run_id": "01890000-0000-7000-8000-000000000000", "task": "a", "attempt": 1,
               "workflow": "remote3", "kind": "shell", "config": {}, "started_at": 0,
               "heartbeat_ms": 1000, "reply_to": format!("{queue}.results")})
        .to_string()
    };
    for (routing_key, body) in [
        (format!("{queue}.results"), future("claim")),
        (format!("{queue}.results"), "not json".to_string()),
        (format!("switchyard.tasks.{queue}"), future("job")),
    ] {
        channel
            .basic_publish(
                "".into(),
                routing_key.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                body.as_bytes(),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&daemon, "switchyard_remote_refused_total").await < 2.0 {
        assert!(Instant::now() < deadline, "the daemon did not refuse them");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker refused the future job (not requeued) and goes on.
    let id = start_run(&daemon, "remote3", json!({})).await;
    assert_eq!(
        wait_run(&daemon, &id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    assert_eq!(
        queue_depth(&format!("switchyard.tasks.{queue}")).await,
        Some(0)
    );
    assert_eq!(metric(&daemon, "switchyard_workers ").await, 1.0);
    // Six tasks taken: claimed through the task queue, or sent straight.
    let claimed = metric(
        &daemon,
        "switchyard_remote_claims_total{answer=\"granted\"}",
    )
    .await;
    let direct = metric(&daemon, "switchyard_remote_direct_total").await;
    assert!(claimed + direct >= 6.0, "{claimed} + {direct}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_read_on_the_worker_never_reaches_the_daemon() {
    let Some(_shared) = broker::shared("workers_secret").await else {
        return;
    };
    let queue = broker::unique("secret");
    let project = Project::with_config(
        &[],
        &[],
        json!({"workers": {"heartbeat": "500ms", "results_queue": format!("{queue}.results")},
               "secrets": {"token": {"worker": "SY_WORKER_TOKEN"}}}),
    );
    let flows = project.root().join("workflows");
    let out = project.root().join("seen.txt");
    write_workflow(
        &flows,
        "uses_token",
        &json!({"name": "uses_token", "tasks": [
            {"id": "remote", "queue": queue,
             "shell": {"script": "printf '%s' \"$TOKEN\" > \"$OUT\"; echo \"token=$TOKEN\"",
                       "env": {"TOKEN": "${secrets.token}", "OUT": out.to_str().unwrap()}}},
            {"id": "local", "after": "remote",
             "shell": {"command": ["echo", "${secrets.token}"]}}]}),
    );
    let value = "worker-only-4f9c2b7e1d";
    let daemon = project.start(None).await;
    let _worker = Worker::spawn_with_env(project.root(), &queue, 1, &[("SY_WORKER_TOKEN", value)]);
    let id = start_run(&daemon, "uses_token", json!({})).await;
    let run = wait_run(&daemon, &id, Duration::from_secs(30)).await;
    // The worker used the real value...
    assert_eq!(std::fs::read_to_string(&out).unwrap(), value);
    assert_eq!(run["tasks"]["remote"]["status"], "succeeded", "{run}");
    // ...and it is in nothing the daemon recorded.
    let logs = daemon
        .get(&format!("/api/v1/runs/{id}/tasks/remote/logs"))
        .await;
    let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
    for text in [logs.to_string(), history.to_string(), run.to_string()] {
        assert!(!text.contains(value), "{text}");
    }
    assert!(logs.to_string().contains("token="), "{logs}");
    // A task on the daemon cannot use it, and says why.
    assert_eq!(run["tasks"]["local"]["status"], "failed", "{run}");
    let error = run["tasks"]["local"]["error"].as_str().unwrap();
    assert!(
        error.contains("secret `token` is read by remote workers only"),
        "{error}"
    );
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_at_most_its_concurrency_at_once() {
    let Some(_shared) = broker::shared("workers_concurrency").await else {
        return;
    };
    let queue = broker::unique("conc");
    let project = remote_project(&queue, "200ms");
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 2);
    let marks = project.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let mark = marks.join(format!("{i}.pid"));
        ids.push(
            start_run(
                &daemon,
                "slow",
                json!({"secs": 1, "mark": mark.to_str().unwrap()}),
            )
            .await,
        );
    }
    let started = Instant::now();
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let workers = daemon.get("/api/v1/workers").await;
        if let Some(worker) = workers["workers"].as_array().unwrap().first() {
            most = most.max(worker["running"].as_array().unwrap().len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        assert_eq!(
            wait_run(&daemon, id, Duration::from_secs(60)).await["status"],
            "succeeded"
        );
    }
    assert_eq!(
        most, 2,
        "at most --concurrency attempts at once, and that many"
    );
    // Six one-second tasks two at a time: three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(2800),
        "{:?}",
        started.elapsed()
    );
    daemon.stop().await;
    delete_queues(&queue).await;
}

/// Runs `remote3` and checks it succeeded on `worker` with each task's
/// attempt started and finished once, nothing lost.
async fn run_remote3_once_on(daemon: &Daemon, worker: &Worker) {
    let id = start_run(daemon, "remote3", json!({})).await;
    let run = wait_run(daemon, &id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    for task in ["a", "b", "c"] {
        assert_eq!(run["vars"][task], u64::from(worker.pid()), "{run}");
        assert_eq!(run["tasks"][task]["attempts"], 1, "{run}");
    }
    let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
    let kinds = history_kinds(&history);
    let count = |kind: &str| kinds.iter().filter(|k| *k == kind).count();
    assert_eq!(count("attempt_started"), 3, "{history}");
    assert_eq!(count("attempt_finished"), 3, "{history}");
    assert_eq!(count("attempt_lost"), 0, "{history}");
}

/// Messages waiting in a queue, by `rabbitmqctl`.
async fn queue_depth(name: &str) -> Option<u64> {
    let queues = tokio::task::spawn_blocking(|| broker::ctl(&["list_queues", "name", "messages"]))
        .await
        .unwrap();
    queues
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_straight_to_an_idle_worker_without_a_claim_each_run_once() {
    let Some(_shared) = broker::shared("workers_direct").await else {
        return;
    };
    let queue = broker::unique("direct");
    let project = remote_project(&queue, "500ms");
    let daemon = project.start(None).await;
    let worker = Worker::spawn(project.root(), &queue, 1);
    // The first job goes through the task queue (the daemon has not heard
    // of the worker yet); the worker heartbeats the daemon as it takes it.
    run_remote3_once_on(&daemon, &worker).await;
    let claims = "switchyard_remote_claims_total{answer=\"granted\"}";
    let claimed = metric(&daemon, claims).await;
    for _ in 0..10 {
        run_remote3_once_on(&daemon, &worker).await;
    }
    let direct = metric(&daemon, "switchyard_remote_direct_total").await;
    assert!(direct >= 27.0, "{direct} of 30 tasks sent straight");
    assert!(metric(&daemon, claims).await - claimed <= 3.0);
    assert_eq!(
        metric(&daemon, "switchyard_remote_redirected_total").await,
        0.0
    );
    assert_eq!(
        queue_depth(&format!("switchyard.tasks.{queue}")).await,
        Some(0)
    );
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_a_worker_gone_since_its_last_heartbeat_goes_through_the_task_queue() {
    let Some(_shared) = broker::shared("workers_direct_gone").await else {
        return;
    };
    let queue = broker::unique("dgone");
    // Heard from within two intervals, a worker may be sent jobs: 10 s.
    let project = remote_project(&queue, "5s");
    let daemon = project.start(None).await;
    let mut gone = Worker::spawn(project.root(), &queue, 1);
    run_remote3_once_on(&daemon, &gone).await;
    // Killed, it has no control queue any more (its connection closed),
    // though the daemon heard from it a moment ago.
    gone.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = Worker::spawn(project.root(), &queue, 1);
    // The broker returns the job sent to the gone worker: it goes through
    // the task queue, to the new worker, and runs once.
    run_remote3_once_on(&daemon, &worker).await;
    assert!(metric(&daemon, "switchyard_remote_redirected_total").await >= 1.0);
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_tasks_output_can_be_followed_while_it_runs() {
    let Some(_shared) = broker::shared("workers_follow").await else {
        return;
    };
    let queue = broker::unique("follow");
    let project = remote_project(&queue, "500ms");
    write_workflow(
        &project.root().join("workflows"),
        "talks",
        &json!({"name": "talks", "tasks": [{"id": "t", "queue": queue,
            "shell": {"script": "echo first; echo oops >&2; sleep 2; echo second"}}]}),
    );
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 1);
    let id = start_run(&daemon, "talks", json!({})).await;
    let mut response = daemon
        .client
        .get(daemon.url(&format!("/api/v1/runs/{id}/tasks/t/logs?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("first") {
        assert!(Instant::now() < deadline, "{seen}");
        match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended early: {other:?}; {seen}"),
        }
    }
    // Seen while the task still runs on the worker.
    let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(run["tasks"]["t"]["status"], "running", "{run}\n{seen}");
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_secs(30), response.chunk()).await
    {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("second"), "{seen}");
    assert!(
        seen.contains("event: stderr") && seen.contains("oops"),
        "{seen}"
    );
    assert!(seen.contains("event: end"), "{seen}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

/// A job delivered to a worker that is SIGKILLed while the job waits for
/// its slot (unclaimed, unacked) comes back from the broker and runs once
/// on another worker, as the same attempt; the running one is lost and
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_a_slot_on_a_killed_worker_runs_once_elsewhere() {
    let Some(_shared) = broker::shared("workers_prefetched").await else {
        return;
    };
    let queue = broker::unique("prefetched");
    let project = remote_project(&queue, "500ms");
    let daemon = project.start(None).await;
    let mut first = Worker::spawn(project.root(), &queue, 1);
    let long_mark = project.root().join("long.pid");
    let long = start_run(
        &daemon,
        "slow",
        json!({"mark": long_mark.to_str().unwrap(), "secs": "4"}),
    )
    .await;
    let pid = wait_file(&long_mark).await;
    // A second job: delivered to the busy worker, where it waits for the slot.
    let short_mark = project.root().join("short.pid");
    let short = start_run(
        &daemon,
        "slow",
        json!({"mark": short_mark.to_str().unwrap(), "secs": "0"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill();
    wait_gone(&pid).await;
    let _second = Worker::spawn(project.root(), &queue, 1);
    for id in [&long, &short] {
        let run = wait_run(&daemon, id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let history = daemon.get(&format!("/api/v1/runs/{id}/history")).await;
        let kinds = history_kinds(&history);
        let finished = kinds.iter().filter(|k| *k == "attempt_finished").count();
        assert_eq!(finished, 1, "{kinds:?}");
    }
    let run = daemon.get(&format!("/api/v1/runs/{long}")).await;
    assert_eq!(
        run["tasks"]["wait"]["attempts"], 2,
        "lost, then retried: {run}"
    );
    let run = daemon.get(&format!("/api/v1/runs/{short}")).await;
    assert_eq!(run["tasks"]["wait"]["attempts"], 1, "{run}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

/// A check with a `queue` polls on the worker, holding none of its
/// `--concurrency` slots (a shell task on the same queue runs while it
/// waits), is not held back by jobs waiting for a slot (its job comes
/// through the queue's waits), and what it observes reaches the run
/// record on the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_check_polls_on_the_worker_without_holding_its_slot() {
    let Some(_shared) = broker::shared("workers_check").await else {
        return;
    };
    let queue = broker::unique("check");
    let project = remote_project(&queue, "500ms");
    let arrival = check_workflow(
        &project,
        &queue,
        vec![
            json!({"id": "busy", "queue": queue, "shell": {"command": ["sleep", "4"]}}),
            json!({"id": "queued", "queue": queue, "shell": {"command": ["echo", "ran"]}}),
            json!({"id": "work", "queue": queue, "after": ["busy", "queued"], "shell": {"command": ["echo", "ran"]}}),
        ],
    );
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 1);
    let id = start_run(&daemon, "gate", json!({})).await;
    // While one shell task takes the worker's only slot and another waits
    // for it, the check polls.
    let run = wait_run_until(&daemon, &id, "the check never polled", |run| {
        run["tasks"]["wait"]["observation"]["summary"] == "no file matches"
    })
    .await;
    assert_eq!(
        run["tasks"]["busy"]["status"], "running",
        "the check waited for the slot: {run}"
    );
    // The shell tasks run one at a time beside it.
    let run = wait_run_until(&daemon, &id, "the shell tasks did not run", |run| {
        run["tasks"]["work"]["status"] == "succeeded"
    })
    .await;
    assert_eq!(run["tasks"]["wait"]["status"], "running", "{run}");
    let kinds = arrive(&daemon, &id, &arrival).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "check_observed").count(),
        1,
        "{kinds:?}"
    );
    daemon.stop().await;
    delete_queues(&queue).await;
}

/// A remote check's `sql` may name a connection from switchyard.json: the
/// daemon sends its URL in the job (workers have no `connections`), and
/// the query runs on the worker against PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_sql_check_reaches_its_named_connection() {
    let Some(_shared) = broker::shared("workers_check_sql").await else {
        return;
    };
    let Some(url) =
        crate::util::db::available("workers_check_sql", crate::util::db::POSTGRES).await
    else {
        return;
    };
    let queue = broker::unique("check_sql");
    let project = Project::with_config(
        &[],
        &[],
        json!({"workers": {"heartbeat": "500ms", "results_queue": format!("{queue}.results")},
               "connections": {"warehouse": {"url": url}}}),
    );
    write_workflow(
        &project.root().join("workflows"),
        "ready",
        &json!({"name": "ready", "tasks": [{"id": "wait", "queue": queue, "timeout": "60s",
            "check": {"sql": {"connection": "warehouse", "query": "select 1 as ready"}, "interval": "100ms"}}]}),
    );
    let daemon = project.start(None).await;
    let _worker = Worker::spawn(project.root(), &queue, 1);
    let id = start_run(&daemon, "ready", json!({})).await;
    let run = wait_run(&daemon, &id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"]["wait"]["output"]["scalar"], 1, "{run}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

/// A remote check whose worker gets SIGTERM is handed back at once (no
/// grace spent waiting for a wait to end) and goes on on another worker
/// as the same attempt: nothing lost, no retry used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_check_moves_to_another_worker_when_its_worker_stops() {
    let Some(_shared) = broker::shared("workers_check_moves").await else {
        return;
    };
    let queue = broker::unique("check_moves");
    let project = remote_project(&queue, "500ms");
    let arrival = check_workflow(&project, &queue, Vec::new());
    let daemon = project.start(None).await;
    let mut first = Worker::spawn(project.root(), &queue, 1);
    let id = start_run(&daemon, "gate", json!({})).await;
    wait_run_until(&daemon, &id, "the check never polled", |run| {
        run["tasks"]["wait"]["observation"]["summary"] == "no file matches"
    })
    .await;
    let _second = Worker::spawn(project.root(), &queue, 1);
    let stopped_at = Instant::now();
    let status = first.terminate().await;
    assert!(status.success(), "{status}");
    // Its 2 s grace was not spent waiting for the check.
    assert!(
        stopped_at.elapsed() < Duration::from_millis(1900),
        "{:?}",
        stopped_at.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kinds = arrive(&daemon, &id, &arrival).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "attempt_started").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k == "attempt_lost"), "{kinds:?}");
    daemon.stop().await;
    delete_queues(&queue).await;
}

#[test]
fn a_one_off_run_says_remote_tasks_need_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "remote_only",
        &json!({"name": "remote_only", "tasks": [{"id": "t", "queue": "etl", "shell": {"command": ["true"]}}]}),
    );
    let data = dir.path().join("data");
    let out = crate::util::switchyard(
        dir.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", crate::util::stderr(&out));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = record["tasks"]["t"]["error"].as_str().unwrap();
    assert!(
        error.contains("runs on queue `etl`") && error.contains("use `serve`"),
        "{error}"
    );
}
