//! `amqp`: publishes one message with publisher confirms and `mandatory`,
//! so a message no queue would receive, or one the broker refuses, fails the
//! task with that reason instead of vanishing.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AttemptContext, AttemptOutcome, Kind};
use crate::amqp::{Outgoing, PublishError};

fn yes() -> bool {
    true
}

/// `"amqp": {"exchange": "orders", "routing_key": "order.created", "json": {…}}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    /// Exchange to publish to; `""` is the default exchange (the routing key
    /// is then a queue name).
    pub exchange: String,
    pub routing_key: String,
    /// A JSON body (`content_type` `application/json`).
    #[serde(default)]
    pub json: Option<Value>,
    /// A text body (`content_type` `text/plain` unless set).
    #[serde(default)]
    pub body: Option<String>,
    /// Message headers.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// Delivery mode 2, stored by durable queues (default true).
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Fail when no queue is bound for the routing key (default true).
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// Default `<run id>.<task id>`: the same across retries, so a consumer
    /// can drop a message published twice.
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

impl Kind for Amqp {
    const NAME: &'static str = "amqp";

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        if self.json.is_some() && self.body.is_some() {
            errors.push((String::new(), "give `json` or `body`, not both".to_string()));
        }
        for (key, value) in [
            (".exchange", &self.exchange),
            (".routing_key", &self.routing_key),
        ] {
            if !value.contains("${") && value.len() > 255 {
                errors.push((
                    key.to_string(),
                    format!("is {} bytes; AMQP allows 255", value.len()),
                ));
            }
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let Some(broker) = ctx.broker.clone() else {
            return AttemptOutcome::permanent_failure("no AMQP broker is configured");
        };
        let message_id = self
            .message_id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", ctx.run_id, ctx.task));
        let (body, content_type) = match (&self.json, self.body) {
            (Some(value), _) => (
                serde_json::to_vec(value).unwrap_or_default(),
                "application/json",
            ),
            (None, Some(text)) => (text.into_bytes(), "text/plain"),
            (None, None) => (Vec::new(), "application/octet-stream"),
        };
        let headers = match crate::amqp::json_field_table(&self.headers) {
            Ok(h) => h,
            Err(e) => return AttemptOutcome::permanent_failure(format!("headers: {e}")),
        };
        let id = match crate::amqp::short("message_id", &message_id) {
            Ok(id) => id,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let content_type = self.content_type.as_deref().unwrap_or(content_type);
        let properties = lapin::BasicProperties::default()
            .with_message_id(id)
            .with_content_type(content_type.into())
            .with_app_id("switchyard".into())
            .with_headers(headers)
            .with_delivery_mode(if self.persistent { 2 } else { 1 })
            .with_timestamp(crate::time::now().timestamp().max(0) as u64);
        let outgoing = Outgoing {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            body,
            properties,
            mandatory: self.mandatory,
        };
        let published = tokio::select! {
            published = broker.publish(outgoing) => published,
            _ = ctx.cancel.cancelled() => return AttemptOutcome::failure("cancelled"),
        };
        match published {
            Ok(()) => AttemptOutcome::success(json!({
                "exchange": self.exchange,
                "routing_key": self.routing_key,
                "message_id": message_id,
            })),
            Err(e @ PublishError::Invalid(_)) => AttemptOutcome::permanent_failure(e.to_string()),
            Err(e) => AttemptOutcome::failure(e.to_string()),
        }
    }
}
