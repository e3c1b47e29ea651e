//! The dashboard: its pages and streams through the router, its login, and
//! a walk through it in real headless Chromium (`tests/browser/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_lite::StreamExt as _;
use serde_json::Value;

use crate::api::Fixture;
use crate::daemon::Daemon;

/// A page: status, the `location` and `set-cookie` headers, and its text.
struct Page {
    status: StatusCode,
    location: Option<String>,
    cookie: Option<String>,
    content_type: String,
    text: String,
}

async fn fetch(f: &Fixture, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Page {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = f
        .respond(request.body(Body::from(body.to_string())).unwrap())
        .await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, location, cookie) = (response.status(), header("location"), header("set-cookie"));
    let content_type = header("content-type").unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 10 << 20)
        .await
        .unwrap();
    Page {
        status,
        location,
        cookie,
        content_type,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn page(f: &Fixture, uri: &str) -> Page {
    fetch(f, "GET", uri, &[], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_what_the_api_holds() {
    let f = Fixture::new(None).await;
    let (status, run) = f
        .post(
            "/api/v1/workflows/quick/runs",
            r#"{"params": {"who": "dash"}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    f.wait_run(&id).await;

    let home = page(&f, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.content_type.starts_with("text/html"),
        "{}",
        home.content_type
    );
    assert!(
        home.text.contains("Overview") && home.text.contains(&format!("data-run=\"{id}\"")),
        "{}",
        home.text
    );

    let list = page(&f, "/workflows").await;
    assert!(
        list.text.contains("href=\"/workflows/quick\""),
        "{}",
        list.text
    );
    assert!(
        list.text.contains(&format!("href=\"/runs/{id}\"")),
        "the strip links the run"
    );

    let workflow = page(&f, "/workflows/quick").await;
    assert_eq!(workflow.status, StatusCode::OK);
    assert!(workflow.text.contains("<svg"), "a DAG");
    assert!(workflow.text.contains("data-task=\"a\"") && workflow.text.contains("data-task=\"b\""));
    assert!(
        workflow
            .text
            .contains("data-cell=\"b\" class=\"s-succeeded\""),
        "the grid's cells"
    );
    assert!(workflow.text.contains("data-param=\"who\"") || workflow.text.contains("no vars"));
    assert!(
        workflow.text.contains(&format!("data-select=\"{id}\"")),
        "runs can be selected"
    );
    assert!(workflow.text.contains(">Pin<"), "versions can be pinned");
    let longer = page(&f, "/workflows/quick?rows=1000").await;
    assert_eq!(longer.status, StatusCode::OK);
    assert!(
        longer.text.contains("<strong>1000</strong>"),
        "the page size chosen"
    );
    let bad = page(&f, "/workflows/quick?rows=7").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.text.contains("`rows` is 50, 200 or 1000, not 7"),
        "{}",
        bad.text
    );

    let run_page = page(&f, &format!("/runs/{id}")).await;
    assert_eq!(run_page.status, StatusCode::OK);
    assert!(
        run_page
            .text
            .contains("data-run-status class=\"badge s-succeeded\""),
        "{}",
        run_page.text
    );
    assert!(
        run_page
            .text
            .contains("class=\"task s-succeeded\" data-task=\"a\""),
        "the DAG coloured"
    );
    assert!(run_page.text.contains("data-logs=\"a\""));
    assert!(run_page.text.contains("attempt_started"), "the history");
    assert!(run_page.text.contains("dash"), "the params");

    // Logs searched on the server, and downloaded as text.
    let (status, found) = f
        .get(&format!("/api/v1/runs/{id}/tasks/a/logs?q=HELLO"))
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found["matches"],
        serde_json::json!([{"attempt": 1, "stream": "stdout", "line": 1, "text": "hello dash"}])
    );
    let download = page(&f, &format!("/api/v1/runs/{id}/tasks/a/logs?format=text")).await;
    assert!(download.content_type.starts_with("text/plain"));
    assert_eq!(download.text, "== attempt 1 stdout\nhello dash\n");
    for uri in ["/events", "/workers"] {
        let p = page(&f, uri).await;
        assert_eq!(p.status, StatusCode::OK, "{uri}: {}", p.text);
    }
    // Bad addresses get pages that say what is wrong.
    let bad = page(&f, "/runs/not-a-run").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("is not a run id"), "{}", bad.text);
    let missing = page(&f, "/workflows/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing.text.contains("no workflow named `nope`")
            || missing.text.contains("no workflow named")
    );
    // Text from files and events is escaped.
    assert!(!run_page.text.contains("<script>alert"));
    // Assets are linked by their content's hash and kept by browsers.
    let link = home
        .text
        .split("href=\"/assets/app.css?v=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no versioned stylesheet in {}", home.text));
    assert_eq!(link.len(), 12, "{link}");
    let css = f
        .respond(
            Request::get(format!("/assets/app.css?v={link}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(
        css.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_pages_need_a_session_which_the_api_accepts_too() {
    let f = Fixture::new(Some("s3cret")).await;
    let home = page(&f, "/runs/x?y=1").await;
    assert_eq!(home.status, StatusCode::SEE_OTHER);
    assert_eq!(
        home.location.as_deref(),
        Some("/login?next=%2Fruns%2Fx%3Fy%3D1")
    );
    // Assets and the login form need nothing.
    assert_eq!(page(&f, "/assets/app.js").await.status, StatusCode::OK);
    assert_eq!(page(&f, "/login").await.status, StatusCode::OK);

    let form = [("content-type", "application/x-www-form-urlencoded")];
    let wrong = fetch(&f, "POST", "/login", &form, "token=nope&next=%2Fworkflows").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.cookie.is_none());
    let elsewhere = fetch(
        &f,
        "POST",
        "/login",
        &form,
        "token=s3cret&next=%2F%2Fevil.example",
    )
    .await;
    assert_eq!(
        elsewhere.location.as_deref(),
        Some("/"),
        "never sent off this server"
    );
    let ok = fetch(
        &f,
        "POST",
        "/login",
        &form,
        "token=s3cret&next=%2Fworkflows",
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.location.as_deref(), Some("/workflows"));
    let cookie = ok.cookie.unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("s3cret"),
        "the token itself is not the cookie"
    );
    let session = cookie.split(';').next().unwrap().to_string();

    let with = [("cookie", session.as_str())];
    assert_eq!(
        fetch(&f, "GET", "/workflows", &with, "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        fetch(&f, "GET", "/api/v1/runs", &with, "").await.status,
        StatusCode::OK
    );
    // A change through the session must be JSON (a cross-site form cannot send it).
    let form_post = fetch(
        &f,
        "POST",
        "/api/v1/workflows/quick/runs",
        &[("cookie", session.as_str()), ("content-type", "text/plain")],
        "{}",
    )
    .await;
    assert_eq!(
        form_post.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        form_post.text
    );
    let json_post = fetch(
        &f,
        "POST",
        "/api/v1/workflows/quick/runs",
        &[
            ("cookie", session.as_str()),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(json_post.status, StatusCode::CREATED, "{}", json_post.text);
    // A forged or stale cookie is nothing.
    let forged = [("cookie", "switchyard_session=00")];
    assert_eq!(
        fetch(&f, "GET", "/", &forged, "").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        fetch(&f, "GET", "/api/v1/runs", &forged, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let out = fetch(&f, "POST", "/logout", &with, "").await;
    assert!(out.cookie.unwrap().contains("Max-Age=0"));
    f.shutdown().await;
}

/// Reads the stream until `needle` has arrived (or fails after 30 s).
async fn read_until(
    stream: &mut (impl futures_lite::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    text: &mut String,
    needle: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while !text.contains(needle) {
            match stream.next().await {
                Some(Ok(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return false,
            }
        }
        true
    })
    .await;
    assert!(found == Ok(true), "`{needle}` never came; got: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_changes_stream_as_server_sent_events() {
    let f = Fixture::new(None).await;
    // Every run's changes, summarised.
    let all = f
        .respond(Request::get("/api/v1/stream").body(Body::empty()).unwrap())
        .await;
    assert!(
        all.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut all = all.into_body().into_data_stream();
    let (status, run) = f.post("/api/v1/workflows/slow/runs", "{}").await;
    assert_eq!(status, StatusCode::CREATED);
    let id = run["id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    read_until(&mut all, &mut seen, &format!("\"id\":\"{id}\"")).await;
    assert!(seen.contains("event: run"), "{seen}");

    // One run's whole record, now and on every change, until it ends.
    let one = f
        .respond(
            Request::get(format!("/api/v1/runs/{id}/stream"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let mut one = one.into_body().into_data_stream();
    let mut text = String::new();
    read_until(&mut one, &mut text, "\"status\":\"running\"").await;
    let (status, _) = f.post(&format!("/api/v1/runs/{id}/cancel"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    read_until(&mut one, &mut text, "\"status\":\"cancelled\"").await;
    let last: Value = serde_json::from_str(
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["tasks"]["wait"]["status"], "cancelled", "{last}");
    let end = tokio::time::timeout(Duration::from_secs(10), one.next()).await;
    assert!(matches!(end, Ok(None)), "the stream of an ended run closes");
    let bad = fetch(&f, "GET", "/api/v1/runs/nope/stream", &[], "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    f.shutdown().await;
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_first_time_user_walks_the_dashboard_in_chromium() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser = repo.join("tests/browser");
    let chromium = std::env::var("SY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = browser.join("node_modules/playwright-core").is_dir()
        && Path::new(&chromium).exists()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok();
    if !ready {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_BROWSER").is_none(),
            "SWITCHYARD_REQUIRE_BROWSER is set but Chromium, node or tests/browser/node_modules is missing"
        );
        eprintln!(
            "SKIPPED a_first_time_user_walks_the_dashboard_in_chromium: needs {chromium}, node and `npm ci --prefix tests/browser`"
        );
        return;
    }
    // The demo project, plus a workflow long enough to cancel.
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::copy(
        repo.join("switchyard.json"),
        project.join("switchyard.json"),
    )
    .unwrap();
    copy_tree(&repo.join("examples"), &project.join("examples"));
    copy_tree(&repo.join("bindings"), &project.join("bindings"));
    std::fs::write(
        project.join("examples/workflows/long_export.json"),
        serde_json::json!({"name": "long_export", "description": "An export that takes a while.",
            "vars": {"seconds": "30"},
            "tasks": [{"id": "export", "shell": {"command": ["sleep", "${vars.seconds}"]}}]})
        .to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::spawn(&project, &data, &["--generate-token"]);
    let token = std::fs::read_to_string(data.join("api-token")).unwrap();
    let secret =
        std::fs::read_to_string(project.join("examples/secrets/promotions_webhook.txt")).unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let output = std::process::Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("SY_URL", daemon.url(""))
        .env("SY_TOKEN", token.trim())
        .env("SY_PROMO_SECRET", secret.trim())
        .env("SY_SHOTS", &shots)
        .env("SY_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let log = format!(
        "{}{}\n--- daemon ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        daemon.output.lock().unwrap()
    );
    assert!(output.status.success(), "the walk-through failed:\n{log}");
    for shot in [
        "01-home",
        "03-workflow",
        "04-run-logs",
        "05-rerun",
        "06-cancelled",
        "07-events",
        "08-paused",
    ] {
        let file = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            file.display()
        );
    }
    eprintln!("dashboard screenshots in {}", shots.display());
}
