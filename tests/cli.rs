//! The real binary on workflow files: `run`, `graph`, `schema`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{run_json, stderr, switchyard, write_workflow};

#[test]
fn independent_tasks_run_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "par",
        &json!({"name": "par", "tasks": [
            {"id": "a", "shell": {"command": ["sleep", "1"]}},
            {"id": "b", "shell": {"command": ["sleep", "1"]}},
            {"id": "join", "after": ["a", "b"], "noop": {}},
        ]}),
    );
    let started = Instant::now();
    let (code, record) = run_json(dir.path(), &file, &[]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{record}");
    assert!(
        took < Duration::from_millis(1900),
        "two 1 s tasks took {took:?}"
    );
}

#[test]
fn exported_number_stays_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "num",
        &json!({"name": "num", "tasks": [
            {"id": "count", "shell": {"script": "echo '{\"n\": 42, \"ratio\": 0.5, \"name\": \"x\"}' > \"$SWITCHYARD_OUTPUT\""},
             "export": {"n": "${output.n}", "ratio": "${output.ratio}", "label": "n=${output.n}"}},
            {"id": "use", "after": "count", "shell": {"command": ["test", "${vars.n + 1}", "=", "43"]}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 0, "{record}");
    assert_eq!(record["vars"]["n"], json!(42));
    assert_eq!(record["vars"]["ratio"], json!(0.5));
    assert_eq!(record["vars"]["label"], json!("n=42"));
    assert_eq!(record["tasks"]["count"]["output"]["n"], json!(42));
}

#[test]
fn run_record_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "shape",
        &json!({"name": "shape", "version": 7, "vars": {"v": 1}, "tasks": [
            {"id": "a", "noop": {}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &["--param", "p=2", "--param", "s=text"]);
    assert_eq!(code, 0);
    for key in [
        "id",
        "workflow",
        "version",
        "status",
        "params",
        "vars",
        "event",
        "started_at",
        "ended_at",
        "tasks",
    ] {
        assert!(record.get(key).is_some(), "missing {key}: {record}");
    }
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["params"], json!({"p": 2, "s": "text"}));
    assert_eq!(record["vars"], json!({"v": 1, "p": 2, "s": "text"}));
    assert_eq!(record["event"], json!(null));
    for key in [
        "status",
        "attempts",
        "output",
        "error",
        "started_at",
        "ended_at",
    ] {
        assert!(record["tasks"]["a"].get(key).is_some(), "task misses {key}");
    }
}

#[test]
fn failure_exits_1_and_recovery_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "fail",
        &json!({"name": "fail", "tasks": [
            {"id": "publish", "shell": {"script": "echo nope >&2; exit 3"}},
            {"id": "mark", "after": "publish", "shell": {"command": ["true"]}},
            {"id": "recover", "after": "publish:failure", "shell": {"command": ["true"]}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    assert_eq!(record["status"], "failed");
    assert_eq!(record["tasks"]["publish"]["error"], "exit status 3: nope");
    assert_eq!(record["tasks"]["mark"]["status"], "skipped");
    assert_eq!(record["tasks"]["recover"]["status"], "succeeded");
}

#[test]
fn retries_until_success_counting_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("count");
    let file = write_workflow(
        dir.path(),
        "retry",
        &json!({"name": "retry", "tasks": [
            {"id": "flaky", "retry": {"max_attempts": 5, "delay": "50ms"},
             "shell": {"script": "n=$(cat \"$COUNTER\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$COUNTER\"; [ $n -ge 3 ]",
                       "env": {"COUNTER": counter.to_str().unwrap()}}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 0, "{record}");
    assert_eq!(record["tasks"]["flaky"]["attempts"], json!(3));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let file = write_workflow(
        dir.path(),
        "slow",
        &json!({"name": "slow", "tasks": [
            {"id": "hang", "timeout": "500ms",
             "shell": {"script": "sleep 60 & echo $! > \"$PID_FILE\"; wait",
                       "env": {"PID_FILE": pid_file.to_str().unwrap()}}},
        ]}),
    );
    let started = Instant::now();
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        record["tasks"]["hang"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 500ms"),
        "{record}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background grandchild was killed with its group.
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "grandchild {pid} survived the timeout");
}

#[test]
fn stdout_is_in_scope_and_output_must_be_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "out",
        &json!({"name": "out", "tasks": [
            {"id": "say", "shell": {"command": ["echo", "hello world"]}},
            {"id": "check", "after": "say", "shell": {"command": ["test", "${tasks.say.stdout.trim()}", "=", "hello world"]}},
            {"id": "bad", "shell": {"script": "echo 'not json' > \"$SWITCHYARD_OUTPUT\""}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1, "{record}");
    assert_eq!(record["tasks"]["check"]["status"], "succeeded", "{record}");
    assert_eq!(record["tasks"]["bad"]["status"], "failed");
    assert!(
        record["tasks"]["bad"]["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
}

#[test]
fn event_data_reaches_the_process_only_as_values() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let evil = format!(
        "$(touch {}); `touch {}`",
        marker.display(),
        marker.display()
    );
    let file = write_workflow(
        dir.path(),
        "safe",
        &json!({"name": "safe", "tasks": [
            {"id": "env", "shell": {"script": "printf '%s' \"$NAME\" > /dev/null", "env": {"NAME": "${params.name}"}}},
            {"id": "argv", "shell": {"command": ["printf", "%s", "${params.name}"]}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &["--param", &format!("name={evil}")]);
    assert_eq!(code, 0, "{record}");
    assert!(!marker.exists(), "a param was executed as shell code");
}

#[test]
fn missing_program_fails_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "missing",
        &json!({"name": "missing", "tasks": [
            {"id": "a", "retry": {"max_attempts": 3, "delay": "10ms"}, "shell": {"command": ["/no/such/program"]}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    assert_eq!(record["tasks"]["a"]["attempts"], json!(1));
    assert!(
        record["tasks"]["a"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot start")
    );
}

#[test]
fn sleep_task_waits() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "nap",
        &json!({"name": "nap", "tasks": [
            {"id": "nap", "sleep": {"duration": "300ms"}},
        ]}),
    );
    let started = Instant::now();
    let (code, _) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 0);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn run_by_name_from_the_project() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("flows")).unwrap();
    write_workflow(
        &dir.path().join("flows"),
        "hello",
        &json!({"name": "hello", "tasks": [{"id": "a", "noop": {}}]}),
    );
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"workflows": ["flows"], "data_dir": "state"}"#,
    )
    .unwrap();
    let out = switchyard(dir.path(), &["run", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello succeeded"));
    assert!(
        dir.path().join("state").is_dir(),
        "the config's data_dir holds the log"
    );
    let out = switchyard(dir.path(), &["run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no workflow named `nope`"));
}

#[test]
fn bad_params_and_invalid_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "p",
        &json!({"name": "p", "tasks": [{"id": "a", "noop": {}}]}),
    );
    let out = switchyard(
        dir.path(),
        &["run", file.to_str().unwrap(), "--param", "novalue"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("KEY=VALUE"));
    let bad = write_workflow(
        dir.path(),
        "bad",
        &json!({"name": "bad", "tasks": [{"id": "a"}]}),
    );
    let out = switchyard(dir.path(), &["run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("tasks[0]"));
}

#[test]
fn second_process_on_the_same_data_dir_gets_a_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let slow = write_workflow(
        dir.path(),
        "slow",
        &json!({"name": "slow", "tasks": [{"id": "a", "sleep": {"duration": "3s"}}]}),
    );
    let data = dir.path().join("data");
    let mut first = std::process::Command::new(crate::util::bin())
        .args([
            "run",
            slow.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first process holds the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !data.join("log").join("db").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = switchyard(
        dir.path(),
        &[
            "run",
            slow.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("locked by another switchyard process"),
        "{}",
        stderr(&out)
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn graph_prints_mermaid_and_dot() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = switchyard(root, &["graph", "publish_promotion"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("flowchart TD"));
    assert!(text.contains("probe -->|success| publish"), "{text}");
    assert!(text.contains("publish -.->|failure| recover"), "{text}");
    let out = switchyard(root, &["graph", "publish_promotion", "--format", "dot"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("digraph \"publish_promotion\""));
    assert!(
        text.contains("\"publish\" -> \"recover\" [label=\"failure\", style=dashed];"),
        "{text}"
    );
}

#[test]
fn the_example_workflows_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().unwrap();
    // The examples' `shop` connection, on a database of this test's own.
    std::fs::write(
        data.path().join("switchyard.json"),
        r#"{"connections": {"shop": {"url": "sqlite://shop.db"}}}"#,
    )
    .unwrap();
    let (code, record) = run_json(
        data.path(),
        &root.join("examples/workflows/publish_promotion.json"),
        &[],
    );
    assert_eq!(code, 0, "{record}");
    assert_eq!(record["tasks"]["recover"]["status"], "skipped");
    assert!(record["vars"]["promo_id"].is_number(), "{record}");
    let (code, record) = run_json(
        data.path(),
        &root.join("examples/workflows/publish_promotion.json"),
        &["--param", "fail=true"],
    );
    assert_eq!(code, 1);
    assert_eq!(record["tasks"]["publish"]["attempts"], json!(3));
    assert_eq!(record["tasks"]["recover"]["status"], "succeeded");
    assert_eq!(record["tasks"]["mark_published"]["status"], "skipped");
    let (code, record) = run_json(
        data.path(),
        &root.join("examples/workflows/campaign.json"),
        &[],
    );
    assert_eq!(code, 0, "{record}");
    assert_eq!(record["tasks"]["mark_failed"]["status"], "skipped");
    assert!(record["vars"]["campaign_id"].is_number(), "{record}");
}

#[test]
fn dependency_forms_when_vars_and_allow_failure_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "forms",
        &json!({"name": "forms",
        "vars": {"level": "workflow", "shadow": "workflow"},
        "tasks": [
            {"id": "ok", "shell": {"command": ["true"]}},
            {"id": "flaky", "allow_failure": true, "shell": {"command": ["false"]}},
            {"id": "both", "after": {"all": ["ok:success", "flaky:completion"]},
             "vars": {"shadow": "task"},
             "shell": {"script": "printf '{\"level\": \"%s\", \"shadow\": \"%s\"}' \"$LEVEL\" \"$SHADOW\" > \"$SWITCHYARD_OUTPUT\"",
                       "env": {"LEVEL": "${vars.level}", "SHADOW": "${vars.shadow}"}}},
            {"id": "on_any_failure", "after": {"any": ["ok:failure", "flaky:failure"]}, "shell": {"command": ["true"]}},
            {"id": "needs_flaky", "after": "flaky", "shell": {"command": ["true"]}},
            {"id": "cascade", "after": "needs_flaky:completion", "shell": {"command": ["true"]}},
            {"id": "gated", "after": "both", "when": "tasks.both.output.shadow == 'workflow'", "shell": {"command": ["true"]}},
            {"id": "sees_run_vars", "after": "both",
             "shell": {"command": ["test", "${vars.shadow}", "=", "workflow"]}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &["--param", "level=param"]);
    assert_eq!(code, 0, "allowed failure must not fail the run: {record}");
    let status = |id: &str| record["tasks"][id]["status"].as_str().unwrap().to_string();
    assert_eq!(status("flaky"), "failed");
    assert_eq!(status("both"), "succeeded");
    assert_eq!(
        record["tasks"]["both"]["output"],
        json!({"level": "param", "shadow": "task"})
    );
    assert_eq!(status("on_any_failure"), "succeeded");
    assert_eq!(status("needs_flaky"), "skipped");
    assert_eq!(status("cascade"), "skipped");
    assert_eq!(status("gated"), "skipped");
    assert_eq!(status("sees_run_vars"), "succeeded");
}

#[test]
fn fail_fast_kills_running_tasks_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "ff",
        &json!({"name": "ff", "fail_fast": true, "tasks": [
            {"id": "boom", "shell": {"script": "sleep 0.2; exit 1"}},
            {"id": "long", "shell": {"command": ["sleep", "30"]}},
            {"id": "later", "after": "long", "shell": {"command": ["true"]}},
        ]}),
    );
    let started = Instant::now();
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the running task was not killed"
    );
    assert_eq!(record["tasks"]["long"]["status"], "cancelled");
    assert_eq!(record["tasks"]["later"]["status"], "cancelled");
    assert!(
        record["tasks"]["long"]["error"]
            .as_str()
            .unwrap()
            .contains("fail_fast")
    );
}

#[test]
fn workflow_timeout_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "wt",
        &json!({"name": "wt", "timeout": "500ms", "tasks": [
            {"id": "long", "shell": {"command": ["sleep", "30"]}},
        ]}),
    );
    let started = Instant::now();
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(record["status"], "failed");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("run timed out after 500ms"),
        "{record}"
    );
    assert_eq!(record["tasks"]["long"]["status"], "cancelled");
}

#[test]
fn live_progress_is_shown_on_a_terminal() {
    // `script` gives the child a pseudo-terminal, as a user's shell would.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED live_progress_is_shown_on_a_terminal: `script` (util-linux) is not installed"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "tty",
        &json!({"name": "tty", "tasks": [
            {"id": "first", "shell": {"command": ["true"]}},
            {"id": "second", "after": "first", "shell": {"command": ["false"]}},
            {"id": "third", "after": "second", "shell": {"command": ["true"]}},
        ]}),
    );
    let command = format!(
        "{} run {} --data-dir {}",
        crate::util::bin().display(),
        file.display(),
        dir.path().join("data").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("▶ first"), "{screen}");
    assert!(screen.contains("✓ first succeeded"), "{screen}");
    assert!(screen.contains("✗ second failed"), "{screen}");
    assert!(screen.contains("○ third skipped"), "{screen}");
}

#[test]
fn processes_that_ignore_sigterm_are_killed_with_their_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("stubborn.pid");
    let file = write_workflow(
        dir.path(),
        "stubborn",
        &json!({"name": "stubborn", "tasks": [
            {"id": "hang", "timeout": "500ms",
             "shell": {"script": "trap '' TERM; sleep 300 & echo $! > \"$PID_FILE\"; wait",
                       "env": {"PID_FILE": pid_file.to_str().unwrap()}}},
        ]}),
    );
    let (code, _) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!process_alive(pid), "process {pid} outlived its attempt");
}

#[test]
fn a_process_that_leaves_the_group_does_not_hang_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escaped.pid");
    let file = write_workflow(
        dir.path(),
        "escape",
        &json!({"name": "escape", "tasks": [
            {"id": "detach", "timeout": "30s",
             "shell": {"script": "setsid sleep 600 & echo $! > \"$PID_FILE\"; echo started",
                       "env": {"PID_FILE": pid_file.to_str().unwrap()}}},
        ]}),
    );
    let started = Instant::now();
    let (code, record) = run_json(dir.path(), &file, &[]);
    let took = started.elapsed();
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status();
    }
    assert!(took < Duration::from_secs(20), "the run hung for {took:?}");
    assert_eq!(code, 0, "{record}");
}

#[test]
fn secret_values_are_redacted_from_what_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"secrets": {"token": {"env": "SY_TEST_TOKEN"}, "key": {"file": "key.txt"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("key.txt"), "file-secret-value\n").unwrap();
    let file = write_workflow(
        dir.path(),
        "leak",
        &json!({"name": "leak", "tasks": [
            {"id": "use", "shell": {
                "script": "printf '{\"leak\": \"%s\", \"key\": \"%s\"}' \"$TOKEN\" \"$KEY\" > \"$SWITCHYARD_OUTPUT\"; echo \"token=$TOKEN\"; echo \"oops $TOKEN\" >&2; exit 1",
                "env": {"TOKEN": "${secrets.token}", "KEY": "${secrets.key}"}}},
        ]}),
    );
    let data = dir.path().join("data");
    let out = std::process::Command::new(crate::util::bin())
        .current_dir(dir.path())
        .env("SY_TEST_TOKEN", "s3cr3t-t0ken")
        .args([
            "run",
            file.to_str().unwrap(),
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("s3cr3t-t0ken") && !text.contains("file-secret-value"),
        "{text}"
    );
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(record["tasks"]["use"]["output"]["leak"], "[redacted]");
    assert_eq!(record["tasks"]["use"]["output"]["key"], "[redacted]");
    assert!(
        record["tasks"]["use"]["error"]
            .as_str()
            .unwrap()
            .contains("oops [redacted]")
    );
    // Nothing in the data dir holds the secret either.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-c", "s3cr3t-t0ken", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&grep.stdout)
            .lines()
            .any(|l| !l.ends_with(":0")),
        "secret found on disk"
    );
    // A missing secret fails start-up, naming it.
    let out = switchyard(
        dir.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("secrets.token") && stderr(&out).contains("SY_TEST_TOKEN"),
        "{}",
        stderr(&out)
    );
    // A workflow that names no missing secret runs without it (a binding
    // elsewhere may be the one that needs it); the readable one is still
    // redacted.
    let plain = write_workflow(
        dir.path(),
        "plain",
        &json!({"name": "plain", "tasks": [
            {"id": "say", "shell": {"script": "echo \"$KEY\"", "env": {"KEY": "${secrets.key}"}}}]}),
    );
    let out = switchyard(
        dir.path(),
        &[
            "run",
            plain.to_str().unwrap(),
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("file-secret-value"), "{text}");
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.contains(") Z "),
        Err(_) => false,
    }
}

#[test]
fn an_output_over_one_mebibyte_fails_the_attempt_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "big",
        &json!({"name": "big", "tasks": [
            {"id": "a", "retry": {"max_attempts": 3, "delay": "10ms"}, "shell": {"script": "printf '{\"x\": \"' > \"$SWITCHYARD_OUTPUT\"; head -c 1100000 /dev/zero | tr '\\0' y >> \"$SWITCHYARD_OUTPUT\"; printf '\"}' >> \"$SWITCHYARD_OUTPUT\""}},
        ]}),
    );
    let (code, record) = run_json(dir.path(), &file, &[]);
    assert_eq!(code, 1);
    let error = record["tasks"]["a"]["error"].as_str().unwrap();
    assert!(
        error.contains("$SWITCHYARD_OUTPUT is 1100009 bytes") && error.contains("1 MiB"),
        "{error}"
    );
    assert_eq!(record["tasks"]["a"]["attempts"], json!(1), "not retried");
}

#[test]
fn a_connection_password_is_redacted_like_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let password = "conn-pw-5c1e7d9a";
    std::fs::write(
        dir.path().join("switchyard.json"),
        format!(
            r#"{{"connections": {{"shop": {{"url": "postgres://app:{password}@127.0.0.1:1/shop"}}}}}}"#
        ),
    )
    .unwrap();
    let file = write_workflow(
        dir.path(),
        "leak",
        &json!({"name": "leak", "tasks": [
            {"id": "echo", "shell": {"script": "echo \"{\\\"said\\\": \\\"$PW\\\"}\" > \"$SWITCHYARD_OUTPUT\"; echo \"$PW\"",
                                     "env": {"PW": password}}},
        ]}),
    );
    let (_, record) = run_json(dir.path(), &file, &[]);
    let text = record.to_string();
    assert!(!text.contains(password), "{text}");
    assert_eq!(
        record["tasks"]["echo"]["output"]["said"], "[redacted]",
        "{record}"
    );
}

#[test]
fn schedule_prints_the_next_fire_times_with_dst_as_the_trigger_sees_them() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The demo's nightly binding, in its own time zone.
    let out = switchyard(
        root,
        &[
            "schedule",
            "campaign-schedule",
            "--count",
            "2",
            "--after",
            "2026-12-03T12:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2026-12-03T22:30:00.000Z  2026-12-03 23:30:00 CET"),
        "{text}"
    );
    assert!(text.contains("2026-12-04T22:30:00.000Z"), "{text}");
    // An expression across the spring-forward gap: 02:30 does not exist on
    // 2026-03-29 in Berlin, so that night fires once at 03:00.
    let out = switchyard(
        root,
        &[
            "schedule",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--after",
            "2026-03-28T00:00:00Z",
            "--count",
            "3",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        value["fires"],
        json!([
            "2026-03-28T01:30:00.000Z",
            "2026-03-29T01:00:00.000Z",
            "2026-03-30T00:30:00.000Z"
        ])
    );
    // One that can never fire, and a binding that is not a schedule.
    let out = switchyard(root, &["schedule", "0 0 30 2 *"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("never fires"), "{}", stderr(&out));
    let out = switchyard(root, &["schedule", "campaign-webhook"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("triggered by webhook"),
        "{}",
        stderr(&out)
    );
}

/// Reads a child's stdout line by line on a thread, each line with the
/// moment it arrived.
fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<(String, Instant)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn run_output_streams_each_tasks_lines_live_prefixed_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok.txt"), "s3cr3t-live-value\n").unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"secrets": {"tok": {"file": "tok.txt"}}}).to_string(),
    )
    .unwrap();
    let file = write_workflow(
        dir.path(),
        "talky",
        &json!({"name": "talky", "tasks": [
            {"id": "talk", "shell": {
                "script": "echo \"first $TOK\"; sleep 3; echo second; echo to-stderr >&2",
                "env": {"TOK": "${secrets.tok}"}}},
            {"id": "then", "after": "talk", "shell": {"script": "printf 'no newline'"}},
        ]}),
    );
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(crate::util::bin())
        .current_dir(dir.path())
        .args(["run", file.to_str().unwrap(), "--output", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let (first, _) = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, "talk | first [redacted]");
    // The task is still sleeping: the line came live, not at the end.
    assert!(child.try_wait().unwrap().is_none(), "the run already ended");
    let mut rest = Vec::new();
    while let Ok((line, _)) = lines.recv_timeout(Duration::from_secs(60)) {
        rest.push(line);
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(
        rest[..2],
        ["talk | second", "then | no newline"],
        "{rest:?}"
    );
    assert!(rest[2].starts_with("run "), "{rest:?}");
    assert!(err.contains("talk | to-stderr"), "{err}");
    assert!(!err.contains("s3cr3t") && !rest.concat().contains("s3cr3t"));

    // Without the flag the output is what it always was.
    let out = switchyard(
        dir.path(),
        &[
            "run",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("talk |") && !stderr(&out).contains("talk |"),
        "{text}"
    );
    assert!(text.starts_with("run "), "{text}");
}

/// Every subcommand and argument of every command says what it is for in
/// `--help` (clap's own `--help` / `--version` aside).
#[test]
fn every_command_and_argument_has_help() {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") || arg.is_hide_set() {
                continue;
            }
            let said = arg
                .get_help()
                .or(arg.get_long_help())
                .is_some_and(|h| !h.to_string().trim().is_empty());
            if !said {
                missing.push(format!("{path} <{id}>"));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let here = format!("{path} {}", sub.get_name());
            let said = sub
                .get_about()
                .or(sub.get_long_about())
                .is_some_and(|h| !h.to_string().trim().is_empty());
            if !said {
                missing.push(here.clone());
            }
            walk(sub, &here, missing);
        }
    }
    let mut missing = Vec::new();
    let mut command = switchyard::cli::Cli::command();
    command.build();
    walk(&command, "switchyard", &mut missing);
    assert!(
        missing.is_empty(),
        "without a help text:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn numeric_arguments_say_what_they_expect() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["schedule", "@daily", "--count", "ten"][..],
        &["runs", "list", "--limit=-1", "--data-dir", "d"][..],
        &["run", "x", "--max-parallel-tasks", "2.5"][..],
    ] {
        let out = switchyard(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = stderr(&out);
        assert!(
            text.contains("expected a whole number ≥ 0, got `"),
            "{text}"
        );
        assert!(
            !text.contains("invalid digit") && !text.contains("usize"),
            "{text}"
        );
    }
}
