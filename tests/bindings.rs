//! Binding files (SPEC §4): every class of validation error, reported by
//! `switchyard validate` with exit 2 naming the file, the JSON path and the
//! problem; and `switchyard match` (SPEC §10), which shows for every binding
//! whether an event (SPEC §5) matches, its params and dedup key, or why not.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::util::{stderr, switchyard};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `value` as pretty JSON at `dir/rel`, creating parent dirs.
fn write_json(dir: &Path, rel: &str, value: &Value) -> PathBuf {
    write_text(dir, rel, &serde_json::to_string_pretty(value).unwrap())
}

/// Writes raw text at `dir/rel`, creating parent dirs.
fn write_text(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn noop_workflow(name: &str) -> Value {
    json!({"name": name, "tasks": [{"id": "a", "noop": {}}]})
}

/// A project dir with no `switchyard.json` (defaults: `workflows/`,
/// `bindings/`) holding the workflows `wf` and `etl`.
fn project() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), "workflows/wf.json", &noop_workflow("wf"));
    write_json(dir.path(), "workflows/etl.json", &noop_workflow("etl"));
    dir
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// Validates one binding file `b.json` (object or array form) by path, in a
/// project whose workflow dir holds `wf` and `etl`; asserts exit 2 and that
/// stderr names the file. Returns stderr.
fn invalid(binding: Value) -> String {
    let dir = project();
    let file = write_json(dir.path(), "b.json", &binding);
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(text.contains("b.json: "), "error names the file: {text}");
    text
}

/// Asserts that `text` holds a diagnostic line `b.json: <path>: …<message>…`.
fn assert_diag(text: &str, path: &str, message: &str) {
    let prefix = if path.is_empty() {
        "b.json: ".to_string()
    } else {
        format!("b.json: {path}: ")
    };
    assert!(
        text.lines()
            .any(|line| line.contains(&prefix) && line.contains(message)),
        "expected a line with `{prefix}` and `{message}` in:\n{text}"
    );
}

/// Number of diagnostics reported (the `N error(s)` trailer).
fn error_count(text: &str) -> usize {
    text.lines()
        .find_map(|line| line.strip_suffix(" error(s)"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `N error(s)` line in:\n{text}"))
}

/// A minimal valid binding on `trigger`, starting `wf`.
fn binding(name: &str, trigger: Value) -> Value {
    json!({"name": name, "on": trigger, "workflow": "wf"})
}

fn with(mut value: Value, key: &str, extra: Value) -> Value {
    value[key] = extra;
    value
}

// ---------------------------------------------------------------------------
// Validation: file shape
// ---------------------------------------------------------------------------

#[test]
fn binding_file_invalid_json_names_file_and_position() {
    // Through the project's binding dir, the binding loader reads it.
    let dir = project();
    write_text(
        dir.path(),
        "bindings/broken.json",
        "{\n  \"name\": \"x\",\n  \"on\": {\"api\": {}\n}",
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains("broken.json: invalid JSON") && text.contains("line 4"),
        "{text}"
    );
}

#[test]
fn binding_file_that_is_an_empty_array() {
    let text = invalid(json!([]));
    assert_diag(&text, "", "one binding object or a non-empty array");
}

#[test]
fn binding_file_that_is_a_scalar_in_the_bindings_dir() {
    let dir = project();
    write_text(dir.path(), "bindings/n.json", "42");
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains("n.json: a binding file holds one binding object or a non-empty array"),
        "{text}"
    );
}

#[test]
fn binding_array_item_that_is_not_an_object() {
    let text = invalid(json!([binding("ok", json!({"api": {}})), 3]));
    assert_diag(&text, "[1]", "a binding is a JSON object");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn unknown_top_level_key() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "filtr",
        json!("true"),
    ));
    assert_diag(&text, "filtr", "unknown field `filtr`");
    // The message lists what is allowed.
    assert!(text.contains("`filter`"), "{text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn unknown_key_inside_a_trigger() {
    let text = invalid(binding(
        "x",
        json!({"file": {"path": "inbox", "paht": "inbox"}}),
    ));
    assert_diag(&text, "on.file.paht", "unknown field `paht`");
    assert!(text.contains("`path`"), "lists the known keys: {text}");
}

#[test]
fn unknown_key_inside_a_trigger_is_the_only_error() {
    let text = invalid(binding(
        "x",
        json!({"file": {"path": "inbox", "paht": "inbox"}}),
    ));
    assert!(!text.contains("missing field `on`"), "{text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn wrong_type_is_not_also_reported_as_missing() {
    let text = invalid(with(binding("x", json!({"api": {}})), "workflow", json!(5)));
    assert_diag(&text, "workflow", "invalid type");
    assert!(!text.contains("missing field `workflow`"), "{text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn on_with_no_trigger() {
    let text = invalid(binding("x", json!({})));
    assert_diag(&text, "on", "exactly one trigger");
    assert!(text.contains("found none"), "{text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn on_with_two_triggers() {
    let text = invalid(binding("x", json!({"api": {}, "cron": {"every": "1m"}})));
    assert_diag(&text, "on", "exactly one trigger");
    assert!(text.contains("found api, cron"), "{text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn on_with_an_unknown_trigger() {
    let text = invalid(binding("x", json!({"timer": {"every": "1m"}})));
    assert_diag(&text, "on", "unknown trigger `timer`");
    assert!(
        text.contains("amqp, file, webhook, cron, api, run"),
        "{text}"
    );
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn on_that_is_not_an_object() {
    let text = invalid(binding("x", json!("cron")));
    assert_diag(&text, "on", "`on` is an object");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn missing_workflow() {
    let text = invalid(json!({"name": "x", "on": {"api": {}}}));
    assert_diag(&text, "", "missing field `workflow`");
}

#[test]
fn unknown_workflow() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "workflow",
        json!("nope"),
    ));
    assert_diag(&text, "workflow", "unknown workflow `nope`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn bad_binding_names() {
    for name in ["Bad Name", "", "UPPER", "a.b"] {
        let text = invalid(binding(name, json!({"api": {}})));
        assert_diag(&text, "name", &format!("invalid binding name `{name}`"));
        assert!(text.contains("lowercase letters"), "{text}");
    }
}

#[test]
fn bad_cel_in_filter() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "filter",
        json!("event.data.size >"),
    ));
    assert_diag(&text, "filter", "invalid CEL");
    assert!(text.contains("event.data.size >"), "{text}");
}

#[test]
fn unclosed_template_in_params() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "params",
        json!({"ok": "${event.id}", "nested": {"file": "${event.data.path"}}),
    ));
    assert_diag(&text, "params.nested.file", "unterminated `${`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn bad_cel_in_a_params_template_and_dedup_key() {
    let text = invalid(json!({
        "name": "x", "on": {"api": {}}, "workflow": "wf",
        "params": {"list": ["fine", "${event.(}"]},
        "dedup": {"key": "${event.data.id"},
    }));
    assert_diag(&text, "params.list[1]", "invalid template");
    assert_diag(&text, "dedup.key", "unterminated `${`");
}

#[test]
fn bad_dedup_ttl() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "dedup",
        json!({"ttl": "soon"}),
    ));
    assert_diag(&text, "dedup.ttl", "invalid duration `soon`");
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "dedup",
        json!({"ttl": "0s"}),
    ));
    assert_diag(&text, "dedup.ttl", "greater than zero");
}

#[test]
fn unknown_dedup_key() {
    let text = invalid(with(
        binding("x", json!({"api": {}})),
        "dedup",
        json!({"ttl": "1d", "keys": "${event.id}"}),
    ));
    assert_diag(&text, "dedup.keys", "unknown field `keys`");
}

// ---------------------------------------------------------------------------
// Validation: triggers
// ---------------------------------------------------------------------------

#[test]
fn file_trigger_bad_glob() {
    let text = invalid(binding(
        "x",
        json!({"file": {"path": "inbox", "pattern": "[a"}}),
    ));
    assert_diag(&text, "on.file.pattern", "invalid glob `[a`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn file_trigger_pattern_with_a_slash() {
    let text = invalid(binding(
        "x",
        json!({"file": {"path": "inbox", "pattern": "sub/*.csv"}}),
    ));
    assert_diag(&text, "on.file.pattern", "matches file names, not paths");
    assert!(text.contains("recursive"), "hints at `recursive`: {text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn file_trigger_bad_settle_and_missing_path() {
    let text = invalid(binding(
        "x",
        json!({"file": {"path": "inbox", "settle": "a while"}}),
    ));
    assert_diag(&text, "on.file.settle", "invalid duration `a while`");
    let text = invalid(binding("x", json!({"file": {"pattern": "*.csv"}})));
    assert_diag(&text, "on.file", "missing field `path`");
    let text = invalid(binding("x", json!({"file": {"path": ""}})));
    assert_diag(&text, "on.file.path", "empty");
}

#[test]
fn webhook_invalid_paths() {
    for path in ["/a b", "/../etc", "/", "/orders//new", "/ordérs"] {
        let text = invalid(binding("x", json!({"webhook": {"path": path}})));
        assert_diag(&text, "on.webhook.path", "invalid webhook path");
        assert!(text.contains(&format!("`{path}`")), "{text}");
    }
}

#[test]
fn webhook_secret_without_signature() {
    let text = invalid(binding(
        "x",
        json!({"webhook": {"path": "/orders", "secret": "${secrets.orders}"}}),
    ));
    assert_diag(
        &text,
        "on.webhook.signature",
        "a secret needs a `signature`",
    );
    assert!(text.contains("hmac-sha256"), "lists the schemes: {text}");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn webhook_signature_without_secret() {
    let text = invalid(binding(
        "x",
        json!({"webhook": {"path": "/orders", "signature": "github"}}),
    ));
    assert_diag(
        &text,
        "on.webhook.secret",
        "signature `github` needs a `secret`",
    );
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn webhook_secret_must_come_from_secrets() {
    let text = invalid(binding(
        "x",
        json!({"webhook": {"path": "/orders", "secret": "${event.data.key}", "signature": "github"}}),
    ));
    assert_diag(&text, "on.webhook.secret", "`${secrets.<name>}`");
}

#[test]
fn webhook_unsupported_method_and_signature_scheme() {
    let text = invalid(binding(
        "x",
        json!({"webhook": {"path": "/orders", "methods": ["post", "TRACE"]}}),
    ));
    assert_diag(&text, "on.webhook.methods[1]", "unsupported method `TRACE`");
    assert_eq!(error_count(&text), 1, "lowercase `post` is fine: {text}");
    let text = invalid(binding(
        "x",
        json!({"webhook": {"path": "/orders", "secret": "${secrets.s}", "signature": "md5"}}),
    ));
    assert_diag(&text, "on.webhook.signature", "unknown variant `md5`");
}

#[test]
fn cron_bad_expression() {
    let text = invalid(binding("x", json!({"cron": {"schedule": "61 * * * *"}})));
    assert_diag(
        &text,
        "on.cron.schedule",
        "invalid cron schedule \"61 * * * *\"",
    );
    assert!(text.contains("out of range"), "{text}");
    let text = invalid(binding("x", json!({"cron": {"schedule": "* * *"}})));
    assert_diag(&text, "on.cron.schedule", "invalid cron schedule");
    // Parses, but no date matches it.
    let text = invalid(binding("x", json!({"cron": {"schedule": "0 0 30 2 *"}})));
    assert_diag(&text, "on.cron.schedule", "it never fires");
}

#[test]
fn cron_unknown_timezone() {
    let text = invalid(binding(
        "x",
        json!({"cron": {"schedule": "0 2 * * *", "timezone": "Mars/Olympus"}}),
    ));
    assert_diag(
        &text,
        "on.cron.timezone",
        "unknown timezone \"Mars/Olympus\"",
    );
    let text = invalid(binding(
        "x",
        json!({"cron": {"schedule": "0 2 * * *", "timezone": "europe/berlin"}}),
    ));
    assert_diag(&text, "on.cron.timezone", "did you mean \"Europe/Berlin\"");
}

#[test]
fn cron_every_zero_and_bad() {
    let text = invalid(binding("x", json!({"cron": {"every": "0s"}})));
    assert_diag(&text, "on.cron.every", "greater than zero");
    let text = invalid(binding("x", json!({"cron": {"every": "often"}})));
    assert_diag(&text, "on.cron.every", "invalid duration `often`");
}

#[test]
fn cron_schedule_and_every() {
    let text = invalid(binding(
        "x",
        json!({"cron": {"schedule": "0 2 * * *", "every": "1h"}}),
    ));
    assert_diag(&text, "on.cron", "either `schedule` or `every`, not both");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn cron_neither_schedule_nor_every() {
    let text = invalid(binding("x", json!({"cron": {"timezone": "UTC"}})));
    assert_diag(&text, "on.cron", "give `schedule` (crontab) or `every`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn cron_every_with_timezone() {
    let text = invalid(binding(
        "x",
        json!({"cron": {"every": "1h", "timezone": "Europe/Berlin"}}),
    ));
    assert_diag(&text, "on.cron.timezone", "do not use a timezone");
}

#[test]
fn cron_bad_catch_up() {
    let text = invalid(binding(
        "x",
        json!({"cron": {"every": "1h", "catch_up": "some"}}),
    ));
    assert_diag(&text, "on.cron.catch_up", "unknown variant `some`");
}

#[test]
fn run_trigger_unknown_workflow() {
    let text = invalid(binding("x", json!({"run": {"workflow": "nope"}})));
    assert_diag(&text, "on.run.workflow", "unknown workflow `nope`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn run_trigger_non_terminal_status() {
    let text = invalid(binding(
        "x",
        json!({"run": {"workflow": "etl", "status": ["failed", "running"]}}),
    ));
    assert_diag(&text, "on.run.status[1]", "`running` is not an end status");
    assert_eq!(error_count(&text), 1, "{text}");
    let text = invalid(binding(
        "x",
        json!({"run": {"workflow": "etl", "status": []}}),
    ));
    assert_diag(&text, "on.run.status", "at least one status");
    let text = invalid(binding(
        "x",
        json!({"run": {"workflow": "etl", "status": ["sucess"]}}),
    ));
    assert_diag(&text, "on.run.status[0]", "unknown variant `sucess`");
}

#[test]
fn amqp_prefetch_zero() {
    let text = invalid(binding(
        "x",
        json!({"amqp": {"exchange": "orders", "prefetch": 0}}),
    ));
    assert_diag(&text, "on.amqp.prefetch", "must be at least 1");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn amqp_reserved_queue_and_names_over_the_limit() {
    let text = invalid(binding(
        "x",
        json!({"amqp": {"exchange": "orders", "queue": "amq.mine"}}),
    ));
    assert_diag(&text, "on.amqp.queue", "reserved by the broker");
    let long = "o".repeat(256);
    let text = invalid(binding(
        "x",
        json!({"amqp": {"exchange": long, "routing_key": long}}),
    ));
    assert_diag(&text, "on.amqp.exchange", "AMQP allows 255");
    assert_diag(&text, "on.amqp.routing_key", "AMQP allows 255");
}

#[test]
fn amqp_empty_exchange_and_bad_exchange_type() {
    let text = invalid(binding("x", json!({"amqp": {"exchange": " "}})));
    assert_diag(&text, "on.amqp.exchange", "empty");
    let text = invalid(binding(
        "x",
        json!({"amqp": {"exchange": "orders", "exchange_type": "broadcast"}}),
    ));
    assert_diag(
        &text,
        "on.amqp.exchange_type",
        "unknown variant `broadcast`",
    );
}

#[test]
fn api_trigger_takes_no_keys() {
    let text = invalid(binding("x", json!({"api": {"path": "/events"}})));
    assert_diag(&text, "on.api.path", "unknown field `path`");
}

// ---------------------------------------------------------------------------
// Validation: names and shared sources across bindings
// ---------------------------------------------------------------------------

#[test]
fn duplicate_binding_names_in_one_array_file() {
    let text = invalid(json!([
        binding("dup", json!({"api": {}})),
        binding("other", json!({"api": {}})),
        binding("dup", json!({"cron": {"every": "1h"}})),
    ]));
    assert_diag(&text, "[2].name", "duplicate binding name `dup`");
    assert_eq!(error_count(&text), 1, "{text}");
}

#[test]
fn duplicate_binding_names_across_files() {
    let dir = project();
    write_json(
        dir.path(),
        "bindings/a.json",
        &binding("dup", json!({"api": {}})),
    );
    write_json(
        dir.path(),
        "bindings/b.json",
        &binding("dup", json!({"cron": {"every": "1h"}})),
    );
    // By path and through the project's dirs.
    for args in [&["validate", "bindings"][..], &["validate"][..]] {
        let out = switchyard(dir.path(), args);
        assert_exit(&out, 2);
        let text = stderr(&out);
        assert!(
            text.contains("b.json: name: binding name `dup` is already used by")
                && text.contains("a.json"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn duplicate_binding_name_across_files_names_the_array_item() {
    let dir = project();
    write_json(
        dir.path(),
        "bindings/a.json",
        &binding("dup", json!({"api": {}})),
    );
    write_json(
        dir.path(),
        "bindings/b.json",
        &json!([
            binding("fine", json!({"api": {}})),
            binding("dup", json!({"cron": {"every": "1h"}})),
        ]),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains("b.json: [1].name: binding name `dup` is already used"),
        "{text}"
    );
}

fn hook(name: &str, path: &str, auth: Option<(&str, &str)>) -> Value {
    let mut webhook = json!({"path": path});
    if let Some((secret, signature)) = auth {
        webhook["secret"] = json!(secret);
        webhook["signature"] = json!(signature);
    }
    binding(name, json!({"webhook": webhook}))
}

#[test]
fn webhooks_sharing_a_path_must_agree_on_auth() {
    let dir = project();
    write_json(
        dir.path(),
        "bindings/a.json",
        &hook("first", "/orders", Some(("${secrets.one}", "hmac-sha256"))),
    );
    // Same path once normalised, other secret.
    write_json(
        dir.path(),
        "bindings/b.json",
        &hook("second", "orders/", Some(("${secrets.two}", "hmac-sha256"))),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains(
            "b.json: on.webhook: webhook path `/hooks/orders` is also used by binding `first`"
        ),
        "{text}"
    );

    // Other signature scheme, same secret.
    write_json(
        dir.path(),
        "bindings/b.json",
        &hook("second", "/orders", Some(("${secrets.one}", "github"))),
    );
    let out = switchyard(dir.path(), &["validate", "bindings"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("b.json: on.webhook: webhook path `/hooks/orders`"),
        "{}",
        stderr(&out)
    );

    // One signed, one not.
    write_json(
        dir.path(),
        "bindings/b.json",
        &hook("second", "/orders", None),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("on.webhook"), "{}", stderr(&out));

    // Agreeing settings share the path fine.
    write_json(
        dir.path(),
        "bindings/b.json",
        &hook("second", "/orders", Some(("${secrets.one}", "hmac-sha256"))),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 0);
}

#[test]
fn webhook_conflict_in_an_array_names_the_item() {
    let text = invalid(json!([
        hook("first", "/orders", None),
        hook("second", "/orders", Some(("${secrets.s}", "github"))),
    ]));
    assert_diag(&text, "[1].on.webhook", "is also used by binding `first`");
}

// ---------------------------------------------------------------------------
// Validation: all errors, array paths, valid files
// ---------------------------------------------------------------------------

#[test]
fn every_error_in_a_binding_is_reported() {
    let text = invalid(json!({
        "name": "Bad Name",
        "on": {"cron": {"schedule": "61 * * * *", "timezone": "Nowhere/City"}},
        "filter": "event.(",
        "workflow": "nope",
        "params": {"f": "${event.data"},
        "dedup": {"ttl": "soon"},
    }));
    assert_diag(&text, "name", "invalid binding name");
    assert_diag(&text, "workflow", "unknown workflow `nope`");
    assert_diag(&text, "filter", "invalid CEL");
    assert_diag(&text, "params.f", "unterminated");
    assert_diag(&text, "dedup.ttl", "invalid duration");
    assert_diag(&text, "on.cron.timezone", "unknown timezone");
    assert_eq!(error_count(&text), 6, "{text}");
}

#[test]
fn every_bad_item_of_an_array_is_reported() {
    let text = invalid(json!([
        binding("good", json!({"api": {}})),
        binding("bad-cron", json!({"cron": {"schedule": "0 25 * * *"}})),
        binding(
            "bad-hook",
            json!({"webhook": {"path": "/x", "signature": "github"}})
        ),
        with(binding("typo", json!({"api": {}})), "enabeld", json!(false)),
    ]));
    assert_diag(&text, "[1].on.cron.schedule", "invalid cron schedule");
    assert_diag(&text, "[2].on.webhook.secret", "needs a `secret`");
    assert_diag(&text, "[3].enabeld", "unknown field `enabeld`");
    assert!(!text.contains("[0]"), "item 0 is fine: {text}");
    assert_eq!(error_count(&text), 3, "{text}");
}

#[test]
fn errors_in_several_binding_files_are_all_reported() {
    let dir = project();
    write_json(
        dir.path(),
        "bindings/one.json",
        &binding("one", json!({"cron": {"every": "0s"}})),
    );
    write_json(
        dir.path(),
        "bindings/two.json",
        &with(
            binding("two", json!({"api": {}})),
            "workflow",
            json!("missing"),
        ),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(text.contains("one.json: on.cron.every"), "{text}");
    assert!(
        text.contains("two.json: workflow: unknown workflow"),
        "{text}"
    );
    assert_eq!(error_count(&text), 2, "{text}");
}

/// One binding of every trigger kind, with every optional key somewhere.
fn every_kind() -> Vec<Value> {
    vec![
        json!({
            "$schema": "../schemas/binding.schema.json",
            "name": "files",
            "description": "CSV files",
            "on": {"file": {"path": "inbox", "pattern": "*.csv", "recursive": true, "settle": "1s"}},
            "filter": "event.data.size > 0",
            "workflow": "wf",
            "params": {"file": "${event.data.path}", "literal": 3, "list": ["a", "${event.id}"]},
            "dedup": {"key": "${event.id}", "ttl": "7d"},
            "enabled": true,
        }),
        json!({
            "name": "hook",
            "on": {"webhook": {"path": "/orders/new", "methods": ["POST", "put"],
                               "secret": "${secrets.orders}", "signature": "standard-webhooks",
                               "respond": "wait", "max_body_bytes": 2048}},
            "workflow": "wf",
        }),
        json!({
            "name": "nightly",
            "on": {"cron": {"schedule": "30 23 * * 0", "timezone": "Europe/Berlin", "catch_up": "all"}},
            "workflow": "wf",
        }),
        json!({"name": "often", "on": {"cron": {"every": "30s", "catch_up": "none"}}, "workflow": "wf"}),
        json!({"name": "daily", "on": {"cron": {"schedule": "@daily"}}, "workflow": "wf"}),
        json!({
            "name": "queue",
            "on": {"amqp": {"exchange": "orders", "exchange_type": "direct", "routing_key": "order.created",
                            "queue": "q.orders", "prefetch": 10}},
            "workflow": "wf",
        }),
        json!({"name": "api_events", "on": {"api": {}}, "filter": "event.type == 'x'", "workflow": "wf"}),
        json!({
            "name": "after-etl",
            "on": {"run": {"workflow": "etl", "status": ["succeeded", "failed", "cancelled"]}},
            "workflow": "wf",
            "enabled": false,
        }),
    ]
}

#[test]
fn valid_binding_files_pass_with_counts() {
    let dir = project();
    let mut kinds = every_kind();
    // Object form for the first, array form for the rest.
    let first = kinds.remove(0);
    let object = write_json(dir.path(), "bindings/object.json", &first);
    let array = write_json(dir.path(), "bindings/array.json", &json!(kinds));

    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: 2 workflow(s), 8 binding(s) valid"),
        "{}",
        stdout(&out)
    );

    // By path: binding files alone (workflows found in the project's dir) ...
    let out = switchyard(
        dir.path(),
        &[
            "validate",
            object.to_str().unwrap(),
            array.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: 0 workflow(s), 8 binding(s) valid"),
        "{}",
        stdout(&out)
    );

    // ... and with the workflow dir given too.
    let out = switchyard(dir.path(), &["validate", "workflows", "bindings"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: 2 workflow(s), 8 binding(s) valid"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bindings_may_name_workflows_given_in_the_same_invocation() {
    // No project workflow dir: the workflow comes from the command line.
    let dir = tempfile::tempdir().unwrap();
    let workflow = write_json(dir.path(), "elsewhere/other.json", &noop_workflow("other"));
    let file = write_json(
        dir.path(),
        "b.json",
        &json!({"name": "x", "on": {"api": {}}, "workflow": "other"}),
    );
    let out = switchyard(
        dir.path(),
        &[
            "validate",
            workflow.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: 1 workflow(s), 1 binding(s) valid"),
        "{}",
        stdout(&out)
    );
    // Alone, the workflow is unknown.
    let out = switchyard(dir.path(), &["validate", file.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("b.json: workflow: unknown workflow `other`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn binding_dirs_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    write_json(
        dir.path(),
        "switchyard.json",
        &json!({"workflows": ["flows"], "bindings": ["hooks"]}),
    );
    write_json(dir.path(), "flows/wf.json", &noop_workflow("wf"));
    write_json(
        dir.path(),
        "hooks/ok.json",
        &binding("ok", json!({"api": {}})),
    );
    // Not a configured binding dir: ignored.
    write_text(dir.path(), "bindings/junk.json", "not json");
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: 1 workflow(s), 1 binding(s) valid"),
        "{}",
        stdout(&out)
    );
    write_json(
        dir.path(),
        "hooks/bad.json",
        &binding(
            "bad",
            json!({"run": {"workflow": "wf", "status": ["queued"]}}),
        ),
    );
    let out = switchyard(dir.path(), &["validate"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("bad.json: on.run.status[0]: `queued` is not an end status"),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------------------
// `switchyard match`
// ---------------------------------------------------------------------------

/// A project with a config, two workflows and a binding of each kind.
fn match_project() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_json(
        root,
        "switchyard.json",
        &json!({"workflows": ["workflows"], "bindings": ["bindings"]}),
    );
    write_json(root, "workflows/ingest.json", &noop_workflow("ingest"));
    write_json(root, "workflows/etl.json", &noop_workflow("etl"));
    std::fs::create_dir_all(root.join("inbox")).unwrap();
    write_json(
        root,
        "bindings/files.json",
        &json!({
            "name": "inbox-csv",
            "on": {"file": {"path": "inbox", "pattern": "*.csv"}},
            "filter": "event.data.size > 0",
            "workflow": "ingest",
            "params": {"file": "${event.data.path}", "name": "${event.data.name}", "source": "inbox"},
        }),
    );
    write_json(
        root,
        "bindings/hooks.json",
        &json!([
            {
                "name": "orders-hook",
                "on": {"webhook": {"path": "/orders"}},
                "workflow": "ingest",
                "params": {"order": "${event.data.order_id}"},
                "dedup": {"key": "order-${event.data.order_id}"},
            },
            {
                "name": "nightly",
                "on": {"cron": {"schedule": "0 2 * * *"}},
                "workflow": "etl",
                "params": {"at": "${event.data.scheduled_time}"},
            },
        ]),
    );
    write_json(
        root,
        "bindings/api.json",
        &json!({
            "name": "api-orders",
            "on": {"api": {}},
            "filter": "event.type == 'com.example.order.created'",
            "workflow": "ingest",
            "params": {"order_id": "${event.data.order_id}", "label": "order ${event.data.order_id}"},
            "dedup": {"key": "${event.data.order_id}"},
        }),
    );
    write_json(
        root,
        "bindings/chain.json",
        &json!({
            "name": "after-etl",
            "on": {"run": {"workflow": "etl"}},
            "workflow": "ingest",
            "params": {"upstream": "${event.data.id}"},
        }),
    );
    dir
}

const ALL: [&str; 5] = [
    "after-etl",
    "api-orders",
    "inbox-csv",
    "nightly",
    "orders-hook",
];

/// Writes `event` next to the project and runs `match --json` on it.
/// Returns (exit code, parsed output).
fn match_json(dir: &Path, event: &Value) -> (i32, Value) {
    let file = write_json(dir, "event.json", event);
    let out = switchyard(dir, &["match", file.to_str().unwrap(), "--json"]);
    let code = out.status.code().unwrap_or(-1);
    let parsed = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "match --json printed no JSON ({e}); exit {code}\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    (code, parsed)
}

/// The result for one binding in `match --json` output.
fn result<'a>(output: &'a Value, name: &str) -> &'a Value {
    output["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["binding"] == name)
        .unwrap_or_else(|| panic!("no result for binding `{name}` in {output:#}"))
}

/// Asserts the binding did not match and returns its reason.
fn reason<'a>(output: &'a Value, name: &str) -> &'a str {
    let r = result(output, name);
    assert_eq!(r["matched"], json!(false), "{name} should not match: {r:#}");
    assert!(r.get("params").is_none(), "{r:#}");
    assert!(r.get("dedup_key").is_none(), "{r:#}");
    r["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason for `{name}`: {r:#}"))
}

/// Asserts exactly `matched` matched; every other binding has a reason.
fn assert_matched(output: &Value, matched: &[&str]) {
    let bindings = output["bindings"].as_array().unwrap();
    assert_eq!(
        bindings.len(),
        ALL.len(),
        "every binding is listed: {output:#}"
    );
    for name in ALL {
        let r = result(output, name);
        if matched.contains(&name) {
            assert_eq!(r["matched"], json!(true), "{name}: {r:#}");
            assert!(r.get("reason").is_none(), "{r:#}");
        } else {
            reason(output, name);
        }
    }
}

/// `match --json` on `event`: exit 0 with exactly `name` matched. Returns
/// the output and that binding's result.
fn matched(dir: &Path, event: &Value, name: &str) -> (Value, Value) {
    let (code, out) = match_json(dir, event);
    assert_eq!(code, 0, "{out:#}");
    assert_matched(&out, &[name]);
    let r = result(&out, name).clone();
    (out, r)
}

/// `match --json` on `event`: exit 1, and `name` did not match; returns why.
fn refused(dir: &Path, event: &Value, name: &str) -> String {
    let (code, out) = match_json(dir, event);
    assert_eq!(code, 1, "{out:#}");
    reason(&out, name).to_string()
}

/// `match --json` on `event`: `name` did not match, `because` says why.
fn assert_refused(dir: &Path, event: &Value, name: &str, because: &str) {
    let why = refused(dir, event, name);
    assert!(why.contains(because), "{name}: {why}");
}

fn file_event(dir: &Path, path: &Path, size: u64) -> Value {
    json!({
        "specversion": "1.0",
        "id": "file-evt-1",
        "source": format!("file://{}", dir.join("inbox").display()),
        "type": "switchyard.file.created",
        "time": "2026-01-02T03:04:05Z",
        "data": {
            "path": path.to_str().unwrap(),
            "name": path.file_name().unwrap().to_str().unwrap(),
            "size": size,
            "modified": "2026-01-02T03:04:00Z",
        },
    })
}

#[test]
fn match_file_event() {
    let dir = match_project();
    let root = dir.path();
    let path = root.join("inbox").join("orders.csv");
    let (out, r) = matched(root, &file_event(root, &path, 120), "inbox-csv");
    assert_eq!(r["workflow"], "ingest");
    assert_eq!(
        r["params"],
        json!({"file": path.to_str().unwrap(), "name": "orders.csv", "source": "inbox"})
    );
    assert_eq!(r["dedup_key"], "file-evt-1", "default key: event.id");
    // The event is echoed as evaluated.
    assert_eq!(out["event"]["id"], "file-evt-1");
    // Every other binding says which trigger it has.
    for (name, kind) in [
        ("orders-hook", "webhook"),
        ("nightly", "cron"),
        ("api-orders", "api"),
        ("after-etl", "run"),
    ] {
        let why = reason(&out, name);
        assert!(why.contains(&format!("`{kind}`")), "{name}: {why}");
        assert!(why.contains("switchyard.file.created"), "{name}: {why}");
    }
}

#[test]
fn match_file_event_human_output() {
    let dir = match_project();
    let root = dir.path();
    let path = root.join("inbox").join("orders.csv");
    let file = write_json(root, "event.json", &file_event(root, &path, 120));
    let out = switchyard(root, &["match", file.to_str().unwrap()]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("event file-evt-1 (switchyard.file.created)"),
        "{text}"
    );
    assert!(text.contains("match     inbox-csv → ingest"), "{text}");
    assert!(text.contains("dedup key \"file-evt-1\""), "{text}");
    assert!(text.contains("orders.csv"), "params are shown: {text}");
    assert!(
        text.contains("no match  nightly: trigger is `cron`"),
        "{text}"
    );
}

#[test]
fn match_file_event_with_empty_file_is_filtered() {
    let dir = match_project();
    let root = dir.path();
    let path = root.join("inbox").join("empty.csv");
    let (code, out) = match_json(root, &file_event(root, &path, 0));
    assert_eq!(code, 1, "{out:#}");
    assert_matched(&out, &[]);
    let why = reason(&out, "inbox-csv");
    assert!(
        why.contains("filter `event.data.size > 0` is false"),
        "{why}"
    );
}

#[test]
fn match_file_event_with_other_pattern() {
    let dir = match_project();
    let root = dir.path();
    let path = root.join("inbox").join("notes.txt");
    let why = refused(root, &file_event(root, &path, 10), "inbox-csv");
    assert!(
        why.contains("`notes.txt`") && why.contains("does not match `*.csv`"),
        "{why}"
    );
}

#[test]
fn match_file_event_outside_the_inbox() {
    let dir = match_project();
    let root = dir.path();
    for path in [
        root.join("outbox").join("orders.csv"),
        // `..` is resolved before the check.
        root.join("inbox").join("..").join("orders.csv"),
        PathBuf::from("/etc/orders.csv"),
    ] {
        let why = refused(root, &file_event(root, &path, 10), "inbox-csv");
        assert!(why.contains("is not under"), "{why}");
        assert!(
            why.contains(root.join("inbox").to_str().unwrap()),
            "names the watched dir (absolute): {why}"
        );
    }
}

#[test]
fn match_file_event_in_a_subdirectory_of_a_non_recursive_trigger() {
    let dir = match_project();
    let root = dir.path();
    let path = root.join("inbox").join("sub").join("orders.csv");
    let why = refused(root, &file_event(root, &path, 10), "inbox-csv");
    assert!(why.contains("not recursive"), "{why}");
}

#[test]
fn match_file_event_without_path() {
    let dir = match_project();
    let root = dir.path();
    let (code, out) = match_json(
        root,
        &json!({"type": "switchyard.file.created", "data": {"size": 1}}),
    );
    assert_eq!(code, 1, "{out:#}");
    assert!(reason(&out, "inbox-csv").contains("data.path"), "{out:#}");
}

#[test]
fn match_file_paths_resolve_against_the_config_dir() {
    // Run from a subdirectory with `--config ../switchyard.json`: the inbox
    // is still the one next to the config.
    let dir = match_project();
    let root = dir.path();
    let sub = root.join("elsewhere");
    std::fs::create_dir_all(&sub).unwrap();
    let path = root.join("inbox").join("orders.csv");
    let event = write_json(root, "event.json", &file_event(root, &path, 5));
    let config = root.join("switchyard.json");
    let out = switchyard(
        &sub,
        &[
            "--config",
            config.to_str().unwrap(),
            "match",
            event.to_str().unwrap(),
            "--json",
        ],
    );
    assert_exit(&out, 0);
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result(&parsed, "inbox-csv")["matched"],
        json!(true),
        "{parsed:#}"
    );
}

#[test]
fn match_api_event() {
    let dir = match_project();
    let root = dir.path();
    let (code, out) = match_json(
        root,
        &json!({
            "id": "api-1",
            "source": "/api/v1/events",
            "type": "com.example.order.created",
            "data": {"order_id": 42},
        }),
    );
    assert_eq!(code, 0, "{out:#}");
    assert_matched(&out, &["api-orders"]);
    let r = result(&out, "api-orders");
    // A whole `${…}` keeps the JSON type; mixed text renders a string.
    assert_eq!(r["params"], json!({"order_id": 42, "label": "order 42"}));
    assert_eq!(r["dedup_key"], "42", "custom dedup key, rendered");
    assert!(
        reason(&out, "inbox-csv").contains("trigger is `file`"),
        "{out:#}"
    );

    // Another custom type: the api binding's filter says no.
    let (code, out) = match_json(
        root,
        &json!({"type": "com.example.order.deleted", "data": {"order_id": 42}}),
    );
    assert_eq!(code, 1, "{out:#}");
    assert_matched(&out, &[]);
    assert!(
        reason(&out, "api-orders")
            .contains("filter `event.type == 'com.example.order.created'` is false"),
        "{out:#}"
    );
}

#[test]
fn match_event_defaults_missing_attributes() {
    let dir = match_project();
    let root = dir.path();
    let (code, out) = match_json(
        root,
        &json!({"type": "com.example.order.created", "data": {"order_id": 1}}),
    );
    assert_eq!(code, 0, "{out:#}");
    let event = &out["event"];
    assert_eq!(event["specversion"], "1.0");
    assert!(
        event["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{event:#}"
    );
    assert!(
        event["source"].is_string() && event["time"].is_string(),
        "{event:#}"
    );
}

#[test]
fn match_run_event() {
    let dir = match_project();
    let root = dir.path();
    let run_event = |status: &str, workflow: &str| {
        json!({
            "id": "run:0190",
            "source": format!("/workflows/{workflow}"),
            "type": format!("switchyard.run.{status}"),
            "subject": workflow,
            "data": {"id": "0190", "workflow": workflow, "status": status},
        })
    };
    let (out, r) = matched(root, &run_event("succeeded", "etl"), "after-etl");
    assert_eq!(r["params"], json!({"upstream": "0190"}));
    assert_eq!(r["dedup_key"], "run:0190");
    assert!(
        reason(&out, "api-orders").contains("comes from a switchyard adapter"),
        "a run event is not an api event: {out:#}"
    );

    assert_refused(
        root,
        &run_event("failed", "etl"),
        "after-etl",
        "run status `failed`",
    );

    assert_refused(
        root,
        &run_event("succeeded", "ingest"),
        "after-etl",
        "run of workflow `ingest`",
    );
}

#[test]
fn match_webhook_event() {
    let dir = match_project();
    let root = dir.path();
    let hook_event = |source: &str| {
        json!({
            "id": "hook-1",
            "source": source,
            "type": "switchyard.webhook.request",
            "data": {"order_id": "A-7"},
            "switchyard": {"headers": {"content-type": "application/json"}},
        })
    };
    let (_, r) = matched(root, &hook_event("/hooks/orders"), "orders-hook");
    assert_eq!(r["params"], json!({"order": "A-7"}));
    assert_eq!(r["dedup_key"], "order-A-7");

    assert_refused(
        root,
        &hook_event("/hooks/refunds"),
        "orders-hook",
        "`/hooks/refunds` is not `/hooks/orders`",
    );
}

#[test]
fn match_cron_event() {
    let dir = match_project();
    let root = dir.path();
    let tick = |source: &str| {
        json!({
            "id": "cron:nightly:2026-01-02T02:00:00Z",
            "source": source,
            "type": "switchyard.cron.tick",
            "data": {"scheduled_time": "2026-01-02T02:00:00Z"},
        })
    };
    let (_, r) = matched(root, &tick("cron:nightly"), "nightly");
    assert_eq!(r["params"], json!({"at": "2026-01-02T02:00:00Z"}));
    assert_eq!(r["dedup_key"], "cron:nightly:2026-01-02T02:00:00Z");

    assert_refused(
        root,
        &tick("cron:other"),
        "nightly",
        "`cron:other` is not `cron:nightly`",
    );
}

#[test]
fn match_disabled_binding_says_so() {
    let dir = match_project();
    let root = dir.path();
    let mut files: Value =
        serde_json::from_slice(&std::fs::read(root.join("bindings/files.json")).unwrap()).unwrap();
    files["enabled"] = json!(false);
    write_json(root, "bindings/files.json", &files);
    let path = root.join("inbox").join("orders.csv");
    assert_refused(root, &file_event(root, &path, 10), "inbox-csv", "disabled");
}

#[test]
fn match_template_failures_are_reported_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_json(root, "workflows/wf.json", &noop_workflow("wf"));
    write_json(
        root,
        "bindings/b.json",
        &json!([
            {"name": "bad-params", "on": {"api": {}}, "workflow": "wf",
             "params": {"ok": "fine", "deep": {"x": "${event.data.missing.field}"}}},
            {"name": "bad-filter", "on": {"api": {}}, "workflow": "wf",
             "filter": "event.data.missing.field == 1"},
            {"name": "bad-key", "on": {"api": {}}, "workflow": "wf",
             "dedup": {"key": "${event.data.missing.field}"}},
            {"name": "null-key", "on": {"api": {}}, "workflow": "wf",
             "dedup": {"key": "${event.data.nothing}"}},
            {"name": "good", "on": {"api": {}}, "workflow": "wf",
             "params": {"n": "${event.data.n}"}},
        ]),
    );
    let event = json!({"type": "custom.thing", "data": {"n": 1, "nothing": null}});
    let (code, out) = match_json(root, &event);
    assert_eq!(code, 0, "`good` still matches: {out:#}");
    let why = reason(&out, "bad-params");
    assert!(
        why.starts_with("error: params.deep.x") && why.contains("event.data.missing.field"),
        "{why}"
    );
    let why = reason(&out, "bad-filter");
    assert!(why.starts_with("error: filter"), "{why}");
    let why = reason(&out, "bad-key");
    assert!(why.starts_with("error: dedup.key"), "{why}");
    let why = reason(&out, "null-key");
    assert!(why.contains("dedup.key rendered to null"), "{why}");
    assert_eq!(result(&out, "good")["params"], json!({"n": 1}));

    // Only failures: exit 1, and no panic.
    write_json(
        root,
        "bindings/b.json",
        &json!({"name": "bad-params", "on": {"api": {}}, "workflow": "wf",
                "params": {"x": "${event.data.missing.field}"}}),
    );
    let file = root.join("event.json");
    let out = switchyard(root, &["match", file.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("no match  bad-params: error: params.x"),
        "{}",
        stdout(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn match_with_no_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_json(root, "workflows/wf.json", &noop_workflow("wf"));
    let file = write_json(root, "event.json", &json!({"type": "x"}));
    let out = switchyard(root, &["match", file.to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("no bindings loaded"),
        "{}",
        stdout(&out)
    );
    let (code, out) = match_json(root, &json!({"type": "x"}));
    assert_eq!(code, 1);
    assert_eq!(out["bindings"], json!([]));
}

/// Runs `match` on a raw event file; asserts exit 2 and that stderr names it.
fn match_invalid(dir: &Path, text: &str) -> String {
    let file = write_text(dir, "bad-event.json", text);
    let out = switchyard(dir, &["match", file.to_str().unwrap(), "--json"]);
    assert_exit(&out, 2);
    assert!(
        stdout(&out).is_empty(),
        "nothing on stdout: {}",
        stdout(&out)
    );
    let text = stderr(&out);
    assert!(text.contains("bad-event.json"), "names the file: {text}");
    text
}

#[test]
fn match_invalid_event_files() {
    let dir = match_project();
    let root = dir.path();
    let text = match_invalid(root, r#"{"id": "x", "data": {}}"#);
    assert!(text.contains("type: missing or not a string"), "{text}");
    let text = match_invalid(root, r#"{"type": 7}"#);
    assert!(text.contains("type: missing or not a string"), "{text}");
    let text = match_invalid(root, "{\"type\": \"x\",\n");
    assert!(text.contains("invalid JSON"), "{text}");
    let text = match_invalid(root, r#"["switchyard.file.created"]"#);
    assert!(text.contains("an event is a JSON object"), "{text}");

    let missing = root.join("no-such-event.json");
    let out = switchyard(root, &["match", missing.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("no-such-event.json: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn match_refuses_an_invalid_project() {
    let dir = match_project();
    let root = dir.path();
    write_json(
        root,
        "bindings/broken.json",
        &binding("broken", json!({"cron": {"schedule": "99 * * * *"}})),
    );
    let file = write_json(root, "event.json", &json!({"type": "x"}));
    let out = switchyard(root, &["match", file.to_str().unwrap()]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains("broken.json: on.cron.schedule: invalid cron schedule"),
        "{text}"
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // A bad config is refused too.
    std::fs::remove_file(root.join("bindings/broken.json")).unwrap();
    write_text(root, "switchyard.json", r#"{"bindngs": ["bindings"]}"#);
    let out = switchyard(root, &["match", file.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("switchyard.json") && stderr(&out).contains("bindngs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn max_body_applies_to_amqp_bindings_and_must_be_positive() {
    let amqp = json!({"amqp": {"exchange": "x"}});
    let text = invalid(json!([
        with(binding("a", amqp.clone()), "max_body", json!(0)),
        with(
            binding("b", json!({"cron": {"every": "1m"}})),
            "max_body",
            json!(10)
        ),
        with(binding("c", amqp), "max_body", json!(4096)),
    ]));
    assert_diag(&text, "[0].max_body", "must be at least 1");
    assert_diag(&text, "[1].max_body", "applies to amqp bindings only");
    assert_eq!(error_count(&text), 2, "{text}");
}
