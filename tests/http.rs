//! The `http` task against a local server (axum, on a free port): what it
//! sends, what it makes of the answer, and each way a request fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use serde_json::{Map, Value, json};
use switchyard::engine::RunRecord;
use switchyard::log::RunStatus;

use crate::util::{run_once, workflow};

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<std::sync::Mutex<Vec<Value>>>,
}

/// Echoes what it got: method, query, headers, body.
async fn echo(
    State(seen): State<Seen>,
    method: axum::http::Method,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let headers: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let request = json!({
        "method": method.as_str(),
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    seen.requests.lock().unwrap().push(request.clone());
    (StatusCode::CREATED, axum::Json(request))
}

async fn server() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/echo", any(echo))
        .route(
            "/text",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "plain words") }),
        )
        .route(
            "/broken",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": "db down"})),
                )
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        )
        .route("/big", get(|| async { "x".repeat(64 * 1024) }))
        .route(
            "/hop",
            get(|| async { axum::response::Redirect::temporary("/echo") }),
        )
        .route(
            "/away",
            get(
                |Query(q): Query<std::collections::BTreeMap<String, String>>| async move {
                    axum::response::Redirect::temporary(&q["to"])
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Runs a one-task workflow whose task is `task`; returns the run.
async fn run(dir: &std::path::Path, task: Value) -> RunRecord {
    run_once(dir, workflow(json!({"name": "call", "tasks": [task]}))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_task_sends_what_it_is_given_and_outputs_the_answer() {
    let (addr, seen) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {
            "method": "post",
            "url": format!("http://{addr}/echo"),
            "query": {"day": "2026-12-02", "n": 3},
            "headers": {"x-campaign": "c-1"},
            "json": {"campaign": "c-1", "quote": "'; DROP TABLE x; --"},
            "auth": {"bearer": "t0ken"},
            "expect_status": [201]},
         "export": {"echoed": "${output.body.method}"}}),
    )
    .await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let output = &record.tasks["call"]["output"];
    assert_eq!(output["status"], 201);
    assert_eq!(output["headers"]["content-type"], "application/json");
    let body = &output["body"];
    assert_eq!(body["method"], "POST");
    assert_eq!(body["query"], json!({"day": "2026-12-02", "n": "3"}));
    assert_eq!(body["headers"]["x-campaign"], "c-1");
    assert_eq!(body["headers"]["authorization"], "Bearer t0ken");
    assert_eq!(body["headers"]["content-type"], "application/json");
    let sent: Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["quote"], "'; DROP TABLE x; --");
    assert_eq!(record.vars["echoed"], "POST");

    // A form body and basic auth; a text answer stays text.
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {
            "method": "PUT", "url": format!("http://{addr}/echo"),
            "form": {"a": "1 2", "b": true}, "auth": {"basic": ["bot", "pw"]}}}),
    )
    .await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    let echoed = seen.requests.lock().unwrap()[1].clone();
    assert_eq!(echoed["body"], "a=1+2&b=true");
    assert_eq!(echoed["headers"]["authorization"], "Basic Ym90OnB3");
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {"url": format!("http://{addr}/text")}}),
    )
    .await;
    assert_eq!(record.tasks["call"]["output"]["body"], "plain words");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_an_http_task_fails_says_why() {
    let (addr, _) = server().await;
    let refused = {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        port
    };
    let cases = [
        (
            json!({"url": format!("http://{addr}/broken")}),
            None,
            "answered 500 Internal Server Error, expected 2xx",
        ),
        (
            json!({"url": format!("http://{addr}/missing"), "expect_status": ["2xx", "300-399"]}),
            None,
            "answered 404 Not Found, expected 2xx, 300-399",
        ),
        (
            json!({"url": format!("http://127.0.0.1:{refused}/x")}),
            None,
            "cannot connect to",
        ),
        (
            json!({"url": format!("http://{addr}/big"), "max_body": 1024}),
            None,
            "over max_body (1024 bytes)",
        ),
        (
            json!({"url": format!("http://{addr}/slow")}),
            Some("300ms"),
            "timed out after 300ms",
        ),
    ];
    for (config, timeout, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut task = json!({"id": "call", "http": config});
        if let Some(timeout) = timeout {
            task["timeout"] = json!(timeout);
        }
        let started = std::time::Instant::now();
        let record = run(dir.path(), task).await;
        assert_eq!(record.status, RunStatus::Failed, "{config}: {record:?}");
        let error = record.tasks["call"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{config}: {error}");
        assert!(started.elapsed() < Duration::from_secs(8), "{config}");
    }
    // The server's answer is kept on failure, for a recovery task to read.
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {"url": format!("http://{addr}/broken")}}),
    )
    .await;
    assert_eq!(record.tasks["call"]["output"]["body"]["error"], "db down");
}

#[test]
fn a_bad_http_config_is_refused_at_load_naming_the_field() {
    let parse = |http: Value| {
        let text = json!({"name": "w", "tasks": [{"id": "t", "http": http}]}).to_string();
        switchyard::spec::Workflow::parse(std::path::Path::new("w.json"), text.as_bytes())
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    for (http, expected) in [
        (json!({"url": "ftp://x"}), "tasks[0].http.url"),
        (json!({"url": "not a url"}), "is not a URL"),
        (
            json!({"url": "http://x", "method": "FETCH"}),
            "tasks[0].http.method",
        ),
        (
            json!({"url": "http://x", "json": {}, "body": "b"}),
            "give one of `json`, `body` and `form`",
        ),
        (
            json!({"url": "http://x", "expect_status": "7xx"}),
            "tasks[0].http.expect_status",
        ),
        (
            json!({"url": "http://x", "auth": {"digest": "x"}}),
            "tasks[0].http.auth",
        ),
        (json!({"url": "http://x", "timeout_ms": 3}), "timeout_ms"),
        (json!({}), "url"),
    ] {
        let error = parse(http.clone());
        assert!(error.contains(expected), "{http}: {error}");
    }
    assert_eq!(
        parse(json!({"url": "https://${vars.host}/x", "method": "${vars.m}"})),
        ""
    );
}

/// An https server whose certificate a private CA made in the test signed.
async fn tls_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    switchyard::tls::install_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca_cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_certificate_the_systems_roots_do_not_know_fails_as_a_tls_error() {
    let addr = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {"url": format!("https://localhost:{}/x", addr.port())}}),
    )
    .await;
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    let error = record.tasks["call"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot connect to https://localhost")
            && error.to_ascii_lowercase().contains("certificate"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_within_the_origin_and_never_carry_headers_elsewhere() {
    let (addr, _) = server().await;
    let (elsewhere, seen_elsewhere) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {"url": format!("http://{addr}/hop"),
            "headers": {"x-api-key": "k-123"}}}),
    )
    .await;
    assert_eq!(record.status, RunStatus::Succeeded, "{record:?}");
    assert_eq!(record.tasks["call"]["output"]["status"], 201);
    assert_eq!(
        record.tasks["call"]["output"]["body"]["headers"]["x-api-key"],
        "k-123"
    );
    // To another origin: not followed; the 307 is the answer.
    let dir = tempfile::tempdir().unwrap();
    let record = run(
        dir.path(),
        json!({"id": "call", "http": {
            "url": format!("http://{addr}/away?to=http://{elsewhere}/echo"),
            "headers": {"x-api-key": "k-123"}}}),
    )
    .await;
    assert_eq!(record.status, RunStatus::Failed, "{record:?}");
    let error = record.tasks["call"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("answered 307 Temporary Redirect"), "{error}");
    assert!(
        seen_elsewhere.requests.lock().unwrap().is_empty(),
        "the key went elsewhere"
    );
}
