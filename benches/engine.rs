//! Engine benchmarks (issue: foundation). Run with `cargo bench --bench engine`.
//!
//! Every transition is flushed to the sled log before the next task acts, as
//! in production. Measured, on the same machine, side by side:
//!
//! 1. per-task overhead of a 40-task sequential `noop` chain;
//! 2. throughput of 10,000 runs of a 3-task `noop` chain;
//! 3. a 40-task chain of `shell` tasks running `true`, against the same 40
//!    processes started one after another by a plain shell loop (what a cron
//!    job with a script would do): the difference is switchyard's overhead;
//! 4. the floor: one sled insert + flush, i.e. the cost of one group commit;
//! 5. 1,000 `http` GETs to a local server as tasks (ten runs of a 100-task
//!    chain) against 1,000 GETs from a plain reqwest loop on one client;
//! 6. 1,000 `sql` tasks running `select 1` on the local PostgreSQL (ten runs
//!    of a 100-task chain) against a plain sqlx loop on one pooled
//!    connection (skipped, saying so, when PostgreSQL is not reachable).
//!
//! `BENCH_QUICK=1` shrinks the sizes for a smoke run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchyard::log::RunStatus;
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::spec::Workflow;

mod common;
use common::data_dir;

fn workflow(definition: Value) -> Arc<Workflow> {
    let text = serde_json::to_vec(&definition).expect("json");
    Arc::new(Workflow::parse(std::path::Path::new("bench.json"), &text).expect("valid workflow"))
}

fn chain(name: &str, n: usize, task: Value) -> Arc<Workflow> {
    let tasks: Vec<Value> = (0..n)
        .map(|i| {
            let mut t = task.clone();
            t["id"] = json!(format!("t{i}"));
            if i > 0 {
                t["after"] = json!(format!("t{}", i - 1));
            }
            t
        })
        .collect();
    workflow(json!({"name": name, "tasks": tasks}))
}

fn start(dir: &std::path::Path) -> Runtime {
    Runtime::start(RuntimeConfig::new(dir)).expect("runtime")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let tokio = common::tokio();
    tokio.block_on(async {
        println!("switchyard engine benchmarks (every transition flushed before the next task acts)\n");
        let floor = flush_floor(if quick { 100 } else { 1000 });
        println!("group commit floor: sled insert + flush  median {:>8.3} ms", ms(floor));

        let samples = if quick { 3 } else { 15 };
        let per_task = noop_chain(40, samples).await;
        println!(
            "40-task noop chain: per-task overhead    median {:>8.3} ms  (target ≤ 1 ms; Hatchet ~31 ms → {:.0}×, Temporal ~74 ms → {:.0}×, Airflow ~3 s → {:.0}×)",
            ms(per_task),
            31.0 / ms(per_task),
            74.0 / ms(per_task),
            3000.0 / ms(per_task)
        );

        let runs = if quick { 1_000 } else { 10_000 };
        let rate = throughput(runs).await;
        println!(
            "{runs} runs of a 3-task noop chain:      {rate:>8.0} runs/s  (target ≥ 5,000 runs/s)"
        );

        let (ours, plain) = shell_chain(40, if quick { 2 } else { 7 }).await;
        println!(
            "40 × `true` as shell tasks:             median {:>8.1} ms  ({:.3} ms/task)",
            ms(ours),
            ms(ours) / 40.0
        );
        println!(
            "40 × `true` from a plain shell loop:    median {:>8.1} ms  ({:.3} ms/task)",
            ms(plain),
            ms(plain) / 40.0
        );
        println!(
            "switchyard's added cost per shell task:         {:>8.3} ms  (durable, retryable, observable)",
            (ms(ours) - ms(plain)) / 40.0
        );

        let (n, rounds) = if quick { (100, 2) } else { (100, 10) };
        let (ours, plain) = http_chain(n, rounds).await;
        println!(
            "{} sequential `http` GETs as tasks:     {:>8.3} ms/task ({rounds} runs of a {n}-task chain)",
            n * rounds,
            ours
        );
        println!(
            "{} sequential GETs, a plain reqwest loop:{:>8.3} ms/request (one pooled client, same server)",
            n * rounds,
            plain
        );
        println!(
            "switchyard's added cost per http task:          {:>8.3} ms  (target ≤ +0.3 ms; {:.1}× the plain loop's time)",
            ours - plain,
            ours / plain
        );

        match sql_chain(n, rounds).await {
            Some((ours, plain)) => {
                println!(
                    "{} sequential `sql` tasks (select 1):   {:>8.3} ms/task ({rounds} runs of a {n}-task chain, local PostgreSQL)",
                    n * rounds,
                    ours
                );
                println!(
                    "{} × select 1, a plain sqlx loop:       {:>8.3} ms/query (one pooled connection)",
                    n * rounds,
                    plain
                );
                println!(
                    "switchyard's added cost per sql task:           {:>8.3} ms  (target ≤ +0.3 ms; {:.1}× the plain loop's time)",
                    ours - plain,
                    ours / plain
                );
            }
            None => println!("SKIPPED sql tasks: PostgreSQL at {PG_URL} is not reachable"),
        }
    });
}

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Milliseconds per task of `rounds` runs of an `n`-task chain of `sql`
/// tasks running `select 1`, and per query of as many from a plain sqlx
/// loop on one pooled connection. None: no PostgreSQL here.
async fn sql_chain(n: usize, rounds: usize) -> Option<(f64, f64)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(PG_URL)
        .await
        .ok()?;
    let dir = data_dir("sql");
    let databases = switchyard::executors::sql::Databases::new(
        std::collections::BTreeMap::from([(
            "pg".to_string(),
            switchyard::executors::sql::Connection {
                url: PG_URL.to_string(),
                max_connections: None,
            },
        )]),
        dir.path(),
    );
    let runtime = Runtime::start(RuntimeConfig {
        databases,
        ..RuntimeConfig::new(dir.path())
    })
    .expect("runtime");
    let handle = runtime.handle();
    let wf = chain(
        "sql_chain",
        n,
        json!({"sql": {"connection": "pg", "query": "select 1"}}),
    );
    // Warm both up (the pools' connections, prepared statements).
    handle
        .run_to_end(wf.clone(), Map::new(), None, |_| {})
        .await
        .expect("run");
    let _: i32 = sqlx::query_scalar("select 1").fetch_one(&pool).await.ok()?;
    let ours = ms_per_task(&handle, &wf, n, rounds).await;
    let started = Instant::now();
    for _ in 0..n * rounds {
        let one: i32 = sqlx::query_scalar("select 1")
            .fetch_one(&pool)
            .await
            .expect("select 1");
        assert_eq!(one, 1);
    }
    let plain = ms(started.elapsed()) / (n * rounds) as f64;
    runtime.shutdown().await;
    Some((ours, plain))
}

/// A local HTTP server answering `GET /ok` with a small JSON body.
async fn http_server() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/ok",
        axum::routing::get(|| async { axum::Json(json!({"ok": true})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Milliseconds per task of `rounds` runs of an `n`-task chain of `http`
/// GETs, and per request of as many GETs from a plain reqwest loop.
async fn http_chain(n: usize, rounds: usize) -> (f64, f64) {
    let addr = http_server().await;
    let url = format!("http://{addr}/ok");
    let dir = data_dir("http");
    let runtime = start(dir.path());
    let handle = runtime.handle();
    let wf = chain("http_chain", n, json!({"http": {"url": url}}));
    // Warm both up (connections, the engine's first commits).
    handle
        .run_to_end(wf.clone(), Map::new(), None, |_| {})
        .await
        .expect("run");
    switchyard::tls::install_provider();
    let client = reqwest::Client::new();
    client.get(&url).send().await.expect("get");
    let ours = ms_per_task(&handle, &wf, n, rounds).await;
    let started = Instant::now();
    for _ in 0..n * rounds {
        let response = client.get(&url).send().await.expect("get");
        assert!(response.status().is_success());
        let _ = response.bytes().await.expect("body");
    }
    let plain = ms(started.elapsed()) / (n * rounds) as f64;
    runtime.shutdown().await;
    (ours, plain)
}

/// Milliseconds per task of `rounds` runs of the `n`-task chain `wf`.
async fn ms_per_task(
    handle: &switchyard::runtime::RuntimeHandle,
    wf: &Arc<Workflow>,
    n: usize,
    rounds: usize,
) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        let record = handle
            .run_to_end(Arc::clone(wf), Map::new(), None, |_| {})
            .await
            .expect("run");
        assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    }
    ms(started.elapsed()) / (n * rounds) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn flush_floor(n: usize) -> Duration {
    let dir = data_dir("floor");
    let log = switchyard::log::Log::open(dir.path()).expect("log");
    let run_id = uuid::Uuid::now_v7();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        log.append(run_id, 0, switchyard::log::RecordBody::RunStarted {})
            .expect("append");
        log.flush().expect("flush");
        samples.push(started.elapsed());
    }
    median(samples)
}

async fn noop_chain(n: usize, samples: usize) -> Duration {
    let dir = data_dir("chain");
    let runtime = start(dir.path());
    let handle = runtime.handle();
    let wf = chain("noop_chain", n, json!({"noop": {}}));
    // Warm up.
    handle
        .run_to_end(wf.clone(), Map::new(), None, |_| {})
        .await
        .expect("run");
    let mut per_task = Vec::new();
    for _ in 0..samples {
        let flushes = handle.log().flushes();
        let started = Instant::now();
        let record = handle
            .run_to_end(wf.clone(), Map::new(), None, |_| {})
            .await
            .expect("run");
        let took = started.elapsed();
        assert_eq!(record.status, RunStatus::Succeeded);
        let flushed = handle.log().flushes() - flushes;
        assert!(
            flushed as usize >= n,
            "each task must be flushed before the next acts"
        );
        per_task.push(took / n as u32);
    }
    runtime.shutdown().await;
    median(per_task)
}

async fn throughput(runs: usize) -> f64 {
    let dir = data_dir("throughput");
    let runtime = start(dir.path());
    let handle = runtime.handle();
    let wf = chain("noop3", 3, json!({"noop": {}}));
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(runs);
    for _ in 0..runs {
        let handle = handle.clone();
        let wf = wf.clone();
        waiting.push(tokio::spawn(async move {
            handle.run_to_end(wf, Map::new(), None, |_| {}).await
        }));
    }
    for run in waiting {
        let record = run.await.expect("join").expect("run");
        assert_eq!(record.status, RunStatus::Succeeded);
    }
    let took = started.elapsed();
    println!(
        "  ({runs} runs, {} group commits, {:.2} s)",
        handle.log().flushes(),
        took.as_secs_f64()
    );
    runtime.shutdown().await;
    runs as f64 / took.as_secs_f64()
}

async fn shell_chain(n: usize, samples: usize) -> (Duration, Duration) {
    let dir = data_dir("shell");
    let runtime = start(dir.path());
    let handle = runtime.handle();
    let wf = chain("shell_chain", n, json!({"shell": {"command": ["true"]}}));
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let script = format!("for i in $(seq {n}); do /bin/true; done");
    for _ in 0..samples {
        let started = Instant::now();
        let record = handle
            .run_to_end(wf.clone(), Map::new(), None, |_| {})
            .await
            .expect("run");
        assert_eq!(record.status, RunStatus::Succeeded);
        ours.push(started.elapsed());

        let started = Instant::now();
        let status = tokio::process::Command::new("bash")
            .args(["-c", &script])
            .status()
            .await
            .expect("bash");
        assert!(status.success());
        plain.push(started.elapsed());
    }
    runtime.shutdown().await;
    (median(ours), median(plain))
}
