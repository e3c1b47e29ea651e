//! TLS to RabbitMQ (`amqps://`), against the real broker behind a
//! TLS-terminating proxy whose certificate a CA made in the test signed
//! (`util::tls_proxy`): the trigger consumes, the `amqp` task publishes and
//! lifecycle events arrive through it with `amqp.tls.ca_file`; a broker
//! certificate from another CA fails as a TLS error that says so and starts
//! nothing; mutual TLS presents `cert_file` / `key_file`. The files of
//! `amqp.tls` are checked at load, naming the key and the file.
//!
//! The broker tests follow the SKIPPED rule of `util::broker`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::ExchangeKind;
use serde_json::{Value, json};

use crate::amqp::{
    amqp_binding, exactly_once, json_message, publishing_workflow, wait_consuming, wait_ended,
};
use crate::triggers::{Daemon, Project};
use crate::util::broker;
use crate::util::tls_proxy::{TestCa, TlsProxy};

/// `amqp` config for the proxy, trusting `ca.pem` in the project dir (a
/// relative path: it resolves against the project dir).
fn tls_config(proxy: &TlsProxy, extra: Value) -> Value {
    let mut tls = json!({"ca_file": "ca.pem"});
    if let (Value::Object(tls), Value::Object(extra)) = (&mut tls, extra) {
        tls.extend(extra);
    }
    json!({"url": proxy.url(), "tls": tls})
}

/// The `consumer` of binding `name` in `GET /bindings`.
async fn consumer(daemon: &Daemon, name: &str) -> Value {
    let listed = daemon.get("/api/v1/bindings").await;
    listed["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no binding {name}: {listed}"))["consumer"]
        .clone()
}

/// Starts a run of `workflow` through the API; its id.
async fn start_run(daemon: &Daemon, workflow: &str) -> String {
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

/// The error of task `task` of run `id`.
async fn task_error(daemon: &Daemon, id: &str, task: &str) -> String {
    let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
    run["tasks"][task]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("task {task} has no error: {run}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_binding_consumes_through_tls_trusting_the_projects_ca() {
    let Some(_shared) =
        broker::shared("an_amqps_binding_consumes_through_tls_trusting_the_projects_ca").await
    else {
        return;
    };
    let ca = TestCa::new("switchyard test CA");
    let proxy = TlsProxy::start(&ca, None).await;
    let exchange = broker::unique("tls-orders");
    let queue = broker::unique("tls-q");
    let project = Project::with_config(
        &[amqp_binding("orders", &exchange, &queue, json!({}))],
        &[],
        json!({"amqp": tls_config(&proxy, json!({}))}),
    );
    ca.write(project.root(), "ca.pem");
    let daemon = project.start(None).await;
    wait_consuming(&daemon, "the consumer did not connect through TLS").await;
    let state = consumer(&daemon, "orders").await;
    assert_eq!(state["status"], "consuming", "{state}");
    assert_eq!(state["queue"], queue.as_str());
    assert!(
        proxy.handshakes() >= 1,
        "the consumer did not come through the proxy"
    );

    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::publish_all(
        &channel,
        &exchange,
        (0..50).map(|n| json_message(n, Some(format!("tls-{n}")))),
    )
    .await;
    let runs = wait_ended(&daemon, "three", 50, Duration::from_secs(60)).await;
    exactly_once(&runs, 50);
    assert!(runs.iter().all(|r| r["status"] == "succeeded"));
    let _ = connection.close(200, "done".into()).await;
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_task_and_lifecycle_events_publish_through_tls() {
    let Some(_shared) =
        broker::shared("the_amqp_task_and_lifecycle_events_publish_through_tls").await
    else {
        return;
    };
    let ca = TestCa::new("switchyard test CA");
    let proxy = TlsProxy::start(&ca, None).await;
    let exchange = broker::unique("tls-out");
    let queue = broker::unique("tls-sink");
    let events_exchange = broker::unique("tls-lifecycle");
    let events = broker::unique("tls-events");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "promo.#", &[]).await;
    broker::declare_exchange(&channel, &events_exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &events, &events_exchange, "#", &[]).await;
    let _ = connection.close(200, "setup".into()).await;

    let mut amqp = tls_config(&proxy, json!({}));
    amqp["events_exchange"] = json!(events_exchange);
    let project = Project::with_config(&[], &[], json!({ "amqp": amqp }));
    ca.write(project.root(), "ca.pem");
    publishing_workflow(
        &project,
        "send",
        json!({"id": "send", "amqp": {
            "exchange": exchange, "routing_key": "promo.new", "json": {"sku": "T-1"}}}),
    );
    let daemon = project.start(None).await;
    let id = start_run(&daemon, "send").await;
    let runs = wait_ended(&daemon, "send", 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:?}", runs[0]);

    // The task's message, confirmed by the broker, is in the queue.
    let received = broker::collect(&queue, Duration::from_secs(10), |got| !got.is_empty()).await;
    assert_eq!(received.len(), 1);
    let body: Value = serde_json::from_slice(&received[0].data).unwrap();
    assert_eq!(body, json!({"sku": "T-1"}));

    // The run's lifecycle events came through the same TLS publisher.
    let got = broker::collect(&events, Duration::from_secs(30), |got| got.len() >= 2).await;
    let kinds: BTreeSet<String> = got
        .iter()
        .map(|d| serde_json::from_slice::<Value>(&d.data).unwrap())
        .filter(|e| e["data"]["run_id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "switchyard.run.started".to_string(),
            "switchyard.run.succeeded".to_string()
        ])
    );
    assert!(proxy.handshakes() >= 1, "nothing came through the proxy");
    daemon.stop().await;
    broker::delete_queues(&[&queue, &events]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_fails_as_a_tls_error_and_starts_nothing() {
    let Some(_shared) = broker::shared(
        "a_broker_certificate_from_another_ca_fails_as_a_tls_error_and_starts_nothing",
    )
    .await
    else {
        return;
    };
    let ca = TestCa::new("switchyard test CA");
    let other = TestCa::new("another test CA");
    let proxy = TlsProxy::start(&ca, None).await;
    let exchange = broker::unique("tls-wrong");
    let queue = broker::unique("tls-wrong-q");
    // The queue exists and holds a message: nothing may consume it.
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "orders.#", &[]).await;
    broker::publish_all(&channel, &exchange, [json_message(1, Some("m-1".into()))]).await;

    let project = Project::with_config(
        &[amqp_binding("orders", &exchange, &queue, json!({}))],
        &[],
        json!({"amqp": tls_config(&proxy, json!({}))}),
    );
    // The project trusts another CA than the one that signed the proxy's.
    other.write(project.root(), "ca.pem");
    publishing_workflow(
        &project,
        "send",
        json!({"id": "send", "amqp": {"exchange": exchange, "routing_key": "orders.x", "json": {}}}),
    );
    let daemon = project.start(None).await;
    let peer = format!("localhost:{}", proxy.port);
    let says_why = |error: &str| {
        error.contains("TLS certificate verification failed")
            && error.contains(&peer)
            && error.contains("UnknownIssuer")
            && error.contains("amqps://guest@localhost")
            && !error.contains("guest:guest")
    };

    // The consumer says why it is not consuming.
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let state = consumer(&daemon, "orders").await;
        if state["status"] == "reconnecting" {
            break state;
        }
        assert!(Instant::now() < deadline, "no connect error shown: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = state["error"].as_str().unwrap();
    assert!(says_why(error), "{error}");

    // The amqp task fails with the same reason.
    let id = start_run(&daemon, "send").await;
    let runs = wait_ended(&daemon, "send", 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0]["status"], "failed");
    let error = task_error(&daemon, &id, "send").await;
    assert!(says_why(&error), "{error}");

    // Without amqp.tls the system's roots decide, and they do not know the
    // test CA either.
    let plain = switchyard::amqp::Endpoint::new(&proxy.url()).unwrap();
    let error = switchyard::amqp::connect(&plain, "test").await.unwrap_err();
    assert!(
        matches!(error, switchyard::amqp::ConnectError::Certificate { .. }),
        "{error}"
    );

    // Nothing got through: no run, the message still waits in the queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(daemon.runs("three").await.is_empty());
    assert_eq!(proxy.handshakes(), 0);
    assert!(proxy.failed() >= 1);
    daemon.stop().await;
    let left = broker::collect(&queue, Duration::from_secs(10), |got| !got.is_empty()).await;
    assert_eq!(left.len(), 1, "the message was consumed");
    let _ = connection.close(200, "done".into()).await;
    broker::delete_queues(&[&queue]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_and_without_one_is_refused() {
    let Some(_shared) =
        broker::shared("mutual_tls_presents_the_client_certificate_and_without_one_is_refused")
            .await
    else {
        return;
    };
    let ca = TestCa::new("switchyard test CA");
    let proxy = TlsProxy::start(&ca, Some(&ca)).await;
    let exchange = broker::unique("mtls-out");
    let queue = broker::unique("mtls-sink");
    let connection = broker::connect().await;
    let channel = broker::confirm_channel(&connection).await;
    broker::declare_exchange(&channel, &exchange, ExchangeKind::Topic).await;
    broker::declare_queue(&channel, &queue, &exchange, "promo.#", &[]).await;
    let _ = connection.close(200, "setup".into()).await;
    let task = json!({"id": "send", "amqp": {"exchange": exchange, "routing_key": "promo.new", "json": {}}});

    // With the client certificate: the task publishes.
    let with_cert = Project::with_config(
        &[],
        &[],
        json!({"amqp": tls_config(&proxy, json!({"cert_file": "certs/client.crt", "key_file": "certs/client.key"}))}),
    );
    ca.write(with_cert.root(), "ca.pem");
    std::fs::create_dir_all(with_cert.root().join("certs")).unwrap();
    ca.client_cert(&with_cert.root().join("certs"), "client");
    publishing_workflow(&with_cert, "send", task.clone());
    let daemon = with_cert.start(None).await;
    start_run(&daemon, "send").await;
    let runs = wait_ended(&daemon, "send", 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0]["status"], "succeeded", "{:?}", runs[0]);
    let received = broker::collect(&queue, Duration::from_secs(10), |got| !got.is_empty()).await;
    assert_eq!(received.len(), 1);
    daemon.stop().await;

    // Without one, the broker's side refuses the connection: a TLS error.
    let without = Project::with_config(&[], &[], json!({"amqp": tls_config(&proxy, json!({}))}));
    ca.write(without.root(), "ca.pem");
    publishing_workflow(&without, "send", task);
    let daemon = without.start(None).await;
    let id = start_run(&daemon, "send").await;
    let runs = wait_ended(&daemon, "send", 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0]["status"], "failed");
    let error = task_error(&daemon, &id, "send").await;
    let peer = format!("localhost:{}", proxy.port);
    assert!(
        error.contains("TLS with")
            && error.contains(&peer)
            && error.contains("requires a client certificate"),
        "{error}"
    );
    daemon.stop().await;
    broker::delete_queues(&[&queue]).await;
}

/// Loads a `switchyard.json` holding `amqp`; the error text, if any.
fn load_error(dir: &std::path::Path, amqp: Value) -> Option<String> {
    let file = dir.join("switchyard.json");
    std::fs::write(&file, json!({ "amqp": amqp }).to_string()).unwrap();
    switchyard::spec::Config::load(&file, false)
        .err()
        .map(|e| e.to_string())
}

#[test]
fn the_tls_files_are_checked_at_load_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = TestCa::new("switchyard test CA");
    let other = TestCa::new("another test CA");
    std::fs::create_dir(root.join("certs")).unwrap();
    ca.write(&root.join("certs"), "ca.pem");
    ca.client_cert(&root.join("certs"), "client");
    other.client_cert(&root.join("certs"), "other");
    std::fs::write(root.join("certs/garbage.pem"), "not a certificate\n").unwrap();
    let url = json!("amqps://guest:guest@localhost:5671/%2f");

    // Relative paths resolve against the project dir, whatever the cwd.
    let good = json!({"url": url, "tls": {
        "ca_file": "certs/ca.pem", "cert_file": "certs/client.crt", "key_file": "certs/client.key"}});
    assert_eq!(load_error(root, good), None);

    // A client certificate needs both files.
    let error = load_error(root, json!({"tls": {"cert_file": "certs/client.crt"}})).unwrap();
    assert!(
        error.contains("amqp.tls.cert_file") && error.contains("key_file"),
        "{error}"
    );
    let error = load_error(root, json!({"tls": {"key_file": "certs/client.key"}})).unwrap();
    assert!(error.contains("amqp.tls.cert_file"), "{error}");

    // A file that cannot be read, or holds no certificate.
    let error = load_error(root, json!({"tls": {"ca_file": "certs/missing.pem"}})).unwrap();
    assert!(
        error.contains("amqp.tls.ca_file")
            && error.contains(&root.join("certs/missing.pem").display().to_string())
            && error.contains("cannot read"),
        "{error}"
    );
    let error = load_error(root, json!({"tls": {"ca_file": "certs/garbage.pem"}})).unwrap();
    assert!(
        error.contains("amqp.tls.ca_file")
            && error.contains("garbage.pem")
            && error.contains("no PEM certificate"),
        "{error}"
    );

    // A key that is not a key, or not the certificate's.
    let error = load_error(
        root,
        json!({"tls": {"cert_file": "certs/client.crt", "key_file": "certs/client.crt"}}),
    )
    .unwrap();
    assert!(
        error.contains("amqp.tls.key_file") && error.contains("no unencrypted private key"),
        "{error}"
    );
    let error = load_error(
        root,
        json!({"tls": {"cert_file": "certs/client.crt", "key_file": "certs/other.key"}}),
    )
    .unwrap();
    assert!(
        error.contains("amqp.tls.key_file")
            && error.contains("other.key")
            && error.contains("client.crt"),
        "{error}"
    );

    // `switchyard validate` stops on it, exit 2.
    std::fs::create_dir(root.join("workflows")).unwrap();
    std::fs::create_dir(root.join("bindings")).unwrap();
    std::fs::write(
        root.join("switchyard.json"),
        json!({"amqp": {"url": url, "tls": {"ca_file": "certs/missing.pem"}}}).to_string(),
    )
    .unwrap();
    let out = crate::util::switchyard(root, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let text = crate::util::stderr(&out);
    assert!(
        text.contains("amqp.tls.ca_file") && text.contains("missing.pem"),
        "{text}"
    );
}
