//! Restart and memory benchmark (issue: the daemon). `cargo bench --bench restart`.
//!
//! Builds a data dir holding ~1 M log records: 110,000 finished runs of a
//! 3-task chain (9 records each) and 10,000 unfinished runs (each in a
//! one-hour `sleep`). Then, with the release binary:
//! 1. restart: `switchyard serve` from spawn until `/healthz` answers, which
//!    it does only after every unfinished run is folded and resumed;
//! 2. resident memory of that daemon once idle;
//! 3. the same two for a data dir with only the 100,000 finished runs.
//!
//! `BENCH_QUICK=1` divides the sizes by 10.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::spec::Workflow;

mod common;
use common::data_dir;

fn workflow(definition: Value) -> std::sync::Arc<Workflow> {
    let text = serde_json::to_vec(&definition).expect("json");
    std::sync::Arc::new(Workflow::parse(Path::new("bench.json"), &text).expect("valid"))
}

async fn fill(dir: &Path, finished: usize, unfinished: usize) -> usize {
    let runtime = Runtime::start(RuntimeConfig {
        recover: false,
        ..RuntimeConfig::new(dir)
    })
    .expect("runtime");
    let handle = runtime.handle();
    let chain = workflow(json!({"name": "chain", "tasks": [
        {"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}}
    ]}));
    let nap =
        workflow(json!({"name": "nap", "tasks": [{"id": "wait", "sleep": {"duration": "1h"}}]}));
    let mut batch = Vec::new();
    for i in 0..finished {
        let handle = handle.clone();
        let chain = chain.clone();
        batch.push(tokio::spawn(async move {
            handle.run_to_end(chain, Map::new(), None, |_| {}).await
        }));
        if batch.len() == 5_000 || i + 1 == finished {
            for run in batch.drain(..) {
                run.await.expect("join").expect("run");
            }
        }
    }
    for _ in 0..unfinished {
        handle
            .start_run(nap.clone(), Map::new(), None)
            .await
            .expect("start");
    }
    // Let every sleep attempt be recorded as started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    runtime.shutdown().await;
    finished * 9 + unfinished * 3
}

fn healthz(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the release daemon on `dir`; returns (spawn → healthy, idle RSS in MiB).
fn restart(dir: &Path) -> (Duration, f64) {
    let project = tempfile::tempdir().expect("project");
    std::fs::create_dir(project.path().join("workflows")).expect("workflows dir");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(project.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ])
        .env("SWITCHYARD_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("switchyard listening on http://") {
                    break addr.to_string();
                }
            }
            _ => panic!("daemon exited before listening"),
        }
    };
    while !healthz(&addr) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(child.id()) as f64 / 1024.0;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (took, rss)
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let (finished, unfinished) = if quick {
        (11_000, 1_000)
    } else {
        (110_000, 10_000)
    };
    let tokio = common::tokio();

    let full = data_dir("restart-full");
    let started = Instant::now();
    let records = tokio.block_on(fill(full.path(), finished, unfinished));
    println!(
        "data dir: {finished} finished runs + {unfinished} unfinished runs, ~{records} records (filled in {:.1} s, {:.0} MiB on disk)",
        started.elapsed().as_secs_f64(),
        dir_size(full.path()) as f64 / (1024.0 * 1024.0)
    );
    let (took, rss) = restart(full.path());
    println!(
        "restart with {unfinished} unfinished runs: healthy after {:>7.3} s  (target ≤ 1 s)",
        took.as_secs_f64()
    );
    println!("  resident memory once idle, {unfinished} runs in flight: {rss:>6.1} MiB");
    let (took, rss) = restart(full.path());
    println!(
        "second restart (same runs, still sleeping): {:>7.3} s, {rss:.1} MiB",
        took.as_secs_f64()
    );

    let finished_only = data_dir("restart-finished");
    tokio.block_on(fill(finished_only.path(), finished, 0));
    let (took, rss) = restart(finished_only.path());
    println!(
        "idle daemon with {finished} finished runs stored: {rss:>6.1} MiB resident  (target ≤ 64 MiB); healthy after {:.3} s",
        took.as_secs_f64()
    );
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
