//! Dashboard benchmark (README "Performance"): first paint of the runs grid
//! with 100,000 runs stored, in headless Chromium on this machine.
//! `cargo bench --bench dashboard` (needs Debian's Chromium and
//! `npm ci --prefix tests/browser`).
//!
//! Fills a data dir with 100,000 ended runs of one 3-task workflow (10%
//! failed), starts the daemon on it, and loads in Chromium (10 loads each,
//! fresh tabs): the workflow's page (its DAG and the grid's newest page of
//! runs × tasks), the home page (counts over the last 24 h, latest runs)
//! and the workflows list. Reports first-contentful-paint p50 and max; the
//! target is ≤ 300 ms. Airflow's grid view is the anchor: it times out at
//! about 8,000 runs (apache/airflow#49800).

#![allow(clippy::unwrap_used)]

mod common;
use common::percentile;

use std::path::Path;
use std::time::Instant;

use serde_json::json;
use switchyard::daemon::{ServeOptions, start};
use switchyard::log::{Commit, Log, RunStatus};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 100_000;

fn fill(dir: &Path) {
    let log = Log::open(dir).unwrap();
    let mut commit = Commit::default();
    let now = chrono::Utc::now();
    for i in 0..RUNS {
        let id = uuid::Uuid::now_v7();
        let status = if i % 10 == 3 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let at = |ms: i64| {
            (now - chrono::Duration::seconds((RUNS - i) as i64)
                + chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let task = |s: &str| {
            json!({"status": s, "attempts": 1, "output": {"rows": 12},
            "started_at": at(0), "ended_at": at(2)})
        };
        let last = if status == RunStatus::Failed {
            "failed"
        } else {
            "succeeded"
        };
        let record = json!({
            "id": id, "workflow": "big", "version": "0123456789abcdef", "status": status,
            "params": {"file": "/data/inbox/orders.csv"}, "vars": {"region": "eu"},
            "event": null, "started_at": at(0), "ended_at": at(10),
            "tasks": {"extract": task("succeeded"), "load": task("succeeded"), "report": task(last)},
        });
        commit.summary(id, "big", status, serde_json::to_vec(&record).unwrap());
        if (i + 1) % 20_000 == 0 || i + 1 == RUNS {
            log.write(std::mem::take(&mut commit)).unwrap();
            log.flush().unwrap();
        }
    }
}

fn main() {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("SY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !browser.join("node_modules/playwright-core").is_dir() || !Path::new(&chromium).exists() {
        eprintln!("SKIPPED dashboard bench: needs {chromium} and `npm ci --prefix tests/browser`");
        return;
    }
    let dir = common::data_dir("dashboard");
    let root = dir.path();
    let started = Instant::now();
    fill(&root.join("data"));
    println!(
        "{RUNS} runs stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(root.join("workflows")).unwrap();
    std::fs::write(
        root.join("workflows/big.json"),
        json!({"name": "big", "tasks": [
            {"id": "extract", "noop": {}},
            {"id": "load", "after": "extract", "noop": {}},
            {"id": "report", "after": "load", "noop": {}},
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("switchyard.json"),
        json!({"workflows": ["workflows"]}).to_string(),
    )
    .unwrap();
    let rt = common::tokio();
    rt.block_on(async {
        let running = start(ServeOptions {
            data_dir: Some(root.join("data")),
            listen: Some("127.0.0.1:0".into()),
            ..ServeOptions::local(root.join("switchyard.json"))
        })
        .await
        .unwrap();
        let url = format!("http://{}", running.addr);
        let paths = [
            "/workflows/big",
            "/workflows/big?rows=1000",
            "/",
            "/workflows",
        ];
        // The server's share: the whole HTML of each page, over HTTP.
        let client = reqwest::Client::new();
        println!("server time per page (the whole HTML over HTTP, 20 GETs):");
        for path in paths {
            let mut samples = Vec::new();
            for _ in 0..20 {
                let started = Instant::now();
                let body = client
                    .get(format!("{url}{path}"))
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                assert!(body.len() > 1000);
            }
            samples.sort_by(f64::total_cmp);
            println!("  {path:<26} p50 {:>6.1} ms", percentile(&samples, 0.5));
        }
        let output = tokio::process::Command::new("node")
            .arg(browser.join("first_paint.mjs"))
            .current_dir(&browser)
            .env("SY_URL", &url)
            .env("SY_PATHS", paths.join(","))
            .env("LOADS", "10")
            .env("SY_CHROMIUM", &chromium)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        println!(
            "first contentful paint in headless Chromium, {RUNS} runs stored (target ≤ 300 ms):"
        );
        for path in paths {
            let mut samples: Vec<f64> = results[path]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            samples.sort_by(f64::total_cmp);
            println!(
                "  {path:<26} p50 {:>6.1} ms  max {:>6.1} ms",
                percentile(&samples, 0.5),
                samples.last().unwrap()
            );
        }
        running.stop.cancel();
        let _ = running.done.await;
    });
}
