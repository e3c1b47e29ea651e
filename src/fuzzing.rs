//! Entry points of the fuzz targets (`fuzz/`), one per kind of outside
//! input: workflow and binding files (parse + validate), templates and CEL
//! (parse + evaluate), webhook signature headers, AMQP message decoding and
//! log record decoding. Each must return on any input without panicking.
//! `cargo test` runs every committed corpus entry through these same
//! functions, so CI checks the corpora without a fuzzer.

use std::path::Path;

use serde_json::json;

use crate::expr::{Condition, Expression, MapScope, Template};
use crate::spec::Workflow;
use crate::spec::binding::{Binding, SignatureScheme};

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name (as in `fuzz/fuzz_targets/` and `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("workflow", workflow),
    ("binding", binding),
    ("expression", expression),
    ("webhook_signature", webhook_signature),
    ("amqp_message", amqp_message),
    ("log_record", log_record),
];

/// A workflow file.
pub fn workflow(data: &[u8]) {
    let _ = Workflow::parse(Path::new("fuzz.json"), data);
    let _ = Workflow::parse_stored(Path::new("fuzz.json"), data);
}

/// A binding file (one binding or an array).
pub fn binding(data: &[u8]) {
    let _ = Binding::parse(Path::new("fuzz.json"), data, Path::new("/fuzz"), &|name| {
        name == "wf"
    });
}

fn scope() -> MapScope {
    let mut scope = MapScope {
        now: 1_700_000_000_000,
        ..MapScope::default()
    };
    scope.names.insert(
        "event".into(),
        json!({"id": "e-1", "type": "t", "data": {"n": 3, "s": "text", "list": [1, 2, 3], "m": {"k": null}}}),
    );
    scope
        .names
        .insert("vars".into(), json!({"region": "eu", "rows": 12}));
    scope
}

/// A `${…}` template, a CEL condition and a CEL expression: parsed, then
/// evaluated over an event.
pub fn expression(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scope = scope();
    if let Ok(template) = Template::parse(text) {
        let _ = template.render(&scope);
    }
    if let Ok(condition) = Condition::parse(text) {
        let _ = condition.evaluate(&scope);
    }
    if let Ok(expression) = Expression::parse(text) {
        let _ = expression.evaluate(&scope);
    }
}

/// `name: value` header lines, a blank line, then the body: verified under
/// every scheme.
pub fn webhook_signature(data: &[u8]) {
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 2..).unwrap_or_default();
    let headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    let lookup = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    for (scheme, secret) in [
        (SignatureScheme::HmacSha256, "s3cret-value"),
        (SignatureScheme::Github, "s3cret-value"),
        (
            SignatureScheme::StandardWebhooks,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
        (SignatureScheme::StandardWebhooks, "plain-secret"),
    ] {
        let _ = crate::triggers::webhook::verify(scheme, secret, &lookup, body, 1_700_000_000);
    }
}

/// An AMQP message: the first byte picks the content type, the second the
/// content encoding, the third whether it has a message id; the rest is the
/// body.
pub fn amqp_message(data: &[u8]) {
    const TYPES: &[Option<&str>] = &[
        None,
        Some("application/json"),
        Some("application/cloudevents+json; charset=utf-8"),
        Some("text/plain"),
        Some("application/octet-stream"),
        Some(""),
        Some("TEXT/CSV;;"),
    ];
    const ENCODINGS: &[Option<&str>] = &[None, Some("identity"), Some("gzip"), Some(" ")];
    let pick = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let mut properties = lapin::BasicProperties::default();
    if let Some(t) = TYPES[pick(0) % TYPES.len()] {
        properties = properties.with_content_type(t.into());
    }
    if let Some(e) = ENCODINGS[pick(1) % ENCODINGS.len()] {
        properties = properties.with_content_encoding(e.into());
    }
    if pick(2) % 2 == 1 {
        properties = properties.with_message_id("m-1".into());
    }
    let body = data.get(3..).unwrap_or_default();
    let message = crate::triggers::amqp::Message {
        properties: &properties,
        data: body,
        exchange: "orders",
        routing_key: "orders.created",
        redelivered: false,
    };
    let _ = crate::triggers::amqp::decode_message(message, "q", "/");
}

/// A stored value of the log's `records`, `events` or `dedup` trees.
pub fn log_record(data: &[u8]) {
    let _ = crate::log::decode_records(data);
    let _ = serde_json::from_slice::<crate::log::EventRecord>(data);
    let _ = serde_json::from_slice::<crate::log::DedupEntry>(data);
}
