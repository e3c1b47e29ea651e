//! AMQP benchmark (SPEC §13), against the real RabbitMQ and an in-process
//! daemon, every transition durable, each message acked only after its
//! event and run were flushed:
//!
//! 0. The broker's own ceiling here: a bare lapin consumer that acks each
//!    message of a 40,000-message persistent backlog (no switchyard); and
//!    its own hop at 50 msg/s, publish to delivery at that bare consumer.
//! 1. Backlog: 40,000 messages queued before the daemon starts; the rate at
//!    which it turns them into completed 3-task `noop` runs.
//! 2. Concurrent: 40,000 messages published with confirms as fast as the
//!    broker takes them while the daemon consumes (publisher, broker and
//!    daemon share the 2 cores); sustained rate of runs completed.
//! 3. Latency at 50 messages/s and at 1,000 messages/s: publish time (in
//!    the message) to the run's `RunEnded` record, p50/p99, and the share
//!    up to its `RunCreated` (broker hop, consumer, first group commit).
//! 4. Side by side: the same 3-task chain in Celery 5 on the same broker
//!    (`benches/celery_chain.py`: acks_late, prefork ×2, 5,000 queued
//!    chains, then 50 chains/s), when a python with celery is found
//!    (`CELERY_PYTHON`, else `python3`).
//!
//! `cargo bench --bench amqp` (needs RabbitMQ at `AMQP_URL` or the default).
//! `AMQP_BENCH_QUICK=1` runs only the broker hop and the latency part (3),
//! for working on latency.

#![allow(clippy::unwrap_used)]

mod common;
use common::percentile;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use switchyard::daemon::{ServeOptions, start};
use switchyard::log::RecordBody;

/// The same allocator as the `switchyard` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SATURATION: usize = 40_000;
const PREFETCH: u16 = 500;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn project(root: &Path, exchange: &str, queue: &str) {
    std::fs::create_dir_all(root.join("workflows")).unwrap();
    std::fs::create_dir_all(root.join("bindings")).unwrap();
    std::fs::write(
        root.join("workflows/chain.json"),
        json!({"name": "chain", "tasks": [
            {"id": "a", "noop": {}},
            {"id": "b", "after": "a", "noop": {}},
            {"id": "c", "after": "b", "noop": {}}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("bindings/orders.json"),
        json!({"name": "orders", "workflow": "chain",
               "on": {"amqp": {"exchange": exchange, "queue": queue, "prefetch": PREFETCH}},
               "params": {"sent": "${event.data.sent}"}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("switchyard.json"),
        json!({"workflows": ["workflows"], "bindings": ["bindings"]}).to_string(),
    )
    .unwrap();
}

/// What [`watch`] saw: per-run latencies in ms, sorted.
struct Watched {
    /// Publish time (in the message) to the run's `RunEnded`, durable.
    completed: Vec<f64>,
    /// Publish time to the run's `RunCreated`, durable: the broker hop, the
    /// consumer and the first group commit.
    created: Vec<f64>,
    /// Per run, the time between its durable commits as the record stream
    /// shows them: publish → `RunCreated` (with the first task started),
    /// then each task's `AttemptFinished` (with the next one started; the
    /// last with `RunEnded`).
    stages: Vec<Vec<f64>>,
    first: Instant,
    last: Instant,
    lagged: usize,
}

/// Collects, from the durable record stream, each run's publish time (from
/// `RunCreated`) and end time, until `n` runs ended.
async fn watch(
    mut records: tokio::sync::broadcast::Receiver<std::sync::Arc<switchyard::log::Record>>,
    n: usize,
) -> Watched {
    let mut sent: HashMap<uuid::Uuid, u64> = HashMap::new();
    // Run → (time of its last durable commit seen, its stages so far).
    let mut timeline: HashMap<uuid::Uuid, (u64, Vec<f64>)> = HashMap::new();
    let mut stages = Vec::with_capacity(n);
    let mut completed = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut first = None;
    let mut ended = 0;
    let mut lagged = 0;
    let mut last = Instant::now();
    let done = |mut completed: Vec<f64>,
                mut created: Vec<f64>,
                stages,
                first: Option<Instant>,
                last,
                lagged| {
        completed.sort_by(f64::total_cmp);
        created.sort_by(f64::total_cmp);
        Watched {
            completed,
            created,
            stages,
            first: first.unwrap_or(last),
            last,
            lagged,
        }
    };
    loop {
        // If the stream lagged, some ends were missed: stop after a silence.
        let next = match tokio::time::timeout(Duration::from_secs(3), records.recv()).await {
            Ok(next) => next,
            Err(_) if lagged > 0 || ended > 0 => {
                return done(completed, created, stages, first, last, lagged);
            }
            Err(_) => continue,
        };
        match next {
            Ok(record) => match &record.body {
                RecordBody::RunCreated { params, .. } => {
                    first.get_or_insert_with(Instant::now);
                    if let Some(t) = params.get("sent").and_then(|v| v.as_u64()) {
                        let now = now_us();
                        sent.insert(record.run_id, t);
                        created.push((now.saturating_sub(t)) as f64 / 1000.0);
                        timeline.insert(
                            record.run_id,
                            (now, vec![now.saturating_sub(t) as f64 / 1000.0]),
                        );
                    }
                }
                RecordBody::AttemptFinished { .. } => {
                    if let Some((last, stages)) = timeline.get_mut(&record.run_id) {
                        let now = now_us();
                        stages.push(now.saturating_sub(*last) as f64 / 1000.0);
                        *last = now;
                    }
                }
                RecordBody::RunEnded { status, .. } => {
                    assert_eq!(
                        serde_json::to_value(status).unwrap(),
                        "succeeded",
                        "a run failed"
                    );
                    ended += 1;
                    last = Instant::now();
                    if let Some(t) = sent.remove(&record.run_id) {
                        completed.push((now_us().saturating_sub(t)) as f64 / 1000.0);
                    }
                    if let Some((_, run)) = timeline.remove(&record.run_id) {
                        stages.push(run);
                    }
                    if ended == n {
                        return done(completed, created, stages, first, last, lagged);
                    }
                }
                _ => {}
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => lagged += k as usize,
            Err(_) => panic!("record stream closed"),
        }
    }
}

/// Publishes `n` messages, `rate` per second (0 = as fast as confirms allow).
async fn publish(channel: &lapin::Channel, exchange: &str, n: usize, rate: u64) {
    let start = Instant::now();
    let mut confirms = Vec::new();
    for i in 0..n {
        if let Some(offset) = (i as u64 * 1_000_000).checked_div(rate) {
            let due = start + Duration::from_micros(offset);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = json!({"sent": now_us()}).to_string();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "orders.new".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_message_id(uuid::Uuid::now_v7().to_string().into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
        if confirms.len() >= 1000 {
            for c in confirms.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

async fn bind(channel: &lapin::Channel, queue: &str, exchange: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
}

async fn unbind(channel: &lapin::Channel, queue: &str, exchange: &str) {
    channel
        .queue_unbind(
            queue.into(),
            exchange.into(),
            "#".into(),
            Default::default(),
        )
        .await
        .unwrap();
}

/// A bare lapin consumer on `queue` (prefetch 500), on a channel of its own.
async fn bare_consumer(connection: &Connection, queue: &str) -> (lapin::Channel, lapin::Consumer) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, Default::default())
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    (channel, consumer)
}

/// Seconds a bare consumer (prefetch 500, ack each) takes to drain `n`.
async fn raw_drain(connection: &Connection, queue: &str, n: usize) -> f64 {
    use futures_lite::StreamExt;
    let (channel, mut consumer) = bare_consumer(connection, queue).await;
    let start = Instant::now();
    for _ in 0..n {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(Default::default()).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    secs
}

/// The broker's own hop at `rate` msg/s: publish time (in the message) to
/// delivery at a bare consumer that acks each, in ms, sorted.
async fn raw_hop(
    connection: &Connection,
    channel: &lapin::Channel,
    exchange: &str,
    queue: &str,
    n: usize,
    rate: u64,
) -> Vec<f64> {
    use futures_lite::StreamExt;
    let (consuming, mut consumer) = bare_consumer(connection, queue).await;
    bind(channel, queue, exchange).await;
    let collect = tokio::spawn(async move {
        let mut hops = Vec::with_capacity(n);
        for _ in 0..n {
            let delivery = consumer.next().await.unwrap().unwrap();
            let at = now_us();
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
            hops.push(at.saturating_sub(body["sent"].as_u64().unwrap()) as f64 / 1000.0);
            delivery.ack(Default::default()).await.unwrap();
        }
        hops.sort_by(f64::total_cmp);
        let _ = consuming.close(200, "done".into()).await;
        hops
    });
    publish(channel, exchange, n, rate).await;
    let hops = collect.await.unwrap();
    unbind(channel, queue, exchange).await;
    hops
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| switchyard::amqp::DEFAULT_URL.to_string());
        if !switchyard::amqp::reachable(&url).await {
            eprintln!("SKIPPED amqp bench: no broker at {url}");
            return;
        }
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let exchange = format!("sy-bench.{id}");
        let queue = format!("sy-bench.q.{id}");
        let raw_queue = format!("sy-bench.raw.{id}");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        for q in [&queue, &raw_queue] {
            channel
                .queue_declare(
                    q.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap();
        }

        let quick = std::env::var_os("AMQP_BENCH_QUICK").is_some();
        let backlog = if quick { 0 } else { SATURATION };
        // 0. The broker alone: drain a backlog with a bare consumer.
        if !quick {
            bind(&channel, &raw_queue, &exchange).await;
            publish(&channel, &exchange, SATURATION, 0).await;
            unbind(&channel, &raw_queue, &exchange).await;
            let raw = raw_drain(&connection, &raw_queue, SATURATION).await;
            println!(
                "  broker ceiling: a bare consumer acking a {SATURATION}-message backlog: {:.0} msg/s",
                SATURATION as f64 / raw
            );
        }
        let hops = raw_hop(&connection, &channel, &exchange, &raw_queue, 500, 50).await;
        println!(
            "  broker hop at 50 msg/s: publish -> delivery at a bare consumer p50 {:.2} ms, p99 {:.2} ms",
            percentile(&hops, 0.5),
            percentile(&hops, 0.99)
        );

        // 1. Backlog queued before the daemon starts.
        bind(&channel, &queue, &exchange).await;
        publish(&channel, &exchange, backlog, 0).await;
        project(dir.path(), &exchange, &queue);
        let running = start(ServeOptions::local(dir.path().join("switchyard.json")))
        .await
        .unwrap();
        let Watched {
            first,
            last,
            lagged,
            ..
        } = if quick {
            let now = Instant::now();
            Watched { completed: Vec::new(), created: Vec::new(), stages: Vec::new(), first: now, last: now + Duration::from_secs(1), lagged: 0 }
        } else {
            watch(running.runtime.subscribe(), SATURATION).await
        };
        let backlog_rate = SATURATION as f64 / (last - first).as_secs_f64();
        if !quick { println!(
            "  backlog: {SATURATION} queued messages -> completed runs in {:.2} s = {backlog_rate:.0} runs/s ({lagged} records missed)",
            (last - first).as_secs_f64(),
        ); }
        switchyard::tls::install_provider();
        let metrics = format!("http://{}/metrics", running.addr);
        let consuming = async {
            loop {
                let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
                if text.contains("switchyard_amqp_consumers 1") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), consuming)
            .await
            .expect("the consumer is up");

        // Warm-up.
        let watcher = tokio::spawn(watch(running.runtime.subscribe(), 500));
        publish(&channel, &exchange, 500, 0).await;
        watcher.await.unwrap();

        let flushes = running.runtime.log().flushes();
        let watcher = tokio::spawn(watch(running.runtime.subscribe(), backlog.max(1)));
        let published = Instant::now();
        publish(&channel, &exchange, backlog.max(1), 0).await;
        let publish_secs = published.elapsed().as_secs_f64();
        let Watched {
            completed: latencies,
            first,
            last,
            lagged,
            ..
        } = watcher.await.unwrap();
        let secs = (last - first).as_secs_f64();
        println!(
            "  concurrent publish: {SATURATION} runs in {secs:.2} s = {:.0} runs/s \
             (publisher alone: {:.0} msg/s; {} group commits, {:.1} runs each)",
            SATURATION as f64 / secs,
            SATURATION as f64 / publish_secs,
            running.runtime.log().flushes() - flushes,
            SATURATION as f64 / (running.runtime.log().flushes() - flushes) as f64,
        );
        println!(
            "    event -> completion under saturation: p50 {:.1} ms, p99 {:.1} ms ({} samples, {lagged} records missed)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len()
        );

        let mut at_50 = (0.0, 0.0);
        for (rate, seconds) in [(50u64, 10u64), (1000, 10)] {
            let n = (rate * seconds) as usize;
            let log = running.runtime.log();
            let (flushes, flush_time) = (log.flushes(), log.flush_time());
            let watcher = tokio::spawn(watch(running.runtime.subscribe(), n));
            publish(&channel, &exchange, n, rate).await;
            let Watched {
                completed: latencies,
                created,
                stages,
                ..
            } = watcher.await.unwrap();
            let commits = log.flushes() - flushes;
            let fsync_ms = (log.flush_time() - flush_time).as_secs_f64() * 1000.0 / commits as f64;
            let depth = stages.iter().map(Vec::len).max().unwrap_or(0);
            let per_stage: Vec<String> = (0..depth)
                .map(|k| {
                    let mut at: Vec<f64> = stages.iter().filter_map(|s| s.get(k).copied()).collect();
                    at.sort_by(f64::total_cmp);
                    format!("{:.2}", percentile(&at, 0.5))
                })
                .collect();
            println!(
                "  at {rate} msg/s, per stage p50 (ms): publish -> created + first task started {};                  each task's end + the next start: {}; {:.1} group commits per run, flush (fsync) {fsync_ms:.3} ms each",
                per_stage.first().map(String::as_str).unwrap_or("-"),
                per_stage.get(1..).map(|s| s.join(" / ")).unwrap_or_default(),
                commits as f64 / n as f64,
            );
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            if rate == 50 {
                at_50 = (p50, p99);
            }
            println!(
                "  at {rate} msg/s ({n} runs): event -> completion p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms \
                 (of which publish -> run created and durable: p50 {:.2} ms, p99 {:.2} ms)",
                latencies.last().copied().unwrap_or(f64::NAN),
                percentile(&created, 0.5),
                percentile(&created, 0.99),
            );
        }
        let _ = connection.close(200, "done".into()).await;
        running.stop.cancel();
        running.done.await.unwrap().unwrap();

        // 4. Side by side: the same chain in Celery 5 on the same broker.
        match if quick { None } else { common::celery("celery_chain.py").await } {
            Some(celery) => {
                let rate = celery["backlog_runs_per_s"].as_f64().unwrap();
                let p50 = celery["p50_ms_at_50"].as_f64().unwrap();
                let p99 = celery["p99_ms_at_50"].as_f64().unwrap();
                println!(
                    "  Celery 5 (acks_late, prefork x2), {} queued chains: {rate:.0} runs/s \
                     (switchyard {:.1}x); at 50 chains/s p50 {p50:.2} ms, p99 {p99:.2} ms \
                     (switchyard {:.1}x / {:.1}x lower)",
                    celery["backlog"],
                    backlog_rate / rate,
                    p50 / at_50.0,
                    p99 / at_50.1,
                );
            }
            None => println!(
                "  SKIPPED Celery side by side: no python with celery (set CELERY_PYTHON, see benches/celery_chain.py)"
            ),
        }
        if let Ok(c) = Connection::connect(&url, ConnectionProperties::default()).await
            && let Ok(ch) = c.create_channel().await
        {
            for q in [&queue, &raw_queue] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await;
        }
    });
}
