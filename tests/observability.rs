//! `/metrics` as Prometheus reads it: parsed by the Prometheus project's
//! own OpenMetrics parser (Python `prometheus_client`), with counters and
//! histograms that move with real traffic.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::daemon::{Daemon, http};
use crate::util::{python_client, python_with, write_workflow};

/// The families of an exposition, as the Prometheus project's parser read them.
fn parse(python: &str, text: &str) -> BTreeMap<String, Value> {
    let parsed = python_client(python, "openmetrics_parse.py", text)
        .unwrap_or_else(|e| panic!("{e}\n--- exposition ---\n{text}"));
    serde_json::from_str(&parsed).unwrap()
}

/// The value of `sample` with all of `labels` in `family`, summed over the
/// other labels.
fn value(
    families: &BTreeMap<String, Value>,
    family: &str,
    sample: &str,
    labels: &[(&str, &str)],
) -> f64 {
    families
        .get(family)
        .and_then(|f| f["samples"].as_array())
        .into_iter()
        .flatten()
        .filter(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][k] == *v))
        .map(|s| s[2].as_f64().unwrap())
        .sum()
}

#[test]
fn metrics_parse_as_openmetrics_and_move_with_traffic() {
    let Some(python) = python_with("PROMETHEUS_PYTHON", "prometheus_client") else {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_BROKER").is_none(),
            "no python with prometheus_client (set PROMETHEUS_PYTHON)"
        );
        eprintln!(
            "SKIPPED metrics_parse_as_openmetrics_and_move_with_traffic: no python with prometheus_client"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows).unwrap();
    write_workflow(
        &flows,
        "two",
        &json!({"name": "two", "tasks": [
            {"id": "say", "shell": {"command": ["echo", "hi"]}},
            {"id": "then", "after": "say", "noop": {}},
        ]}),
    );
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"workflows": ["workflows"]}).to_string(),
    )
    .unwrap();
    let daemon = Daemon::spawn(dir.path(), &dir.path().join("data"), &[]);
    let scrape = || {
        let (status, text) = http().send("GET", &daemon.url("/metrics"), None).unwrap();
        assert_eq!(status, 200);
        parse(&python, text.as_str().unwrap())
    };
    let before = scrape();
    assert_eq!(before["switchyard_runs_created"]["type"], "counter");
    assert_eq!(before["switchyard_log_commit_seconds"]["type"], "histogram");

    for _ in 0..3 {
        let (status, run) = http()
            .send(
                "POST",
                &daemon.url("/api/v1/workflows/two/runs"),
                Some(json!({})),
            )
            .unwrap();
        assert_eq!(status, 201, "{run}");
        let id = run["id"].as_str().unwrap().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let (_, run) = http()
                .send("GET", &daemon.url(&format!("/api/v1/runs/{id}")), None)
                .unwrap();
            if run["status"] == "succeeded" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{run}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    // The counters move in the record stream's own time.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = scrape();
    let grew = |family: &str, sample: &str, labels: &[(&str, &str)]| {
        value(&after, family, sample, labels) - value(&before, family, sample, labels)
    };
    assert_eq!(
        grew(
            "switchyard_runs_created",
            "switchyard_runs_created_total",
            &[]
        ),
        3.0
    );
    assert_eq!(
        grew(
            "switchyard_runs_ended",
            "switchyard_runs_ended_total",
            &[("status", "succeeded")]
        ),
        3.0
    );
    let attempt = [("workflow", "two"), ("task", "say"), ("kind", "shell")];
    assert_eq!(
        grew(
            "switchyard_task_attempt_seconds",
            "switchyard_task_attempt_seconds_count",
            &attempt
        ),
        3.0,
        "{:?}",
        after.get("switchyard_task_attempt_seconds")
    );
    assert!(
        grew(
            "switchyard_task_attempt_seconds",
            "switchyard_task_attempt_seconds_sum",
            &attempt
        ) > 0.0
    );
    assert_eq!(
        grew(
            "switchyard_task_attempt_seconds",
            "switchyard_task_attempt_seconds_count",
            &[("task", "then"), ("kind", "noop")]
        ),
        3.0
    );
    assert!(
        grew(
            "switchyard_log_commit_seconds",
            "switchyard_log_commit_seconds_count",
            &[]
        ) >= 3.0
    );
    assert!(
        grew(
            "switchyard_log_commit_records",
            "switchyard_log_commit_records_sum",
            &[]
        ) >= 12.0
    );
    let route = [
        ("route", "/api/v1/workflows/{name}/runs"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert_eq!(
        grew(
            "switchyard_http_request_seconds",
            "switchyard_http_request_seconds_count",
            &route
        ),
        3.0,
        "{:?}",
        after.get("switchyard_http_request_seconds")
    );
    // Paths are grouped by their route, never one label per run.
    let routes: Vec<&Value> = after["switchyard_http_request_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s[1]["route"])
        .collect();
    assert!(
        routes.iter().any(|r| *r == "/api/v1/runs/{id}"),
        "{routes:?}"
    );
    assert!(
        !routes.iter().any(|r| r.as_str().unwrap().contains('-')),
        "{routes:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_naming_what_they_concern() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    let bindings = dir.path().join("bindings");
    std::fs::create_dir(&flows).unwrap();
    std::fs::create_dir(&bindings).unwrap();
    write_workflow(
        &flows,
        "quick",
        &json!({"name": "quick", "tasks": [{"id": "a", "noop": {}}]}),
    );
    std::fs::write(
        bindings.join("orders.json"),
        json!({"name": "orders", "on": {"api": {}}, "workflow": "quick"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"workflows": ["workflows"], "bindings": ["bindings"]}).to_string(),
    )
    .unwrap();
    let daemon = Daemon::spawn(
        dir.path(),
        &dir.path().join("data"),
        &["--log-format", "json"],
    );
    // The same event twice: the second is a duplicate, and says so.
    let event = json!({"type": "order.created", "id": "order-7", "source": "test"});
    for _ in 0..2 {
        let (status, body) = http()
            .send("POST", &daemon.url("/api/v1/events"), Some(event.clone()))
            .unwrap();
        assert!(status < 300, "{body}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let output = daemon.output.lock().unwrap().clone();
    let lines: Vec<Value> = output
        .lines()
        // The address line is for the tests and people, not a log line.
        .filter(|l| !l.starts_with("switchyard listening on"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let duplicate = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Duplicate event"))
        })
        .unwrap_or_else(|| panic!("{output}"));
    assert_eq!(duplicate["event_id"], "order-7", "{duplicate}");
    assert_eq!(duplicate["binding"], "orders");
    assert!(
        duplicate["run_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{duplicate}"
    );
    // The event's run started: its delay from the event's time is observed,
    // under the trigger that made the event (posted with its own type).
    let (_, metrics) = http().send("GET", &daemon.url("/metrics"), None).unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("switchyard_event_to_run_start_seconds_count{trigger=\"external\"} 1\n"),
        "{metrics}"
    );
}
