//! Trigger adapters end to end, against an in-process daemon (real HTTP,
//! real files, real log): file arrival, webhooks, cron (with a hand-driven
//! clock), API events, run chaining, dedup TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};
use switchyard::daemon::{Running, ServeOptions, start};
use switchyard::time::{Clock, ManualClock};
use switchyard::triggers::webhook::{sign_hex, sign_standard};

use crate::util::write_workflow;

/// A project dir: config, workflows, bindings.
pub(crate) struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub(crate) fn new(bindings: &[Value]) -> Self {
        Self::with_secrets(bindings, &[])
    }

    fn with_secrets(bindings: &[Value], secrets: &[(&str, &str)]) -> Self {
        Self::with_config(bindings, secrets, json!({}))
    }

    /// `extra` keys are merged into `switchyard.json`.
    pub(crate) fn with_config(bindings: &[Value], secrets: &[(&str, &str)], extra: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let flows = root.join("workflows");
        std::fs::create_dir_all(&flows).unwrap();
        std::fs::create_dir_all(root.join("bindings")).unwrap();
        write_workflow(
            &flows,
            "ingest",
            &json!({"name": "ingest", "tasks": [{"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}]}),
        );
        write_workflow(
            &flows,
            "first",
            &json!({"name": "first", "tasks": [{"id": "a", "shell": {"script": "echo '{\"n\": 41}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"n": "${output.n}"}}]}),
        );
        write_workflow(
            &flows,
            "three",
            &json!({"name": "three", "tasks": [{"id": "a", "noop": {}}, {"id": "b", "after": "a", "noop": {}}, {"id": "c", "after": "b", "noop": {}}]}),
        );
        write_workflow(
            &flows,
            "second",
            &json!({"name": "second", "tasks": [{"id": "a", "noop": {}}]}),
        );
        let mut secret_sources = serde_json::Map::new();
        for (name, value) in secrets {
            let file = root.join(format!("{name}.secret"));
            std::fs::write(&file, value).unwrap();
            secret_sources.insert(name.to_string(), json!({"file": file}));
        }
        let mut config = json!({"workflows": ["workflows"], "bindings": ["bindings"], "secrets": secret_sources});
        if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
            config.extend(extra);
        }
        std::fs::write(root.join("switchyard.json"), config.to_string()).unwrap();
        for (i, b) in bindings.iter().enumerate() {
            std::fs::write(root.join(format!("bindings/b{i}.json")), b.to_string()).unwrap();
        }
        Self { dir }
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    fn inbox(&self) -> PathBuf {
        let inbox = self.root().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        inbox
    }

    pub(crate) async fn start(&self, clock: Option<Arc<dyn Clock>>) -> Daemon {
        let running = start(ServeOptions {
            clock,
            ..ServeOptions::local(self.root().join("switchyard.json"))
        })
        .await
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
        Daemon {
            client: {
                switchyard::tls::install_provider();
                reqwest::Client::new()
            },
            running: Some(running),
        }
    }
}

pub(crate) struct Daemon {
    pub(crate) client: reqwest::Client,
    running: Option<Running>,
}

impl Daemon {
    pub(crate) fn url(&self, path: &str) -> String {
        let addr = self.running.as_ref().unwrap().addr;
        format!("http://{addr}{path}")
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).body(body.to_vec());
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Every run of `workflow`, following the list cursor.
    pub(crate) async fn runs(&self, workflow: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before = String::new();
        loop {
            let page = self
                .get(&format!(
                    "/api/v1/runs?workflow={workflow}&limit=1000{before}"
                ))
                .await;
            out.extend(page["runs"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(next) => before = format!("&before={next}"),
                None => return out,
            }
        }
    }

    /// Waits until `workflow` has at least `n` runs; returns them.
    pub(crate) async fn wait_runs(&self, workflow: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let runs = self.runs(workflow).await;
            if runs.len() >= n {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "{workflow}: {} runs, expected {n}",
                runs.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) fn runtime(&self) -> &switchyard::runtime::RuntimeHandle {
        &self.running.as_ref().unwrap().runtime
    }

    pub(crate) async fn events(&self) -> Vec<Value> {
        self.get("/api/v1/events?limit=1000").await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            running.done.await.unwrap().unwrap();
        }
    }
}

fn param_values(runs: &[Value], key: &str) -> Vec<String> {
    let mut values: Vec<String> = runs
        .iter()
        .map(|r| match &r["params"][key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    values.sort();
    values
}

fn file_binding(name: &str, path: &str, extra: Value) -> Value {
    let mut file = json!({"path": path, "pattern": "*.csv", "settle": "150ms"});
    if let (Value::Object(f), Value::Object(e)) = (&mut file, extra) {
        f.extend(e);
    }
    json!({
        "name": name,
        "on": {"file": file},
        "workflow": "ingest",
        "params": {"path": "${event.data.path}", "name": "${event.data.name}", "size": "${event.data.size}",
                   "path_base64": "${has(event.data.path_base64) ? event.data.path_base64 : ''}"},
    })
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_fire_once_each_across_bursts_and_restarts() {
    let project = Project::new(&[file_binding("inbox", "inbox", json!({}))]);
    let inbox = project.inbox();
    // Present before start-up.
    for i in 0..3 {
        std::fs::write(inbox.join(format!("early-{i}.csv")), "x\n").unwrap();
    }
    let daemon = project.start(None).await;
    daemon.wait_runs("ingest", 3, Duration::from_secs(20)).await;
    // 200 dropped at once.
    for i in 0..200 {
        std::fs::write(
            inbox.join(format!("burst-{i:03}.csv")),
            format!("row {i}\n"),
        )
        .unwrap();
    }
    let runs = daemon
        .wait_runs("ingest", 203, Duration::from_secs(60))
        .await;
    let names = param_values(&runs, "name");
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        (names.len(), unique.len()),
        (203, 203),
        "each file exactly once"
    );
    // Settled and quiet: nothing more fires.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(daemon.runs("ingest").await.len(), 203);
    daemon.stop().await;

    // Arrived while down: picked up; handled files do not fire again.
    std::fs::write(inbox.join("while-down.csv"), "late\n").unwrap();
    let daemon = project.start(None).await;
    let runs = daemon
        .wait_runs("ingest", 204, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs_after = daemon.runs("ingest").await;
    assert_eq!(runs_after.len(), 204, "restart re-fired handled files");
    assert!(param_values(&runs, "name").contains(&"while-down.csv".to_string()));
    // A changed file is a new arrival.
    std::fs::write(inbox.join("early-0.csv"), "x\ny\n").unwrap();
    let runs = daemon
        .wait_runs("ingest", 205, Duration::from_secs(20))
        .await;
    let newest = runs
        .iter()
        .find(|r| r["params"]["name"] == "early-0.csv" && r["params"]["size"] == 4);
    assert!(newest.is_some(), "changed file fired with its new size");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_fires_once_when_complete_and_renames_fire_for_the_final_name() {
    let project = Project::new(&[file_binding("inbox", "inbox", json!({"settle": "200ms"}))]);
    let inbox = project.inbox();
    let daemon = project.start(None).await;
    // Let the start-up scan finish: a file it finds still being written has
    // only its size and mtime to go by (the kernel's close-after-write event
    // is what this test is about).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Written in pieces with pauses longer than `settle`, the file kept open.
    let path = inbox.join("slow.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    for piece in 0..4 {
        file.write_all(format!("piece {piece}\n").as_bytes())
            .unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(
            daemon.runs("ingest").await.is_empty(),
            "fired before the writer closed the file"
        );
    }
    drop(file);
    let runs = daemon.wait_runs("ingest", 1, Duration::from_secs(10)).await;
    assert_eq!(runs[0]["params"]["size"], json!(32), "final size");

    // Write under a temporary name, then rename: only the final name fires.
    let tmp = inbox.join("report.csv.part");
    std::fs::write(&tmp, "a,b\n1,2\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::rename(&tmp, inbox.join("report.csv")).unwrap();
    // Moved in from elsewhere.
    let outside = project.root().join("staging.csv");
    std::fs::write(&outside, "z\n").unwrap();
    std::fs::rename(&outside, inbox.join("moved.csv")).unwrap();
    let runs = daemon.wait_runs("ingest", 3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names = param_values(&daemon.runs("ingest").await, "name");
    assert_eq!(names, ["moved.csv", "report.csv", "slow.csv"], "{runs:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_outside_the_watched_dir_is_read_and_odd_names_work() {
    let project = Project::new(&[
        file_binding("flat", "inbox", json!({})),
        file_binding("deep", "tree", json!({"recursive": true, "pattern": "*"})),
    ]);
    let inbox = project.inbox();
    let tree = project.root().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    let secret_dir = project.root().join("private");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("secret.csv"), "top secret\n").unwrap();
    let daemon = project.start(None).await;

    // A symlink to a file outside, a symlinked directory, and a subdirectory
    // of a non-recursive watch: none fires.
    std::os::unix::fs::symlink(secret_dir.join("secret.csv"), inbox.join("link.csv")).unwrap();
    std::os::unix::fs::symlink(&secret_dir, tree.join("escape")).unwrap();
    std::fs::create_dir_all(inbox.join("sub")).unwrap();
    std::fs::write(inbox.join("sub/nested.csv"), "n\n").unwrap();
    // Odd names.
    let odd: Vec<PathBuf> = vec![
        inbox.join("with space.csv"),
        inbox.join("-leading-dash.csv"),
        inbox.join(std::ffi::OsStr::from_bytes(b"caf\xe9.csv")),
    ];
    for path in &odd {
        std::fs::write(path, "1\n").unwrap();
    }
    // Recursive: a new subdirectory's files fire.
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::write(tree.join("a/b/c/deep.txt"), "d\n").unwrap();

    let runs = daemon.wait_runs("ingest", 4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs_after = daemon.runs("ingest").await;
    assert_eq!(runs_after.len(), 4, "{runs:#?}");
    let paths: Vec<String> = param_values(&runs_after, "path");
    for p in &paths {
        assert!(
            !p.contains("private") && !p.contains("link") && !p.contains("nested"),
            "{p}"
        );
    }
    assert!(paths.iter().any(|p| p.ends_with("with space.csv")));
    assert!(paths.iter().any(|p| p.ends_with("-leading-dash.csv")));
    assert!(paths.iter().any(|p| p.ends_with("tree/a/b/c/deep.txt")));
    // The non-UTF-8 name carries its exact bytes.
    let latin = runs_after
        .iter()
        .find(|r| {
            r["params"]["path_base64"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .expect("non-UTF-8 name fired");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(latin["params"]["path_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, odd[2].as_os_str().as_bytes());
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

fn hook(name: &str, path: &str, webhook: Value, params: Value) -> Value {
    let mut on = json!({"path": path});
    if let (Value::Object(o), Value::Object(w)) = (&mut on, webhook) {
        o.extend(w);
    }
    json!({"name": name, "on": {"webhook": on}, "workflow": "ingest", "params": params})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_check_size_then_signature_then_timestamp_then_body() {
    let secret = "s3cret-value";
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let project = Project::with_secrets(
        &[
            hook(
                "plain",
                "/plain",
                json!({}),
                json!({"order": "${event.data.order}"}),
            ),
            hook(
                "signed",
                "/signed",
                json!({"secret": "${secrets.hook}", "signature": "hmac-sha256"}),
                json!({"order": "${event.data.order}"}),
            ),
            hook(
                "gh",
                "/gh",
                json!({"secret": "${secrets.hook}", "signature": "github"}),
                json!({"order": "${event.data.order}"}),
            ),
            hook(
                "std",
                "/std",
                json!({"secret": "${secrets.std}", "signature": "standard-webhooks"}),
                json!({"order": "${event.data.order}"}),
            ),
            hook(
                "waiter",
                "/wait",
                json!({"respond": "wait"}),
                json!({"order": "${event.data.order}"}),
            ),
        ],
        &[("hook", secret), ("std", whsec)],
    );
    let daemon = project.start(None).await;
    let body = br#"{"order": 17}"#;

    // Valid signatures are accepted; the 202 carries the event and run ids.
    let (status, reply) = daemon
        .post(
            "/hooks/signed",
            body,
            &[
                ("x-signature-256", sign_hex(secret, body)),
                ("content-type", "application/json".into()),
            ],
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["runs"].as_array().unwrap().len(), 1);
    // Once answered, the event is in the log and its run exists.
    let event_id = reply["event_id"].as_str().unwrap();
    let shown = daemon.get(&format!("/api/v1/events/{event_id}")).await;
    assert_eq!(shown["outcomes"][0]["outcome"], "started");
    let (status, _) = daemon
        .post(
            "/hooks/gh",
            body,
            &[
                ("x-hub-signature-256", sign_hex(secret, body)),
                ("x-github-delivery", "d-1".into()),
            ],
        )
        .await;
    assert_eq!(status, 202);
    let now = Utc::now().timestamp();
    let std_headers = |id: &str, ts: i64, sig: String| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    let (status, reply) = daemon
        .post(
            "/hooks/std",
            body,
            &std_headers(
                "msg_1",
                now,
                format!(
                    "v1,bm90IHRoaXMgb25l {}",
                    sign_standard(whsec, "msg_1", now, body)
                ),
            ),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let accepted_before = daemon.events().await.len();

    // Refused: each with 401 and nothing recorded.
    let wrong = sign_hex("not-the-secret", body);
    let good = sign_hex(secret, body);
    type Headers<'a> = Vec<(&'a str, String)>;
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "/hooks/signed",
            vec![("x-signature-256", wrong)],
            "does not match",
        ),
        ("/hooks/signed", vec![], "missing x-signature-256"),
        (
            "/hooks/signed",
            vec![("x-signature-256", good[..good.len() - 4].to_string())],
            "does not match",
        ),
        (
            "/hooks/signed",
            vec![("x-signature-256", good.replace("sha256=", "md5="))],
            "sha256=",
        ),
        (
            "/hooks/gh",
            vec![("x-signature-256", sign_hex(secret, body))],
            "missing x-hub-signature-256",
        ),
        (
            "/hooks/std",
            std_headers(
                "msg_2",
                now - 600,
                sign_standard(whsec, "msg_2", now - 600, body),
            ),
            "stale",
        ),
        (
            "/hooks/std",
            std_headers(
                "msg_3",
                now,
                sign_standard("whsec_AAAA", "msg_3", now, body),
            ),
            "does not match",
        ),
    ];
    for (path, headers, needle) in cases {
        let (status, reply) = daemon.post(path, body, &headers).await;
        assert_eq!(status, 401, "{path} {headers:?}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
    // Too large: 413 before anything else (even unsigned), answered from
    // the declared length before the body is sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = daemon.running.as_ref().unwrap().addr;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /hooks/signed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            2 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    }
    // A chunked body (no declared length) is cut off once over the limit.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = daemon.running.as_ref().unwrap().addr;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head =
                "POST /hooks/signed HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..32 {
                write.write_all(b"10000\r\n").await?;
                write.write_all(&chunk).await?;
                write.write_all(b"\r\n").await?;
            }
            write.write_all(b"0\r\n\r\n").await
        });
        let mut reply = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        let _ = writer.await; // the server may close before the last chunk
    }
    // Signed but malformed: 400 naming the parse error.
    let bad = b"{\"order\": 17,";
    let (status, reply) = daemon
        .post(
            "/hooks/signed",
            bad,
            &[
                ("x-signature-256", sign_hex(secret, bad)),
                ("content-type", "application/json".into()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("EOF while parsing"),
        "{reply}"
    );
    // Unknown path and wrong method.
    let (status, _) = daemon.post("/hooks/nope", body, &[]).await;
    assert_eq!(status, 404);
    let response = daemon
        .client
        .get(daemon.url("/hooks/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        daemon.events().await.len(),
        accepted_before,
        "a refused request was recorded"
    );
    let metrics = daemon
        .client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_events_rejected_total 12"),
        "{metrics}"
    );
    // The same refusals by reason, each step's its own.
    let refused = |reason: &str| -> u64 {
        let sample = format!("switchyard_events_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(sample.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {sample}in {metrics}"))
    };
    let reasons = ["too_large", "signature", "bad_body", "no_route"];
    for reason in reasons {
        assert!(refused(reason) > 0, "{reason}: {metrics}");
    }
    assert_eq!(reasons.iter().map(|r| refused(r)).sum::<u64>(), 12);

    // A sender's retry (same delivery id) starts no second run.
    let other = br#"{"order": 18}"#;
    for _ in 0..3 {
        let (status, _) = daemon
            .post(
                "/hooks/gh",
                other,
                &[
                    ("x-hub-signature-256", sign_hex(secret, other)),
                    ("x-github-delivery", "d-2".into()),
                ],
            )
            .await;
        assert_eq!(status, 202);
    }
    // A captured request replayed with a fresh delivery id: GitHub's
    // signature covers only the body, so the default dedup key is the
    // body's hash, and it starts no second run.
    let (status, replayed) = daemon
        .post(
            "/hooks/gh",
            body,
            &[
                ("x-hub-signature-256", sign_hex(secret, body)),
                ("x-github-delivery", "d-1-replayed".into()),
            ],
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        replayed["outcomes"][0]["outcome"], "duplicate",
        "{replayed}"
    );
    assert_eq!(replayed["outcomes"][0]["first_event"], "d-1", "{replayed}");
    let (status, reply) = daemon
        .post("/hooks/plain", body, &[("webhook-id", "plain-1".into())])
        .await;
    assert_eq!(status, 202);
    let (_, again) = daemon
        .post("/hooks/plain", body, &[("webhook-id", "plain-1".into())])
        .await;
    assert_eq!(again["runs"], json!([]));
    assert_eq!(again["outcomes"][0]["outcome"], "duplicate");
    assert_eq!(again["outcomes"][0]["run_id"], reply["runs"][0]);
    let delivered: Vec<Value> = daemon
        .events()
        .await
        .into_iter()
        .filter(|e| e["event"]["id"] == "d-2")
        .collect();
    assert_eq!(delivered.len(), 3, "each delivery is recorded");
    let started = delivered
        .iter()
        .filter(|e| e["outcomes"][0]["outcome"] == "started")
        .count();
    assert_eq!(started, 1);

    // respond: wait answers when the run has ended.
    let (status, reply) = daemon.post("/hooks/wait", body, &[]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["runs"][0]["status"], "succeeded");
    assert_eq!(reply["runs"][0]["vars"]["order"], 17);

    // Non-JSON bodies are text.
    let (status, reply) = daemon
        .post(
            "/hooks/plain",
            b"hello",
            &[("content-type", "text/plain".into())],
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let event = daemon
        .get(&format!(
            "/api/v1/events/{}",
            reply["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(event["event"]["data"], "hello");
    assert_eq!(event["event"]["datacontenttype"], "text/plain");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Cron
// ---------------------------------------------------------------------------

fn cron_binding(name: &str, cron: Value) -> Value {
    json!({"name": name, "on": {"cron": cron}, "workflow": "ingest",
           "params": {"at": "${event.data.scheduled_time}"}})
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// Moves the clock and waits until the daemon has `n` runs.
async fn advance(daemon: &Daemon, clock: &ManualClock, to: DateTime<Utc>, n: usize) -> Vec<String> {
    clock.set(to);
    let runs = daemon.wait_runs("ingest", n, Duration::from_secs(20)).await;
    param_values(&runs, "at")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_on_schedule_in_a_timezone_across_dst() {
    let project = Project::new(&[cron_binding(
        "nightly",
        json!({"schedule": "30 2 * * *", "timezone": "Europe/Berlin"}),
    )]);
    let clock = ManualClock::new(utc(2026, 3, 27, 12, 0, 0));
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    // 02:30 CET on the 28th = 01:30Z.
    let at = advance(&daemon, &clock, utc(2026, 3, 28, 1, 30, 0), 1).await;
    assert_eq!(at, ["2026-03-28T01:30:00.000Z"]);
    // 29th: 02:30 does not exist (clocks jump 02:00 → 03:00); it fires once
    // at the next valid instant, 03:00 CEST = 01:00Z.
    let at = advance(&daemon, &clock, utc(2026, 3, 29, 2, 0, 0), 2).await;
    assert_eq!(at[1], "2026-03-29T01:00:00.000Z");
    // 30th: back to normal, 02:30 CEST = 00:30Z.
    let at = advance(&daemon, &clock, utc(2026, 3, 30, 0, 30, 0), 3).await;
    assert_eq!(at[2], "2026-03-30T00:30:00.000Z");
    daemon.stop().await;

    // Autumn: 02:30 happens twice on 2026-10-25; it fires once (the first).
    let project = Project::new(&[cron_binding(
        "nightly",
        json!({"schedule": "30 2 * * *", "timezone": "Europe/Berlin"}),
    )]);
    let clock = ManualClock::new(utc(2026, 10, 24, 12, 0, 0));
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let at = advance(&daemon, &clock, utc(2026, 10, 25, 0, 30, 0), 1).await;
    assert_eq!(at, ["2026-10-25T00:30:00.000Z"]);
    clock.set(utc(2026, 10, 25, 1, 45, 0)); // past the second 02:30 (01:30Z)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon.runs("ingest").await.len(),
        1,
        "the repeated hour fired twice"
    );
    let at = advance(&daemon, &clock, utc(2026, 10, 26, 1, 30, 0), 2).await;
    assert_eq!(at[1], "2026-10-26T01:30:00.000Z");
    // The tick's event id makes each tick unique.
    let events = daemon.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["event"]["id"] == "cron:nightly:2026-10-25T00:30:00.000Z")
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_catch_up_policies_after_downtime() {
    let t0 = utc(2026, 6, 1, 12, 0, 0);
    let minutes = |m: i64| t0 + chrono::Duration::minutes(m);
    let mut fired = BTreeMap::new();
    for policy in ["none", "latest", "all"] {
        let project = Project::new(&[cron_binding(
            "tick",
            json!({"every": "1m", "catch_up": policy}),
        )]);
        let clock = ManualClock::new(t0);
        let daemon = project.start(Some(Arc::new(clock.clone()))).await;
        advance(&daemon, &clock, minutes(1), 1).await;
        daemon.stop().await;
        // Down from 12:01 to 12:10:30: nine ticks missed (12:02 … 12:10).
        // Catch-up runs before the schedule goes on, so once 12:11 has
        // fired, whatever catch-up did is in.
        let clock = ManualClock::new(minutes(10) + chrono::Duration::seconds(30));
        let daemon = project.start(Some(Arc::new(clock.clone()))).await;
        clock.set(minutes(11));
        let deadline = Instant::now() + Duration::from_secs(30);
        let at = loop {
            let at = param_values(&daemon.runs("ingest").await, "at");
            if at.contains(&"2026-06-01T12:11:00.000Z".to_string()) {
                break at;
            }
            assert!(Instant::now() < deadline, "{policy}: {at:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        fired.insert(policy, at);
        daemon.stop().await;
    }
    let stamp = |m: u32| format!("2026-06-01T12:{m:02}:00.000Z");
    assert_eq!(fired["none"], [stamp(1), stamp(11)]);
    assert_eq!(fired["latest"], [stamp(1), stamp(10), stamp(11)]);
    let all: Vec<String> = (1..=11).map(stamp).collect();
    assert_eq!(fired["all"], all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_latest_fires_the_most_recent_missed_tick_even_after_a_week() {
    let t0 = utc(2026, 6, 1, 12, 0, 0);
    let project = Project::new(&[cron_binding(
        "tick",
        json!({"every": "1m", "catch_up": "latest"}),
    )]);
    let clock = ManualClock::new(t0);
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    advance(&daemon, &clock, t0 + chrono::Duration::minutes(1), 1).await;
    daemon.stop().await;
    // Down for a week (over 10,000 missed ticks).
    let back = t0 + chrono::Duration::days(7) + chrono::Duration::seconds(30);
    let daemon = project.start(Some(Arc::new(ManualClock::new(back)))).await;
    let runs = daemon.wait_runs("ingest", 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(daemon.runs("ingest").await.len(), 2);
    let at = param_values(&runs, "at");
    assert_eq!(at, ["2026-06-01T12:01:00.000Z", "2026-06-08T12:00:00.000Z"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_that_never_fired_catches_up_from_when_it_was_first_loaded() {
    let t0 = utc(2026, 6, 1, 12, 0, 10);
    let project = Project::new(&[cron_binding(
        "tick",
        json!({"every": "1m", "catch_up": "latest"}),
    )]);
    // Loaded at 12:00:10 and stopped before its first tick (12:01).
    let daemon = project.start(Some(Arc::new(ManualClock::new(t0)))).await;
    daemon.stop().await;
    let back = utc(2026, 6, 1, 12, 5, 30);
    let daemon = project.start(Some(Arc::new(ManualClock::new(back)))).await;
    let runs = daemon.wait_runs("ingest", 1, Duration::from_secs(20)).await;
    assert_eq!(param_values(&runs, "at"), ["2026-06-01T12:05:00.000Z"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_the_middle_of_catch_up_fires_no_tick_twice() {
    let project = Project::new(&[cron_binding(
        "fast",
        json!({"every": "1s", "catch_up": "all"}),
    )]);
    let t0 = utc(2026, 6, 1, 0, 0, 0);
    let clock = ManualClock::new(t0);
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    advance(&daemon, &clock, t0 + chrono::Duration::seconds(1), 1).await;
    daemon.stop().await;
    // 600 missed ticks; stop the daemon while it is catching up.
    let later = t0 + chrono::Duration::seconds(601);
    let daemon = project.start(Some(Arc::new(ManualClock::new(later)))).await;
    daemon
        .wait_runs("ingest", 40, Duration::from_secs(20))
        .await;
    daemon.stop().await;
    let daemon = project.start(Some(Arc::new(ManualClock::new(later)))).await;
    let runs = daemon
        .wait_runs("ingest", 601, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = param_values(&daemon.runs("ingest").await, "at");
    let unique: BTreeSet<&String> = at.iter().collect();
    assert_eq!((at.len(), unique.len()), (601, 601), "{} runs", runs.len());
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// API events, run chaining, dedup TTL
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_events_chaining_and_dedup_ttl() {
    let project = Project::new(&[
        json!({"name": "orders", "on": {"api": {}}, "filter": "event.type == 'order.created'",
               "workflow": "first", "params": {"order": "${event.data.id}"},
               "dedup": {"key": "${string(event.data.id)}", "ttl": "1s"}}),
        json!({"name": "then-second", "on": {"run": {"workflow": "first", "status": ["succeeded"]}},
               "workflow": "second", "params": {"upstream": "${event.data.id}", "n": "${event.data.vars.n}"}}),
    ]);
    let daemon = project.start(None).await;
    let order = |id: u32| json!({"type": "order.created", "data": {"id": id}}).to_string();
    let (status, reply) = daemon
        .post("/api/v1/events", order(1).as_bytes(), &[])
        .await;
    assert_eq!(status, 202, "{reply}");
    let first_run = reply["runs"][0].as_str().unwrap().to_string();
    // Same key within the TTL: recorded as a duplicate, no run.
    let (_, reply) = daemon
        .post("/api/v1/events", order(1).as_bytes(), &[])
        .await;
    assert_eq!(reply["outcomes"][0]["outcome"], "duplicate", "{reply}");
    assert_eq!(reply["outcomes"][0]["run_id"], first_run.as_str());
    // Another type: filtered, visible.
    let (status, reply) = daemon
        .post(
            "/api/v1/events",
            br#"{"type": "order.deleted", "data": {"id": 1}}"#,
            &[],
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(reply["outcomes"][0]["outcome"], "filtered");
    // Bad events are refused.
    for (body, needle) in [
        (&br#"{"data": 1}"#[..], "missing `type`"),
        (br#"{"type": "switchyard.cron.tick"}"#, "reserved"),
        (br#"[1]"#, "JSON object"),
        (br#"{"type": "x", "specversion": "0.3"}"#, "specversion"),
        (br#"{"type": "#, "invalid JSON"),
    ] {
        let (status, reply) = daemon.post("/api/v1/events", body, &[]).await;
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(needle),
            "{reply}"
        );
    }
    // The run chain: `first` succeeded → `second` with its vars.
    let seconds = daemon.wait_runs("second", 1, Duration::from_secs(20)).await;
    assert_eq!(seconds[0]["params"]["upstream"], first_run.as_str());
    assert_eq!(seconds[0]["params"]["n"], 41);
    assert_eq!(seconds[0]["event"]["type"], "switchyard.run.succeeded");
    // After the TTL the key is free again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, reply) = daemon
        .post("/api/v1/events", order(1).as_bytes(), &[])
        .await;
    assert_eq!(reply["outcomes"][0]["outcome"], "started", "{reply}");
    daemon.wait_runs("second", 2, Duration::from_secs(20)).await;
    // Bindings are listed.
    let bindings = daemon.get("/api/v1/bindings").await;
    let names: Vec<&str> = bindings["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders", "then-second"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_directory_fires_each_file_once() {
    // `poll`: no kernel watch (network filesystems); rescans find files.
    let project = Project::new(&[file_binding(
        "polled",
        "inbox",
        json!({"poll": "100ms", "settle": "150ms"}),
    )]);
    let inbox = project.inbox();
    std::fs::write(inbox.join("before.csv"), "b\n").unwrap();
    let daemon = project.start(None).await;
    for i in 0..20 {
        std::fs::write(inbox.join(format!("p{i:02}.csv")), "p\n").unwrap();
    }
    daemon
        .wait_runs("ingest", 21, Duration::from_secs(20))
        .await;
    // Many rescans later, still once each.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let names = param_values(&daemon.runs("ingest").await, "name");
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!((names.len(), unique.len()), (21, 21), "{names:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_a_webhooks_query_body_and_headers_are_redacted_before_the_event_is_stored() {
    let secret = "hook-secret-0123";
    let project = Project::with_secrets(
        &[hook(
            "plain",
            "/plain",
            json!({}),
            json!({"order": "${event.data.order}"}),
        )],
        &[("leak", secret)],
    );
    let daemon = project.start(None).await;
    let body = format!(r#"{{"order": 17, "note": "token {secret} inside", "{secret}": 1}}"#);
    let (status, reply) = daemon
        .post(
            &format!("/hooks/plain?token={secret}"),
            body.as_bytes(),
            &[
                ("content-type", "application/json".into()),
                ("x-api-key", secret.into()),
            ],
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let event = daemon
        .get(&format!(
            "/api/v1/events/{}",
            reply["event_id"].as_str().unwrap()
        ))
        .await;
    let stored = event.to_string();
    assert!(!stored.contains(secret), "{stored}");
    assert!(stored.contains("[redacted]"), "{stored}");
    assert_eq!(event["event"]["data"]["order"], 17, "the rest is kept");
    let runs = daemon.wait_runs("ingest", 1, Duration::from_secs(10)).await;
    let run = daemon
        .get(&format!("/api/v1/runs/{}", runs[0]["id"].as_str().unwrap()))
        .await;
    assert!(!run.to_string().contains(secret), "{run}");
    assert_eq!(run["params"]["order"], 17);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whsec_secret_that_is_not_base64_is_refused_at_load_time() {
    let project = Project::with_secrets(
        &[hook(
            "std",
            "/std",
            json!({"secret": "${secrets.std}", "signature": "standard-webhooks"}),
            json!({}),
        )],
        &[("std", "whsec_not*base64!")],
    );
    let error = match start(ServeOptions::local(project.root().join("switchyard.json"))).await {
        Ok(_) => panic!("the daemon started with a bad whsec_ secret"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("b0.json")
            && error.contains("on.webhook.secret")
            && error.contains("base64"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// Injected log faults
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_log_cannot_flush_nothing_is_acknowledged_and_afterwards_nothing_is_lost_or_doubled()
 {
    let project = Project::new(&[
        hook(
            "plain",
            "/plain",
            json!({}),
            json!({"order": "${event.data.order}"}),
        ),
        json!({"name": "files", "on": {"file": {"path": "inbox", "settle": "50ms"}},
               "workflow": "ingest", "params": {"order": "${event.data.name}"}}),
    ]);
    let inbox = project.inbox();
    let daemon = project.start(None).await;
    let log = daemon.runtime().log().clone();
    let health = || async {
        let response = daemon
            .client
            .get(daemon.url("/healthz"))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(health().await.0, 200);

    log.inject_flush_failures(true);
    // A webhook is refused with 503 (nothing acknowledged), saying why.
    let delivery = [("webhook-id", "fault-1".to_string())];
    let (status, reply) = daemon
        .post("/hooks/plain", br#"{"order": 1}"#, &delivery)
        .await;
    assert_eq!(status, 503, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be flushed"),
        "{reply}"
    );
    let (status, body) = health().await;
    assert_eq!(status, 503);
    assert!(
        body["log"]
            .as_str()
            .unwrap()
            .contains("injected flush failure"),
        "{body}"
    );
    // A run asked for by hand is refused too.
    let (status, _) = daemon
        .post(
            "/api/v1/workflows/ingest/runs",
            b"{}",
            &[("content-type", "application/json".into())],
        )
        .await;
    assert_eq!(status, 503);
    // A file arriving meanwhile.
    std::fs::write(inbox.join("during.csv"), "x").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon
            .runs("ingest")
            .await
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count(),
        0,
        "nothing ran while the log could not flush"
    );

    // Flushes work again: everything held goes on.
    log.inject_flush_failures(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while health().await.0 != 200 {
        assert!(Instant::now() < deadline, "health did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sender retries its delivery: one run for it, not two.
    let (status, retried) = daemon
        .post("/hooks/plain", br#"{"order": 1}"#, &delivery)
        .await;
    assert_eq!(status, 202, "{retried}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs = daemon.runs("ingest").await;
        let done = runs.iter().filter(|r| r["status"] == "succeeded").count();
        if done >= 3 && runs.len() == done {
            break runs;
        }
        assert!(Instant::now() < deadline, "{runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = if daemon.runs("ingest").await.len() == runs.len() {
        runs
    } else {
        daemon.runs("ingest").await
    };
    let orders = param_values(&runs, "order");
    // The webhook's run once (its 503'd first try was recorded, the retry
    // is its duplicate), the file once, and the refused manual run once
    // (its RunCreated was written; it was not acknowledged, but it is not
    // lost either).
    assert_eq!(orders.iter().filter(|o| *o == "1").count(), 1, "{orders:?}");
    assert_eq!(
        orders.iter().filter(|o| *o == "during.csv").count(),
        1,
        "{orders:?}"
    );
    assert_eq!(runs.len(), 3, "{orders:?}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_runs_and_events_in_the_background() {
    let project = Project::with_config(
        &[hook(
            "plain",
            "/plain",
            json!({}),
            json!({"order": "${event.data.order}"}),
        )],
        &[],
        json!({"retention": {"runs": "1s", "events": "1s", "task_logs": "1s"}}),
    );
    let daemon = project.start(None).await;
    for n in 0..5 {
        let body = format!(r#"{{"order": {n}}}"#);
        let (status, _) = daemon.post("/hooks/plain", body.as_bytes(), &[]).await;
        assert_eq!(status, 202);
    }
    let runs = daemon.wait_runs("ingest", 5, Duration::from_secs(20)).await;
    let first = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(daemon.events().await.len(), 5);
    // A second and a bit later, the sweeper (every 250 ms here) has
    // deleted them: runs, their history, events, and the index entries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gone = daemon.runs("ingest").await.is_empty() && daemon.events().await.is_empty();
        if gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not delete the old runs and events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = daemon
        .client
        .get(daemon.url(&format!("/api/v1/runs/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let metrics = daemon
        .client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_retention_deleted_total{what=\"runs\"} 5"),
        "{metrics}"
    );
    daemon.stop().await;
}

#[test]
fn a_bad_retention_period_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"retention": {"runs": "a while"}}).to_string(),
    )
    .unwrap();
    let error = switchyard::spec::Config::load(&dir.path().join("switchyard.json"), false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("retention.runs"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_ledger_forgets_files_that_are_gone_while_the_daemon_runs() {
    let project = Project::new(&[json!({"name": "files",
        "on": {"file": {"path": "inbox", "settle": "50ms", "poll": "200ms"}},
        "workflow": "ingest", "params": {"order": "${event.data.name}"}})]);
    let inbox = project.inbox();
    let daemon = project.start(None).await;
    std::fs::write(inbox.join("a.csv"), "x").unwrap();
    daemon.wait_runs("ingest", 1, Duration::from_secs(20)).await;
    let ledger = || {
        daemon
            .runtime()
            .log()
            .marks_with_prefix(b"file\0")
            .unwrap()
            .len()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger() == 0 {
        assert!(
            Instant::now() < deadline,
            "the handled file is not in the ledger"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(inbox.join("a.csv")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger() != 0 {
        assert!(
            Instant::now() < deadline,
            "the ledger kept a file that is gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_webhook_becomes_an_object_and_githubs_payload_is_parsed() {
    let secret = "s3cret-value";
    let project = Project::with_secrets(
        &[hook(
            "gh",
            "/gh",
            json!({"secret": "${secrets.hook}", "signature": "github"}),
            json!({"action": "${event.data.payload.action}", "tags": "${event.data.tag}"}),
        )],
        &[("hook", secret)],
    );
    let daemon = project.start(None).await;
    // GitHub's form-encoded delivery: `payload` holds the JSON.
    let body = b"payload=%7B%22action%22%3A%22opened%22%2C%22n%22%3A1%7D&tag=a&tag=b+c";
    let (status, reply) = daemon
        .post(
            "/hooks/gh",
            body,
            &[
                ("x-hub-signature-256", sign_hex(secret, body)),
                ("x-github-delivery", "form-1".into()),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let event_id = reply["event_id"].as_str().unwrap();
    let shown = daemon.get(&format!("/api/v1/events/{event_id}")).await;
    assert_eq!(
        shown["event"]["data"],
        json!({"payload": {"action": "opened", "n": 1}, "tag": ["a", "b c"]})
    );
    assert_eq!(shown["outcomes"][0]["outcome"], "started", "{shown}");
    // A payload that is not JSON is a bad body, refused with the reason.
    let body = b"payload=%7Bnot";
    let (status, reply) = daemon
        .post(
            "/hooks/gh",
            body,
            &[
                ("x-hub-signature-256", sign_hex(secret, body)),
                ("x-github-delivery", "form-2".into()),
                ("content-type", "application/x-www-form-urlencoded".into()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`payload` is not JSON")
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_files_records_hooks_api_and_ticks_survives_a_restart_and_resume_catches_up() {
    let t0 = utc(2026, 6, 1, 12, 0, 0);
    let project = Project::new(&[
        file_binding("files", "inbox", json!({})),
        hook(
            "plain",
            "/plain",
            json!({}),
            json!({"order": "${event.data.order}"}),
        ),
        json!({"name": "api", "on": {"api": {}}, "workflow": "second"}),
        json!({"name": "tick", "on": {"cron": {"every": "1m"}}, "workflow": "first"}),
    ]);
    let inbox = project.inbox();
    let clock = ManualClock::new(t0);
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let pause = |path: &'static str| daemon.post(path, b"", &[]);
    let (status, answer) = pause("/api/v1/bindings/files/pause").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["paused"], true);
    assert!(answer["since"].is_string(), "{answer}");
    let (status, _) = pause("/api/v1/bindings/plain/pause").await;
    assert_eq!(status, 200);
    // A workflow's pause holds every binding that starts it.
    let (status, _) = pause("/api/v1/workflows/second/pause").await;
    assert_eq!(status, 200);
    let (status, _) = pause("/api/v1/workflows/first/pause").await;
    assert_eq!(status, 200);
    let (status, answer) = pause("/api/v1/bindings/nope/pause").await;
    assert_eq!(status, 404, "{answer}");
    let bindings = daemon.get("/api/v1/bindings").await;
    let paused: BTreeMap<String, bool> = bindings["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["paused"] == true))
        .collect();
    assert!(paused.values().all(|p| *p), "{paused:?}");

    // Traffic while paused: a file waits, the rest is recorded as paused.
    std::fs::write(inbox.join("held.csv"), "a,b\n").unwrap();
    let (status, hooked) = daemon
        .post(
            "/hooks/plain",
            br#"{"order": 5}"#,
            &[("content-type", "application/json".into())],
        )
        .await;
    assert_eq!(status, 202, "{hooked}");
    assert_eq!(hooked["outcomes"][0]["outcome"], "paused", "{hooked}");
    let (status, api) = daemon
        .post(
            "/api/v1/events",
            br#"{"type": "thing.happened", "id": "api-paused-1"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 202, "{api}");
    assert_eq!(api["outcomes"][0]["outcome"], "paused");
    clock.set(t0 + chrono::Duration::minutes(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ticks: Vec<Value> = daemon
            .events()
            .await
            .into_iter()
            .filter(|e| e["event"]["type"] == "switchyard.cron.tick")
            .collect();
        if let Some(tick) = ticks.first() {
            assert_eq!(tick["outcomes"][0]["outcome"], "paused", "{tick}");
            // …and the binding's occurrence log says so.
            let log = daemon.get("/api/v1/bindings/tick/occurrences").await;
            assert_eq!(log["paused"], true, "{log}");
            assert_eq!(log["occurrences"][0]["status"], "skipped_paused", "{log}");
            assert_eq!(
                log["occurrences"][0]["scheduled_time"],
                "2026-06-01T12:01:00.000Z"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused tick was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        daemon.runs("ingest").await.is_empty(),
        "a paused file binding started a run"
    );
    assert!(daemon.runs("first").await.is_empty());
    daemon.stop().await;

    // Durable: still paused after a restart, and the file still waits.
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let bindings = daemon.get("/api/v1/bindings").await;
    assert!(
        bindings["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["paused"] == true),
        "{bindings}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(daemon.runs("ingest").await.is_empty());

    // Resume: the held file has exactly one run; a paused webhook event is
    // replayed to the binding as it is now.
    for path in [
        "/api/v1/bindings/files/resume",
        "/api/v1/bindings/plain/resume",
        "/api/v1/workflows/second/resume",
    ] {
        let (status, answer) = daemon.post(path, b"", &[]).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["paused"], false);
    }
    let runs = daemon.wait_runs("ingest", 1, Duration::from_secs(20)).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let event_id = hooked["event_id"].as_str().unwrap();
    let (status, replayed) = daemon
        .post(&format!("/api/v1/events/{event_id}/replay"), b"", &[])
        .await;
    assert_eq!(status, 202, "{replayed}");
    assert_eq!(replayed["replay_of"], event_id);
    assert_eq!(replayed["outcomes"][0]["outcome"], "started", "{replayed}");
    // A replay bypasses dedup: a second one starts a second run.
    let (_, again) = daemon
        .post(&format!("/api/v1/events/{event_id}/replay"), b"", &[])
        .await;
    assert_eq!(again["outcomes"][0]["outcome"], "started", "{again}");
    let runs = daemon.wait_runs("ingest", 3, Duration::from_secs(20)).await;
    assert_eq!(runs.len(), 3);
    let (status, _) = daemon.post("/api/v1/events/no-such/replay", b"", &[]).await;
    assert_eq!(status, 404);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.runs("ingest").await.len(),
        3,
        "the held file ran once"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_starts_each_instant_the_schedule_fires_once_across_dst_with_its_logical_time() {
    let project = Project::new(&[
        json!({"name": "nightly", "on": {"cron": {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"}},
               "workflow": "ingest", "params": {"at": "${event.data.scheduled_time}"}}),
        hook("plain", "/plain", json!({}), json!({})),
    ]);
    // Clock far from the range: the live schedule fires nothing meanwhile.
    let clock = ManualClock::new(utc(2026, 6, 1, 12, 0, 0));
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let range = br#"{"from": "2026-03-28", "to": "2026-03-30T23:59:59Z", "dry_run": true}"#;
    let (status, dry) = daemon
        .post("/api/v1/bindings/nightly/backfill", range, &[])
        .await;
    assert_eq!(status, 200, "{dry}");
    // 02:30 does not exist on 2026-03-29 in Berlin: that night fires once, at 03:00.
    let expected = json!([
        "2026-03-28T01:30:00.000Z",
        "2026-03-29T01:00:00.000Z",
        "2026-03-30T00:30:00.000Z"
    ]);
    assert_eq!(dry["instants"], expected);
    assert!(
        daemon.runs("ingest").await.is_empty(),
        "a dry run started something"
    );
    // The same instants the live schedule gives (`switchyard schedule`).
    let out = crate::util::switchyard(
        project.root(),
        &[
            "schedule",
            "nightly",
            "--after",
            "2026-03-27T23:59:59Z",
            "--count",
            "3",
            "--json",
        ],
    );
    let live: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(live["fires"], expected);

    let range = br#"{"from": "2026-03-28", "to": "2026-03-30T23:59:59Z"}"#;
    let (status, first) = daemon
        .post("/api/v1/bindings/nightly/backfill", range, &[])
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["started"], 3);
    let runs = daemon.wait_runs("ingest", 3, Duration::from_secs(20)).await;
    let mut logical: Vec<String> = runs
        .iter()
        .map(|r| r["logical_time"].as_str().unwrap().to_string())
        .collect();
    logical.sort();
    assert_eq!(json!(logical), expected, "each run is for its instant");
    // Again (a retry after a crash mid-backfill, or a second try): each
    // instant already ran, so nothing starts twice.
    let (status, again) = daemon
        .post("/api/v1/bindings/nightly/backfill", range, &[])
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        (again["started"].clone(), again["duplicates"].clone()),
        (json!(0), json!(3))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(daemon.runs("ingest").await.len(), 3);
    // The backfill is recorded: shown with its runs.
    let id = first["backfill"]["id"].as_str().unwrap();
    let shown = daemon.get(&format!("/api/v1/backfills/{id}")).await;
    assert_eq!(shown["runs"].as_array().unwrap().len(), 3, "{shown}");
    // Bad requests name the problem.
    for (path, body, status_wanted, text) in [
        (
            "/api/v1/bindings/plain/backfill",
            &br#"{"from": "2026-01-01", "to": "2026-01-02"}"#[..],
            422,
            "only cron bindings backfill",
        ),
        (
            "/api/v1/bindings/nightly/backfill",
            &br#"{"from": "2026-01-02", "to": "2026-01-01"}"#[..],
            422,
            "is before",
        ),
        (
            "/api/v1/bindings/nightly/backfill",
            &br#"{"from": "yesterday", "to": "2026-01-01"}"#[..],
            400,
            "`from`",
        ),
        (
            "/api/v1/bindings/nightly/backfill",
            &br#"{"from": "2000-01-01", "to": "2099-01-01"}"#[..],
            422,
            "more than 10000",
        ),
        (
            "/api/v1/bindings/nope/backfill",
            &br#"{"from": "2026-01-01", "to": "2026-01-02"}"#[..],
            404,
            "no binding",
        ),
    ] {
        let (status, answer) = daemon.post(path, body, &[]).await;
        assert_eq!(status, status_wanted, "{path}: {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(text),
            "{answer}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_backfill_cancels_what_it_has_not_finished() {
    let project = Project::new(&[
        json!({"name": "hourly", "on": {"cron": {"schedule": "0 * * * *"}},
        "workflow": "slowpoke"}),
    ]);
    write_workflow(
        &project.root().join("workflows"),
        "slowpoke",
        &json!({"name": "slowpoke", "max_active_runs": 1,
                "tasks": [{"id": "nap", "sleep": {"duration": "30s"}}]}),
    );
    let clock = ManualClock::new(utc(2026, 6, 1, 12, 30, 0));
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let (status, started) = daemon
        .post(
            "/api/v1/bindings/hourly/backfill",
            br#"{"from": "2026-05-01T00:00:00Z", "to": "2026-05-01T03:00:00Z"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["started"], 4);
    let id = started["backfill"]["id"].as_str().unwrap();
    let (status, cancelled) = daemon
        .post(&format!("/api/v1/backfills/{id}/cancel"), b"", &[])
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(
        cancelled["cancelled"].as_array().unwrap().len(),
        4,
        "{cancelled}"
    );
    let runs = daemon
        .wait_runs("slowpoke", 4, Duration::from_secs(20))
        .await;
    assert!(runs.iter().all(|r| r["status"] == "cancelled"), "{runs:?}");
    daemon.stop().await;
}

async fn fire(daemon: &Daemon, id: &str) -> String {
    let body = json!({"type": "go", "id": id}).to_string();
    let (status, answer) = daemon.post("/api/v1/events", body.as_bytes(), &[]).await;
    assert_eq!(status, 202, "{answer}");
    answer["runs"][0].as_str().unwrap().to_string()
}

async fn wait_done(daemon: &Daemon, id: String) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
        if run["status"] == "succeeded" || run["status"] == "failed" {
            return run;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_serves_triggers_after_the_file_changes_until_unpinned() {
    let project = Project::new(&[json!({"name": "api", "on": {"api": {}}, "workflow": "first"})]);
    let daemon = project.start(None).await;
    let v1_run = wait_done(&daemon, fire(&daemon, "e-1").await).await;
    let v1 = v1_run["version"].as_str().unwrap().to_string();
    assert_eq!(v1_run["vars"]["n"], 41);
    // The file changes: a new current version.
    write_workflow(
        &project.root().join("workflows"),
        "first",
        &json!({"name": "first", "tasks": [{"id": "a", "shell": {"script": "echo '{\"n\": 42}' > \"$SWITCHYARD_OUTPUT\""}, "export": {"n": "${output.n}"}}]}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let v2 = loop {
        let shown = daemon.get("/api/v1/workflows/first").await;
        let current = shown["version"].as_str().unwrap().to_string();
        if current != v1 {
            break current;
        }
        assert!(Instant::now() < deadline, "the edit was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let versions = daemon.get("/api/v1/workflows/first/versions").await;
    let hashes: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(hashes, [v1.as_str(), v2.as_str()], "{versions}");
    assert!(versions["versions"][0]["definition"]["tasks"].is_array());
    let diff = daemon
        .get(&format!("/api/v1/workflows/first/versions/{v1}/diff/{v2}"))
        .await;
    let patch = diff["patch"].as_array().unwrap();
    assert!(
        patch
            .iter()
            .any(|op| op["op"] == "replace" && op["path"] == "/tasks/0/shell/script"),
        "{diff}"
    );
    // Pinned: triggers (and runs by hand) use v1 although the file is v2.
    let (status, pinned) = daemon
        .post(
            "/api/v1/workflows/first/pin",
            json!({"version": v1}).to_string().as_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{pinned}");
    let run = wait_done(&daemon, fire(&daemon, "e-2").await).await;
    assert_eq!(
        (run["version"].as_str(), run["vars"]["n"].clone()),
        (Some(v1.as_str()), json!(41))
    );
    let (_, by_hand) = daemon
        .post("/api/v1/workflows/first/runs", b"{}", &[])
        .await;
    assert_eq!(by_hand["version"], v1.as_str());
    // An explicit version wins.
    let (_, explicit) = daemon
        .post(
            "/api/v1/workflows/first/runs",
            json!({"version": v2}).to_string().as_bytes(),
            &[],
        )
        .await;
    assert_eq!(explicit["version"], v2.as_str(), "{explicit}");
    let (status, unknown) = daemon
        .post(
            "/api/v1/workflows/first/pin",
            br#"{"version": "0000000000000000"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 404, "{unknown}");
    daemon.stop().await;
    // Durable: still pinned after a restart; unpin returns to the file.
    let daemon = project.start(None).await;
    let listed = daemon.get("/api/v1/workflows").await;
    let first = listed["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "first")
        .unwrap()
        .clone();
    assert_eq!(first["pinned"], v1.as_str(), "{listed}");
    let (status, _) = daemon.post("/api/v1/workflows/first/unpin", b"", &[]).await;
    assert_eq!(status, 200);
    let body = json!({"type": "go", "id": "e-3"}).to_string();
    let (_, answer) = daemon.post("/api/v1/events", body.as_bytes(), &[]).await;
    let id = answer["runs"][0].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
        if run["status"] == "succeeded" {
            assert_eq!(run["version"], v2.as_str());
            assert_eq!(run["vars"]["n"], 42);
            break;
        }
        assert!(Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtesting_an_edited_binding_against_recorded_events_starts_nothing() {
    let project = Project::new(&[
        json!({"name": "orders", "on": {"api": {}}, "workflow": "first",
        "filter": "event.type == 'order.created'"}),
    ]);
    let daemon = project.start(None).await;
    for (id, kind, amount) in [
        ("o-1", "order.created", 5),
        ("o-2", "order.created", 50),
        ("o-3", "order.paid", 7),
    ] {
        let body = json!({"type": kind, "id": id, "data": {"amount": amount}}).to_string();
        let (status, _) = daemon.post("/api/v1/events", body.as_bytes(), &[]).await;
        assert_eq!(status, 202);
    }
    daemon.wait_runs("first", 2, Duration::from_secs(20)).await;
    // An edit: only large orders, with the amount as a param.
    let edited = json!({"name": "orders", "on": {"api": {}}, "workflow": "second",
        "filter": "event.type == 'order.created' && event.data.amount > 10",
        "params": {"amount": "${event.data.amount}"}});
    let (status, answer) = daemon
        .post(
            "/api/v1/bindings/backtest",
            json!({"binding": edited, "since": "1h"})
                .to_string()
                .as_bytes(),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["from_this_trigger"], 3, "{answer}");
    assert_eq!(answer["would_start"], 1, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let matched: Vec<&Value> = results.iter().filter(|r| r["verdict"] == "match").collect();
    assert_eq!(matched[0]["event_id"], "o-2");
    assert_eq!(matched[0]["params"], json!({"amount": 50}));
    assert!(
        results
            .iter()
            .any(|r| r["verdict"] == "filtered" && r["event_id"] == "o-1")
    );
    // Nothing started by a backtest.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(daemon.runs("second").await.is_empty());
    // By name, and bad input.
    let (status, by_name) = daemon
        .post(
            "/api/v1/bindings/backtest",
            br#"{"binding": "orders"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 200, "{by_name}");
    assert_eq!(by_name["would_start"], 2);
    let (status, bad) = daemon
        .post(
            "/api/v1/bindings/backtest",
            br#"{"binding": {"name": "x", "on": {"api": {}}, "workflow": "nope"}}"#,
            &[],
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("nope"),
        "{bad}"
    );
    daemon.stop().await;
}

/// The `switchyard.binding.missed` events recorded so far, oldest first.
async fn missed_events(daemon: &Daemon) -> Vec<Value> {
    let mut missed: Vec<Value> = daemon
        .events()
        .await
        .into_iter()
        .filter(|e| e["event"]["type"] == "switchyard.binding.missed")
        .collect();
    missed.reverse();
    missed
}

async fn wait_missed(daemon: &Daemon, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let missed = missed_events(daemon).await;
        if missed.len() >= n {
            return missed;
        }
        assert!(
            Instant::now() < deadline,
            "{} absence alerts, expected {n}",
            missed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn millis(text: &Value) -> i64 {
    DateTime::parse_from_rfc3339(text.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_alerts_once_per_silent_window_and_never_while_events_arrive() {
    let project = Project::new(&[
        json!({"name": "feed", "on": {"api": {}}, "filter": "event.type == 'feed.arrived'",
               "workflow": "second", "expect": {"every": "2s"}}),
        json!({"name": "feed-alert", "on": {"missed": {"binding": "feed"}},
               "workflow": "ingest", "params": {"at": "${event.data.deadline}", "windows": "${event.data.windows}"}}),
    ]);
    let daemon = project.start(None).await;
    let loaded = chrono::Utc::now().timestamp_millis();

    // Silence: one alert per 2 s window, each starting the alert binding.
    let missed = wait_missed(&daemon, 2, Duration::from_secs(20)).await;
    let (first, second) = (&missed[0]["event"], &missed[1]["event"]);
    assert_eq!(first["source"], "/bindings/feed", "{first}");
    assert_eq!(first["subject"], "feed");
    assert_eq!(first["data"]["binding"], "feed");
    assert_eq!(first["data"]["workflow"], "second");
    assert_eq!(first["data"]["expect"], "every 2s");
    assert_eq!(first["data"]["last_event_at"], Value::Null);
    assert_eq!(first["data"]["windows"], 1);
    let d1 = millis(&first["data"]["deadline"]);
    assert!(
        (loaded - 2_000..=loaded + 2_500).contains(&(d1 - 2_000)),
        "the first window starts when the binding is loaded: deadline {d1}, loaded {loaded}"
    );
    assert_eq!(millis(&second["data"]["deadline"]) - d1, 2_000, "{second}");
    assert_eq!(
        first["id"],
        format!(
            "missed:feed:{}",
            first["data"]["deadline"].as_str().unwrap()
        )
    );
    assert_eq!(
        missed[0]["outcomes"][0]["outcome"], "started",
        "{}",
        missed[0]
    );
    let runs = daemon.wait_runs("ingest", 2, Duration::from_secs(20)).await;
    let deadlines: BTreeSet<String> = param_values(&runs, "at").into_iter().collect();
    assert!(
        deadlines.contains(first["data"]["deadline"].as_str().unwrap()),
        "{deadlines:?}"
    );

    // Events arriving (and passing the filter) keep it quiet. One that the
    // filter drops is not an arrival.
    let post = |id: String, kind: &'static str| {
        let daemon = &daemon;
        async move {
            let body = json!({"type": kind, "id": id}).to_string();
            let (status, answer) = daemon.post("/api/v1/events", body.as_bytes(), &[]).await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    post("feed-0".into(), "feed.arrived").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet_from = missed_events(&daemon).await.len();
    let until = Instant::now() + Duration::from_secs(5);
    let mut i = 1;
    while Instant::now() < until {
        post(format!("feed-{i}"), "feed.arrived").await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        missed_events(&daemon).await.len(),
        quiet_from,
        "an alert while events arrived every 300 ms"
    );
    let last_arrival = chrono::Utc::now().timestamp_millis();
    // Only filtered events now: the binding misses again, 2 s after the last real one.
    for j in 0..8 {
        post(format!("other-{j}"), "something.else").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let missed = wait_missed(&daemon, quiet_from + 1, Duration::from_secs(20)).await;
    let alert = &missed[quiet_from]["event"]["data"];
    let last_event_at = millis(&alert["last_event_at"]);
    assert!(last_event_at <= last_arrival, "{alert}");
    assert_eq!(millis(&alert["deadline"]) - last_event_at, 2_000, "{alert}");
    daemon.stop().await;

    // A restart neither repeats an alert nor loses the checked deadline.
    let daemon = project.start(None).await;
    let before_restart = missed.len();
    let missed = wait_missed(&daemon, before_restart + 1, Duration::from_secs(20)).await;
    let ids: Vec<&str> = missed
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "an alert was recorded twice: {ids:?}"
    );
    let deadlines: Vec<i64> = missed
        .iter()
        .map(|e| millis(&e["event"]["data"]["deadline"]))
        .collect();
    assert!(deadlines.windows(2).all(|w| w[0] < w[1]), "{deadlines:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expectation_by_a_schedule_is_met_by_an_event_since_the_previous_instant() {
    // Six fields: every third second.
    let project = Project::new(&[
        json!({"name": "feed", "on": {"api": {}}, "workflow": "second",
               "expect": {"by": "*/3 * * * * *"}}),
        json!({"name": "feed-alert", "on": {"missed": {"binding": "feed"}}, "workflow": "ingest"}),
    ]);
    let daemon = project.start(None).await;
    let missed = wait_missed(&daemon, 2, Duration::from_secs(20)).await;
    let d: Vec<i64> = missed
        .iter()
        .map(|e| millis(&e["event"]["data"]["deadline"]))
        .collect();
    assert_eq!(d[0] % 3_000, 0, "deadlines are the schedule's instants");
    assert_eq!(d[1] - d[0], 3_000);
    assert_eq!(millis(&missed[1]["event"]["data"]["window_start"]), d[0]);
    // An event every second: every window has one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut i = 0;
    let body = |i: i32| json!({"type": "tick", "id": format!("e-{i}")}).to_string();
    let (status, _) = daemon.post("/api/v1/events", body(i).as_bytes(), &[]).await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quiet_from = missed_events(&daemon).await.len();
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        i += 1;
        let (status, _) = daemon.post("/api/v1/events", body(i).as_bytes(), &[]).await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert_eq!(missed_events(&daemon).await.len(), quiet_from);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_binding_expects_nothing_and_a_missed_trigger_must_name_an_expecting_binding() {
    let project = Project::new(&[
        json!({"name": "feed", "on": {"api": {}}, "workflow": "second", "expect": {"every": "1s"}}),
    ]);
    let daemon = project.start(None).await;
    let (status, _) = daemon.post("/api/v1/bindings/feed/pause", b"", &[]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        missed_events(&daemon).await.is_empty(),
        "alerted while paused"
    );
    let (status, _) = daemon.post("/api/v1/bindings/feed/resume", b"", &[]).await;
    assert_eq!(status, 200);
    wait_missed(&daemon, 1, Duration::from_secs(20)).await;
    daemon.stop().await;

    // Validation: `on.missed` names a binding with an `expect`; `expect` is one of by/every.
    let bad = [
        (
            json!({"name": "a", "on": {"missed": {"binding": "nope"}}, "workflow": "ingest"}),
            "no binding named `nope`",
        ),
        (
            json!({"name": "a", "on": {"missed": {"binding": "plain"}}, "workflow": "ingest"}),
            "has no `expect`",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {}}),
            "give `by`",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"by": "0 6 * * *", "every": "1h"}}),
            "not both",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"every": "soon"}}),
            "expect.every",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"every": "1h", "timezone": "UTC"}}),
            "do not use a timezone",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"by": "0 0 30 2 *"}}),
            "expect.by",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"by": "0 6 * * *", "timezone": "Mars/Base"}}),
            "expect.timezone",
        ),
        (
            json!({"name": "a", "on": {"api": {}}, "workflow": "ingest", "expect": {"after": "1h"}}),
            "after",
        ),
    ];
    for (binding, want) in bad {
        let project = Project::new(&[
            json!({"name": "plain", "on": {"api": {}}, "workflow": "ingest"}),
            binding.clone(),
        ]);
        let out = crate::util::switchyard(project.root(), &["validate"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{binding} validated: {text}");
        assert!(text.contains(want), "{binding}: wanted `{want}` in: {text}");
        assert!(
            text.contains("b1.json"),
            "{binding}: the file is named: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_occurrence_log_shows_each_instant_and_what_became_of_it() {
    let t0 = utc(2026, 6, 1, 12, 0, 0);
    let minutes = |m: i64| t0 + chrono::Duration::minutes(m);
    let project = Project::new(&[
        cron_binding("tick", json!({"every": "1m", "catch_up": "latest"})),
        json!({"name": "api", "on": {"api": {}}, "workflow": "second"}),
    ]);
    let clock = ManualClock::new(t0);
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    let fired = advance(&daemon, &clock, minutes(1), 1).await;
    assert_eq!(fired, ["2026-06-01T12:01:00.000Z"]);
    let (status, _) = daemon.post("/api/v1/bindings/tick/pause", b"", &[]).await;
    assert_eq!(status, 200);
    clock.set(minutes(2));
    let paused_id = "cron:tick:2026-06-01T12:02:00.000Z";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon
        .events()
        .await
        .iter()
        .any(|e| e["event"]["id"] == paused_id)
    {
        assert!(
            Instant::now() < deadline,
            "the paused tick was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, _) = daemon.post("/api/v1/bindings/tick/resume", b"", &[]).await;
    assert_eq!(status, 200);
    daemon.stop().await;

    // Down until 12:10:30: `latest` fires 12:10, skips 12:03 … 12:09.
    let clock = ManualClock::new(minutes(10) + chrono::Duration::seconds(30));
    let daemon = project.start(Some(Arc::new(clock.clone()))).await;
    daemon.wait_runs("ingest", 2, Duration::from_secs(20)).await;
    // A backfill over 11:58 … 12:01: three new instants, 12:01 a duplicate.
    let (status, backfill) = daemon
        .post(
            "/api/v1/bindings/tick/backfill",
            br#"{"from": "2026-06-01T11:58:00Z", "to": "2026-06-01T12:01:00Z"}"#,
            &[],
        )
        .await;
    assert_eq!(status, 202, "{backfill}");
    let backfill_id = backfill["backfill"]["id"].as_str().unwrap().to_string();
    // The paused instant, replayed.
    let (status, replayed) = daemon
        .post(&format!("/api/v1/events/{paused_id}/replay"), b"", &[])
        .await;
    assert_eq!(status, 202, "{replayed}");
    let runs = daemon.wait_runs("ingest", 6, Duration::from_secs(20)).await;
    let original = runs
        .iter()
        .find(|r| r["params"]["at"] == "2026-06-01T12:01:00.000Z" && r["rerun_of"].is_null())
        .unwrap()["id"]
        .clone();

    let log = daemon.get("/api/v1/bindings/tick/occurrences").await;
    assert_eq!(log["binding"], "tick");
    assert_eq!(log["schedule"], "every 1m");
    assert_eq!(log["catch_up"], "latest");
    assert_eq!(log["next_fires"].as_array().unwrap().len(), 3, "{log}");
    let rows: Vec<(String, String)> = log["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["scheduled_time"].as_str().unwrap()[11..16].to_string(),
                o["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("12:10", "caught_up"),
        ("12:03", "skipped_catch_up"),
        ("12:02", "skipped_paused"),
        ("12:01", "duplicate"),
        ("12:00", "backfilled"),
        ("11:59", "backfilled"),
        ("11:58", "backfilled"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(rows, want, "{log:#}");
    let entries = log["occurrences"].as_array().unwrap();
    let skipped = &entries[1];
    assert_eq!(skipped["last_scheduled_time"], "2026-06-01T12:09:00.000Z");
    assert_eq!(skipped["count"], 7);
    assert!(
        skipped["detail"].as_str().unwrap().contains("latest"),
        "{skipped}"
    );
    let paused = &entries[2];
    assert_eq!(paused["replays"][0]["status"], "fired", "{paused}");
    assert!(paused["replays"][0]["run_id"].is_string(), "{paused}");
    assert_eq!(
        entries[3]["run_id"], original,
        "the duplicate names the run the instant started"
    );
    assert_eq!(entries[4]["backfill"], backfill_id.as_str());
    assert!(entries[0]["run_id"].is_string());

    // Pages: `before` goes back from the last entry of a page.
    let page = daemon
        .get("/api/v1/bindings/tick/occurrences?limit=3")
        .await;
    assert_eq!(page["occurrences"].as_array().unwrap().len(), 3);
    let next = page["next"].as_str().unwrap().to_string();
    assert_eq!(next, "2026-06-01T12:02:00.000Z");
    let rest = daemon
        .get(&format!(
            "/api/v1/bindings/tick/occurrences?limit=3&before={next}"
        ))
        .await;
    let times: Vec<&str> = rest["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["scheduled_time"].as_str().unwrap()[11..16])
        .collect();
    assert_eq!(times, ["12:01", "12:00", "11:59"]);

    // Bad requests name the problem.
    for (path, status, want) in [
        (
            "/api/v1/bindings/nope/occurrences",
            404,
            "no binding named `nope`",
        ),
        (
            "/api/v1/bindings/api/occurrences",
            422,
            "only cron bindings",
        ),
        (
            "/api/v1/bindings/tick/occurrences?before=yesterday",
            400,
            "`before`",
        ),
        ("/api/v1/bindings/tick/occurrences?limit=0", 400, "`limit`"),
    ] {
        let response = daemon.client.get(daemon.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains(want), "{path}: {text}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_adapter_makes_the_daemon_unhealthy_until_its_restart_holds() {
    let project = Project::new(&[file_binding("blocked", "blocker/inbox", json!({}))]);
    // A regular file where the watched directory's parent should be: the
    // watcher cannot create its directory and dies.
    let blocker = project.root().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let daemon = project.start(None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let response = daemon
            .client
            .get(daemon.url("/healthz"))
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never unhealthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let name = format!("file:{}", project.root().join("blocker/inbox").display());
    let dead = &body["adapters"][&name];
    assert!(
        dead["error"].as_str().unwrap().contains("blocker/inbox"),
        "{body:#}"
    );
    assert!(dead["since"].is_string(), "{body}");
    // The container health check says why.
    let addr = daemon.url("").trim_start_matches("http://").to_string();
    let root = project.root().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        crate::util::switchyard(&root, &["health", "--server", &addr])
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let said = crate::util::stderr(&out);
    assert!(said.contains(&format!("adapter {name} died")), "{said}");

    // Fixed: the next restart holds, the daemon is healthy again, and the
    // watcher works.
    std::fs::remove_file(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = daemon
            .client
            .get(daemon.url("/healthz"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never healthy again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(project.root().join("blocker/inbox/a.csv"), "x\n").unwrap();
    daemon.wait_runs("ingest", 1, Duration::from_secs(20)).await;
    daemon.stop().await;
}
