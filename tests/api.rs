//! The HTTP API: through the router (`oneshot`) and against a live daemon.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use switchyard::api::{AppState, app};
use switchyard::metrics::DaemonMetrics;
use switchyard::reactor::Reactor;
use switchyard::registry::Registry;
use switchyard::runtime::{Runtime, RuntimeConfig};
use switchyard::spec::Secrets;
use tower::ServiceExt;

use crate::util::write_workflow;

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    runtime: Option<Runtime>,
    state: AppState,
}

impl Fixture {
    pub(crate) async fn new(token: Option<&str>) -> Self {
        Self::with(token, &[], &[]).await
    }

    /// With binding files (one per value) and secrets.
    pub(crate) async fn with(
        token: Option<&str>,
        bindings: &[Value],
        secrets: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let binding_dir = dir.path().join("bindings");
        std::fs::create_dir(&binding_dir).unwrap();
        for (i, b) in bindings.iter().enumerate() {
            std::fs::write(binding_dir.join(format!("b{i}.json")), b.to_string()).unwrap();
        }
        let flows = dir.path().join("workflows");
        std::fs::create_dir(&flows).unwrap();
        write_workflow(
            &flows,
            "quick",
            &json!({"name": "quick", "tasks": [
                {"id": "a", "shell": {"command": ["echo", "hello ${params.who}"]}},
                {"id": "b", "after": "a", "noop": {}},
            ]}),
        );
        write_workflow(
            &flows,
            "slow",
            &json!({"name": "slow", "tasks": [
                {"id": "wait", "shell": {"command": ["sleep", "30"]}},
            ]}),
        );
        write_workflow(
            &flows,
            "flaky",
            &json!({"name": "flaky", "tasks": [
                {"id": "probe", "shell": {"script": "echo '{\"id\": 7}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"id": "${output.id}"}},
                {"id": "publish", "after": "probe", "shell": {"command": ["test", "${has(params.ok) ? 'x' : 'y'}", "=", "x"]}},
            ]}),
        );
        let registry = Registry::load(
            vec![flows],
            vec![binding_dir],
            dir.path().to_path_buf(),
            Default::default(),
        )
        .unwrap_or_else(|d| panic!("{d:?}"));
        let registry = Arc::new(RwLock::new(registry));
        let secrets = Arc::new(Secrets::from_values(
            secrets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        let runtime = Runtime::start(RuntimeConfig {
            secrets: Arc::clone(&secrets),
            chain: Some(switchyard::reactor::chain_hook(Arc::clone(&registry))),
            ..RuntimeConfig::new(dir.path().join("data"))
        })
        .unwrap();
        let state = AppState {
            bindings_changed: Default::default(),
            runtime: runtime.handle(),
            reactor: Reactor::new(runtime.handle(), Arc::clone(&registry)),
            registry,
            token: token.map(Arc::from),
            metrics: Arc::new(DaemonMetrics::default()),
            secrets,
            remote: None,
        };
        Self {
            _dir: dir,
            runtime: Some(runtime),
            state,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 10 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, None, None).await
    }

    pub(crate) async fn post(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        self.call("POST", uri, Some(body), None).await
    }

    /// Polls a run until it is terminal.
    pub(crate) async fn wait_run(&self, id: &str) -> Value {
        for _ in 0..400 {
            let (status, run) = self.get(&format!("/api/v1/runs/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{run}");
            if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap()) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("run {id} did not end");
    }

    /// The router's answer to `request`, as it is (streams unread).
    pub(crate) async fn respond(&self, request: Request<Body>) -> axum::response::Response {
        app(self.state.clone()).oneshot(request).await.unwrap()
    }

    pub(crate) async fn shutdown(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown().await;
        }
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error body: {body}"));
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_unknown_endpoints() {
    let f = Fixture::new(None).await;
    let (status, body) = f.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = f.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.as_str()
            .unwrap()
            .contains("switchyard_runs_created_total")
    );
    let (status, body) = f.get("/api/v1/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no such endpoint");
    let (status, body) = f.get("/elsewhere").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no such endpoint");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_listed_and_shown_with_graph_and_versions() {
    let f = Fixture::new(None).await;
    let (status, body) = f.get("/api/v1/workflows").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flaky", "quick", "slow"]);
    assert_eq!(body["errors"], json!([]));
    let (status, body) = f.get("/api/v1/workflows/quick").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["graph"]["edges"],
        json!([{"from": "a", "to": "b", "on": "success", "mode": "all"}])
    );
    assert!(
        body["graph"]["mermaid"]
            .as_str()
            .unwrap()
            .starts_with("flowchart TD")
    );
    assert_eq!(body["versions"][0]["current"], json!(true));
    assert_eq!(body["definition"]["name"], "quick");
    let (status, body) = f.get("/api/v1/workflows/nope").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "no workflow named `nope`",
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_runs_and_their_bad_requests() {
    let f = Fixture::new(None).await;
    let (status, run) = f
        .post(
            "/api/v1/workflows/quick/runs",
            r#"{"params": {"who": "world"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["workflow"], "quick");
    assert_eq!(run["params"], json!({"who": "world"}));
    let id = run["id"].as_str().unwrap().to_string();
    let done = f.wait_run(&id).await;
    assert_eq!(done["status"], "succeeded");
    // An empty body is `{}`.
    let (status, _) = f.post("/api/v1/workflows/quick/runs", "").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = f
        .post("/api/v1/workflows/quick/runs", r#"{"params": {"#)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid JSON body");
    let (status, body) = f
        .post("/api/v1/workflows/quick/runs", r#"{"params": [1]}"#)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "`params` must be a JSON object",
    );
    let (status, body) = f
        .post("/api/v1/workflows/quick/runs", r#"{"parms": {}}"#)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "unknown key `parms`",
    );
    let (status, body) = f.post("/api/v1/workflows/quick/runs", "[]").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "JSON object");
    let (status, body) = f.post("/api/v1/workflows/nope/runs", "{}").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "no workflow named `nope`",
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_filtered_and_paged() {
    let f = Fixture::new(None).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, run) = f.post("/api/v1/workflows/quick/runs", "{}").await;
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    let (_, slow) = f.post("/api/v1/workflows/slow/runs", "{}").await;
    for id in &ids {
        f.wait_run(id).await;
    }
    let (status, body) = f.get("/api/v1/runs?workflow=quick&limit=3").await;
    assert_eq!(status, StatusCode::OK);
    let page: Vec<&str> = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[4].as_str(), &ids[3], &ids[2]], "newest first");
    let next = body["next"].as_str().unwrap().to_string();
    let (_, body) = f
        .get(&format!(
            "/api/v1/runs?workflow=quick&limit=3&before={next}"
        ))
        .await;
    let page: Vec<&str> = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[1].as_str(), &ids[0]]);
    assert_eq!(body["next"], Value::Null);
    // Active runs are listed with their live status.
    let (_, body) = f.get("/api/v1/runs?status=running").await;
    let running: Vec<&str> = body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(running, [slow["id"].as_str().unwrap()]);
    let (status, body) = f.get("/api/v1/runs?status=sleeping").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "unknown status `sleeping`",
    );
    let (status, body) = f.get("/api/v1/runs?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "limit");
    let (status, body) = f.get("/api/v1/runs?before=xyz").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "not a run id");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_details_history_and_logs() {
    let f = Fixture::new(None).await;
    let (_, run) = f
        .post(
            "/api/v1/workflows/quick/runs",
            r#"{"params": {"who": "api"}}"#,
        )
        .await;
    let id = run["id"].as_str().unwrap().to_string();
    f.wait_run(&id).await;
    let (status, history) = f.get(&format!("/api/v1/runs/{id}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = history["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"run_created"));
    assert_eq!(types.last(), Some(&"run_ended"));
    let (status, logs) = f.get(&format!("/api/v1/runs/{id}/tasks/a/logs")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(logs["attempts"][0]["stdout"], "hello api\n");
    let (status, body) = f.get(&format!("/api/v1/runs/{id}/tasks/zzz/logs")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no task `zzz`");
    let missing = uuid::Uuid::now_v7();
    for uri in [
        format!("/api/v1/runs/{missing}"),
        format!("/api/v1/runs/{missing}/history"),
        format!("/api/v1/runs/{missing}/tasks/a/logs"),
    ] {
        let (status, body) = f.get(&uri).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not found");
    }
    let (status, body) = f.get("/api/v1/runs/not-a-uuid").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "not a run id");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_its_conflicts() {
    let f = Fixture::new(None).await;
    let (_, run) = f.post("/api/v1/workflows/slow/runs", "{}").await;
    let id = run["id"].as_str().unwrap().to_string();
    // Wait until the task runs.
    for _ in 0..200 {
        let (_, run) = f.get(&format!("/api/v1/runs/{id}")).await;
        if run["tasks"]["wait"]["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = f.post(&format!("/api/v1/runs/{id}/cancel"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = f.wait_run(&id).await;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["tasks"]["wait"]["status"], "cancelled");
    let (status, body) = f.post(&format!("/api/v1/runs/{id}/cancel"), "").await;
    assert_error(status, &body, StatusCode::CONFLICT, "already ended");
    let (status, body) = f
        .post(&format!("/api/v1/runs/{}/cancel", uuid::Uuid::now_v7()), "")
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not found");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_reuses_successes_and_refuses_what_it_cannot_do() {
    let f = Fixture::new(None).await;
    let (_, run) = f.post("/api/v1/workflows/flaky/runs", "{}").await;
    let id = run["id"].as_str().unwrap().to_string();
    let failed = f.wait_run(&id).await;
    assert_eq!(failed["status"], "failed");
    let (status, rerun) = f
        .post(&format!("/api/v1/runs/{id}/rerun"), r#"{"from": "failed"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rerun}");
    let rerun_id = rerun["id"].as_str().unwrap().to_string();
    let done = f.wait_run(&rerun_id).await;
    assert_eq!(done["tasks"]["probe"]["reused_from"], json!(id));
    assert_eq!(done["tasks"]["probe"]["attempts"], json!(0));
    assert_eq!(done["tasks"]["publish"]["attempts"], json!(1));
    assert_eq!(done["vars"]["id"], json!(7));
    assert_eq!(done["version"], failed["version"]);
    let (status, body) = f
        .post(&format!("/api/v1/runs/{id}/rerun"), r#"{"from": "nope"}"#)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no task `nope`",
    );
    let (status, body) = f
        .post(&format!("/api/v1/runs/{id}/rerun"), r#"{"from": 3}"#)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "`from`");
    // Rerun with changes: params patched over the source's (null removes).
    let (status, patched) = f
        .post(
            &format!("/api/v1/runs/{id}/rerun"),
            r#"{"from": "probe", "params": {"region": "us", "gone": null}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{patched}");
    assert_eq!(patched["params"]["region"], "us", "{patched}");
    assert!(patched["params"].get("gone").is_none(), "{patched}");
    let (status, body) = f
        .post(&format!("/api/v1/runs/{id}/rerun"), r#"{"params": [1]}"#)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "`params` must be an object",
    );
    let (_, slow) = f.post("/api/v1/workflows/slow/runs", "{}").await;
    let (status, body) = f
        .post(
            &format!("/api/v1/runs/{}/rerun", slow["id"].as_str().unwrap()),
            "{}",
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "still");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_the_api_but_not_health() {
    let f = Fixture::new(Some("t0ken")).await;
    let (status, body) = f.call("GET", "/api/v1/workflows", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "bearer token");
    let (status, body) = f
        .call("GET", "/api/v1/workflows", None, Some("wrong"))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "bearer token");
    let (status, _) = f
        .call("GET", "/api/v1/workflows", None, Some("t0ken"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = f
        .call(
            "POST",
            "/api/v1/workflows/quick/runs",
            Some("{}"),
            Some("t0ken"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = f.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = f.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("switchyard_requests_rejected_total 2"),
        "{metrics}"
    );
    f.shutdown().await;
}

#[test]
fn constant_time_comparison() {
    use switchyard::api::constant_time_eq;
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn a_reload_compiles_outside_the_registry_lock() {
    use switchyard::registry::{Registry, reload_shared};
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    std::fs::create_dir_all(&flows).unwrap();
    let tasks: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"id": format!("t{i}"), "when": "vars.x == 1 || vars.y > 2", "shell": {"command": ["echo", "${vars.x}"]}}))
        .collect();
    for n in 0..40 {
        crate::util::write_workflow(
            &flows,
            &format!("w{n}"),
            &json!({"name": format!("w{n}"), "tasks": tasks}),
        );
    }
    let registry = Arc::new(RwLock::new(
        Registry::load(
            vec![flows.clone()],
            vec![],
            dir.path().to_path_buf(),
            Default::default(),
        )
        .unwrap(),
    ));
    // An edit, so the reload has work to do.
    crate::util::write_workflow(
        &flows,
        "w0",
        &json!({"name": "w0", "tasks": [{"id": "a", "noop": {}}]}),
    );
    let reloading = {
        let registry = Arc::clone(&registry);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let report = reload_shared(&registry).unwrap();
            (started.elapsed(), report)
        })
    };
    // Readers (webhooks, consumers, the engine's chain hook) meanwhile.
    let mut longest = std::time::Duration::ZERO;
    while !reloading.is_finished() {
        let asked = std::time::Instant::now();
        let guard = registry.read().unwrap();
        longest = longest.max(asked.elapsed());
        drop(guard);
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let (took, report) = reloading.join().unwrap();
    assert_eq!(report.updated, ["w0"]);
    assert_eq!(
        registry
            .read()
            .unwrap()
            .get("w0")
            .unwrap()
            .current
            .tasks
            .len(),
        1
    );
    // Generous: a reader waits at most for the swap, never for the whole
    // rebuild (which holding the write lock throughout would make it do).
    if took > std::time::Duration::from_millis(40) {
        assert!(
            longest * 4 < took,
            "a reader waited {longest:?} during a {took:?} reload"
        );
    } else {
        eprintln!("reload took only {took:?}; lock wait {longest:?} not judged");
    }
}

/// The body of a streamed response, read to its end (the stream of a
/// task already ended closes by itself).
async fn sse(f: &Fixture, uri: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().method("GET").uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Body::empty()).unwrap();
    let response = app(f.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(response.into_body(), 10 << 20),
    )
    .await
    .expect("the stream of an ended task ends")
    .unwrap();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_an_ended_tasks_logs_streams_them_as_server_sent_events() {
    let f = Fixture::with(Some("t0ken"), &[], &[("who", "top-secret-name")]).await;
    let (status, run) = f
        .call(
            "POST",
            "/api/v1/workflows/quick/runs",
            Some(r#"{"params": {"who": "top-secret-name"}}"#),
            Some("t0ken"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    for _ in 0..400 {
        let (_, run) = f
            .call("GET", &format!("/api/v1/runs/{id}"), None, Some("t0ken"))
            .await;
        if run["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let uri = format!("/api/v1/runs/{id}/tasks/a/logs?follow=true");
    let (status, content_type, body) = sse(&f, &uri, Some("t0ken")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "text/event-stream");
    assert!(
        body.contains("event: attempt\ndata: {\"attempt\":1,\"live\":false}\n\n"),
        "{body}"
    );
    assert!(
        body.contains("event: stdout\ndata: hello [redacted]\ndata: \n\n"),
        "{body}"
    );
    assert!(body.contains("event: end\ndata: {"), "{body}");
    assert!(body.contains("\"status\":\"succeeded\""), "{body}");
    assert!(!body.contains("top-secret"), "{body}");

    // The noop task has no output: only its end.
    let uri = format!("/api/v1/runs/{id}/tasks/b/logs?follow=true");
    let (_, _, body) = sse(&f, &uri, Some("t0ken")).await;
    assert!(body.starts_with("event: end\n"), "{body}");

    // Behind the token, and the usual errors before any stream starts.
    let (status, _, _) = sse(&f, &uri, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let missing = uuid::Uuid::now_v7();
    for (uri, expected, needle) in [
        (
            format!("/api/v1/runs/{id}/tasks/zzz/logs?follow=true"),
            StatusCode::NOT_FOUND,
            "no task `zzz`",
        ),
        (
            format!("/api/v1/runs/{missing}/tasks/a/logs?follow=true"),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            format!("/api/v1/runs/{id}/tasks/a/logs?follow=maybe"),
            StatusCode::BAD_REQUEST,
            "`follow` must be true or false",
        ),
    ] {
        let (status, body) = f.call("GET", &uri, None, Some("t0ken")).await;
        assert_error(status, &body, expected, needle);
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_query_and_body_values_are_named_without_rust_types() {
    let f = Fixture::new(None).await;
    for uri in [
        "/api/v1/runs?limit=abc",
        "/api/v1/runs?limit=-5",
        "/api/v1/events?limit=ten",
    ] {
        let (status, body) = f.get(uri).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "limit");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("expected a whole number ≥ 0") && !message.contains("usize"),
            "{message}"
        );
    }
    // A binding in a request body is read like a binding file.
    let (status, body) = f
        .post(
            "/api/v1/bindings/backtest",
            r#"{"binding": {"name": "x", "on": {"api": {}}, "workflow": "quick", "max_body": "big"}}"#,
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_body: invalid type: string \"big\", expected a whole number ≥ 0"),
        "{message}"
    );
    assert!(!message.contains("usize"), "{message}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_validates_and_every_route_in_it_answers() {
    let f = Fixture::new(Some("t0ken")).await;
    let (status, _) = f.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "behind the token like the rest"
    );
    let (status, doc) = f
        .call("GET", "/api/v1/openapi.json", None, Some("t0ken"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc,
        serde_json::to_value(switchyard::api::openapi()).unwrap()
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    match crate::util::python_with("OPENAPI_PYTHON", "openapi_spec_validator") {
        Some(python) => {
            if let Err(e) =
                crate::util::python_client(&python, "openapi_validate.py", &doc.to_string())
            {
                panic!("{e}");
            }
        }
        None => {
            assert!(
                std::env::var_os("SWITCHYARD_REQUIRE_BROKER").is_none(),
                "no python with openapi-spec-validator (set OPENAPI_PYTHON)"
            );
            eprintln!("SKIPPED OpenAPI validation: no python with openapi-spec-validator");
        }
    }
    // Every operation in the document reaches its handler: not the
    // router's fallback ("no such endpoint") and not 405.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = format!("/api/v1{path}")
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{name}", "nope")
            .replace("{task}", "a")
            .replace("{from}", "0")
            .replace("{to}", "1");
        for method in item.as_object().unwrap().keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let method = method.to_uppercase();
            let request = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .header("authorization", "Bearer t0ken")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = f.respond(request).await;
            let status = response.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            if path == "/stream" {
                // An endless stream: its head is the answer.
                assert_eq!(status, StatusCode::OK);
                continue;
            }
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&body);
            assert!(
                !text.contains("no such endpoint"),
                "{method} {uri} fell through to the fallback: {text}"
            );
        }
        // Documented with what it answers.
        for operation in item.as_object().unwrap().values() {
            if let Some(responses) = operation.get("responses") {
                assert!(!responses.as_object().unwrap().is_empty(), "{path}");
            }
        }
    }
    assert!(operations >= 30, "{operations} operations");
    f.shutdown().await;
}
