//! The event envelope (SPEC §5): CloudEvents 1.0 attribute names plus a
//! `switchyard` extension object (binding, headers, query).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::RunRecord;
use crate::log::Millis;
use crate::spec::binding::{Binding, ExchangeType, Trigger};

/// An event. Built by the adapters; stored in the log as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(title = "switchyard event (CloudEvents 1.0)")]
pub struct Event {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub switchyard: Map<String, Value>,
}

pub const FILE_CREATED: &str = "switchyard.file.created";
pub const WEBHOOK_REQUEST: &str = "switchyard.webhook.request";
pub const CRON_TICK: &str = "switchyard.cron.tick";
pub const AMQP_MESSAGE: &str = "switchyard.amqp.message";
pub const RUN_PREFIX: &str = "switchyard.run.";
pub const BINDING_MISSED: &str = "switchyard.binding.missed";

/// Which adapter an event's type belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    File,
    Webhook,
    Cron,
    Amqp,
    Run,
    /// An absence alert (`switchyard.binding.missed`).
    Missed,
    /// Any other type: an event POSTed to `/api/v1/events`.
    Api,
}

impl EventKind {
    pub fn of(kind: &str) -> Self {
        match kind {
            FILE_CREATED => EventKind::File,
            WEBHOOK_REQUEST => EventKind::Webhook,
            CRON_TICK => EventKind::Cron,
            AMQP_MESSAGE => EventKind::Amqp,
            BINDING_MISSED => EventKind::Missed,
            k if k.starts_with(RUN_PREFIX) => EventKind::Run,
            _ => EventKind::Api,
        }
    }
}

pub use crate::time::rfc3339;

impl Event {
    pub fn new(id: impl Into<String>, source: impl Into<String>, kind: &str, at: Millis) -> Self {
        Self {
            specversion: "1.0".into(),
            id: id.into(),
            source: source.into(),
            kind: kind.into(),
            subject: None,
            time: rfc3339(at),
            datacontenttype: None,
            data: Value::Null,
            switchyard: Map::new(),
        }
    }

    pub fn into_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// `switchyard.run.<status>` for a run that ended; its id is derived from
    /// the run, so the chain it starts is deduplicated across restarts.
    pub fn run_ended(record: &RunRecord, now: Millis) -> Self {
        let mut event = Event::new(
            format!("run:{}", record.id),
            format!("/workflows/{}", record.workflow),
            &format!("{RUN_PREFIX}{}", record.status),
            now,
        );
        event.subject = Some(record.workflow.clone());
        event.datacontenttype = Some("application/json".into());
        event.data = serde_json::json!({
            "id": record.id,
            "workflow": record.workflow,
            "version": record.version,
            "status": record.status,
            "params": record.params,
            "vars": record.vars,
            "error": record.error,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
        });
        event
    }
}

/// Whether the exchange would route a message with this key to the
/// binding's queue (headers exchanges are not matched on: every message).
pub fn routing_key_matches(a: &crate::spec::binding::AmqpTrigger, key: &str) -> bool {
    match a.exchange_type {
        ExchangeType::Topic => topic_matches(&a.routing_key, key),
        ExchangeType::Direct => a.routing_key == key,
        ExchangeType::Fanout | ExchangeType::Headers => true,
    }
}

/// AMQP topic matching: `*` is one word, `#` zero or more words.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

/// Whether an event could have come from this binding's trigger, and if not,
/// why (for `switchyard match`). The daemon's adapters only hand a binding
/// events of its own source, so this is the same decision made explicit.
pub fn trigger_accepts(binding: &Binding, event: &Value) -> Result<(), String> {
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let source = event
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let wrong_kind = |want: &str| {
        Err(format!(
            "trigger is `{}`, event type `{kind}` is not {want}",
            binding.trigger.kind()
        ))
    };
    match &binding.trigger {
        Trigger::File(f) => {
            if EventKind::of(kind) != EventKind::File {
                return wrong_kind(FILE_CREATED);
            }
            let path = event
                .pointer("/data/path")
                .and_then(Value::as_str)
                .ok_or("event has no data.path")?;
            let path = crate::spec::binding::normalize(std::path::Path::new(path));
            let Ok(rest) = path.strip_prefix(&f.path) else {
                return Err(format!(
                    "{} is not under {}",
                    path.display(),
                    f.path.display()
                ));
            };
            if rest.components().count() > 1 && !f.recursive {
                return Err(format!(
                    "{} is in a subdirectory of {} and the trigger is not recursive",
                    path.display(),
                    f.path.display()
                ));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            if !f.pattern.matches(&name) {
                return Err(format!("file name `{name}` does not match `{}`", f.pattern));
            }
            Ok(())
        }
        Trigger::Webhook(w) => {
            if EventKind::of(kind) != EventKind::Webhook {
                return wrong_kind(WEBHOOK_REQUEST);
            }
            let want = format!("/hooks/{}", w.path);
            if source != want {
                return Err(format!("event source `{source}` is not `{want}`"));
            }
            Ok(())
        }
        Trigger::Cron(_) => {
            if EventKind::of(kind) != EventKind::Cron {
                return wrong_kind(CRON_TICK);
            }
            let want = format!("cron:{}", binding.name);
            if source != want {
                return Err(format!("event source `{source}` is not `{want}`"));
            }
            Ok(())
        }
        Trigger::Amqp(a) => {
            // A CloudEvent that came over AMQP keeps its own type and
            // source; where it came from is in its `switchyard` attribute.
            let delivered = event
                .pointer("/switchyard/exchange")
                .and_then(Value::as_str);
            if EventKind::of(kind) != EventKind::Amqp && delivered.is_none() {
                return wrong_kind(AMQP_MESSAGE);
            }
            let exchange =
                delivered.unwrap_or_else(|| source.rsplit('/').next().unwrap_or_default());
            if exchange != a.exchange {
                return Err(format!(
                    "event came from exchange `{exchange}`, the binding listens on `{}`",
                    a.exchange
                ));
            }
            let key = event
                .pointer("/switchyard/routing_key")
                .or_else(|| event.get("subject"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !routing_key_matches(a, key) {
                return Err(format!(
                    "routing key `{key}` does not match `{}`",
                    a.routing_key
                ));
            }
            Ok(())
        }
        Trigger::Run(r) => {
            if EventKind::of(kind) != EventKind::Run {
                return wrong_kind("switchyard.run.<status>");
            }
            let workflow = event
                .get("subject")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if workflow != r.workflow {
                return Err(format!(
                    "run of workflow `{workflow}`, the binding watches `{}`",
                    r.workflow
                ));
            }
            let status = kind.trim_start_matches(RUN_PREFIX);
            if !r.status.iter().any(|s| s.as_str() == status) {
                return Err(format!(
                    "run status `{status}` is not one the binding watches"
                ));
            }
            Ok(())
        }
        Trigger::Missed(target) => {
            if EventKind::of(kind) != EventKind::Missed {
                return wrong_kind(BINDING_MISSED);
            }
            let missed = event
                .pointer("/data/binding")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if missed != target {
                return Err(format!(
                    "absence alert of binding `{missed}`, the binding watches `{target}`"
                ));
            }
            Ok(())
        }
        Trigger::Api => {
            if EventKind::of(kind) != EventKind::Api {
                return Err(format!(
                    "trigger is `api`, event type `{kind}` comes from a switchyard adapter"
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topics() {
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "a.b"));
        assert!(topic_matches("order.*", "order.created"));
        assert!(!topic_matches("order.*", "order.created.eu"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("*.created.#", "order.created.eu.x"));
        assert!(!topic_matches("order.created", "order.updated"));
    }
}
