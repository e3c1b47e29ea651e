//! RabbitMQ end to end, against the real broker and an in-process daemon:
//! the amqp trigger (exactly one run per message, through closed
//! connections and a broker restart), poison messages to the DLX, the
//! `amqp` task (confirms, mandatory), lifecycle events through an outage,
//! a daemon that starts while the broker is down, and a connection that goes
//! silent without closing (found by heartbeats).
//!
//! Every test needs the broker: without one they print SKIPPED, unless
//! `SWITCHYARD_REQUIRE_BROKER=1` (CI), where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};

use crate::triggers::{Daemon, Project};
use crate::util::broker;

pub(crate) fn amqp_binding(name: &str, exchange: &str, queue: &str, extra: Value) -> Value {
    let mut on = json!({"exchange": exchange, "routing_key": "orders.#", "queue": queue});
    if let (Value::Object(on), Value::Object(extra)) = (&mut on, extra) {
        on.extend(extra);
    }
    json!({
        "name": name,
        "on": {"amqp": on},
        "workflow": "three",
        "params": {"n": "${event.data.n}", "id": "${event.id}"},
    })
}

async fn metrics(daemon: &Daemon) -> BTreeMap<String, f64> {
    let text = daemon
        .client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn metric(daemon: &Daemon, name: &str) -> f64 {
    metrics(daemon).await.get(name).copied().unwrap_or(-1.0)
}

/// Waits until metric `name` satisfies `holds`, failing with `what` after `within`.
async fn wait_metric(
    daemon: &Daemon,
    name: &str,
    holds: impl Fn(f64) -> bool,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(daemon, name).await;
        if holds(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} ({name} = {value})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `workflow` has `n` runs, all ended; returns them.
pub(crate) async fn wait_ended(
    daemon: &Daemon,
    workflow: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let runs = daemon.runs(workflow).await;
        let ended = runs
            .iter()
            .filter(|r| {
                matches!(
                    r["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .count();
        if runs.len() >= n && ended == runs.len() {
            return runs;
        }
        if Instant::now() >= deadline {
            // What the consumers saw, to tell a stalled consumer from a lost message.
            let amqp: Vec<String> = metrics(daemon)
                .await
                .into_iter()
                .filter(|(name, _)| name.starts_with("switchyard_amqp"))
                .map(|(name, value)| format!("{name} = {value}"))
                .collect();
            panic!(
                "{workflow}: {} runs ({ended} ended), expected {n}; {}",
                runs.len(),
                amqp.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts every `n` in `0..count` has exactly one run.
pub(crate) fn exactly_once(runs: &[Value], count: usize) {
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for run in runs {
        *seen
            .entry(run["params"]["n"].as_i64().unwrap())
            .or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "messages with more than one run: {twice:?}"
    );
    let missing: Vec<usize> = (0..count)
        .filter(|n| !seen.contains_key(&(*n as i64)))
        .collect();
    assert!(missing.is_empty(), "messages with no run: {missing:?}");
    assert_eq!(runs.len(), count);
}

pub(crate) fn json_message(n: usize, id: Option<String>) -> (String, Vec<u8>, BasicProperties) {
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = id {
        properties = properties.with_message_id(id.into());
    }
    (
        format!(
            "orders.{}",
            if n.is_multiple_of(2) {
                "created"
            } else {
                "eu.paid"
            }
        ),
        json!({"n": n}).to_string().into_bytes(),
        properties,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_confirmed_messages_start_a_thousand_runs() {
    let Some(_shared) = broker::shared("a_thousand_confirmed_messages_start_a_thousand_runs").await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let project = Project::new(&[amqp_binding("orders", &exchange, &queue, json!({}))]);
    let daemon = project.start(None).await;
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    // The daemon declares the exchange; wait until its consumer is up so
    // no message is published before the queue is bound.
    wait_consuming(&daemon, "the consumer did not start").await;
    // Half with a message id, half without (the id is then a hash).
    broker::publish_all(
        &channel,
        &exchange,
        (0..1000).map(|n| json_message(n, (n % 2 == 0).then(|| format!("msg-{n}")))),
    )
    .await;
    let runs = wait_ended(&daemon, "three", 1000, Duration::from_secs(120)).await;
    exactly_once(&runs, 1000);
    assert!(runs.iter().all(|r| r["status"] == "succeeded"));
    let with_id = runs.iter().find(|r| r["params"]["n"] == 4).unwrap();
    assert_eq!(with_id["params"]["id"], "msg-4");
    let hashed = runs.iter().find(|r| r["params"]["n"] == 5).unwrap();
    assert!(
        hashed["params"]["id"]
            .as_str()
            .unwrap()
            .starts_with("amqp:")
    );

    // The event carries the envelope of SPEC §5.
    let record = daemon
        .get(&format!("/api/v1/runs/{}", with_id["id"].as_str().unwrap()))
        .await;
    let event = &record["event"];
    assert_eq!(event["type"], "switchyard.amqp.message");
    assert_eq!(event["source"], format!("amqp://%2f/{exchange}"));
    assert_eq!(event["subject"], "orders.created");
    assert_eq!(event["data"], json!({"n": 4}));
    assert_eq!(event["switchyard"]["queue"], queue);

    // Publishing the same ids again starts nothing: dedup on message_id.
    broker::publish_all(
        &channel,
        &exchange,
        (0..10).map(|n| json_message(n * 2, Some(format!("msg-{}", n * 2)))),
    )
    .await;
    wait_metric(
        &daemon,
        "switchyard_event_outcomes_total{outcome=\"duplicate\"}",
        |v| v >= 10.0,
        Duration::from_secs(30),
        "the redelivered ids were not seen",
    )
    .await;
    assert_eq!(daemon.runs("three").await.len(), 1000);
    // Published straight to the queue (default exchange), not through the
    // binding's exchange: it still belongs to the queue's binding.
    broker::publish_all(
        &channel,
        "",
        [(
            queue.clone(),
            json!({"n": 1000}).to_string().into_bytes(),
            BasicProperties::default().with_content_type("application/json".into()),
        )],
    )
    .await;
    let runs = wait_ended(&daemon, "three", 1001, Duration::from_secs(30)).await;
    exactly_once(&runs, 1001);
    let m = metrics(&daemon).await;
    assert_eq!(m["switchyard_amqp_acked_total"], 1011.0);
    assert!(m["switchyard_amqp_unacked_max"] <= 100.0, "{m:?}");
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_and_a_broker_restart_lose_and_repeat_nothing() {
    let Some(_exclusive) =
        broker::exclusive("closed_connections_and_a_broker_restart_lose_and_repeat_nothing").await
    else {
        return;
    };
    const COUNT: usize = 2000;
    const PREFETCH: u16 = 20;
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let project = Project::new(&[amqp_binding(
        "orders",
        &exchange,
        &queue,
        json!({"prefetch": PREFETCH}),
    )]);
    let daemon = project.start(None).await;
    wait_consuming(&daemon, "the consumer did not start").await;

    // A steady stream: 2,000 messages over ~10 s, each retried with the
    // same message id until confirmed.
    let publisher = {
        let exchange = exchange.clone();
        tokio::spawn(async move {
            let mut publisher = broker::ResilientPublisher::new();
            for n in 0..COUNT {
                let body = json!({"n": n}).to_string();
                publisher
                    .publish(
                        &exchange,
                        "orders.created",
                        &format!("m-{n}"),
                        body.as_bytes(),
                    )
                    .await;
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            publisher.retries
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(|| broker::ctl(&["close_all_connections", "test: forced close"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = tokio::task::spawn_blocking(broker::StoppedBroker::stop)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();

    let retries = tokio::time::timeout(Duration::from_secs(180), publisher)
        .await
        .expect("publisher finished")
        .unwrap();
    let runs = wait_ended(&daemon, "three", COUNT, Duration::from_secs(120)).await;
    exactly_once(&runs, COUNT);

    let m = metrics(&daemon).await;
    assert!(
        m["switchyard_amqp_reconnects_total"] >= 2.0,
        "the consumer should have reconnected twice: {m:?}"
    );
    assert!(
        m["switchyard_amqp_unacked_max"] <= f64::from(PREFETCH),
        "more deliveries in flight than the prefetch: {m:?}"
    );
    // Deliveries dropped with a dead session left the gauge with it.
    assert_eq!(m["switchyard_amqp_unacked"], 0.0, "{m:?}");
    // The broker's view of the recovered consumer: the prefetch is in force.
    assert_eq!(consumer_prefetch(&queue).await, [PREFETCH.to_string()]);
    eprintln!(
        "publisher retries: {retries}; metrics: reconnects {} acks lost {} duplicates {}",
        m["switchyard_amqp_reconnects_total"],
        m["switchyard_amqp_acks_lost_total"],
        m["switchyard_event_outcomes_total{outcome=\"duplicate\"}"]
    );
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_queue_and_the_stream_flows_on() {
    let Some(_shared) =
        broker::shared("poison_messages_go_to_the_dead_letter_queue_and_the_stream_flows_on").await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let dlx = broker::unique("dlx");
    let dlq = broker::unique("dlq");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_exchange(&channel, &dlx, ExchangeKind::Fanout).await;
    broker::declare_queue(&channel, &dlq, &dlx, "", &[]).await;
    // The queue exists with a DLX: the daemon uses it as it is.
    broker::declare_queue(
        &channel,
        &queue,
        &exchange,
        "orders.#",
        &[(
            "x-dead-letter-exchange",
            AMQPValue::LongString(dlx.as_str().into()),
        )],
    )
    .await;
    let mut binding = amqp_binding("orders", &exchange, &queue, json!({}));
    binding["max_body"] = json!(64);
    let project = Project::new(&[binding]);
    let daemon = project.start(None).await;

    let json_type = || BasicProperties::default().with_content_type("application/json".into());
    let too_large = json!({"n": 3, "pad": "x".repeat(80)})
        .to_string()
        .into_bytes();
    let messages = vec![
        ("orders.a".to_string(), br#"{"n": 0}"#.to_vec(), json_type()),
        // Declared JSON, not JSON.
        ("orders.a".to_string(), b"{not json".to_vec(), json_type()),
        ("orders.a".to_string(), br#"{"n": 1}"#.to_vec(), json_type()),
        // Declared text, not UTF-8.
        (
            "orders.a".to_string(),
            vec![0xff, 0xfe, 0x00],
            BasicProperties::default().with_content_type("text/plain".into()),
        ),
        // Compressed: not something switchyard can read.
        (
            "orders.a".to_string(),
            b"\x1f\x8b...".to_vec(),
            json_type().with_content_encoding("gzip".into()),
        ),
        // Binary with a type: kept as base64.
        (
            "orders.bin".to_string(),
            vec![0, 1, 2, 255],
            BasicProperties::default().with_content_type("application/octet-stream".into()),
        ),
        // Plain text without a type.
        (
            "orders.text".to_string(),
            b"hello".to_vec(),
            BasicProperties::default(),
        ),
        // Over the binding's max_body (64 bytes).
        ("orders.a".to_string(), too_large.clone(), json_type()),
        ("orders.a".to_string(), br#"{"n": 2}"#.to_vec(), json_type()),
    ];
    broker::publish_all(&channel, &exchange, messages).await;

    let dead = broker::collect(&dlq, Duration::from_secs(30), |got| got.len() >= 4).await;
    assert_eq!(dead.len(), 4, "four poison messages dead-lettered");
    let bodies: BTreeSet<Vec<u8>> = dead.iter().map(|d| d.data.clone()).collect();
    assert!(bodies.contains(b"{not json".as_slice()));
    assert!(bodies.contains(&vec![0xff, 0xfe, 0x00]));
    assert!(bodies.contains(&too_large));

    let runs = wait_ended(&daemon, "three", 3, Duration::from_secs(30)).await;
    exactly_once(&runs, 3);
    // The text and binary messages are events too (their `params` need
    // `event.data.n`, so they are recorded as failed to start a run).
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = daemon.events().await;
        if events.len() >= 5 {
            break events;
        }
        assert!(Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        events.len(),
        5,
        "poison messages are not events: {events:?}"
    );
    let binary = events
        .iter()
        .find(|e| e["event"]["subject"] == "orders.bin")
        .unwrap();
    assert_eq!(binary["event"]["data"], "AAEC/w==");
    assert_eq!(
        binary["event"]["datacontenttype"],
        "application/octet-stream"
    );
    let text = events
        .iter()
        .find(|e| e["event"]["subject"] == "orders.text")
        .unwrap();
    assert_eq!(text["event"]["data"], "hello");
    let m = metrics(&daemon).await;
    assert_eq!(m["switchyard_amqp_rejected_total"], 4.0);
    assert_eq!(m["switchyard_amqp_too_large_total"], 1.0);
    assert_eq!(m["switchyard_events_rejected_total"], 4.0);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue, &dlq]).await;
}

pub(crate) fn publishing_workflow(project: &Project, name: &str, task: Value) {
    crate::util::write_workflow(
        &project.root().join("workflows"),
        name,
        &json!({"name": name, "tasks": [task]}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_task_publishes_with_confirms_and_fails_when_unroutable_or_nacked() {
    let Some(_shared) =
        broker::shared("the_amqp_task_publishes_with_confirms_and_fails_when_unroutable_or_nacked")
            .await
    else {
        return;
    };
    let exchange = broker::unique("out");
    let queue = broker::unique("sink");
    let full = broker::unique("full");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "promo.#", &[]).await;
    // A queue that takes nothing and says so: the broker nacks what it refuses.
    broker::declare_queue(
        &channel,
        &full,
        &exchange,
        "full.#",
        &[
            ("x-max-length", AMQPValue::LongInt(0)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ],
    )
    .await;

    let project = Project::new(&[]);
    let task = |key: &str, exchange: &str| {
        json!({"id": "send", "amqp": {
            "exchange": exchange, "routing_key": key,
            "json": {"sku": "${params.sku}", "n": 3},
            "headers": {"x-origin": "switchyard", "x-count": 2}}})
    };
    publishing_workflow(&project, "routed", task("promo.new", &exchange));
    publishing_workflow(&project, "unroutable", task("nobody.listens", &exchange));
    publishing_workflow(&project, "refused", task("full.now", &exchange));
    publishing_workflow(
        &project,
        "no_exchange",
        task("promo.new", &broker::unique("missing")),
    );
    let daemon = project.start(None).await;

    let mut ids = BTreeMap::new();
    for workflow in ["routed", "unroutable", "no_exchange", "refused", "routed"] {
        let (status, run) = daemon
            .post(
                &format!("/api/v1/workflows/{workflow}/runs"),
                json!({"params": {"sku": "A-1"}}).to_string().as_bytes(),
                &[("content-type", "application/json".into())],
            )
            .await;
        assert_eq!(status, 201, "{run}");
        ids.insert(run["id"].as_str().unwrap().to_string(), workflow);
    }
    for workflow in ["routed", "unroutable", "no_exchange", "refused"] {
        wait_ended(&daemon, workflow, 1, Duration::from_secs(30)).await;
    }
    let routed = daemon.runs("routed").await;
    assert!(
        routed.iter().all(|r| r["status"] == "succeeded"),
        "{routed:?}"
    );
    let run = daemon
        .get(&format!(
            "/api/v1/runs/{}",
            routed[0]["id"].as_str().unwrap()
        ))
        .await;
    let output = &run["tasks"]["send"]["output"];
    assert_eq!(output["exchange"], exchange);
    assert_eq!(output["routing_key"], "promo.new");
    assert_eq!(
        output["message_id"],
        format!("{}.send", routed[0]["id"].as_str().unwrap())
    );

    let unroutable = &daemon.runs("unroutable").await[0];
    assert_eq!(unroutable["status"], "failed");
    let run = daemon
        .get(&format!(
            "/api/v1/runs/{}",
            unroutable["id"].as_str().unwrap()
        ))
        .await;
    let error = run["tasks"]["send"]["error"].as_str().unwrap();
    assert!(
        error.contains("unroutable") && error.contains("nobody.listens"),
        "{error}"
    );

    let missing = &daemon.runs("no_exchange").await[0];
    assert_eq!(missing["status"], "failed");
    let run = daemon
        .get(&format!("/api/v1/runs/{}", missing["id"].as_str().unwrap()))
        .await;
    let error = run["tasks"]["send"]["error"].as_str().unwrap();
    assert!(
        error.contains("NOT_FOUND") || error.contains("no exchange"),
        "{error}"
    );

    let refused = &daemon.runs("refused").await[0];
    assert_eq!(refused["status"], "failed");
    let run = daemon
        .get(&format!("/api/v1/runs/{}", refused["id"].as_str().unwrap()))
        .await;
    let error = run["tasks"]["send"]["error"].as_str().unwrap();
    assert!(error.contains("nacked"), "{error}");

    // The channel closed by the missing exchange was replaced: this one works.
    let received = broker::collect(&queue, Duration::from_secs(10), |got| got.len() >= 2).await;
    assert_eq!(received.len(), 2);
    let body: Value = serde_json::from_slice(&received[0].data).unwrap();
    assert_eq!(body, json!({"sku": "A-1", "n": 3}));
    let props = &received[0].properties;
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    let headers = switchyard::amqp::field_table_json(props.headers().as_ref().unwrap());
    assert_eq!(headers["x-origin"], "switchyard");
    assert_eq!(headers["x-count"], 2);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue, &full]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_wait_out_a_broker_outage_and_all_arrive() {
    let Some(_exclusive) =
        broker::exclusive("lifecycle_events_wait_out_a_broker_outage_and_all_arrive").await
    else {
        return;
    };
    let events_exchange = broker::unique("lifecycle");
    let sink = broker::unique("sink");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &events_exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &sink, &events_exchange, "#", &[]).await;
    let _ = connection.close(200, "setup".into()).await;

    let project = Project::with_config(
        &[],
        &[],
        json!({"amqp": {"events_exchange": events_exchange}}),
    );
    crate::util::write_workflow(
        &project.root().join("workflows"),
        "breaks",
        &json!({"name": "breaks", "tasks": [{"id": "boom", "shell": {"command": ["false"]}}]}),
    );
    let daemon = project.start(None).await;
    let start = |workflow: &'static str| {
        let daemon = &daemon;
        async move {
            let (status, run) = daemon
                .post(
                    &format!("/api/v1/workflows/{workflow}/runs"),
                    b"{}",
                    &[("content-type", "application/json".into())],
                )
                .await;
            assert_eq!(status, 201, "{run}");
            run["id"].as_str().unwrap().to_string()
        }
    };
    // Two runs while the broker is up.
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for _ in 0..2 {
        let id = start("three").await;
        expected.insert((id.clone(), "run.started".into()));
        expected.insert((id, "run.succeeded".into()));
    }
    wait_ended(&daemon, "three", 2, Duration::from_secs(30)).await;

    // The broker goes away; runs go on ending.
    let stopped = tokio::task::spawn_blocking(broker::StoppedBroker::stop)
        .await
        .unwrap();
    for _ in 0..10 {
        let id = start("three").await;
        expected.insert((id.clone(), "run.started".into()));
        expected.insert((id, "run.succeeded".into()));
    }
    let id = start("breaks").await;
    expected.insert((id.clone(), "run.started".into()));
    expected.insert((id.clone(), "task.failed".into()));
    expected.insert((id, "run.failed".into()));
    wait_ended(&daemon, "three", 12, Duration::from_secs(30)).await;
    wait_ended(&daemon, "breaks", 1, Duration::from_secs(30)).await;
    assert!(
        metric(&daemon, "switchyard_outbox_pending").await >= 23.0,
        "the events of runs that ended during the outage wait in the outbox"
    );
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();

    let got = broker::collect(&sink, Duration::from_secs(60), |got| {
        let ids: BTreeSet<&str> = got
            .iter()
            .filter_map(|d| d.properties.message_id().as_ref().map(|m| m.as_str()))
            .collect();
        ids.len() >= expected.len()
    })
    .await;
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for delivery in &got {
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        let id = event["id"].as_str().unwrap().to_string();
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            Some(id.clone())
        );
        // A duplicate carries the same id and the same body.
        if let Some(previous) = by_id.insert(id, delivery.data.clone()) {
            assert_eq!(previous, delivery.data);
        }
        let kind = event["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("switchyard.");
        let workflow = event["data"]["workflow"].as_str().unwrap();
        assert_eq!(delivery.routing_key.as_str(), format!("{workflow}.{kind}"));
        seen.insert((
            event["data"]["run_id"].as_str().unwrap().to_string(),
            kind.to_string(),
        ));
    }
    assert_eq!(seen, expected);
    wait_metric(
        &daemon,
        "switchyard_outbox_pending",
        |v| v <= 0.0,
        Duration::from_secs(10),
        "the outbox was not emptied",
    )
    .await;
    daemon.stop().await;
    broker::delete_queues(&[&sink]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_while_the_broker_is_down_serves_and_then_consumes() {
    let Some(_exclusive) =
        broker::exclusive("a_daemon_started_while_the_broker_is_down_serves_and_then_consumes")
            .await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let project = Project::new(&[
        amqp_binding("orders", &exchange, &queue, json!({})),
        json!({"name": "api", "on": {"api": {}}, "workflow": "second", "filter": "event.type == 'ping'"}),
    ]);
    let stopped = tokio::task::spawn_blocking(broker::StoppedBroker::stop)
        .await
        .unwrap();
    let daemon = project.start(None).await;
    // Everything but AMQP works.
    let (status, reply) = daemon
        .post(
            "/api/v1/events",
            json!({"type": "ping", "data": {}}).to_string().as_bytes(),
            &[("content-type", "application/json".into())],
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    wait_ended(&daemon, "second", 1, Duration::from_secs(30)).await;
    wait_metric(
        &daemon,
        "switchyard_amqp_reconnects_total",
        |v| v >= 2.0,
        Duration::from_secs(30),
        "the consumer is not retrying",
    )
    .await;
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();
    wait_metric(
        &daemon,
        "switchyard_amqp_consumers",
        |v| v >= 1.0,
        Duration::from_secs(60),
        "the consumer did not connect",
    )
    .await;
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::publish_all(&channel, &exchange, (0..5).map(|n| json_message(n, None))).await;
    let runs = wait_ended(&daemon, "three", 5, Duration::from_secs(30)).await;
    exactly_once(&runs, 5);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

/// A daemon consuming `queue` (bound to `exchange`) through a
/// [`broker::SilentProxy`], with `query` appended to its broker URL; returned
/// once its consumer is consuming.
async fn proxied_daemon(
    exchange: &str,
    queue: &str,
    query: &str,
) -> (broker::SilentProxy, Project, Daemon) {
    let proxy = broker::SilentProxy::start().await;
    let project = Project::with_config(
        &[amqp_binding("orders", exchange, queue, json!({}))],
        &[],
        json!({"amqp": {"url": format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", proxy.port)}}),
    );
    let daemon = project.start(None).await;
    wait_consuming(&daemon, "the consumer did not connect").await;
    (proxy, project, daemon)
}

/// Waits until the daemon's consumer is consuming.
pub(crate) async fn wait_consuming(daemon: &Daemon, what: &str) {
    wait_metric(
        daemon,
        "switchyard_amqp_consumers",
        |v| v >= 1.0,
        Duration::from_secs(30),
        what,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_connection_is_dropped_by_heartbeats_and_consuming_resumes() {
    let Some(_shared) =
        broker::shared("a_silent_broker_connection_is_dropped_by_heartbeats_and_consuming_resumes")
            .await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let (proxy, _project, daemon) = proxied_daemon(&exchange, &queue, "?heartbeat=2").await;
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::publish_all(&channel, &exchange, (0..5).map(|n| json_message(n, None))).await;
    wait_ended(&daemon, "three", 5, Duration::from_secs(30)).await;

    // The consumer's connection goes quiet without closing: only missed
    // heartbeats can tell. Messages published meanwhile wait in the queue
    // (or come back unacked when the broker gives up on the silent client).
    proxy.silence();
    broker::publish_all(&channel, &exchange, (5..10).map(|n| json_message(n, None))).await;
    let runs = wait_ended(&daemon, "three", 10, Duration::from_secs(60)).await;
    exactly_once(&runs, 10);
    let reconnects = metric(&daemon, "switchyard_amqp_reconnects_total").await;
    assert!(reconnects >= 1.0, "reconnects: {reconnects}");
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cut_off_again_and_again_reconnects_at_once_each_time() {
    let Some(_shared) =
        broker::shared("a_consumer_cut_off_again_and_again_reconnects_at_once_each_time").await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let (proxy, _project, daemon) = proxied_daemon(&exchange, &queue, "").await;

    // Each session worked before it was cut, so each retry starts from the
    // shortest backoff. Had the backoff kept doubling, eight cuts would cost
    // 0.2 + 0.4 + ... + 25.6 s = 51 s.
    let started = Instant::now();
    for cut in 1..=8 {
        proxy.cut();
        wait_metric(
            &daemon,
            "switchyard_amqp_reconnects_total",
            |v| v >= f64::from(cut),
            Duration::from_secs(30),
            "the cut was not noticed",
        )
        .await;
        wait_consuming(&daemon, "the consumer did not come back").await;
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "eight reconnects took {took:?}"
    );

    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::publish_all(&channel, &exchange, (0..5).map(|n| json_message(n, None))).await;
    let runs = wait_ended(&daemon, "three", 5, Duration::from_secs(30)).await;
    exactly_once(&runs, 5);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

/// The broker's prefetch for the consumers on `queue` (none: empty).
async fn consumer_prefetch(queue: &str) -> Vec<String> {
    let consumers = tokio::task::spawn_blocking(|| {
        broker::ctl(&["list_consumers", "-q", "queue_name", "prefetch_count"])
    })
    .await
    .unwrap();
    consumers
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(queue))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

async fn wait_prefetch(queue: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = consumer_prefetch(queue).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumers on {queue}: prefetch {found:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_or_removing_an_amqp_binding_restarts_or_stops_its_consumer() {
    let Some(_shared) =
        broker::shared("editing_or_removing_an_amqp_binding_restarts_or_stops_its_consumer").await
    else {
        return;
    };
    let exchange = broker::unique("orders");
    let queue = broker::unique("q");
    let project = Project::new(&[amqp_binding(
        "orders",
        &exchange,
        &queue,
        json!({"prefetch": 7}),
    )]);
    let daemon = project.start(None).await;
    wait_prefetch(&queue, &["7"]).await;

    // A new prefetch: the consumer is replaced, and messages still run once.
    std::fs::write(
        project.root().join("bindings/b0.json"),
        amqp_binding("orders", &exchange, &queue, json!({"prefetch": 13})).to_string(),
    )
    .unwrap();
    wait_prefetch(&queue, &["13"]).await;
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::publish_all(&channel, &exchange, (0..5).map(|n| json_message(n, None))).await;
    let runs = wait_ended(&daemon, "three", 5, Duration::from_secs(30)).await;
    exactly_once(&runs, 5);

    // The binding gone: nothing consumes the queue any more.
    std::fs::remove_file(project.root().join("bindings/b0.json")).unwrap();
    wait_prefetch(&queue, &[]).await;
    assert_eq!(metric(&daemon, "switchyard_amqp_consumers").await, 0.0);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

/// The queue's bindings as the broker has them: (exchange, routing key).
fn broker_bindings(queue: &str) -> BTreeSet<(String, String)> {
    broker::ctl(&[
        "list_bindings",
        "-q",
        "--no-table-headers",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .lines()
    .filter_map(|line| {
        let mut fields = line.split('\t');
        let (source, destination, key) = (fields.next()?, fields.next()?, fields.next()?);
        (destination == queue && !source.is_empty()).then(|| (source.into(), key.into()))
    })
    .collect()
}

async fn wait_broker_bindings(queue: &str, expected: &[(&str, &str)]) {
    let expected: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(e, k)| (e.to_string(), k.to_string()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = broker_bindings(queue);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bindings of {queue}: {found:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_sharing_a_queue_through_two_exchanges_each_run_only_their_own_messages() {
    let Some(_shared) = broker::shared(
        "bindings_sharing_a_queue_through_two_exchanges_each_run_only_their_own_messages",
    )
    .await
    else {
        return;
    };
    let orders = broker::unique("orders");
    let refunds = broker::unique("refunds");
    let queue = broker::unique("q");
    let binding = |name: &str, exchange: &str, key: &str, workflow: &str| {
        let mut b = amqp_binding(name, exchange, &queue, json!({"routing_key": key}));
        b["workflow"] = json!(workflow);
        b
    };
    let project = Project::new(&[
        binding("orders", &orders, "orders.#", "three"),
        binding("refunds", &refunds, "refunds.#", "second"),
    ]);
    let daemon = project.start(None).await;
    wait_consuming(&daemon, "the consumer did not start").await;
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    let message = |n: usize, key: &str| {
        (
            key.to_string(),
            json!({"n": n}).to_string().into_bytes(),
            BasicProperties::default().with_content_type("application/json".into()),
        )
    };
    broker::publish_all(
        &channel,
        &orders,
        (0..5).map(|n| message(n, "orders.created")),
    )
    .await;
    broker::publish_all(
        &channel,
        &refunds,
        (5..8).map(|n| message(n, "refunds.created")),
    )
    .await;
    let three = wait_ended(&daemon, "three", 5, Duration::from_secs(30)).await;
    let second = wait_ended(&daemon, "second", 3, Duration::from_secs(30)).await;
    exactly_once(&three, 5);
    let mut refunded: Vec<i64> = second
        .iter()
        .map(|r| r["params"]["n"].as_i64().unwrap())
        .collect();
    refunded.sort();
    assert_eq!(refunded, [5, 6, 7], "refunds ran only the refunds binding");

    // A binding made outside switchyard on one of the bindings' exchanges:
    // its messages match no binding, and are recorded as unrouted
    // (visible, counted, acked), never run.
    broker::declare_queue(&channel, &queue, &orders, "stray.#", &[]).await;
    broker::publish_all(&channel, &orders, [message(99, "stray.x")]).await;
    wait_metric(
        &daemon,
        "switchyard_event_outcomes_total{outcome=\"unrouted\"}",
        |v| v == 1.0,
        Duration::from_secs(20),
        "the foreign message was not recorded as unrouted",
    )
    .await;
    let events = daemon.events().await;
    let unrouted = events
        .iter()
        .find(|e| e["outcomes"][0]["outcome"] == "unrouted")
        .expect("an unrouted event");
    assert_eq!(unrouted["outcomes"][0]["exchange"], json!(orders));
    assert_eq!(unrouted["outcomes"][0]["routing_key"], "stray.x");
    assert_eq!(unrouted["outcomes"][0]["queue"], json!(queue));
    assert_eq!(unrouted["event"]["data"], json!({"n": 99}));
    assert_eq!(daemon.runs("three").await.len(), 5);
    assert_eq!(daemon.runs("second").await.len(), 3);
    assert_eq!(metric(&daemon, "switchyard_amqp_unacked").await, 0.0);

    // A changed routing key: the old queue binding is removed from the broker.
    wait_broker_bindings(
        &queue,
        &[
            (&orders, "orders.#"),
            (&refunds, "refunds.#"),
            (&orders, "stray.#"),
        ],
    )
    .await;
    std::fs::write(
        project.root().join("bindings/b0.json"),
        binding("orders", &orders, "orders.created", "three").to_string(),
    )
    .unwrap();
    wait_broker_bindings(
        &queue,
        &[
            (&orders, "orders.created"),
            (&refunds, "refunds.#"),
            (&orders, "stray.#"),
        ],
    )
    .await;
    // Both bindings removed: every binding switchyard made is removed, the
    // one it did not make stays, and the queue is reported as left over.
    std::fs::remove_file(project.root().join("bindings/b0.json")).unwrap();
    std::fs::remove_file(project.root().join("bindings/b1.json")).unwrap();
    wait_broker_bindings(&queue, &[(&orders, "stray.#")]).await;
    let listed = daemon.get("/api/v1/bindings").await;
    assert!(
        listed["unbound_queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == json!(queue)),
        "{listed}"
    );
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

/// lapin hands a `basic.return` to whichever confirm it resolves next, so
/// with publishes of several callers in flight on the shared channel a
/// delivered message could be reported unroutable (and retried: sent
/// twice) while an unroutable one passed as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mandatory_publishes_each_get_their_own_outcome() {
    use switchyard::amqp::{Broker, Outgoing, PublishError};
    let Some(_shared) =
        broker::shared("concurrent_mandatory_publishes_each_get_their_own_outcome").await
    else {
        return;
    };
    let exchange = broker::unique("mixed");
    let queue = broker::unique("mixed-sink");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "routed.#", &[]).await;
    let publisher = Broker::new(broker::URL, None);
    let message = |i: usize| {
        let key = if i.is_multiple_of(3) {
            "nobody.listens"
        } else {
            "routed.here"
        };
        Outgoing {
            exchange: exchange.clone(),
            routing_key: key.into(),
            body: format!("{{\"n\": {i}}}").into_bytes(),
            properties: lapin::BasicProperties::default()
                .with_message_id(format!("m-{i}").into())
                .with_delivery_mode(2),
            mandatory: true,
        }
    };
    for round in 0..5 {
        // Single publishes from many tasks at once, and batches of mixed
        // messages, all in flight together.
        let mut tasks = Vec::new();
        for i in 0..60 {
            let publisher = publisher.clone();
            let one = message(i);
            tasks.push(tokio::spawn(async move {
                vec![(i, publisher.publish(one).await)]
            }));
        }
        for chunk in 0..4 {
            let publisher = publisher.clone();
            let batch: Vec<_> = (100 + chunk * 10..110 + chunk * 10).map(message).collect();
            tasks.push(tokio::spawn(async move {
                let results = publisher.publish_many(batch).await;
                (100 + chunk * 10..).zip(results).collect()
            }));
        }
        for task in tasks {
            for (i, result) in task.await.unwrap() {
                if i.is_multiple_of(3) {
                    assert!(
                        matches!(&result, Err(PublishError::Unroutable { routing_key, .. }) if routing_key == "nobody.listens"),
                        "round {round}: message {i} is unroutable: {result:?}"
                    );
                } else {
                    assert!(
                        result.is_ok(),
                        "round {round}: message {i} was delivered: {result:?}"
                    );
                }
            }
        }
    }
    let delivered = broker::ctl(&["list_queues", "name", "messages"]);
    let line = delivered
        .lines()
        .find(|l| l.starts_with(&queue))
        .unwrap_or_default()
        .to_string();
    let routed_per_round = (0..60usize).filter(|i| !i.is_multiple_of(3)).count()
        + (100..140usize).filter(|i| !i.is_multiple_of(3)).count();
    assert!(
        line.ends_with(&format!("\t{}", routed_per_round * 5)),
        "every routed message is in the queue once: {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_over_amqp_keep_their_own_attributes() {
    let Some(_shared) = broker::shared("cloudevents_over_amqp_keep_their_own_attributes").await
    else {
        return;
    };
    let exchange = broker::unique("ce");
    let queue = broker::unique("q");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "orders.#", &[]).await;
    let mut binding = amqp_binding("ce", &exchange, &queue, json!({}));
    binding["filter"] = json!("event.type == 'order.created'");
    let project = Project::new(&[binding]);
    let daemon = project.start(None).await;
    // Binary mode (the RabbitMQ binding): attributes in ce- headers, the
    // body is the data and its own `type` key stays data.
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "ce-amqp-binary-1"),
        ("ce-type", "order.created"),
        ("ce-source", "/shop"),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    let binary = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_headers(headers);
    // Structured mode: the body is the whole event.
    let structured =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    let messages = vec![
        (
            "orders.a".to_string(),
            br#"{"type": "inner", "n": 1}"#.to_vec(),
            binary,
        ),
        (
            "orders.b".to_string(),
            br#"{"specversion": "1.0", "id": "ce-amqp-structured-1", "type": "order.created",
                 "source": "/shop", "subject": "order 9", "data": {"n": 2}}"#
                .to_vec(),
            structured,
        ),
    ];
    broker::publish_all(&channel, &exchange, messages).await;
    let runs = wait_ended(&daemon, "three", 2, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let binary = daemon.get("/api/v1/events/ce-amqp-binary-1").await;
    assert_eq!(binary["event"]["type"], "order.created", "{binary}");
    assert_eq!(binary["event"]["source"], "/shop");
    assert_eq!(binary["event"]["data"], json!({"type": "inner", "n": 1}));
    assert_eq!(binary["event"]["switchyard"]["routing_key"], "orders.a");
    let structured = daemon.get("/api/v1/events/ce-amqp-structured-1").await;
    assert_eq!(structured["event"]["subject"], "order 9", "{structured}");
    assert_eq!(structured["event"]["data"], json!({"n": 2}));
    assert_eq!(structured["outcomes"][0]["outcome"], "started");
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_amqp_binding_leaves_messages_in_the_queue_until_resumed() {
    let Some(_shared) =
        broker::shared("a_paused_amqp_binding_leaves_messages_in_the_queue_until_resumed").await
    else {
        return;
    };
    let exchange = broker::unique("pause");
    let queue = broker::unique("q");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "orders.#", &[]).await;
    let project = Project::new(&[amqp_binding("paused", &exchange, &queue, json!({}))]);
    let daemon = project.start(None).await;
    let (status, answer) = daemon.post("/api/v1/bindings/paused/pause", b"", &[]).await;
    assert_eq!(status, 200, "{answer}");
    // The consumer stops (the queue stays bound): messages wait there.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics(&daemon).await["switchyard_amqp_consumers"] != 0.0 {
        assert!(Instant::now() < deadline, "the consumer did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let json_type = || BasicProperties::default().with_content_type("application/json".into());
    let messages: Vec<_> = (0..20)
        .map(|n| {
            (
                "orders.a".to_string(),
                json!({"n": n}).to_string().into_bytes(),
                json_type().with_message_id(format!("held-{n}").into()),
            )
        })
        .collect();
    broker::publish_all(&channel, &exchange, messages).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        daemon.runs("three").await.is_empty(),
        "a paused binding consumed"
    );
    // All 20 wait in the queue (one delivered to the consumer as it was
    // stopping goes back to it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = broker::ctl(&["list_queues", "name", "messages"]);
        let waiting = listed
            .lines()
            .find(|l| l.starts_with(&queue))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok());
        if waiting == Some(20) {
            break;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paused_events = daemon
        .events()
        .await
        .into_iter()
        .filter(|e| e["outcomes"][0]["outcome"] == "paused")
        .count();
    assert_eq!(
        paused_events, 0,
        "a message was taken and recorded as paused"
    );
    let (status, _) = daemon
        .post("/api/v1/bindings/paused/resume", b"", &[])
        .await;
    assert_eq!(status, 200);
    let runs = wait_ended(&daemon, "three", 20, Duration::from_secs(30)).await;
    exactly_once(&runs, 20);
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absence_alerts_are_published_with_the_lifecycle_events() {
    let Some(_shared) =
        broker::shared("absence_alerts_are_published_with_the_lifecycle_events").await
    else {
        return;
    };
    let events_exchange = broker::unique("alerts");
    let sink = broker::unique("alert-sink");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &events_exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &sink, &events_exchange, "#.binding.missed", &[]).await;
    let _ = connection.close(200, "setup".into()).await;
    let project = Project::with_config(
        &[
            json!({"name": "feed", "on": {"api": {}}, "workflow": "second", "expect": {"every": "1s"}}),
        ],
        &[],
        json!({"amqp": {"events_exchange": events_exchange}}),
    );
    let daemon = project.start(None).await;
    let got = broker::collect(&sink, Duration::from_secs(30), |got| got.len() >= 2).await;
    assert!(got.len() >= 2, "{} alerts published", got.len());
    for delivery in &got {
        assert_eq!(delivery.routing_key.as_str(), "second.binding.missed");
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(event["type"], "switchyard.binding.missed", "{event}");
        assert_eq!(event["data"]["binding"], "feed");
        assert!(event.get("switchyard").is_none(), "{event}");
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            event["id"].as_str().map(str::to_string)
        );
        // The same event is recorded in the log.
        let id = event["id"].as_str().unwrap();
        let recorded = daemon.get(&format!("/api/v1/events/{id}")).await;
        assert_eq!(recorded["event"]["data"], event["data"]);
    }
    daemon.stop().await;
    broker::delete_queues(&[&sink]).await;
}
