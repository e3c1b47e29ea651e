//! Read benchmark (README "Performance"): `GET /runs?workflow=W&limit=50` with 1 M
//! ended runs stored. `cargo bench --bench reads`.
//!
//! Fills a data dir with 1,000,000 run records (100 workflows, 10% failed,
//! plus 100 runs of a rare workflow among the oldest), then measures, over
//! 1,000 queries each:
//! 1. the run index in-process (`Log::ended_runs_where`), by workflow, by
//!    workflow and status, with a cursor;
//! 2. the same through the daemon's HTTP API (`GET /api/v1/runs`), end to end;
//! 3. side by side: what the previous build did for a filter — scan the
//!    stored runs newest first, decoding each — for the rare workflow.
//!
//! `BENCH_QUICK=1` stores 100,000 runs.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::log::{Commit, Log, RunStatus};

mod common;
use common::{data_dir, percentile};

/// A run record as the engine stores it (3 tasks, params, vars).
fn summary(id: uuid::Uuid, workflow: &str, status: RunStatus) -> Vec<u8> {
    let task = json!({"status": "succeeded", "attempts": 1, "output": {"rows": 12},
        "started_at": "2026-11-30T10:00:00.000Z", "ended_at": "2026-11-30T10:00:00.002Z"});
    serde_json::to_vec(&json!({
        "id": id, "workflow": workflow, "version": "0123456789abcdef", "status": status,
        "params": {"file": "/data/inbox/orders-2026-11-30.csv"}, "vars": {"region": "eu", "rows": 12},
        "event": null, "started_at": "2026-11-30T10:00:00.000Z", "ended_at": "2026-11-30T10:00:00.010Z",
        "tasks": {"extract": task, "load": task, "report": task},
    }))
    .expect("json")
}

fn fill(dir: &Path, runs: usize) -> Duration {
    let started = Instant::now();
    let log = Log::open(dir).expect("log");
    let mut commit = Commit::default();
    for i in 0..runs {
        let id = uuid::Uuid::now_v7();
        let (workflow, status) = if i < 100 {
            ("rare".to_string(), RunStatus::Succeeded)
        } else {
            let status = if (i / 100) % 10 == 0 {
                RunStatus::Failed
            } else {
                RunStatus::Succeeded
            };
            (format!("w{}", i % 100), status)
        };
        commit.summary(id, &workflow, status, summary(id, &workflow, status));
        if (i + 1) % 20_000 == 0 || i + 1 == runs {
            log.write(std::mem::take(&mut commit)).expect("write");
            log.flush().expect("flush");
        }
    }
    started.elapsed()
}

fn report(what: &str, samples: Vec<Duration>) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "{what:<58} p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or_default(),
    );
}

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let total = if quick { 100_000 } else { 1_000_000 };
    let dir = data_dir("reads");
    let took = fill(dir.path(), total);
    println!("switchyard read benchmarks: {total} ended runs stored (filled in {took:.1?})\n");
    {
        let log = Log::open(dir.path()).expect("log");
        let mut by_workflow = Vec::new();
        let mut by_both = Vec::new();
        let mut paged = Vec::new();
        for i in 0..1000 {
            let workflow = format!("w{}", (i * 37) % 100);
            let t = Instant::now();
            let page = log
                .ended_runs_where(Some(&workflow), None, None, 50)
                .expect("query");
            by_workflow.push(t.elapsed());
            assert_eq!(page.len(), 50);
            let t = Instant::now();
            let failed = log
                .ended_runs_where(Some(&workflow), Some(RunStatus::Failed), None, 50)
                .expect("query");
            by_both.push(t.elapsed());
            assert!(!failed.is_empty());
            let cursor: Value = serde_json::from_slice(&page[49]).expect("json");
            let before = cursor["id"].as_str().and_then(|s| s.parse().ok());
            let t = Instant::now();
            let next = log
                .ended_runs_where(Some(&workflow), None, before, 50)
                .expect("query");
            paged.push(t.elapsed());
            assert_eq!(next.len(), 50);
        }
        report("index: ?workflow=W&limit=50", by_workflow);
        report("index: ?workflow=W&status=failed&limit=50", by_both);
        report(
            "index: ?workflow=W&limit=50&before=<cursor> (page 2)",
            paged,
        );
        let t = Instant::now();
        let rare = log
            .ended_runs_where(Some("rare"), None, None, 50)
            .expect("query");
        let indexed = t.elapsed();
        assert_eq!(rare.len(), 50);
        // The previous build's way: scan newest first, decode, filter.
        let mut scans = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let found = log
                .ended_runs(None, 50, |bytes| {
                    serde_json::from_slice::<Value>(bytes).is_ok_and(|r| r["workflow"] == "rare")
                })
                .expect("scan");
            scans.push(t.elapsed());
            assert_eq!(found.len(), 50);
        }
        scans.sort();
        println!(
            "rare workflow (100 runs among the oldest): index {:.3} ms, previous scan {:.0} ms ({:.0}x)",
            indexed.as_secs_f64() * 1e3,
            scans[1].as_secs_f64() * 1e3,
            scans[1].as_secs_f64() / indexed.as_secs_f64().max(1e-9)
        );
    }
    // End to end through the daemon.
    let project = tempfile::tempdir().expect("project");
    std::fs::create_dir_all(project.path().join("workflows")).expect("workflows");
    let config = project.path().join("switchyard.json");
    std::fs::write(&config, json!({"workflows": ["workflows"]}).to_string()).expect("config");
    let tokio = common::tokio();
    tokio.block_on(async {
        let running = switchyard::daemon::start(switchyard::daemon::ServeOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..switchyard::daemon::ServeOptions::local(config.clone())
        })
        .await
        .expect("daemon");
        switchyard::tls::install_provider();
        let client = reqwest::Client::new();
        let mut samples = Vec::new();
        for i in 0..1000 {
            let url = format!(
                "http://{}/api/v1/runs?workflow=w{}&limit=50",
                running.addr,
                (i * 37) % 100
            );
            let t = Instant::now();
            let body: Value = client
                .get(&url)
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("json");
            samples.push(t.elapsed());
            assert_eq!(body["runs"].as_array().map(Vec::len), Some(50));
        }
        report(
            "HTTP GET /api/v1/runs?workflow=W&limit=50 (target p99 <= 20 ms)",
            samples,
        );
        running.stop.cancel();
        let _ = running.done.await;
    });
}
