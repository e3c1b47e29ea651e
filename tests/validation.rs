//! Every class of validation error: `switchyard validate` exits 2 and names
//! the file, the JSON path and the problem.

use serde_json::{Value, json};

use crate::util::{stderr, switchyard, write_workflow};

/// Validates one workflow file; returns stderr, asserting exit code 2.
fn invalid(definition: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(dir.path(), "wf", &definition);
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2, stderr: {}",
        stderr(&out)
    );
    let text = stderr(&out);
    assert!(text.contains("wf.json"), "error names the file: {text}");
    text
}

fn shell(id: &str) -> Value {
    json!({"id": id, "shell": {"command": ["true"]}})
}

#[test]
fn valid_files_pass() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "wf",
        &json!({"name": "ok", "tasks": [shell("a")]}),
    );
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_examples_are_valid() {
    let out = switchyard(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["validate"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wf.json");
    std::fs::write(&file, "{\n  \"name\": \"x\",\n  \"tasks\": [\n}").unwrap();
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.contains("wf.json") && text.contains("invalid JSON") && text.contains("line 4"),
        "{text}"
    );
}

#[test]
fn unknown_workflow_key() {
    let text = invalid(json!({"name": "x", "taks": [], "tasks": [shell("a")]}));
    assert!(
        text.contains("taks") && text.contains("unknown field"),
        "{text}"
    );
}

#[test]
fn unknown_task_key_names_the_task_path() {
    let text = invalid(
        json!({"name": "x", "tasks": [shell("a"), {"id": "b", "retries": 3, "shell": {"command": ["true"]}}]}),
    );
    assert!(
        text.contains("tasks[1].retries") && text.contains("unknown key"),
        "{text}"
    );
}

#[test]
fn unknown_kind_config_key() {
    let text = invalid(json!({"name": "x", "tasks": [{"id": "a", "shell": {"comand": ["true"]}}]}));
    assert!(
        text.contains("tasks[0].shell") && text.contains("comand"),
        "{text}"
    );
}

#[test]
fn missing_and_double_kind() {
    let text = invalid(
        json!({"name": "x", "tasks": [{"id": "a"}, {"id": "b", "noop": {}, "sleep": {"duration": "1s"}}]}),
    );
    assert!(text.contains("tasks[0]: task `a` has no kind"), "{text}");
    assert!(
        text.contains("tasks[1]: task `b` has more than one kind"),
        "{text}"
    );
}

#[test]
fn unknown_dependency_is_named() {
    let text = invalid(
        json!({"name": "x", "tasks": [shell("a"), {"id": "b", "after": ["a", "nope"], "shell": {"command": ["true"]}}]}),
    );
    assert!(
        text.contains("tasks[1].after[1]") && text.contains("unknown task id `nope`"),
        "{text}"
    );
}

#[test]
fn bad_dependency_condition() {
    let text = invalid(
        json!({"name": "x", "tasks": [shell("a"), {"id": "b", "after": {"any": ["a:sucess"]}, "shell": {"command": ["true"]}}]}),
    );
    assert!(
        text.contains("tasks[1].after.any[0]") && text.contains("sucess"),
        "{text}"
    );
}

#[test]
fn self_reference() {
    let text = invalid(
        json!({"name": "x", "tasks": [{"id": "a", "after": "a", "shell": {"command": ["true"]}}]}),
    );
    assert!(
        text.contains("tasks[0].after") && text.contains("itself"),
        "{text}"
    );
}

#[test]
fn cycle_is_reported_with_its_path() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "after": "c", "shell": {"command": ["true"]}},
        {"id": "b", "after": "a", "shell": {"command": ["true"]}},
        {"id": "c", "after": "b", "shell": {"command": ["true"]}},
        shell("d"),
    ]}));
    assert!(
        text.contains("cycle: a -> b -> c -> a")
            || text.contains("cycle: b -> c -> a -> b")
            || text.contains("cycle: c -> a -> b -> c"),
        "{text}"
    );
}

#[test]
fn bad_durations() {
    let text = invalid(json!({"name": "x", "timeout": "soon", "tasks": [
        {"id": "a", "timeout": "0s", "retry": {"delay": "5 parsecs"}, "shell": {"command": ["true"]}},
        {"id": "b", "sleep": {"duration": "forever"}},
    ]}));
    assert!(
        text.contains("wf.json: timeout: invalid duration `soon`"),
        "{text}"
    );
    assert!(
        text.contains("tasks[0].timeout") && text.contains("greater than zero"),
        "{text}"
    );
    assert!(text.contains("tasks[0].retry.delay"), "{text}");
    assert!(text.contains("tasks[1].sleep.duration"), "{text}");
}

#[test]
fn bad_cel_in_when_and_templates() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "when": "vars.n >", "shell": {"command": ["true"]}},
        {"id": "b", "shell": {"command": ["echo", "${vars.(}"]}},
        {"id": "c", "shell": {"command": ["echo"], "env": {"X": "${vars.x"}}},
        {"id": "d", "export": {"out": "${output.}"}, "shell": {"command": ["true"]}},
    ]}));
    assert!(
        text.contains("tasks[0].when") && text.contains("invalid CEL"),
        "{text}"
    );
    assert!(text.contains("tasks[1].shell.command[1]"), "{text}");
    assert!(
        text.contains("tasks[2].shell.env.X") && text.contains("unterminated"),
        "{text}"
    );
    assert!(text.contains("tasks[3].export.out"), "{text}");
}

#[test]
fn template_in_shell_script_is_refused_with_a_hint() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "inject", "shell": {"script": "echo ${event.data.name}"}},
    ]}));
    assert!(text.contains("tasks[0].shell.script"), "{text}");
    assert!(
        text.contains("task `inject`") && text.contains("env"),
        "{text}"
    );
    // Reported once, not also as a CEL error.
    assert_eq!(text.matches("tasks[0].shell.script").count(), 1, "{text}");
}

#[test]
fn escaped_dollar_brace_is_fine_in_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(
        dir.path(),
        "wf",
        &json!({"name": "x", "tasks": [
            {"id": "a", "shell": {"script": "echo $${HOME}"}},
        ]}),
    );
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn bad_names_and_duplicate_ids() {
    let text =
        invalid(json!({"name": "Bad Name", "tasks": [shell("a"), shell("a"), shell("B-1")]}));
    assert!(text.contains("name: invalid workflow name"), "{text}");
    assert!(
        text.contains("tasks[1].id: duplicate task id `a`"),
        "{text}"
    );
    assert!(
        text.contains("tasks[2].id: invalid task id `B-1`"),
        "{text}"
    );
}

#[test]
fn bad_shell_config() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "shell": {}},
        {"id": "b", "shell": {"command": [], "script": "true"}},
        {"id": "c", "shell": {"command": []}},
        {"id": "d", "shell": {"command": ["echo", {"x": 1}]}},
    ]}));
    assert!(
        text.contains("tasks[0].shell: task `a`: set `command`"),
        "{text}"
    );
    assert!(
        text.contains("tasks[1].shell: task `b`: set either"),
        "{text}"
    );
    assert!(text.contains("tasks[2].shell.command"), "{text}");
    assert!(text.contains("tasks[3].shell.command"), "{text}");
}

#[test]
fn bad_retry_and_limits() {
    let text = invalid(
        json!({"name": "x", "max_active_runs": 0, "on_overflow": "drop", "tasks": [shell("a")]}),
    );
    assert!(text.contains("on_overflow"), "{text}");
    let text = invalid(json!({"name": "x", "max_active_runs": 0, "tasks": [
        {"id": "a", "retry": {"max_attempts": 0, "backoff": 0.5}, "shell": {"command": ["true"]}},
    ]}));
    assert!(
        text.contains("max_active_runs: must be at least 1"),
        "{text}"
    );
    assert!(text.contains("tasks[0].retry.max_attempts"), "{text}");
    assert!(text.contains("tasks[0].retry.backoff"), "{text}");
}

#[test]
fn every_error_is_collected_not_just_the_first() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "bogus": 1, "shell": {"command": ["true"]}},
        {"id": "b", "after": "zzz", "shell": {"command": ["true"]}},
        {"id": "c", "when": "(", "shell": {"command": ["true"]}},
    ]}));
    assert!(text.contains("tasks[0].bogus"), "{text}");
    assert!(text.contains("tasks[1].after"), "{text}");
    assert!(text.contains("tasks[2].when"), "{text}");
    assert!(text.contains("3 error(s)"), "{text}");
}

#[test]
fn wrong_types_name_the_path() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "allow_failure": "yes", "shell": {"command": ["true"]}},
    ]}));
    assert!(text.contains("tasks[0].allow_failure"), "{text}");
}

#[test]
fn duplicate_workflow_names_across_files() {
    let dir = tempfile::tempdir().unwrap();
    write_workflow(
        dir.path(),
        "one",
        &json!({"name": "same", "tasks": [shell("a")]}),
    );
    write_workflow(
        dir.path(),
        "two",
        &json!({"name": "same", "tasks": [shell("a")]}),
    );
    let out = switchyard(dir.path(), &["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("two.json: name: workflow name `same` is already used"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"max_paralel_tasks": 3}"#,
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("switchyard.json") && stderr(&out).contains("max_paralel_tasks"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_amqp_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"amqp": {"url": "http://user:hunter2@broker/", "events_exchange": ""}}"#,
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("amqp.url") && err.contains("invalid AMQP URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    assert!(
        err.contains("amqp.events_exchange") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn bad_amqp_task_config() {
    let long = "k".repeat(256);
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "amqp": {"exchange": "e", "routing_key": "k", "json": {}, "body": "x"}},
        {"id": "b", "amqp": {"exchange": "e", "routing_key": long}},
        {"id": "c", "amqp": {"exchange": "e"}},
    ]}));
    assert!(
        text.contains("tasks[0].amqp") && text.contains("not both"),
        "{text}"
    );
    assert!(
        text.contains("tasks[1].amqp.routing_key") && text.contains("AMQP allows 255"),
        "{text}"
    );
    assert!(
        text.contains("tasks[2].amqp") && text.contains("routing_key"),
        "{text}"
    );
}

#[test]
fn committed_schemas_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (name, text) in switchyard::spec::schema::schemas() {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/{name} drifted from the types: run `cargo run -- schema` and commit"
        );
    }
}

#[test]
fn top_level_errors_are_all_reported() {
    let text = invalid(
        json!({"name": "Bad Name", "timeot": "1h", "fail_fast": "yes", "tasks": [
            {"id": "a", "bogus": 1, "shell": {"command": ["true"]}},
        ]}),
    );
    assert!(text.contains("timeot"), "{text}");
    assert!(text.contains("fail_fast"), "{text}");
}

#[test]
fn every_bad_key_of_a_task_is_reported() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "allow_failure": "yes", "timeout": 5, "shell": {"command": ["true"], "cwd": 3, "envv": {}}},
    ]}));
    assert!(text.contains("tasks[0].allow_failure"), "{text}");
    assert!(text.contains("tasks[0].timeout"), "{text}");
    assert!(text.contains("tasks[0].shell.cwd"), "{text}");
    assert!(text.contains("envv"), "{text}");
}

#[test]
fn after_shapes_are_checked_key_by_key() {
    let text = invalid(json!({"name": "x", "tasks": [
        shell("a"), shell("b"),
        {"id": "c", "after": {"all": ["a"], "any": ["b:failure"], "typo": 1}, "shell": {"command": ["true"]}},
        {"id": "d", "after": {"all": []}, "shell": {"command": ["true"]}},
        {"id": "e", "after": 7, "shell": {"command": ["true"]}},
        {"id": "f", "after": ["a", 3], "shell": {"command": ["true"]}},
    ]}));
    assert!(
        text.contains("tasks[2].after.any: use either `all` or `any`"),
        "{text}"
    );
    assert!(text.contains("tasks[2].after.typo: unknown key"), "{text}");
    assert!(
        text.contains("tasks[3].after.all: `all` needs at least one dependency"),
        "{text}"
    );
    assert!(text.contains("tasks[4].after: `after` takes"), "{text}");
    assert!(
        text.contains("tasks[5].after[1]: a dependency is a task id"),
        "{text}"
    );
}

#[test]
fn a_cycle_is_reported_beside_other_errors() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "after": "b", "shell": {"command": ["true"]}},
        {"id": "b", "after": "a", "shell": {"command": ["true"]}},
        {"id": "c", "bogus": true, "shell": {"command": ["true"]}},
    ]}));
    assert!(text.contains("cycle:"), "{text}");
    assert!(text.contains("tasks[2].bogus"), "{text}");
}

#[test]
fn a_task_kind_must_be_an_object() {
    let text = invalid(
        json!({"name": "x", "tasks": [{"id": "a", "noop": null}, {"id": "b", "shell": "echo hi"}]}),
    );
    assert!(text.contains("tasks[0].noop"), "{text}");
    assert!(
        text.contains("tasks[1].shell") && text.contains("takes an object"),
        "{text}"
    );
}

#[test]
fn templates_cannot_choose_the_interpreter_the_directory_or_the_program() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "interp", "shell": {"script": "echo hi", "shell": "${event.data.sh}"}},
        {"id": "dir", "shell": {"command": ["ls"], "cwd": "${event.data.dir}"}},
        {"id": "prog", "shell": {"command": ["${event.data.prog}", "--flag"]}},
        {"id": "fine", "shell": {"command": ["echo", "${event.data.x}"], "env": {"X": "${event.data.x}"}}},
    ]}));
    for (path, task) in [
        ("tasks[0].shell.shell", "interp"),
        ("tasks[1].shell.cwd", "dir"),
        ("tasks[2].shell.command[0]", "prog"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(path) && l.contains(&format!("task `{task}`"))),
            "{path}: {text}"
        );
        assert_eq!(
            text.matches(path).count(),
            1,
            "{path} reported once: {text}"
        );
    }
    assert!(!text.contains("tasks[3]"), "{text}");
}

#[test]
fn an_expression_nesting_without_bound_is_refused_not_a_crash() {
    let deep = "[".repeat(5000);
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "a", "when": deep, "noop": {}},
        {"id": "b", "shell": {"command": ["echo", format!("${{{}}}", "(".repeat(40) + "1" + &")".repeat(40))]}},
        {"id": "c", "when": "[[[1]]] == [[[1]]] && '((((((((((((((((((((((((((((((((((((((((' != ''", "noop": {}},
    ]}));
    assert!(
        text.contains("tasks[0].when") && text.contains("nests 5000 levels deep"),
        "{text}"
    );
    assert!(
        text.contains("tasks[1].shell.command[1]") && text.contains("nests 40 levels"),
        "{text}"
    );
    assert!(
        !text.contains("tasks[2]"),
        "brackets inside strings do not count: {text}"
    );
}

#[test]
fn sql_text_never_takes_templates_and_its_shape_is_checked() {
    let text = invalid(json!({"name": "x", "tasks": [
        {"id": "inject", "sql": {"connection": "db",
            "query": "select * from t where id = '${event.data.id}'"}},
        {"id": "script", "sql": {"connection": "db", "script": "delete from ${vars.table}"}},
        {"id": "both", "sql": {"connection": "db", "url": "sqlite://x.db", "query": "select 1"}},
        {"id": "neither", "sql": {"connection": "db"}},
        {"id": "params", "sql": {"connection": "db", "script": "select 1", "params": [1]}},
        {"id": "url", "sql": {"url": "oracle://u:hunter2@h/db", "query": "select 1"}},
        {"id": "rows", "sql": {"connection": "db", "query": "select 1", "max_rows": 0}},
        {"id": "eventurl", "sql": {"url": "sqlite://${event.data.path}", "query": "select 1"}},
        {"id": "pwurl", "sql": {"url": "postgres://app:s3cret-pw@db/shop", "query": "select 1"}},
        {"id": "secreturl", "sql": {"url": "${secrets.shop_db}", "query": "select 1"}},
        {"id": "child", "workflow": {"name": "other", "params": {"token": "${secrets.api}"}}},
    ]}));
    assert!(
        text.contains("tasks[0].sql.query") && text.contains("must not become SQL"),
        "{text}"
    );
    assert!(
        text.contains("\"params\": [\"${vars.id}\"]"),
        "the hint shows the way: {text}"
    );
    assert!(text.contains("tasks[1].sql.script"), "{text}");
    assert!(
        text.contains("tasks[2].sql") && text.contains("`connection`") && text.contains("not both"),
        "{text}"
    );
    assert!(
        text.contains("tasks[3].sql") && text.contains("set `query`"),
        "{text}"
    );
    assert!(
        text.contains("tasks[4].sql.params") && text.contains("takes no params"),
        "{text}"
    );
    assert!(
        text.contains("tasks[5].sql.url") && text.contains("oracle://u:***@h/db"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
    assert!(text.contains("tasks[6].sql.max_rows"), "{text}");
    assert!(
        text.contains("tasks[7].sql.url") && text.contains("only from secrets"),
        "{text}"
    );
    assert!(
        text.contains("tasks[8].sql.url") && text.contains("holds a password"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    assert!(
        !text.contains("tasks[9]"),
        "a url from secrets is fine: {text}"
    );
    assert!(
        text.contains("tasks[10].workflow.params.token") && text.contains("secrets are not passed"),
        "{text}"
    );
}

#[test]
fn bad_connections_name_the_key_and_hide_the_password() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"connections": {
            "shop": {"url": "oracle://app:hunter2@db/shop"},
            "pool": {"url": "postgres://u@h/db", "max_connections": 0},
            "tpl": {"url": "${secrets.db"},
            "fine": {"url": "${secrets.db}"}
        }}"#,
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("connections.shop.url"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    assert!(err.contains("connections.pool.max_connections"), "{err}");
    assert!(err.contains("connections.tpl.url"), "{err}");
    assert!(!err.contains("connections.fine"), "{err}");
}

#[test]
fn a_missing_workflows_directory_names_the_key_that_points_at_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("switchyard.json"),
        r#"{"workflows": ["flows"]}"#,
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("flows") && err.contains("set by `workflows` in switchyard.json"),
        "{err}"
    );
}

/// Every key of every JSON Schema, every task kind and every command is
/// named in docs/REFERENCE.md (the reference cannot fall behind the types).
/// No Rust type name (`u32`, `usize`, `i64`, `f64`, "a sequence", "a
/// map") reaches a user: the message says what JSON value is wanted.
fn assert_in_user_words(text: &str) {
    for rust in [
        "u8",
        "u16",
        "u32",
        "u64",
        "usize",
        "i32",
        "i64",
        "isize",
        "f64",
        "a sequence",
        "a map",
        "untagged enum",
        "variant",
    ] {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let found = text.match_indices(rust).any(|(at, _)| {
            !text[..at].ends_with(word) && !text[at + rust.len()..].starts_with(word)
        });
        assert!(!found, "`{rust}` in: {text}");
    }
}

#[test]
fn wrong_typed_values_are_named_in_json_words_not_rust_types() {
    let text = invalid(json!({"name": "wf", "max_active_runs": "5", "tasks": [shell("a")]}));
    assert!(
        text.contains(
            "max_active_runs: invalid type: string \"5\", expected a whole number from 0 to 4294967295"
        ),
        "{text}"
    );
    assert_in_user_words(&text);
    let text = invalid(json!({"name": "wf", "tasks": [
        {"id": "a", "retry": {"max_attempts": -1}, "shell": {"command": ["true"]}},
        {"id": "b", "timeout": 30, "shell": {"command": "true"}},
        {"id": "c", "sql": {"url": "sqlite://x.db", "query": "select 1", "max_rows": 1.5}},
        {"id": "d", "http": {"url": "http://x", "expect_status": true, "auth": {"basic": "x"}}},
        {"id": "e", "amqp": {"exchange": "x", "routing_key": "r", "body": "b", "persistent": "yes"}},
    ]}));
    for expected in [
        "tasks[0].retry.max_attempts: task `a`: invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
        "tasks[1].timeout: task `b`: invalid type: integer `30`, expected a string",
        "tasks[1].shell.command: task `b`: invalid type: string \"true\", expected a list",
        "tasks[2].sql.max_rows: task `c`: invalid type: number `1.5`, expected a whole number ≥ 0",
        "tasks[3].http.expect_status: task `d`: expected a status code (200), a class (\"2xx\")",
        "tasks[4].amqp.persistent: task `e`: invalid type: string \"yes\", expected true or false",
    ] {
        assert!(text.contains(expected), "`{expected}` not in: {text}");
    }
    assert_in_user_words(&text);

    // A binding and switchyard.json read the same way.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.json");
    std::fs::write(
        &file,
        json!({"name": "b", "on": {"amqp": {"exchange": "x", "prefetch": "ten"}},
               "workflow": "w", "max_body": -1, "params": [1]})
        .to_string(),
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    for expected in [
        "on.amqp.prefetch: invalid type: string \"ten\", expected a whole number from 0 to 65535",
        "max_body: invalid value: integer `-1`, expected a whole number ≥ 0",
        "params: invalid type: a list, expected an object",
    ] {
        assert!(text.contains(expected), "`{expected}` not in: {text}");
    }
    assert_in_user_words(&text);
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"max_parallel_tasks": "8", "workflows": "flows",
               "connections": {"db": {"url": "sqlite://x", "max_connections": -1}}})
        .to_string(),
    )
    .unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    for expected in [
        "switchyard.json: max_parallel_tasks: invalid type: string \"8\", expected a whole number ≥ 0",
        "switchyard.json: workflows: invalid type: string \"flows\", expected a list",
        "connections.db.max_connections: invalid value: integer `-1`, expected a whole number from 0 to 4294967295",
    ] {
        assert!(text.contains(expected), "`{expected}` not in: {text}");
    }
    assert_in_user_words(&text);
}

#[test]
fn serde_messages_are_rewritten_in_one_place() {
    use switchyard::spec::in_user_words;
    assert_eq!(
        in_user_words("invalid type: floating point `1.5`, expected i64 at line 3 column 9"),
        "invalid type: number `1.5`, expected a whole number at line 3 column 9"
    );
    assert_eq!(
        in_user_words("invalid type: map, expected f64"),
        "invalid type: an object, expected a number"
    );
    assert_eq!(
        in_user_words("invalid length 1, expected a tuple of size 2"),
        "invalid length 1, expected a list of 2 items"
    );
    assert_eq!(
        in_user_words("limit: invalid digit found in string"),
        "limit: expected a whole number ≥ 0"
    );
    // Messages of our own pass unchanged.
    for own in [
        "unknown field `x`, expected one of `a`, `b`",
        "unknown variant `x`, expected `queue` or `skip`",
        "--param `x`: expected KEY=VALUE",
    ] {
        assert_eq!(in_user_words(own), own);
    }
}

#[test]
fn a_configured_bindings_directory_that_is_missing_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows).unwrap();
    write_workflow(&flows, "wf", &json!({"name": "wf", "tasks": [shell("a")]}));
    // No `bindings` key and no `bindings` dir: a project without bindings.
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 binding(s)"));

    // Named in switchyard.json but not there: validate and serve say so.
    std::fs::write(
        dir.path().join("switchyard.json"),
        json!({"bindings": ["triggers"]}).to_string(),
    )
    .unwrap();
    let data = dir.path().join("data");
    for args in [
        &["validate"][..],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ][..],
    ] {
        let out = switchyard(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains("triggers: the bindings directory does not exist: it is set by `bindings` in switchyard.json"),
            "{args:?}: {text}"
        );
    }
    std::fs::create_dir(dir.path().join("triggers")).unwrap();
    let out = switchyard(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_reference_names_every_key_kind_and_command() {
    fn keys(node: &Value, out: &mut std::collections::BTreeSet<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    for (k, v) in props {
                        out.insert(k.clone());
                        keys(v, out);
                    }
                }
                for (k, v) in map {
                    if k != "properties" {
                        keys(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = std::fs::read_to_string(root.join("docs/REFERENCE.md")).unwrap();
    let mut missing = Vec::new();
    for schema in ["workflow", "binding", "config", "event"] {
        let text =
            std::fs::read_to_string(root.join(format!("schemas/{schema}.schema.json"))).unwrap();
        let mut found = std::collections::BTreeSet::new();
        keys(&serde_json::from_str(&text).unwrap(), &mut found);
        for key in found {
            if !reference.contains(&format!("`{key}`")) {
                missing.push(format!("{schema}: {key}"));
            }
        }
    }
    let help = switchyard(root, &["--help"]);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 10, "{help}");
    for command in commands {
        if !reference.contains(&format!("`{command}`")) {
            missing.push(format!("command: {command}"));
        }
    }
    assert!(missing.is_empty(), "not in docs/REFERENCE.md: {missing:?}");
}

#[test]
fn remote_task_keys_are_checked_where_they_are_written() {
    let text = invalid(json!({"name": "wf", "tasks": [
        {"id": "child", "queue": "etl", "workflow": {"name": "other"}},
    ]}));
    assert!(
        text.contains("tasks[0].queue") && text.contains("runs on the daemon"),
        "{text}"
    );
    let text = invalid(json!({"name": "wf", "tasks": [
        {"id": "a", "start_timeout": "1m", "shell": {"command": ["true"]}},
    ]}));
    assert!(
        text.contains("tasks[0].start_timeout") && text.contains("give the task a `queue`"),
        "{text}"
    );
    let text = invalid(
        json!({"name": "wf", "defaults": {"queue": "etl", "start_timeout": "soon"}, "tasks": [
            {"id": "a", "shell": {"command": ["true"]}},
        ]}),
    );
    assert!(text.contains("defaults.start_timeout"), "{text}");
    let long = "q".repeat(250);
    let text = invalid(json!({"name": "wf", "tasks": [
        {"id": "a", "queue": long, "shell": {"command": ["true"]}},
    ]}));
    assert!(
        text.contains("tasks[0].queue") && text.contains("255"),
        "{text}"
    );
    let text = invalid(json!({"name": "wf", "tasks": [
        {"id": "a", "queue": " ", "shell": {"command": ["true"]}},
    ]}));
    assert!(text.contains("must not be empty"), "{text}");
}

#[test]
fn a_bad_workers_section_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    for (config, want) in [
        (
            json!({"workers": {"heartbeat": "10ms"}}),
            "workers.heartbeat",
        ),
        (
            json!({"workers": {"heartbeat": "often"}}),
            "workers.heartbeat",
        ),
        (
            json!({"workers": {"results_queue": ""}}),
            "workers.results_queue",
        ),
        (json!({"workers": {"results": "x"}}), "results"),
    ] {
        std::fs::write(dir.path().join("switchyard.json"), config.to_string()).unwrap();
        let out = switchyard(dir.path(), &["validate"]);
        assert_eq!(out.status.code(), Some(2), "{config}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{config}: {}", stderr(&out));
    }
}
