//! RabbitMQ plumbing shared by the `amqp` trigger (`triggers::amqp`), the
//! `amqp` task (`executors::amqp`) and lifecycle events ([`outbox`]).
//!
//! Connections are made by hand, not by lapin's auto-recovery: every user of
//! the broker owns a loop that connects, declares what it needs (queues,
//! bindings, `basic_qos`, confirm mode) and, when anything fails, drops the
//! connection and starts over with backoff. That way recovery re-applies
//! exactly the state we declared, `basic_qos` included, and the code path
//! after a reconnect is the same as at start-up.
//!
//! An [`Endpoint`] is where and how to connect: the parsed URL and, for
//! `amqps://`, the TLS settings of `amqp.tls` ([`tls`]).

pub mod outbox;
pub mod tls;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde_json::{Map, Value};

/// The broker used when neither `amqp.url` nor `AMQP_URL` is set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Heartbeat asked for unless the URL sets one: a silent peer is noticed
/// within two intervals.
pub const HEARTBEAT_SECS: u16 = 10;
/// A connection attempt that takes longer is abandoned and retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A batch whose confirms take longer fails (the broker may be blocked by
/// a resource alarm); the publishing channel is replaced.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker URL: `amqp.url`, else env `AMQP_URL`, else [`DEFAULT_URL`].
pub fn broker_url(config: &crate::spec::Config) -> String {
    config
        .amqp
        .as_ref()
        .and_then(|a| a.url.clone())
        .or_else(|| std::env::var("AMQP_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// Parses a broker URL, adding the default heartbeat.
pub fn parse_url(url: &str) -> Result<AMQPUri, String> {
    let mut uri = AMQPUri::from_str(url).map_err(|e| {
        format!(
            "invalid AMQP URL `{}`: {e}",
            redact_url(url).unwrap_or_else(|| "<unparsable>".into())
        )
    })?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    Ok(uri)
}

/// The URL with its password hidden, for logs and errors.
pub fn redact_url(url: &str) -> Option<String> {
    let uri = AMQPUri::from_str(url).ok()?;
    Some(describe(&uri))
}

/// `amqp://user@host:port/vhost` (or `amqps://`): where we connect,
/// without the password.
pub fn describe(uri: &AMQPUri) -> String {
    format!(
        "{}://{}@{}:{}/{}",
        uri.scheme,
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        percent_vhost(&uri.vhost)
    )
}

/// The vhost as it appears in URLs and event sources (`/` is `%2f`).
pub fn percent_vhost(vhost: &str) -> String {
    vhost.replace('%', "%25").replace('/', "%2f")
}

/// Where and how to connect: the broker's URL and, used with `amqps://`,
/// the TLS settings (extra CA certificates, a client certificate).
#[derive(Clone)]
pub struct Endpoint {
    pub uri: AMQPUri,
    tls: OwnedTLSConfig,
}

impl std::fmt::Debug for Endpoint {
    // Not derived: the TLS settings hold the client's private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("broker", &describe(&self.uri))
            .field("extra_ca", &self.tls.cert_chain.is_some())
            .field("client_cert", &self.tls.identity.is_some())
            .finish()
    }
}

impl Endpoint {
    /// A URL with no TLS settings of its own (`amqps://` checks the broker
    /// against the system's roots).
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            uri: parse_url(url)?,
            tls: OwnedTLSConfig::default(),
        })
    }

    /// The config's broker ([`broker_url`]) with its `amqp.tls` files.
    pub fn from_config(config: &crate::spec::Config) -> Result<Self, String> {
        let mut endpoint = Self::new(&broker_url(config))?;
        if let Some(files) = config.amqp.as_ref().and_then(|a| a.tls.as_ref()) {
            endpoint.tls = tls::load(files).map_err(|e| e.to_string())?;
            if endpoint.uri.scheme != AMQPScheme::AMQPS {
                tracing::warn!(
                    broker = %describe(&endpoint.uri),
                    "amqp.tls is set but the broker URL is not amqps://; connecting without TLS."
                );
            }
        }
        Ok(endpoint)
    }

    /// `amqps://user@host:port/vhost`, without the password.
    pub fn describe(&self) -> String {
        describe(&self.uri)
    }
}

/// Why a connection to the broker could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {broker}: {source}")]
    Failed {
        broker: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker's certificate was refused: not signed by a trusted CA,
    /// not for this host, expired.
    #[error(
        "cannot connect to {broker}: TLS certificate verification failed for {peer}: {source}{}",
        certificate_hint(.source)
    )]
    Certificate {
        broker: String,
        peer: String,
        #[source]
        source: rustls::Error,
    },
    /// Any other TLS failure: the handshake, or the broker refusing our
    /// client certificate.
    #[error("cannot connect to {broker}: TLS with {peer} failed: {source}{}", tls_hint(.source))]
    Tls {
        broker: String,
        peer: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot connect to {broker}: no answer within {}s", .after.as_secs())]
    Timeout { broker: String, after: Duration },
}

fn certificate_hint(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            " (no CA in amqp.tls.ca_file or the system's roots signed it)"
        }
        _ => "",
    }
}

fn tls_hint(error: &rustls::Error) -> &'static str {
    use rustls::AlertDescription as Alert;
    match error {
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            " (the broker requires a client certificate: amqp.tls.cert_file and key_file)"
        }
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate,
        ) => " (the broker refused the client certificate of amqp.tls.cert_file)",
        _ => "",
    }
}

/// Connects once, within [`CONNECT_TIMEOUT`]. `name` shows in the broker's
/// connection list.
pub async fn connect(endpoint: &Endpoint, name: &str) -> Result<Connection, ConnectError> {
    crate::tls::install_provider();
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("switchyard {name} (pid {})", std::process::id()).into());
    let broker = || endpoint.describe();
    let connecting = async {
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_uri_with_config(
            endpoint.uri.clone(),
            properties,
            endpoint.tls.clone(),
            runtime,
        )
        .await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => {
            let peer = || {
                format!(
                    "{}:{}",
                    endpoint.uri.authority.host, endpoint.uri.authority.port
                )
            };
            Err(match tls::tls_cause(&source) {
                Some(e @ rustls::Error::InvalidCertificate(_)) => ConnectError::Certificate {
                    broker: broker(),
                    peer: peer(),
                    source: e.clone(),
                },
                Some(e) => ConnectError::Tls {
                    broker: broker(),
                    peer: peer(),
                    source: e.clone(),
                },
                None => ConnectError::Failed {
                    broker: broker(),
                    source,
                },
            })
        }
        Err(_) => Err(ConnectError::Timeout {
            broker: broker(),
            after: CONNECT_TIMEOUT,
        }),
    }
}

/// A name or key checked against AMQP's 255-byte limit (lapin panics on
/// longer ones, so nothing from a user reaches it unchecked).
pub fn short(what: &str, value: &str) -> Result<ShortString, String> {
    ShortString::try_new(value)
        .map_err(|_| format!("{what} is {} bytes; AMQP allows 255", value.len()))
}

/// Exponential backoff with jitter, for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The delay before the next attempt; doubles up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to 25% jitter so many consumers do not reconnect in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    /// After a session that worked: start from the minimum again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

/// AMQP field values as JSON (headers in events).
pub fn field_table_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), amqp_value_json(v)))
        .collect()
}

fn amqp_value_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => {
            Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(s.as_bytes())),
        },
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_value_json).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(field_table_json(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// JSON header values as AMQP field values (the `amqp` task's `headers`).
pub fn json_field_table(headers: &Map<String, Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        let name = short("header name", key)?;
        table.insert(name, json_amqp_value(value)?);
    }
    Ok(table)
}

fn json_amqp_value(value: &Value) -> Result<AMQPValue, String> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::LongString(n.to_string().into()),
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => {
            let mut array = lapin::types::FieldArray::default();
            for item in items {
                array.push(json_amqp_value(item)?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => AMQPValue::FieldTable(json_field_table(map)?),
    })
}

/// Why a publish did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Could not reach the broker or the channel failed (retry may help).
    #[error("{0}")]
    Broker(String),
    /// `mandatory` and no queue was bound for the routing key.
    #[error(
        "unroutable: exchange `{exchange}` has no queue bound for routing key `{routing_key}` ({code} {text})"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
        code: u16,
        text: String,
    },
    /// The broker refused the message (`basic.nack`).
    #[error("the broker nacked the message (it could not store it)")]
    Nacked,
    /// The message cannot be published as given.
    #[error("{0}")]
    Invalid(String),
}

/// What identifies a published or returned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Returned<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: Option<&'a str>,
}

/// Which sent message each returned one is: the first mandatory message,
/// not already taken, with the same exchange and routing key and, when the
/// return carries a message id, that id. Messages with the same address
/// and no id are interchangeable, so the first free one is right.
pub fn assign_returns(
    returns: &[Returned<'_>],
    sent: &[Returned<'_>],
    mandatory: &[bool],
) -> Vec<Option<usize>> {
    let mut taken = vec![false; sent.len()];
    returns
        .iter()
        .map(|r| {
            let owner = (0..sent.len()).find(|&i| {
                !taken[i]
                    && mandatory.get(i).copied().unwrap_or(false)
                    && sent[i].exchange == r.exchange
                    && sent[i].routing_key == r.routing_key
                    && (r.message_id.is_none() || sent[i].message_id == r.message_id)
            })?;
            taken[owner] = true;
            Some(owner)
        })
        .collect()
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub mandatory: bool,
}

/// A lazily connected publishing channel in confirm mode, shared by every
/// `amqp` task and the lifecycle outbox. A failed channel or connection is
/// replaced on the next publish.
///
/// Publishes go out in batches, one batch in flight at a time: callers
/// queue their messages and whoever takes the publishing lock sends all
/// that are queued and waits for their confirms. That is what makes a
/// `basic.return` land on the right message: lapin hands each returned
/// message to whichever confirm it resolves next (with `multiple` acks, in
/// no set order), so with publishes of several callers in flight a
/// delivered message could be reported unroutable and another's return
/// lost. Within one batch the returns are matched back to their messages
/// by exchange, routing key and message id ([`assign_returns`]).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    endpoint: Result<Endpoint, String>,
    events_exchange: Option<String>,
    session: tokio::sync::Mutex<Option<(Connection, Channel)>>,
    /// A channel on the same connection without confirms, for messages
    /// whose loss the sender survives ([`Broker::publish_unconfirmed`]).
    plain: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges seen to exist on this connection. Publishing to a missing
    /// exchange closes the channel, failing every publish in flight on it,
    /// so an exchange is checked on a throwaway channel first.
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Messages waiting for the next batch, with where their result goes.
    queued: std::sync::Mutex<Vec<Queued>>,
    /// Held while a batch is published and confirmed.
    publishing: tokio::sync::Mutex<()>,
    /// Batches sent so far.
    batches: std::sync::atomic::AtomicU64,
}

/// A message of the batch in flight, as [`assign_returns`] needs it.
struct Sent {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    message_id: Option<String>,
}

struct Queued {
    message: Outgoing,
    reply: tokio::sync::oneshot::Sender<Result<(), PublishError>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field(
                "url",
                &self
                    .inner
                    .endpoint
                    .as_ref()
                    .map(Endpoint::describe)
                    .unwrap_or_default(),
            )
            .field("events_exchange", &self.inner.events_exchange)
            .finish()
    }
}

impl Broker {
    /// A broker at `url`, with no TLS settings of its own.
    pub fn new(url: &str, events_exchange: Option<String>) -> Self {
        Self::with_endpoint(Endpoint::new(url), events_exchange)
    }

    /// A broker at `endpoint`; an error (a bad URL, an unusable TLS file)
    /// is what every publish fails with.
    pub fn with_endpoint(
        endpoint: Result<Endpoint, String>,
        events_exchange: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(BrokerInner {
                endpoint,
                events_exchange: events_exchange.filter(|e| !e.is_empty()),
                session: tokio::sync::Mutex::new(None),
                plain: tokio::sync::Mutex::new(None),
                known: std::sync::Mutex::new(std::collections::HashSet::new()),
                queued: std::sync::Mutex::new(Vec::new()),
                publishing: tokio::sync::Mutex::new(()),
                batches: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// From the config's `amqp` section (or `AMQP_URL`, or the default),
    /// with its `amqp.tls` files.
    pub fn from_config(config: &crate::spec::Config) -> Self {
        Self::with_endpoint(
            Endpoint::from_config(config),
            config.amqp.as_ref().and_then(|a| a.events_exchange.clone()),
        )
    }

    pub fn endpoint(&self) -> Result<&Endpoint, String> {
        self.inner.endpoint.as_ref().map_err(Clone::clone)
    }

    /// Where lifecycle events go; none are recorded without it.
    pub fn events_exchange(&self) -> Option<&str> {
        self.inner.events_exchange.as_deref()
    }

    /// The publishing channel, (re)connecting when needed.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut session = self.inner.session.lock().await;
        if let Some((connection, channel)) = session.as_mut() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            if connection.status().connected() {
                // The channel was closed by a channel error (say, an
                // exchange deleted since it was checked): a new one on the
                // same connection.
                self.forget_exchanges();
                *channel = confirm_channel(connection).await?;
                return Ok(channel.clone());
            }
        }
        *session = None;
        self.forget_exchanges();
        let endpoint = self.endpoint().map_err(PublishError::Broker)?;
        let connection = connect(endpoint, "publisher")
            .await
            .map_err(|e| PublishError::Broker(e.to_string()))?;
        let channel = confirm_channel(&connection).await?;
        *session = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        self.publish_many(vec![message])
            .await
            .pop()
            .unwrap_or_else(|| Err(PublishError::Broker("nothing was published".into())))
    }

    /// Publishes without waiting for a confirm, on a channel of its own
    /// (so it never queues behind a batch waiting for confirms): for
    /// messages that are sent again if lost, like a remote worker's claims
    /// and heartbeats. `Ok` means handed to the connection, nothing more.
    /// Messages published here keep their order among themselves, not
    /// with those of [`Broker::publish`].
    pub async fn publish_unconfirmed(&self, message: Outgoing) -> Result<(), PublishError> {
        let exchange = short("exchange name", &message.exchange).map_err(PublishError::Invalid)?;
        let routing_key =
            short("routing key", &message.routing_key).map_err(PublishError::Invalid)?;
        let mut plain = self.inner.plain.lock().await;
        let channel = match plain.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                self.channel().await?;
                let session = self.inner.session.lock().await;
                let Some((connection, _)) = session.as_ref() else {
                    return Err(PublishError::Broker("not connected".into()));
                };
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| PublishError::Broker(format!("cannot open a channel: {e}")))?;
                drop(session);
                *plain = Some(channel.clone());
                channel
            }
        };
        drop(plain);
        channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                &message.body,
                message.properties,
            )
            .await
            .map(drop)
            .map_err(|e| PublishError::Broker(format!("publish failed: {e}")))
    }

    fn forget_exchanges(&self) {
        if let Ok(mut known) = self.inner.known.lock() {
            known.clear();
        }
    }

    /// Checks that `exchange` exists, on a throwaway channel (which the
    /// broker closes when it does not).
    async fn check_exchange(&self, exchange: &str) -> Result<(), PublishError> {
        if exchange.is_empty()
            || self
                .inner
                .known
                .lock()
                .is_ok_and(|known| known.contains(exchange))
        {
            return Ok(());
        }
        let name = short("exchange name", exchange).map_err(PublishError::Invalid)?;
        let probe = {
            let session = self.inner.session.lock().await;
            let Some((connection, _)) = session.as_ref() else {
                return Err(PublishError::Broker("not connected".into()));
            };
            connection
                .create_channel()
                .await
                .map_err(|e| PublishError::Broker(format!("cannot open a channel: {e}")))?
        };
        match exchange_exists(&probe, name).await {
            Ok(()) => {
                let _ = probe.close(200, "checked".into()).await;
                if let Ok(mut known) = self.inner.known.lock() {
                    known.insert(exchange.to_string());
                }
                Ok(())
            }
            Err(e) => Err(PublishError::Broker(format!("exchange `{exchange}`: {e}"))),
        }
    }

    /// Publishes in order, then waits for every confirm: one result per
    /// message. After the first broker failure the rest are not sent.
    ///
    /// The messages join the next batch; the batch is sent by a task of its
    /// own, so a caller that stops waiting (a cancelled attempt) never
    /// interrupts the publishes of others.
    pub async fn publish_many(&self, messages: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let mut replies = Vec::with_capacity(messages.len());
        {
            let mut queued = self.inner.queued.lock().unwrap_or_else(|p| p.into_inner());
            for message in messages {
                let (reply, result) = tokio::sync::oneshot::channel();
                queued.push(Queued { message, reply });
                replies.push(result);
            }
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let _batch = broker.inner.publishing.lock().await;
            let queued = std::mem::take(
                &mut *broker
                    .inner
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            // A caller that stopped waiting (its attempt was cancelled or
            // timed out) has its messages dropped here, unsent: a retry
            // must not follow a copy the broker gets late.
            let (messages, replies): (Vec<_>, Vec<_>) = queued
                .into_iter()
                .filter(|q| !q.reply.is_closed())
                .map(|q| (q.message, q.reply))
                .unzip();
            if messages.is_empty() {
                return; // An earlier batch took them, or nobody waits.
            }
            broker
                .inner
                .batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let results = broker.publish_batch(messages).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
        let mut results = Vec::with_capacity(replies.len());
        for reply in replies {
            results.push(reply.await.unwrap_or_else(|_| {
                Err(PublishError::Broker(
                    "the publish was interrupted; whether the broker took it is unknown".into(),
                ))
            }));
        }
        results
    }

    /// Sends one batch and waits for its confirms (the publishing lock is
    /// held).
    async fn publish_batch(&self, messages: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let mut results: Vec<Option<Result<(), PublishError>>> = vec![None; messages.len()];
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => return vec![Err(e); messages.len()],
        };
        for (i, message) in messages.iter().enumerate() {
            if let Err(e) = self.check_exchange(&message.exchange).await {
                results[i] = Some(Err(e));
            }
        }
        let mut confirms = Vec::with_capacity(messages.len());
        let mut broken = None;
        for (i, message) in messages.into_iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            if let Some(e) = &broken {
                results[i] = Some(Err(PublishError::clone(e)));
                continue;
            }
            let names = short("exchange name", &message.exchange)
                .and_then(|e| Ok((e, short("routing key", &message.routing_key)?)));
            let (exchange, routing_key) = match names {
                Ok(names) => names,
                Err(e) => {
                    results[i] = Some(Err(PublishError::Invalid(e)));
                    continue;
                }
            };
            let sent = Sent {
                message_id: message
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string()),
                exchange: message.exchange,
                routing_key: message.routing_key,
                mandatory: message.mandatory,
            };
            let published = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties,
                )
                .await;
            match published {
                Ok(confirm) => confirms.push((i, sent, confirm)),
                Err(e) => {
                    let e = PublishError::Broker(format!("publish failed: {e}"));
                    results[i] = Some(Err(e.clone()));
                    broken = Some(e);
                }
            }
        }
        let mut returned = Vec::new();
        let mut sent = Vec::with_capacity(confirms.len());
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut stuck = false;
        for (i, message, confirm) in confirms {
            let Ok(confirmed) = tokio::time::timeout_at(deadline, confirm).await else {
                stuck = true;
                results[i] = Some(Err(PublishError::Broker(format!(
                    "no confirm from the broker within {}s; whether it took the message is unknown",
                    CONFIRM_TIMEOUT.as_secs()
                ))));
                continue;
            };
            results[i] = Some(match confirmed {
                Ok(Confirmation::Ack(r)) => {
                    returned.extend(r);
                    Ok(())
                }
                Ok(Confirmation::Nack(r)) => {
                    returned.extend(r);
                    Err(PublishError::Nacked)
                }
                Ok(Confirmation::NotRequested) => Err(PublishError::Broker(
                    "the channel is not in confirm mode".into(),
                )),
                Err(e) => Err(PublishError::Broker(format!(
                    "no confirm from the broker: {e}"
                ))),
            });
            sent.push((i, message));
        }
        if stuck {
            // A channel that stopped confirming is not used again.
            *self.inner.session.lock().await = None;
            self.forget_exchanges();
        }
        // Returns came with whichever confirms; each goes to its message.
        let returns: Vec<Returned> = returned
            .iter()
            .map(|r| Returned {
                exchange: r.delivery.exchange.as_str(),
                routing_key: r.delivery.routing_key.as_str(),
                message_id: r
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str()),
            })
            .collect();
        let candidates: Vec<Returned> = sent
            .iter()
            .map(|(_, m)| Returned {
                exchange: &m.exchange,
                routing_key: &m.routing_key,
                message_id: m.message_id.as_deref(),
            })
            .collect();
        let mandatory: Vec<bool> = sent.iter().map(|(_, m)| m.mandatory).collect();
        for (r, owner) in returned
            .iter()
            .zip(assign_returns(&returns, &candidates, &mandatory))
        {
            let Some(owner) = owner else {
                tracing::warn!(exchange = %r.delivery.exchange, routing_key = %r.delivery.routing_key,
                    "The broker returned a message this batch did not send; ignoring it.");
                continue;
            };
            let (i, message) = &sent[owner];
            results[*i] = Some(Err(PublishError::Unroutable {
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                code: r.reply_code,
                text: r.reply_text.to_string(),
            }));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(PublishError::Broker("not sent".into()))))
            .collect()
    }

    /// Declares a durable topic exchange on the publishing channel (the
    /// lifecycle exchange). An existing exchange of another type is used
    /// as it is.
    pub async fn ensure_exchange(&self, name: &str) -> Result<(), PublishError> {
        let exchange = short("exchange name", name).map_err(PublishError::Invalid)?;
        let channel = self.channel().await?;
        let declared =
            declare_exchange(&channel, exchange.clone(), lapin::ExchangeKind::Topic).await;
        if let Err(e) = declared {
            // A type mismatch closes the channel; check it exists at all.
            let channel = self.channel().await?;
            exchange_exists(&channel, exchange).await.map_err(|_| {
                PublishError::Broker(format!("cannot declare exchange `{name}`: {e}"))
            })?;
        }
        Ok(())
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, PublishError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| PublishError::Broker(format!("cannot open a channel: {e}")))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| PublishError::Broker(format!("cannot enable publisher confirms: {e}")))?;
    Ok(channel)
}

/// Declares a durable exchange. A failure (another type, say) closes the
/// channel.
pub async fn declare_exchange(
    channel: &Channel,
    name: ShortString,
    kind: lapin::ExchangeKind,
) -> lapin::Result<()> {
    let options = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name, kind, options, FieldTable::default())
        .await
}

/// Whether the exchange exists, whatever its type (a passive declare). A
/// missing one closes the channel.
pub async fn exchange_exists(channel: &Channel, name: ShortString) -> lapin::Result<()> {
    let options = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            name,
            lapin::ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
}

/// Whether a broker answers at this URL (tests and benches use it to skip).
pub async fn reachable(url: &str) -> bool {
    let Ok(endpoint) = Endpoint::new(url) else {
        return false;
    };
    match connect(&endpoint, "probe").await {
        Ok(connection) => {
            let _ = connection.close(200, "probe".into()).await;
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_we_connect_is_shown_with_its_scheme_and_without_the_password() {
        let shown = |url: &str| describe(&parse_url(url).unwrap());
        assert_eq!(
            shown("amqps://user:s3cret@broker.example:5671/prod"),
            "amqps://user@broker.example:5671/prod"
        );
        assert_eq!(
            shown("amqp://guest:guest@localhost/%2f"),
            "amqp://guest@localhost:5672/%2f"
        );
        // amqps without a port: the TLS port.
        assert_eq!(
            shown("amqps://u:p@broker.example/%2f"),
            "amqps://u@broker.example:5671/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:hunter2@h:5671/v").as_deref(),
            Some("amqps://u@h:5671/v")
        );
    }

    fn at<'a>(exchange: &'a str, key: &'a str, id: Option<&'a str>) -> Returned<'a> {
        Returned {
            exchange,
            routing_key: key,
            message_id: id,
        }
    }

    #[test]
    fn each_return_goes_to_its_own_message() {
        let sent = [
            at("x", "routed", Some("a")),
            at("x", "lost", Some("b")),
            at("x", "lost", Some("c")),
            at("y", "lost", None),
            at("x", "lost", Some("e")),
        ];
        let mandatory = [true, true, true, true, false];
        // Returns arrive in any order, attached to any confirm.
        let returns = [
            at("x", "lost", Some("c")),
            at("y", "lost", None),
            at("x", "lost", Some("b")),
        ];
        assert_eq!(
            assign_returns(&returns, &sent, &mandatory),
            vec![Some(2), Some(3), Some(1)]
        );
        // A non-mandatory message is never returned; an unknown return
        // belongs to nobody here.
        let stray = [at("x", "lost", Some("e")), at("z", "k", None)];
        assert_eq!(assign_returns(&stray, &sent, &mandatory), vec![None, None]);
        // Without ids, messages to one address take returns in turn.
        let same = [at("x", "k", None), at("x", "k", None)];
        let twice = [at("x", "k", None), at("x", "k", None)];
        assert_eq!(
            assign_returns(&twice, &same, &[true, true]),
            vec![Some(0), Some(1)]
        );
    }

    /// A caller that stops waiting before its batch goes out (a cancelled
    /// or timed-out attempt) publishes nothing: its retry must not follow a
    /// copy the broker gets late.
    #[tokio::test]
    async fn a_publish_whose_caller_gave_up_is_never_sent() {
        let broker = Broker::new("amqp://guest:guest@127.0.0.1:1/%2f", None);
        let message = Outgoing {
            exchange: "x".into(),
            routing_key: "k".into(),
            body: b"{}".to_vec(),
            properties: BasicProperties::default(),
            mandatory: true,
        };
        let busy = broker.inner.publishing.lock().await; // a batch in flight
        {
            let publish = broker.publish(message);
            tokio::pin!(publish);
            // Queued; then the caller goes away.
            assert!(
                futures_lite::future::poll_once(&mut publish)
                    .await
                    .is_none()
            );
        }
        drop(busy);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = broker
            .inner
            .batches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sent, 0, "the abandoned message was published");
        assert!(broker.inner.queued.lock().unwrap().is_empty());
    }
}
