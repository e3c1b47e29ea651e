//! Remote workers benchmark (SPEC §13's remote row), against the real
//! RabbitMQ, an in-process daemon and `switchyard worker` processes:
//!
//! 1. Throughput: 2,000 runs of one remote `shell` task (`true`) queued,
//!    then 1, 2 and 4 worker processes started, each running one attempt at
//!    a time (`--concurrency 1`, like a prefork child) and then four; tasks
//!    finished per second from the first attempt's start to the last end.
//! 2. Latency: 300 runs one after another of the same task remote (one
//!    worker) and local (in the daemon); p50 and p99 of start-to-end as the
//!    caller sees it, and the p50 a remote task adds.
//! 3. Side by side: Celery prefork with 1, 2 and 4 processes running the
//!    same `true` subprocess on the same broker (`benches/celery_workers.py`),
//!    when a python with celery is found (`CELERY_PYTHON`, else `python3`).
//!
//! `cargo bench --bench workers` (needs RabbitMQ at `AMQP_URL` or the default);
//! `SY_WORKERS_BENCH=latency` runs only the latency phase,
//! `SY_WORKERS_BENCH=throughput` only the first.

#![allow(clippy::unwrap_used)]

mod common;
use common::percentile;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, json};
use switchyard::daemon::{ServeOptions, start};
use switchyard::spec::Workflow;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BACKLOG: usize = 2000;
const SEQUENTIAL: usize = 300;

fn workflow(root: &Path, name: &str) -> Arc<Workflow> {
    let path = root.join(format!("workflows/{name}.json"));
    let text = std::fs::read(&path).unwrap();
    Arc::new(Workflow::parse(&path, &text).unwrap())
}

fn worker(root: &Path, queue: &str, concurrency: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(root)
        .args([
            "worker",
            "--queue",
            queue,
            "--concurrency",
            &concurrency.to_string(),
        ])
        .args(["--data-dir", root.join("workers").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut children: Vec<Child>) {
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn millis(text: &serde_json::Value) -> f64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
}

fn main() {
    let rt = common::tokio();
    rt.block_on(async {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| switchyard::amqp::DEFAULT_URL.to_string());
        if !switchyard::amqp::reachable(&url).await {
            eprintln!("SKIPPED workers bench: no broker at {url}");
            return;
        }
        let dir = common::data_dir("workers");
        let root = dir.path();
        let queue = format!("bench.{}", uuid::Uuid::now_v7().simple());
        std::fs::create_dir_all(root.join("workflows")).unwrap();
        std::fs::write(
            root.join("switchyard.json"),
            json!({"workflows": ["workflows"], "max_parallel_tasks": 64,
                   "workers": {"results_queue": format!("{queue}.results")}})
            .to_string(),
        )
        .unwrap();
        let task = |remote: bool| {
            let mut task = json!({"id": "t", "shell": {"command": ["true"]}});
            if remote {
                task["queue"] = json!(queue);
            }
            task
        };
        for (name, remote) in [("remote1", true), ("local1", false)] {
            std::fs::write(
                root.join(format!("workflows/{name}.json")),
                json!({"name": name, "tasks": [task(remote)]}).to_string(),
            )
            .unwrap();
        }
        let running = start(ServeOptions {
            data_dir: Some(root.join("data")),
            listen: Some("127.0.0.1:0".into()),
            ..ServeOptions::local(root.join("switchyard.json"))
        })
        .await
        .unwrap();
        let handle = running.runtime.clone();
        let remote1 = workflow(root, "remote1");
        let local1 = workflow(root, "local1");

        let only = std::env::var("SY_WORKERS_BENCH").unwrap_or_default();
        let phases: &[(usize, usize)] = if only == "latency" {
            &[]
        } else {
            &[(1, 1), (2, 1), (4, 1), (1, 4), (2, 4)]
        };
        if !phases.is_empty() {
            println!("remote shell tasks (`true`), {BACKLOG} queued, then N worker processes:");
        }
        let mut rates = Vec::new();
        for &(processes, concurrency) in phases {
            let mut ends = Vec::new();
            for _ in 0..BACKLOG {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let handle = handle.clone();
                let wf = Arc::clone(&remote1);
                tokio::spawn(async move {
                    let record = handle.run_to_end(wf, Map::new(), None, |_| {}).await;
                    let _ = tx.send(record);
                });
                ends.push(rx);
            }
            // Let every job reach the queue before the workers start.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let workers: Vec<Child> = (0..processes)
                .map(|_| worker(root, &queue, concurrency))
                .collect();
            let mut first = f64::MAX;
            let mut last = 0f64;
            for end in ends {
                let record = end.await.unwrap().unwrap();
                assert_eq!(record.status.as_str(), "succeeded");
                let task = &record.tasks["t"];
                let value = serde_json::to_value(task).unwrap();
                first = first.min(millis(&value["started_at"]));
                last = last.max(millis(&value["ended_at"]));
            }
            stop(workers);
            let rate = BACKLOG as f64 / ((last - first) / 1000.0);
            println!(
                "  {processes} worker(s) × concurrency {concurrency}: {rate:>7.0} tasks/s ({:.0} per process)",
                rate / processes as f64
            );
            rates.push((processes, concurrency, rate));
        }

        // The same backlog run by the daemon itself: what spawning the
        // process costs on this machine, with no broker in the way.
        if only != "latency" {
            local_throughput(&handle, &local1).await;
        }

        if only != "throughput" {
            latency(&handle, root, &queue, &remote1, &local1).await;
        }

        match common::celery("celery_workers.py").await {
            _ if only == "latency" => {}
            Some(celery) => {
                println!("Celery prefork, the same `true` subprocess, {} queued:", celery["backlog"]);
                for processes in [1, 2, 4] {
                    let rate = celery[format!("tasks_per_s_{processes}")].as_f64().unwrap();
                    let ours = rates
                        .iter()
                        .find(|(p, c, _)| *p == processes && *c == 1)
                        .map(|(_, _, r)| *r)
                        .unwrap_or(f64::NAN);
                    println!(
                        "  {processes} process(es): {rate:>7.0} tasks/s — switchyard {ours:.0} ({:.2}×)",
                        ours / rate
                    );
                }
            }
            None => println!(
                "  SKIPPED Celery side by side: no python with celery (set CELERY_PYTHON, see benches/celery_workers.py)"
            ),
        }
        running.stop.cancel();
        let _ = running.done.await;
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for name in [format!("switchyard.tasks.{queue}"), format!("{queue}.results")] {
            let _ = channel
                .queue_delete(name.as_str().into(), Default::default())
                .await;
        }
    });
}

/// Sequential runs, remote (one worker) and local: what a remote task adds.
async fn latency(
    handle: &switchyard::runtime::RuntimeHandle,
    root: &Path,
    queue: &str,
    remote1: &Arc<Workflow>,
    local1: &Arc<Workflow>,
) {
    println!("latency, {SEQUENTIAL} runs one after another (start to end, as the caller sees it):");
    let workers = vec![worker(root, queue, 1)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut p50s = Vec::new();
    for (name, wf) in [("remote", remote1), ("local", local1)] {
        let mut samples = Vec::new();
        for i in 0..SEQUENTIAL + 20 {
            let started = Instant::now();
            let record = handle
                .run_to_end(Arc::clone(wf), Map::new(), None, |_| {})
                .await
                .unwrap();
            assert_eq!(record.status.as_str(), "succeeded");
            if i >= 20 {
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        samples.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
        println!("  {name:<6} p50 {p50:.2} ms  p99 {p99:.2} ms");
        p50s.push(p50);
    }
    stop(workers);
    println!(
        "  added by running it remotely: p50 {:+.2} ms (target ≤ 2 ms)",
        p50s[0] - p50s[1]
    );
}

/// The same backlog run by the daemon itself: what spawning the process
/// costs on this machine, with no broker in the way.
async fn local_throughput(handle: &switchyard::runtime::RuntimeHandle, local1: &Arc<Workflow>) {
    let started = Instant::now();
    let mut ends = Vec::new();
    for _ in 0..BACKLOG {
        let handle = handle.clone();
        let wf = Arc::clone(local1);
        ends.push(tokio::spawn(async move {
            handle.run_to_end(wf, Map::new(), None, |_| {}).await
        }));
    }
    for end in ends {
        assert_eq!(end.await.unwrap().unwrap().status.as_str(), "succeeded");
    }
    println!(
        "  local (in the daemon, max_parallel_tasks 64): {:>7.0} tasks/s",
        BACKLOG as f64 / started.elapsed().as_secs_f64()
    );
}
