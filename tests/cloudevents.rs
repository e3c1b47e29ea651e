//! CloudEvents as other systems send them: `POST /api/v1/events` in the
//! HTTP binding's binary, structured and batched modes (by hand and from
//! the real CloudEvents Python SDK), and CloudEvents over AMQP keeping
//! their own attributes.

use std::process::Command;

use serde_json::{Value, json};

use crate::triggers::{Daemon, Project};

async fn wait_run(daemon: &Daemon, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let run = daemon.get(&format!("/api/v1/runs/{id}")).await;
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn orders_binding() -> Value {
    json!({"name": "orders", "on": {"api": {}},
           "filter": "event.type == 'order.created'",
           "workflow": "first",
           "params": {"type": "${event.type}", "data": "${event.data}", "id": "${event.id}"}})
}

/// A python that has the CloudEvents SDK: `CLOUDEVENTS_PYTHON` (set by
/// `.ci/run`, which installs it), else `python3` if it imports it. None:
/// skipped, loudly (a failure with `SWITCHYARD_REQUIRE_BROKER=1`).
fn sdk_python(test: &str) -> Option<String> {
    let candidates = [
        std::env::var("CLOUDEVENTS_PYTHON").ok(),
        Some("python3".into()),
    ];
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", "import cloudevents.core.bindings.http"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    if std::env::var("SWITCHYARD_REQUIRE_BROKER").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: no python with the CloudEvents SDK (set CLOUDEVENTS_PYTHON; .ci/run installs it)"
        );
    }
    eprintln!("SKIPPED {test}: no python with the CloudEvents SDK (pip install cloudevents)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_structured_and_batched_events_by_hand() {
    let project = Project::new(&[orders_binding()]);
    let daemon = project.start(None).await;
    // Binary mode: attributes from ce- headers (percent-encoded), the body
    // is the data, its own `type` key is data.
    let (status, answer) = daemon
        .post(
            "/api/v1/events",
            br#"{"type": "inner", "n": 5}"#,
            &[
                ("ce-specversion", "1.0".into()),
                ("ce-id", "bin%201".into()),
                ("ce-type", "order.created".into()),
                ("ce-source", "/shop".into()),
                (
                    "ce-traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
                ("content-type", "application/json".into()),
            ],
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["event_id"], "bin 1");
    assert_eq!(answer["runs"].as_array().unwrap().len(), 1, "{answer}");
    let event = daemon.get("/api/v1/events/bin%201").await;
    assert_eq!(event["event"]["type"], "order.created", "{event}");
    assert_eq!(event["event"]["data"], json!({"type": "inner", "n": 5}));
    assert_eq!(
        event["event"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    // Structured mode with data_base64 (decoded: JSON content type).
    let (status, answer) = daemon
        .post(
            "/api/v1/events",
            br#"{"specversion": "1.0", "id": "st-1", "type": "order.created", "source": "/shop",
                "datacontenttype": "application/json", "data_base64": "eyJuIjogMn0="}"#,
            &[(
                "content-type",
                "application/cloudevents+json; charset=utf-8".into(),
            )],
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let event = daemon.get("/api/v1/events/st-1").await;
    assert_eq!(event["event"]["data"], json!({"n": 2}));
    // A batch: each recorded and answered on its own; a bad one refused alone.
    let (status, answer) = daemon
        .post(
            "/api/v1/events",
            br#"[{"specversion": "1.0", "id": "b-1", "type": "order.created", "source": "/shop"},
                {"specversion": "1.0", "id": "b-2", "source": "/shop"},
                {"specversion": "1.0", "id": "b-3", "type": "other.thing", "source": "/shop"}]"#,
            &[("content-type", "application/cloudevents-batch+json".into())],
        )
        .await;
    assert_eq!(status, 207, "{answer}");
    let results = answer["events"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[0]["runs"].as_array().unwrap().len(), 1);
    assert_eq!(results[1]["status"], 400);
    assert!(
        results[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing `type`")
    );
    // Matched no binding: recorded, and the answer says so.
    assert_eq!(results[2]["status"], 202);
    assert!(
        results[2]["message"]
            .as_str()
            .unwrap()
            .contains("no binding started a run"),
        "{answer}"
    );
    // Bad input names the problem.
    for (body, headers, expected) in [
        (
            &br#"{"type": "t", "time": "yesterday"}"#[..],
            vec![("content-type", "application/cloudevents+json".to_string())],
            "not an RFC 3339",
        ),
        (
            &br#"{"type": "t", "data": 1, "data_base64": "AA=="}"#[..],
            vec![("content-type", "application/cloudevents+json".to_string())],
            "not both",
        ),
        (
            &b"{not json"[..],
            vec![
                ("ce-specversion", "1.0".to_string()),
                ("ce-type", "t".to_string()),
                ("content-type", "application/json".to_string()),
            ],
            "declared JSON",
        ),
        (
            &br#"{"type": "t"}"#[..],
            vec![(
                "content-type",
                "application/cloudevents-batch+json".to_string(),
            )],
            "JSON array",
        ),
    ] {
        let (status, answer) = daemon.post("/api/v1/events", body, &headers).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{answer}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_cloudevents_python_sdk() {
    let Some(python) = sdk_python("cloudevents::events_from_the_cloudevents_python_sdk") else {
        return;
    };
    let project = Project::new(&[orders_binding()]);
    let daemon = project.start(None).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/cloudevents_sdk.py");
    let url = daemon.url("/api/v1/events");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(url).output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answer = |case: &str| answers.iter().find(|a| a["case"] == case).unwrap().clone();
    for case in ["binary", "structured", "data_base64"] {
        assert_eq!(answer(case)["status"], 202, "{case}: {}", answer(case));
    }
    let batch = answer("batch");
    assert_eq!(batch["status"], 202, "{batch}");
    assert_eq!(batch["body"]["events"].as_array().unwrap().len(), 3);
    // Each event as the SDK meant it.
    let binary = daemon.get("/api/v1/events/sdk-binary-1").await;
    assert_eq!(binary["event"]["type"], "order.created");
    assert_eq!(binary["event"]["source"], "/shop");
    assert_eq!(binary["event"]["subject"], "order 7");
    assert_eq!(
        binary["event"]["data"],
        json!({"type": "inner-type-not-an-attribute", "n": 41})
    );
    let run_id = binary["outcomes"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = wait_run(&daemon, &run_id).await;
    assert_eq!(run["params"]["type"], "order.created", "{run}");
    assert_eq!(run["params"]["data"]["n"], 41);
    let structured = daemon.get("/api/v1/events/sdk-structured-1").await;
    assert_eq!(structured["event"]["data"], json!({"n": 1}));
    let bytes = daemon.get("/api/v1/events/sdk-bytes-1").await;
    assert_eq!(
        bytes["event"]["datacontenttype"],
        "application/octet-stream"
    );
    assert_eq!(bytes["event"]["data"], "\u{0}\u{1}binary");
    for i in 0..3 {
        let event = daemon.get(&format!("/api/v1/events/sdk-batch-{i}")).await;
        assert_eq!(event["event"]["data"], json!({"n": i}));
        assert_eq!(event["outcomes"][0]["outcome"], "started", "{event}");
    }
    daemon.stop().await;
}
