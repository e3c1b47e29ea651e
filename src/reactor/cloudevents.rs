//! CloudEvents as other systems send them: the HTTP protocol binding's
//! structured, binary and batched modes, and the AMQP (RabbitMQ) binding's
//! structured and binary modes (pure: bytes and headers in, event objects
//! out). `data_base64` is decoded. In binary mode the attributes come from
//! the `ce-` headers only: a body's own keys (a `type` inside the data) are
//! data, never attributes.

use base64::Engine as _;
use serde_json::{Map, Value};

/// `Content-Type` of a structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// `Content-Type` of a batch of structured events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The media type of a `Content-Type` value, lowercased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a media type is JSON (`application/json`, `…+json`, `text/json`).
pub fn is_json(media: &str) -> bool {
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// One event of a batch: its attributes and data, or why it is refused.
pub type Decoded = Result<Map<String, Value>, String>;

/// One structured-mode event (a JSON object); its `data_base64`, if any,
/// decoded into `data`.
pub fn structured(body: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("invalid JSON in a structured CloudEvent: {e}"))?;
    structured_value(value)
}

/// A structured event already parsed (a batch's element).
pub fn structured_value(value: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(mut event) = value else {
        return Err("a CloudEvent is a JSON object".into());
    };
    if let Some(encoded) = event.remove("data_base64") {
        if event.contains_key("data") {
            return Err("a CloudEvent has `data` or `data_base64`, not both".into());
        }
        let Value::String(encoded) = encoded else {
            return Err("`data_base64` must be a string".into());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("`data_base64` is not base64: {e}"))?;
        let media = event
            .get("datacontenttype")
            .and_then(Value::as_str)
            .map(media_type);
        let data = data_from_bytes(&bytes, media.as_deref())?;
        event.insert("data".into(), data);
    }
    Ok(event)
}

/// A batch: a JSON array of structured events, each decoded on its own
/// (one bad element does not refuse the others).
pub fn batch(body: &[u8]) -> Result<Vec<Decoded>, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("invalid JSON in a CloudEvents batch: {e}"))?;
    let Value::Array(items) = value else {
        return Err("a CloudEvents batch is a JSON array of events".into());
    };
    Ok(items.into_iter().map(structured_value).collect())
}

/// Binary mode: attributes from the `ce-` headers (percent-decoded, names
/// lowercased), `datacontenttype` from `Content-Type`, the body as `data`.
pub fn binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut event = Map::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let Some(attribute) = name.strip_prefix("ce-") else {
            continue;
        };
        if attribute.is_empty() || attribute == "data" || attribute == "data_base64" {
            continue;
        }
        // The HTTP binding percent-encodes header values.
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("header `{name}` is not percent-encoded UTF-8"))?;
        event.insert(attribute.to_string(), Value::String(value.into_owned()));
    }
    let media = content_type.map(media_type);
    if let Some(content_type) = content_type {
        event.insert(
            "datacontenttype".into(),
            Value::String(content_type.to_string()),
        );
    }
    let data = if body.is_empty() {
        Value::Null
    } else {
        data_from_bytes(body, media.as_deref())?
    };
    event.insert("data".into(), data);
    Ok(event)
}

/// Event data from bytes: JSON when the media type says so, text when it
/// is UTF-8, else base64 (the event's `datacontenttype` says what it is).
pub fn data_from_bytes(bytes: &[u8], media: Option<&str>) -> Result<Value, String> {
    if media.is_some_and(is_json) {
        return serde_json::from_slice(bytes)
            .map_err(|e| format!("the data is declared JSON but is not: {e}"));
    }
    Ok(match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn binary_mode_takes_attributes_from_headers_only() {
        let event = binary(
            [
                ("ce-specversion", "1.0"),
                ("CE-ID", "a%20b"),
                ("ce-type", "order.created"),
                ("ce-source", "/shop"),
                ("ce-traceparent", "00-abc-01"),
                ("x-other", "ignored"),
            ],
            Some("application/json; charset=utf-8"),
            br#"{"type": "not-an-attribute", "id": 7}"#,
        )
        .unwrap();
        assert_eq!(event["id"], "a b");
        assert_eq!(event["type"], "order.created");
        assert_eq!(event["traceparent"], "00-abc-01");
        assert_eq!(event["data"], json!({"type": "not-an-attribute", "id": 7}));
        assert!(!event.contains_key("x-other"));
        let text = binary([("ce-type", "t")], Some("text/plain"), b"hello").unwrap();
        assert_eq!(text["data"], "hello");
        let bytes = binary(
            [("ce-type", "t")],
            Some("application/octet-stream"),
            &[0xff, 0],
        )
        .unwrap();
        assert_eq!(bytes["data"], "/wA=");
        assert!(binary([("ce-type", "t")], Some("application/json"), b"{nope").is_err());
        // Not a %XX escape: kept as written; an escape that is not UTF-8: refused.
        assert_eq!(binary([("ce-id", "%zz")], None, b"").unwrap()["id"], "%zz");
        assert!(binary([("ce-id", "%ff")], None, b"").is_err());
    }

    #[test]
    fn data_base64_is_decoded_and_batches_decode_each_event() {
        let event = structured(
            br#"{"specversion": "1.0", "type": "t", "datacontenttype": "application/json",
                "data_base64": "eyJuIjogMX0="}"#,
        )
        .unwrap();
        assert_eq!(event["data"], json!({"n": 1}));
        assert!(!event.contains_key("data_base64"));
        assert!(structured(br#"{"type": "t", "data": 1, "data_base64": "AA=="}"#).is_err());
        let events = batch(br#"[{"type": "a"}, 3, {"type": "b", "data_base64": "aGk="}]"#).unwrap();
        assert_eq!(events.len(), 3);
        assert!(events[1].is_err());
        assert_eq!(events[2].as_ref().unwrap()["data"], "hi");
        assert!(batch(br#"{"type": "a"}"#).is_err());
    }
}
