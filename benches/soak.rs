//! Soak benchmark (README "Performance"): the store's size under a steady 500 runs/s
//! with `retention.runs: 2m`, for 15 minutes. `cargo bench --bench soak`.
//!
//! A daemon (in-process, the release build) on a fresh data dir with
//! `retention` of 2 minutes for runs, events and task logs; a driver starts
//! 3-task `noop` runs through the API handle at a steady rate; every 30 s
//! it prints the data dir's size on disk, the runs created and deleted so
//! far. The size should stop growing once retention deletes as fast as
//! runs arrive (after the first 2–3 minutes).
//!
//! `SOAK_MINUTES` (default 15), `SOAK_RETENTION` (default `2m`) and
//! `SOAK_RATE` (runs/s, default 500) change the shape; `BENCH_QUICK=1`
//! means 4 minutes with 1 minute of retention.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, json};

mod common;

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                total += dir_size(&entry.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                total += meta.blocks() * 512; // On disk, not the sparse length.
            }
        }
    }
    total
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 4 } else { 15 });
    let retention =
        std::env::var("SOAK_RETENTION").unwrap_or_else(|_| if quick { "1m" } else { "2m" }.into());
    let rate: u64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let project = common::data_dir("soak");
    let flows = project.path().join("workflows");
    std::fs::create_dir_all(&flows).expect("workflows");
    std::fs::write(
        flows.join("chain.json"),
        json!({"name": "chain", "tasks": [
            {"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}}
        ]})
        .to_string(),
    )
    .expect("workflow");
    let config = project.path().join("switchyard.json");
    std::fs::write(
        &config,
        json!({"workflows": ["workflows"], "data_dir": "data",
               "retention": {"runs": retention, "events": retention, "task_logs": retention}})
        .to_string(),
    )
    .expect("config");
    println!(
        "soak: {rate} runs/s of a 3-task noop chain for {minutes} min, retention {retention}\n"
    );
    println!(
        "{:>6}  {:>10}  {:>12}  {:>12}",
        "t (s)", "size MiB", "runs created", "runs deleted"
    );
    let tokio = common::tokio();
    tokio.block_on(async {
        let running =
            switchyard::daemon::start(switchyard::daemon::ServeOptions::local(config.clone()))
                .await
                .expect("daemon");
        let workflow = {
            let text = std::fs::read(flows.join("chain.json")).expect("read");
            std::sync::Arc::new(
                switchyard::spec::Workflow::parse(&flows.join("chain.json"), &text).expect("valid"),
            )
        };
        let handle = running.runtime.clone();
        switchyard::tls::install_provider();
        let client = reqwest::Client::new();
        let metrics_url = format!("http://{}/metrics", running.addr);
        let data = project.path().join("data");
        let started = Instant::now();
        let end = started + Duration::from_secs(minutes * 60);
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1);
        let mut created = 0u64;
        let mut next_report = started;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while Instant::now() < end {
            interval.tick().await;
            for _ in 0..per_tick {
                let handle = handle.clone();
                let workflow = std::sync::Arc::clone(&workflow);
                tokio::spawn(async move {
                    let _ = handle.start_run(workflow, Map::new(), None).await;
                });
                created += 1;
            }
            if Instant::now() >= next_report {
                let text = client
                    .get(&metrics_url)
                    .send()
                    .await
                    .expect("metrics")
                    .text()
                    .await
                    .expect("text");
                let deleted =
                    metric(&text, "switchyard_retention_deleted_total{what=\"runs\"}") as u64;
                println!(
                    "{:>6}  {:>10.1}  {:>12}  {:>12}",
                    started.elapsed().as_secs(),
                    dir_size(&data) as f64 / (1024.0 * 1024.0),
                    created,
                    deleted
                );
                next_report += Duration::from_secs(30);
            }
        }
        running.stop.cancel();
        let _ = running.done.await;
    });
}
