//! The `amqp` trigger: one consumer per queue, shared by every binding on
//! that queue.
//!
//! A session connects, declares the exchanges (durable, of the binding's
//! type), declares the queue durable unless it exists already (so a queue
//! created with a dead-letter exchange or other arguments is used as it is),
//! binds it, applies `basic_qos` and consumes with manual acks. Each delivery
//! becomes an event; it is acked only after the reactor answered, which is
//! after the event and its runs were flushed. The ack's result is checked:
//! lapin answers `Ok(false)` without sending on a dead channel, and the
//! message then comes back on the next session, where dedup on its
//! `message_id` starts no second run.
//!
//! Any failure ends the session: the connection is closed and a new session
//! starts after a backoff (back to the shortest once a session got as far
//! as consuming), re-declaring everything and re-applying the prefetch
//! (lapin's own recovery is not used). Heartbeats (10 s unless the
//! URL says otherwise) end a session whose peer went silent.
//!
//! A message that cannot become an event (declared JSON that does not parse,
//! text that is not UTF-8, an unsupported content encoding) is rejected
//! without requeue: dead-lettered where the queue has a DLX, counted, logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::amqp::{
    Backoff, Endpoint, connect, declare_exchange, exchange_exists, field_table_json, percent_vhost,
    short,
};
use crate::log::Outcome;
use crate::metrics::AmqpMetrics;
use crate::reactor::Reactor;
use crate::reactor::cloudevents::{self, is_json, media_type};
use crate::reactor::event::{AMQP_MESSAGE, Event, routing_key_matches};
use crate::spec::binding::{AmqpTrigger, Binding, ExchangeType, Trigger};

/// A session that got as far as consuming, or lasted this long, counts as
/// healthy: the next failure retries from the shortest backoff.
const HEALTHY: Duration = Duration::from_secs(10);
/// How long a stopping consumer waits for deliveries in flight to be acked.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Bindings by queue.
pub fn groups(bindings: &[Arc<Binding>]) -> HashMap<String, Vec<Arc<Binding>>> {
    let mut out: HashMap<String, Vec<Arc<Binding>>> = HashMap::new();
    for binding in bindings {
        if let Trigger::Amqp(a) = &binding.trigger {
            out.entry(a.queue.clone())
                .or_default()
                .push(Arc::clone(binding));
        }
    }
    out
}

fn trigger(binding: &Binding) -> Option<&AmqpTrigger> {
    match &binding.trigger {
        Trigger::Amqp(a) => Some(a),
        _ => None,
    }
}

/// One queue's consumer.
#[derive(Clone)]
pub struct Consumer {
    queue: String,
    bindings: Arc<Vec<Arc<Binding>>>,
    reactor: Reactor,
    endpoint: Endpoint,
    /// Tells this consumer's state apart from a successor's on the same
    /// queue (`AmqpMetrics::consumers`).
    id: u64,
}

impl Consumer {
    pub fn new(
        queue: String,
        bindings: Vec<Arc<Binding>>,
        reactor: Reactor,
        endpoint: Endpoint,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            queue,
            bindings: Arc::new(bindings),
            reactor,
            endpoint,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn metrics(&self) -> &AmqpMetrics {
        &self.reactor.metrics().amqp
    }

    /// The prefetch: the smallest any binding on the queue asks for.
    fn prefetch(&self) -> u16 {
        self.bindings
            .iter()
            .filter_map(|b| trigger(b))
            .map(|a| a.prefetch)
            .min()
            .unwrap_or(crate::spec::binding::DEFAULT_PREFETCH)
    }

    /// The consumer's task, until `stop` (run by `triggers::supervise`):
    /// a broker outage only makes it reconnect, it never ends it.
    pub async fn task(self, stop: CancellationToken) -> Result<(), String> {
        self.run(stop).await;
        Ok(())
    }

    /// Sessions until stopped, with backoff between failed ones. The broker
    /// being down only delays this consumer; nothing else waits for it.
    async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        self.metrics()
            .set_consumer(&self.queue, self.id, "connecting", None);
        loop {
            let started = Instant::now();
            let mut consumed = false;
            let outcome = self.session(&stop, &mut consumed).await;
            if stop.is_cancelled() {
                self.metrics().remove_consumer(&self.queue, self.id);
                return;
            }
            // A session that consumed was a working connection: a broker
            // that drops it now and then must not push the retries out to
            // the maximum.
            if consumed || started.elapsed() >= HEALTHY {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            self.metrics().reconnects.fetch_add(1, Ordering::Relaxed);
            let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(
                queue = %self.queue,
                broker = %self.endpoint.describe(),
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "AMQP consumer disconnected; reconnecting."
            );
            self.metrics()
                .set_consumer(&self.queue, self.id, "reconnecting", Some(error));
            tokio::select! {
                _ = stop.cancelled() => {
                    self.metrics().remove_consumer(&self.queue, self.id);
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection's life. `Ok` only when stopped.
    async fn session(
        &self,
        stop: &CancellationToken,
        consumed: &mut bool,
    ) -> Result<(), SessionError> {
        let name = format!("consumer {}", self.queue);
        let connection = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            connection = connect(&self.endpoint, &name) => connection?,
        };
        let result = self.consume(&connection, stop, consumed).await;
        // Close within a bound: a dead peer must not hold the next session up.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "switchyard consumer session ended".into()),
        )
        .await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
        consumed: &mut bool,
    ) -> Result<(), SessionError> {
        let channel = self.declare(connection).await?;
        let prefetch = self.prefetch();
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(broker(format!("basic.qos {prefetch}")))?;
        let queue = name("queue name", &self.queue)?;
        let mut consumer = channel
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker(format!("cannot consume queue `{}`", self.queue)))?;
        tracing::info!(
            queue = %self.queue,
            prefetch,
            bindings = self.bindings.len(),
            broker = %self.endpoint.describe(),
            "Consuming AMQP queue."
        );
        self.metrics().consuming.fetch_add(1, Ordering::Relaxed);
        self.metrics()
            .set_consumer(&self.queue, self.id, "consuming", None);
        *consumed = true;
        // Deliveries this session holds unacked.
        let held = Arc::new(AtomicU64::new(0));
        let mut in_flight = tokio::task::JoinSet::new();
        let outcome = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                delivery = consumer.next() => match delivery {
                    None => break Err(SessionError::Cancelled),
                    Some(Err(e)) => break Err(broker("consumer failed")(e)),
                    Some(Ok(delivery)) => {
                        self.metrics().deliveries.fetch_add(1, Ordering::Relaxed);
                        self.metrics().unacked.fetch_add(1, Ordering::Relaxed);
                        let now_held = held.fetch_add(1, Ordering::Relaxed) + 1;
                        self.metrics().unacked_max.fetch_max(now_held, Ordering::Relaxed);
                        let this = self.clone();
                        let unacked = Arc::clone(&held);
                        in_flight.spawn(async move {
                            let metrics = this.reactor.metrics().clone();
                            // Counted out just before the ack is sent, so the
                            // count never runs ahead of the broker's own.
                            let release = move || {
                                unacked.fetch_sub(1, Ordering::Relaxed);
                                metrics.amqp.unacked.fetch_sub(1, Ordering::Relaxed);
                            };
                            this.handle(delivery, release).await
                        });
                    }
                },
                Some(done) = in_flight.join_next() => {
                    if let Ok(Err(e)) = done {
                        break Err(e);
                    }
                }
            }
        };
        self.metrics().consuming.fetch_sub(1, Ordering::Relaxed);
        if outcome.is_ok() {
            // Stopping: take no more, let what is in flight be recorded and acked.
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            let _ = tokio::time::timeout(STOP_GRACE, async {
                while in_flight.join_next().await.is_some() {}
            })
            .await;
        }
        // Anything still in flight is dropped unacked: the broker redelivers
        // it and dedup catches what was recorded. Those deliveries leave
        // the gauge with the session (their tasks never count themselves
        // out), so it stays right across reconnects.
        in_flight.shutdown().await;
        let dropped = held.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.metrics().unacked.fetch_sub(dropped, Ordering::Relaxed);
        }
        outcome
    }

    /// Declares exchanges, the queue and its bindings; returns the channel
    /// to consume on.
    async fn declare(&self, connection: &Connection) -> Result<Channel, SessionError> {
        let mut channel = open(connection).await?;
        let mut exchanges: Vec<(&str, ExchangeType)> = Vec::new();
        for a in self.bindings.iter().filter_map(|b| trigger(b)) {
            if !exchanges.iter().any(|(name, _)| *name == a.exchange) {
                exchanges.push((&a.exchange, a.exchange_type));
            }
        }
        for (name, kind) in &exchanges {
            if name.is_empty() {
                continue; // The default exchange routes by queue name.
            }
            let exchange = self::name("exchange name", name)?;
            let declared = if name.starts_with("amq.") {
                Err(None) // Predeclared by the broker: check only.
            } else {
                declare_exchange(&channel, exchange.clone(), exchange_kind(*kind))
                    .await
                    .map_err(Some)
            };
            if let Err(error) = declared {
                // An existing exchange of another type is used as it is.
                if error.is_some() {
                    channel = open(connection).await?;
                }
                exchange_exists(&channel, exchange)
                    .await
                    .map_err(|e| match error {
                        Some(first) => broker(format!("cannot declare exchange `{name}`"))(first),
                        None => broker(format!("exchange `{name}`"))(e),
                    })?;
            }
        }
        let queue = name("queue name", &self.queue)?;
        let exists = channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        if !exists {
            channel = open(connection).await?;
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(broker(format!("cannot declare queue `{}`", self.queue)))?;
        }
        let wanted = bound_pairs(&self.bindings);
        for (exchange, key) in &wanted {
            channel
                .queue_bind(
                    queue.clone(),
                    name("exchange name", exchange)?,
                    name("routing key", key)?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker(format!(
                    "cannot bind queue `{}` to `{exchange}` with `{key}`",
                    self.queue
                )))?;
        }
        // Bindings of the queue that an earlier configuration made and this
        // one does not want (an exchange or key changed, a binding removed,
        // even while the daemon was down) are removed from the broker, so
        // their messages stop arriving.
        let log = self.reactor.runtime().log();
        let stale: Vec<(String, String)> = bound_by_us(log, &self.queue)
            .into_iter()
            .filter(|pair| !wanted.contains(pair))
            .collect();
        channel = unbind(connection, channel, &self.queue, &stale).await?;
        record_bound(log, &self.queue, &wanted)?;
        Ok(channel)
    }

    /// The largest body accepted: the smallest `max_body` of the queue's
    /// bindings (like the prefetch).
    fn max_body(&self) -> usize {
        self.bindings
            .iter()
            .filter_map(|b| trigger(b))
            .map(|a| a.max_body)
            .min()
            .unwrap_or(crate::spec::binding::DEFAULT_MAX_BODY)
    }

    /// One delivery: decode, record, ack. `Err` ends the session (the
    /// channel is gone).
    async fn handle(&self, delivery: Delivery, release: impl FnOnce()) -> Result<(), SessionError> {
        let max_body = self.max_body();
        let too_large = delivery.data.len() > max_body;
        let decoded = if too_large {
            self.metrics().too_large.fetch_add(1, Ordering::Relaxed);
            Err(format!(
                "the body is {} bytes, over the binding's max_body of {max_body}",
                delivery.data.len()
            ))
        } else {
            decode(&delivery, &self.queue, &self.endpoint.uri.vhost)
        };
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => {
                release();
                self.metrics().poison.fetch_add(1, Ordering::Relaxed);
                self.reactor.metrics().refuse(if too_large {
                    crate::metrics::Refusal::TooLarge
                } else {
                    crate::metrics::Refusal::BadBody
                });
                tracing::warn!(
                    queue = %self.queue,
                    exchange = %delivery.exchange,
                    routing_key = %delivery.routing_key,
                    reason,
                    "Rejecting a message that cannot become an event (dead-lettered where the queue has a DLX)."
                );
                return match delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(SessionError::ChannelClosed("a reject")),
                    Err(e) => Err(broker("reject failed")(e)),
                };
            }
        };
        let exchange = delivery.exchange.as_str();
        let key = delivery.routing_key.as_str();
        let triggers: Vec<&AmqpTrigger> = self.bindings.iter().filter_map(|b| trigger(b)).collect();
        let bindings: Vec<Arc<Binding>> = self
            .bindings
            .iter()
            .filter(|b| trigger(b).is_some_and(|a| routes(a, &triggers, exchange, key)))
            .cloned()
            .collect();
        // Paused between the delivery and now (the consumer is being
        // stopped): the message goes back to wait in the queue rather than
        // being recorded as paused and acked.
        if self.reactor.any_paused(&bindings) {
            release();
            requeue(&delivery).await;
            return Ok(());
        }
        let submitted = if bindings.is_empty() {
            // Reached the queue through a binding none of ours asked for
            // (left by someone else, or by a binding removed while we were
            // down): recorded as such, so it is visible and counted.
            let outcome = Outcome::Unrouted {
                queue: self.queue.clone(),
                exchange: exchange.to_string(),
                routing_key: key.to_string(),
            };
            tracing::warn!(
                queue = %self.queue, exchange, routing_key = key,
                "AMQP message matches none of the queue's bindings; recorded as unrouted."
            );
            self.reactor.record(event, vec![outcome]).await
        } else {
            self.reactor
                .submit(event, &bindings, Vec::new(), false)
                .await
        };
        release();
        match submitted {
            Ok(_) => match delivery.acker.ack(BasicAckOptions::default()).await {
                Ok(true) => {
                    self.metrics().acked.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Ok(false) => {
                    self.metrics().acks_lost.fetch_add(1, Ordering::Relaxed);
                    Err(SessionError::ChannelClosed("an ack"))
                }
                Err(e) => {
                    self.metrics().acks_lost.fetch_add(1, Ordering::Relaxed);
                    Err(broker("ack failed")(e))
                }
            },
            Err(e) => {
                // Not recorded (shutting down): give it back to the queue.
                requeue(&delivery).await;
                Err(SessionError::Record(e))
            }
        }
    }
}

/// Gives a delivery back to its queue (best effort: if the channel is
/// gone, the broker requeues it anyway).
async fn requeue(delivery: &Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await;
}

/// The (exchange, routing key) pairs the queue is bound with for these
/// bindings (the default exchange needs none).
fn bound_pairs(bindings: &[Arc<Binding>]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for a in bindings.iter().filter_map(|b| trigger(b)) {
        let pair = (a.exchange.clone(), a.routing_key.clone());
        if !a.exchange.is_empty() && !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    pairs
}

const BOUND_MARK: &[u8] = b"amqp\0bound\0";

fn bound_mark_key(queue: &str) -> Vec<u8> {
    let mut key = BOUND_MARK.to_vec();
    key.extend_from_slice(queue.as_bytes());
    key
}

/// The pairs switchyard last bound `queue` with (a mark in the log).
fn bound_by_us(log: &crate::log::Log, queue: &str) -> Vec<(String, String)> {
    log.mark(&bound_mark_key(queue))
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn record_bound(
    log: &crate::log::Log,
    queue: &str,
    pairs: &[(String, String)],
) -> Result<(), SessionError> {
    // A list of string pairs always serializes.
    let value = serde_json::to_vec(pairs).unwrap_or_default();
    log.put_marks(&[crate::log::Mark {
        key: bound_mark_key(queue),
        value: Some(value),
    }])
    .map_err(|source| SessionError::Marks {
        queue: queue.to_string(),
        source,
    })
}

/// Every queue switchyard has bound, with the pairs it bound it with (an
/// empty list: a queue left with no binding).
pub fn queues_bound(log: &crate::log::Log) -> Vec<(String, Vec<(String, String)>)> {
    log.marks_with_prefix(BOUND_MARK)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|mark| {
            let queue = String::from_utf8(mark.key.get(BOUND_MARK.len()..)?.to_vec()).ok()?;
            let pairs = serde_json::from_slice(&mark.value?).ok()?;
            Some((queue, pairs))
        })
        .collect()
}

/// Removes `pairs` from `queue`'s bindings. A pair whose exchange is gone
/// is already unbound (the broker closes the channel then; a new one is
/// opened). Returns the channel to go on with.
async fn unbind(
    connection: &Connection,
    mut channel: Channel,
    queue: &str,
    pairs: &[(String, String)],
) -> Result<Channel, SessionError> {
    for (exchange, key) in pairs {
        let result = channel
            .queue_unbind(
                name("queue name", queue)?,
                name("exchange name", exchange)?,
                name("routing key", key)?,
                FieldTable::default(),
            )
            .await;
        match result {
            Ok(()) => tracing::info!(
                queue, exchange, routing_key = %key,
                "Removed a queue binding no binding file asks for any more."
            ),
            Err(e) => {
                tracing::debug!(queue, exchange, error = %e, "Unbinding failed (exchange gone?).");
                channel = open(connection).await?;
            }
        }
    }
    Ok(channel)
}

/// A queue whose last binding was removed: its broker bindings are removed
/// (so nothing new arrives), and it is recorded as left without a binding,
/// for `GET /bindings` and the log. The queue itself, durable and perhaps
/// holding messages, is the operator's to delete.
pub async fn release_queue(queue: String, log: crate::log::Log, endpoint: Endpoint) {
    let pairs = bound_by_us(&log, &queue);
    if !pairs.is_empty() {
        let result = async {
            let connection = connect(&endpoint, &format!("unbind {queue}")).await?;
            let channel = open(&connection).await?;
            let outcome = unbind(&connection, channel, &queue, &pairs)
                .await
                .map(|_| ());
            let _ = connection.close(200, "unbound".into()).await;
            outcome
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(queue, error = %e, "Cannot unbind a queue no binding uses; will retry at the next start or reload.");
            return;
        }
    }
    if let Err(e) = record_bound(&log, &queue, &[]) {
        tracing::warn!(queue, error = %e, "Cannot record a released queue.");
        return;
    }
    tracing::warn!(
        queue,
        "Durable queue has no binding any more; it was unbound and keeps what it holds. \
         Delete it (rabbitmqctl delete_queue) if it is no longer needed."
    );
}

async fn open(connection: &Connection) -> Result<Channel, SessionError> {
    connection
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))
}

/// Why a consumer session ended; the consumer reconnects after any of them
/// (with backoff), so each is logged with the queue and the broker.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] crate::amqp::ConnectError),
    /// A broker operation failed: `what` names it and what it was on.
    #[error("{what}: {source}")]
    Broker {
        what: String,
        #[source]
        source: lapin::Error,
    },
    /// A queue, exchange or key longer than AMQP allows.
    #[error("{0}")]
    TooLong(String),
    #[error("the broker cancelled the consumer")]
    Cancelled,
    /// An ack or reject could not be sent: the broker redelivers the
    /// message, and its dedup entry makes it a duplicate.
    #[error(
        "the channel closed before {0} could be sent; the message will be redelivered and deduplicated"
    )]
    ChannelClosed(&'static str),
    /// The event could not be recorded (shutting down, or the log cannot
    /// be flushed): the message was requeued.
    #[error("cannot record the event: {0}")]
    Record(#[source] crate::runtime::Error),
    #[error("cannot record the bindings of queue `{queue}`: {source}")]
    Marks {
        queue: String,
        #[source]
        source: crate::log::Error,
    },
}

/// Names a failed broker operation.
fn broker(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> SessionError {
    let what = what.into();
    move |source| SessionError::Broker { what, source }
}

/// A name or key checked against AMQP's limit.
fn name(what: &str, value: &str) -> Result<lapin::types::ShortString, SessionError> {
    short(what, value).map_err(SessionError::TooLong)
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Whether a delivery is for binding `a`, one of the queue's bindings
/// `all`: by its routing key when it came through `a`'s exchange; never when
/// it came through another of the queue's bindings' exchanges (that
/// binding's message); always when it reached the queue another way
/// (published to the queue directly, dead-lettered, shovelled).
pub fn routes(a: &AmqpTrigger, all: &[&AmqpTrigger], exchange: &str, key: &str) -> bool {
    if exchange == a.exchange {
        routing_key_matches(a, key)
    } else {
        !all.iter().any(|other| other.exchange == exchange)
    }
}

/// What of a delivery becomes its event.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub properties: &'a lapin::BasicProperties,
    pub data: &'a [u8],
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub redelivered: bool,
}

/// A delivery as an event (SPEC §5), or why it cannot be one.
pub fn decode(delivery: &Delivery, queue: &str, vhost: &str) -> Result<Value, String> {
    decode_message(
        Message {
            properties: &delivery.properties,
            data: &delivery.data,
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
            redelivered: delivery.redelivered,
        },
        queue,
        vhost,
    )
}

/// [`decode`] on the parts of a message (pure; fuzzed).
pub fn decode_message(delivery: Message<'_>, queue: &str, vhost: &str) -> Result<Value, String> {
    let props = delivery.properties;
    if let Some(encoding) = props.content_encoding()
        && !matches!(encoding.as_str().trim(), "" | "identity")
    {
        return Err(format!(
            "content-encoding `{encoding}` is not supported (send the body unencoded)"
        ));
    }
    let content_type = props
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_string());
    let media = content_type.as_deref().map(media_type);
    let body = delivery.data;
    let headers = props
        .headers()
        .as_ref()
        .map(field_table_json)
        .unwrap_or_default();
    // A CloudEvent (structured: the body is the event; binary: `ce-`
    // headers) keeps its own attributes instead of being wrapped.
    let cloud_event = if media.as_deref() == Some(cloudevents::STRUCTURED) {
        Some(cloudevents::structured(body)?)
    } else if let Some(attributes) = ce_headers(&headers) {
        let data = if body.is_empty() {
            Value::Null
        } else {
            cloudevents::data_from_bytes(body, media.as_deref())?
        };
        let mut event = attributes;
        if let Some(content_type) = &content_type {
            event.insert(
                "datacontenttype".into(),
                Value::String(content_type.clone()),
            );
        }
        event.insert("data".into(), data);
        Some(event)
    } else {
        None
    };
    let (data, datacontenttype) = match media.as_deref() {
        _ if cloud_event.is_some() => (Value::Null, None),
        Some(m) if is_json(m) => match serde_json::from_slice::<Value>(body) {
            Ok(value) => (value, content_type.clone()),
            Err(e) => return Err(format!("the body is declared `{m}` but is not JSON: {e}")),
        },
        Some(m) if m.starts_with("text/") => match std::str::from_utf8(body) {
            Ok(text) => (Value::String(text.to_string()), content_type.clone()),
            Err(e) => return Err(format!("the body is declared `{m}` but is not UTF-8: {e}")),
        },
        Some(_) => match std::str::from_utf8(body) {
            Ok(text) => (Value::String(text.to_string()), content_type.clone()),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                content_type.clone(),
            ),
        },
        None => match serde_json::from_slice::<Value>(body) {
            Ok(value) if !body.is_empty() => (value, Some("application/json".into())),
            _ => match std::str::from_utf8(body) {
                Ok(text) => (Value::String(text.to_string()), Some("text/plain".into())),
                Err(_) => (
                    Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                    Some("application/octet-stream".into()),
                ),
            },
        },
    };
    let exchange = delivery.exchange;
    let routing_key = delivery.routing_key;
    let id = match props.message_id().as_ref().map(|m| m.as_str()) {
        Some(id) if !id.trim().is_empty() => id.to_string(),
        _ => {
            // No message id: a hash of what the publisher sent, so a
            // redelivery of the same message is recognised.
            let mut hash = Sha256::new();
            for part in [exchange.as_bytes(), routing_key.as_bytes()] {
                hash.update(part);
                hash.update([0]);
            }
            hash.update(serde_json::to_vec(&headers).unwrap_or_default());
            hash.update([0]);
            hash.update(format!("{:?}", props.timestamp()).as_bytes());
            hash.update([0]);
            hash.update(body);
            let digest = hash.finalize();
            format!("amqp:{}", hex::encode(&digest[..16]))
        }
    };
    let at = props
        .timestamp()
        .and_then(|secs| i64::try_from(secs).ok())
        .and_then(|secs| secs.checked_mul(1000))
        .unwrap_or_else(crate::time::now_millis);
    let mut event = Event::new(
        id,
        format!("amqp://{}/{}", percent_vhost(vhost), exchange),
        AMQP_MESSAGE,
        at,
    );
    event.subject = Some(routing_key.to_string());
    event.datacontenttype = datacontenttype;
    event.data = data;
    let mut properties = Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            properties.insert(key.into(), Value::String(value));
        }
    };
    put(
        "message_id",
        props.message_id().as_ref().map(|v| v.to_string()),
    );
    put(
        "correlation_id",
        props.correlation_id().as_ref().map(|v| v.to_string()),
    );
    put("reply_to", props.reply_to().as_ref().map(|v| v.to_string()));
    put("type", props.kind().as_ref().map(|v| v.to_string()));
    put("app_id", props.app_id().as_ref().map(|v| v.to_string()));
    put("user_id", props.user_id().as_ref().map(|v| v.to_string()));
    put("content_type", content_type);
    event.switchyard = json!({
        "exchange": exchange,
        "routing_key": routing_key,
        "queue": queue,
        "redelivered": delivery.redelivered,
        "headers": headers,
        "properties": properties,
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    let Some(mut cloud_event) = cloud_event else {
        return Ok(event.into_value());
    };
    // The CloudEvent's own attributes, with what it leaves out taken from
    // the delivery; where it came from is in `switchyard` as for any message.
    let Value::Object(wrapped) = event.into_value() else {
        return Err("cannot build the event".into());
    };
    for key in ["specversion", "id", "source", "type", "time", "subject"] {
        let missing = cloud_event
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if missing && let Some(value) = wrapped.get(key) {
            cloud_event.insert(key.into(), value.clone());
        }
    }
    if let Some(Value::String(v)) = cloud_event.get("specversion")
        && v != "1.0"
    {
        return Err(format!(
            "CloudEvents specversion `{v}` is not supported (use 1.0)"
        ));
    }
    if let Some(switchyard) = wrapped.get("switchyard") {
        cloud_event.insert("switchyard".into(), switchyard.clone());
    }
    Ok(Value::Object(cloud_event))
}

/// CloudEvents attributes carried in AMQP headers (binary mode): `ce-`
/// (the RabbitMQ binding), `cloudEvents:` or `cloudEvents_` (the AMQP 1.0
/// binding's prefixes). None when the message is not a CloudEvent.
fn ce_headers(headers: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut attributes = Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let Some(attribute) = ["ce-", "cloudevents:", "cloudevents_"]
            .iter()
            .find_map(|prefix| lower.strip_prefix(prefix))
        else {
            continue;
        };
        if attribute.is_empty() || attribute == "data" || attribute == "data_base64" {
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        attributes.insert(attribute.to_string(), Value::String(text));
    }
    attributes.contains_key("specversion").then_some(attributes)
}
