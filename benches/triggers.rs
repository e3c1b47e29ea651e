//! Trigger benchmarks (issue: bindings and local triggers), against an
//! in-process daemon over real HTTP and real files, every transition durable.
//!
//! 1. Webhook → 2-task `noop` run completed (`respond: "wait"`, so the reply
//!    comes when the run has ended): latency at 1,000 runs/min, then the
//!    saturation rate with 32 concurrent senders.
//! 2. The same measured against what a team would otherwise glue together: a
//!    Python stdlib webhook receiver that runs two `true` commands per
//!    request (no log, no durability).
//! 3. Files: 1,000 files/s renamed into a watched directory for 5 s; latency
//!    from rename to the first task's start (settle 100 ms), and the
//!    sustained rate.
//!
//! `cargo bench --bench triggers`

#![allow(clippy::unwrap_used)]

mod common;
use common::percentile;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use switchyard::daemon::{ServeOptions, start};

const PACED: usize = 600; // 36 s at 1,000 runs/min
const SATURATION_SECS: u64 = 5;
const SENDERS: usize = 32;
const FILES_PER_SEC: usize = 1000;
const FILE_SECS: usize = 5;

fn project(root: &Path) {
    std::fs::create_dir_all(root.join("workflows")).unwrap();
    std::fs::create_dir_all(root.join("bindings")).unwrap();
    std::fs::create_dir_all(root.join("inbox")).unwrap();
    std::fs::write(
        root.join("workflows/pair.json"),
        json!({"name": "pair", "tasks": [{"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}]})
            .to_string(),
    )
    .unwrap();
    for (name, on, params) in [
        (
            "wait",
            json!({"webhook": {"path": "/wait", "respond": "wait"}}),
            json!({"n": "${event.data.n}"}),
        ),
        (
            "files",
            json!({"file": {"path": "inbox", "settle": "100ms"}}),
            json!({"name": "${event.data.name}"}),
        ),
    ] {
        std::fs::write(
            root.join(format!("bindings/{name}.json")),
            json!({"name": name, "on": on, "workflow": "pair", "params": params}).to_string(),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("switchyard.json"),
        json!({"workflows": ["workflows"], "bindings": ["bindings"]}).to_string(),
    )
    .unwrap();
}

/// True when a reply says the run ran to success (switchyard's `respond:
/// "wait"` reply, or the baseline's).
fn succeeded(body: &Value) -> bool {
    body["runs"][0]["status"] == "succeeded" || body["status"] == "succeeded"
}

/// p50/p99 of paced requests, then the saturation rate.
async fn webhook_load(url: &str, label: &str) -> (f64, f64, f64) {
    switchyard::tls::install_provider();
    let client = reqwest::Client::new();
    // Warm up connections and code paths; check runs really happen.
    for n in 0..50 {
        let r = client
            .post(url)
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert!(succeeded(&body), "{label}: {body}");
    }
    let mut latencies = Vec::with_capacity(PACED);
    let mut tick = tokio::time::interval(Duration::from_millis(60));
    for n in 0..PACED {
        tick.tick().await;
        let started = Instant::now();
        let response = client
            .post(url)
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(succeeded(&body), "{label}: {body}");
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(SATURATION_SECS);
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let client = client.clone();
        let url = url.to_string();
        let done = Arc::clone(&done);
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < deadline {
                let r = client
                    .post(&url)
                    .json(&json!({"n": s * 1_000_000 + n}))
                    .send()
                    .await;
                if let Ok(r) = r
                    && let Ok(body) = r.json::<Value>().await
                    && succeeded(&body)
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    for s in senders {
        let _ = s.await;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{label}: p50 {p50:.2} ms, p99 {p99:.2} ms at 1,000 runs/min ({PACED} runs); saturation {rate:.0} runs/s ({SENDERS} senders)"
    );
    (p50, p99, rate)
}

const PYTHON_BASELINE: &str = r#"
import http.server, subprocess, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        subprocess.run(["true"], check=True)
        subprocess.run(["true"], check=True)
        body = b'{"status":"succeeded"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

async fn python_baseline() -> Option<(f64, f64, f64)> {
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", PYTHON_BASELINE])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = lines.next_line().await.ok()??;
    let url = format!("http://127.0.0.1:{}/hook", port.trim());
    let result = webhook_load(&url, "python http.server + 2 subprocesses").await;
    let _ = child.kill().await;
    Some(result)
}

async fn file_load(root: &Path, addr: std::net::SocketAddr) {
    let inbox = root.join("inbox");
    let staging = root.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let total = FILES_PER_SEC * FILE_SECS;
    let mut renamed_at = std::collections::HashMap::with_capacity(total);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = FILES_PER_SEC / 100;
    let mut n = 0;
    while n < total {
        tick.tick().await;
        for _ in 0..per_tick {
            let name = format!("f{n:06}.csv");
            let tmp = staging.join(&name);
            std::fs::write(&tmp, format!("{n}\n")).unwrap();
            std::fs::rename(&tmp, inbox.join(&name)).unwrap();
            renamed_at.insert(name, SystemTime::now());
            n += 1;
        }
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    // Wait for every run to finish, then read first-task start times.
    switchyard::tls::install_provider();
    let client = reqwest::Client::new();
    let mut runs: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        runs.clear();
        let mut before = String::new();
        loop {
            let page: Value = client
                .get(format!(
                    "http://{addr}/api/v1/runs?workflow=pair&status=succeeded&limit=1000{before}"
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            runs.extend(page["runs"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(next) => before = format!("&before={next}"),
                None => break,
            }
        }
        let files = runs
            .iter()
            .filter(|r| r["params"]["name"].is_string())
            .count();
        if files >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut latencies = Vec::new();
    let mut last_start: Option<SystemTime> = None;
    let mut seen = std::collections::HashSet::new();
    for run in &runs {
        let Some(name) = run["params"]["name"].as_str() else {
            continue;
        };
        assert!(seen.insert(name.to_string()), "{name} ran twice");
        let Some(renamed) = renamed_at.get(name) else {
            continue;
        };
        let start = run["tasks"]["a"]["started_at"].as_str().unwrap();
        let start: SystemTime = chrono::DateTime::parse_from_rfc3339(start)
            .unwrap()
            .with_timezone(&chrono::Utc)
            .into();
        last_start = Some(last_start.map_or(start, |l: SystemTime| l.max(start)));
        let ms = start
            .duration_since(*renamed)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        latencies.push(ms);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let first = renamed_at.values().min().copied().unwrap();
    let span = last_start
        .and_then(|l| l.duration_since(first).ok())
        .unwrap_or_default();
    println!(
        "files: {} of {total} fired once each; offered {offered:.0} files/s, sustained {:.0} files/s; \
         rename → first task start p50 {:.1} ms, p99 {:.1} ms (settle 100 ms)",
        latencies.len(),
        latencies.len() as f64 / span.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path());
        let running = start(ServeOptions::local(dir.path().join("switchyard.json")))
        .await
        .unwrap();
        let url = format!("http://{}/hooks/wait", running.addr);
        let (p50, p99, rate) = webhook_load(&url, "switchyard webhook → 2-task run completed").await;
        if let Some((bp50, bp99, brate)) = python_baseline().await {
            println!(
                "ratio (python / switchyard): p50 {:.1}×, p99 {:.1}×, saturation {:.2}× (switchyard / python)",
                bp50 / p50,
                bp99 / p99,
                rate / brate
            );
        }
        println!(
            "anchor: Kestra OSS 0.21 s webhook latency → {:.0}× at p50",
            210.0 / p50
        );
        file_load(dir.path(), running.addr).await;
        running.stop.cancel();
        let _ = running.done.await;
    });
}
