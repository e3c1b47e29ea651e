//! The real RabbitMQ for tests: reachability with the SKIPPED rule, a lock
//! that keeps broker-disrupting tests apart from the rest, a confirming
//! publisher that survives broker restarts, and `rabbitmqctl`.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Tests that restart the broker or close its connections take this for
/// writing; every other broker test takes it for reading.
pub static LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The shared lock for `test`, once the broker is up; None: skipped.
pub async fn shared(test: &str) -> Option<tokio::sync::RwLockReadGuard<'static, ()>> {
    let guard = LOCK.read().await;
    available(test).await.then_some(guard)
}

/// The exclusive lock for `test` (it disrupts the broker), once the broker
/// is up; None: skipped.
pub async fn exclusive(test: &str) -> Option<tokio::sync::RwLockWriteGuard<'static, ()>> {
    let guard = LOCK.write().await;
    available(test).await.then_some(guard)
}

/// Whether the broker is up. Without it: a failure when
/// `SWITCHYARD_REQUIRE_BROKER=1` (CI), else a loud SKIPPED line.
pub async fn available(test: &str) -> bool {
    if switchyard::amqp::reachable(URL).await {
        return true;
    }
    if std::env::var("SWITCHYARD_REQUIRE_BROKER").is_ok_and(|v| v == "1") {
        panic!("{test}: RabbitMQ at {URL} is not reachable and SWITCHYARD_REQUIRE_BROKER=1");
    }
    eprintln!(
        "SKIPPED {test}: RabbitMQ at {URL} is not reachable (set SWITCHYARD_REQUIRE_BROKER=1 to fail instead)"
    );
    false
}

/// A unique name for this test's exchanges and queues.
pub fn unique(prefix: &str) -> String {
    format!("sy-test.{prefix}.{}", uuid::Uuid::now_v7().simple())
}

/// `rabbitmqctl` with a generous timeout; panics on failure.
pub fn ctl(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the broker app, and makes sure it is started again even when the
/// test fails in between.
pub struct StoppedBroker {
    started: bool,
}

impl StoppedBroker {
    pub fn stop() -> Self {
        ctl(&["stop_app"]);
        Self { started: false }
    }

    pub fn start(mut self) {
        start_app();
        self.started = true;
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.started {
            start_app();
        }
    }
}

fn start_app() {
    ctl(&["start_app"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ok = Command::new("timeout")
            .args([
                "15",
                "rabbitmq-diagnostics",
                "-q",
                "check_port_connectivity",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the broker did not come back");
}

pub async fn connect() -> Connection {
    Connection::connect(URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

pub async fn declare_exchange(channel: &Channel, name: &str, kind: lapin::ExchangeKind) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// A durable queue bound to `exchange` with `key`, with optional arguments.
pub async fn declare_queue(
    channel: &Channel,
    name: &str,
    exchange: &str,
    key: &str,
    args: &[(&str, AMQPValue)],
) {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table,
        )
        .await
        .unwrap();
    if !exchange.is_empty() {
        channel
            .queue_bind(
                name.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
}

pub async fn delete_queues(names: &[&str]) {
    let Ok(connection) = Connection::connect(URL, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for name in names {
            let _ = channel
                .queue_delete((*name).into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "cleanup".into()).await;
}

/// Publishes persistent messages and waits for every confirm.
pub async fn publish_all(
    channel: &Channel,
    exchange: &str,
    messages: impl IntoIterator<Item = (String, Vec<u8>, BasicProperties)>,
) {
    let mut confirms = Vec::new();
    for (key, body, properties) in messages {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
    }
}

/// Publishes one persistent message until the broker confirms it,
/// reconnecting through closed connections and broker restarts. A message
/// whose confirm was lost is sent again with the same `message_id`.
pub struct ResilientPublisher {
    channel: Option<(Connection, Channel)>,
    pub retries: u32,
}

impl ResilientPublisher {
    pub fn new() -> Self {
        Self {
            channel: None,
            retries: 0,
        }
    }

    pub async fn publish(&mut self, exchange: &str, key: &str, id: &str, body: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "could not publish {id} for 2 minutes"
            );
            if self
                .channel
                .as_ref()
                .is_none_or(|(_, c)| !c.status().connected())
            {
                self.channel = None;
                if let Ok(connection) =
                    Connection::connect(URL, ConnectionProperties::default()).await
                    && let Ok(channel) = connection.create_channel().await
                    && channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .is_ok()
                {
                    self.channel = Some((connection, channel));
                }
                if self.channel.is_none() {
                    self.retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let Some((_, channel)) = &self.channel else {
                continue;
            };
            let properties = BasicProperties::default()
                .with_message_id(id.into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let sent = match channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
            {
                Ok(confirm) => tokio::time::timeout(Duration::from_secs(10), confirm).await,
                Err(_) => {
                    self.channel = None;
                    self.retries += 1;
                    continue;
                }
            };
            match sent {
                Ok(Ok(Confirmation::Ack(None))) => return,
                _ => {
                    self.channel = None;
                    self.retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Collects messages from `queue` until `done` says enough or `within` passes.
pub async fn collect(
    queue: &str,
    within: Duration,
    done: impl Fn(&[lapin::message::Delivery]) -> bool,
) -> Vec<lapin::message::Delivery> {
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                out.push(delivery);
            }
            _ => break,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    out
}

/// A TCP proxy in front of the broker that can fail the way networks do:
/// after [`SilentProxy::silence`], the connections open at that moment stay
/// open but carry nothing either way (a hung peer, a dropped route); after
/// [`SilentProxy::cut`], they are closed. New connections flow normally.
pub struct SilentProxy {
    pub port: u16,
    opened: std::sync::Arc<std::sync::atomic::AtomicU64>,
    silenced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

impl SilentProxy {
    pub async fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let opened = Arc::new(AtomicU64::new(0));
        // Connections numbered at or below these are silent, or closed (0: none).
        let silenced = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let (count, quiet, closed) = (Arc::clone(&opened), Arc::clone(&silenced), Arc::clone(&cut));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = count.fetch_add(1, Ordering::Relaxed) + 1;
                let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (upstream_read, upstream_write) = upstream.into_split();
                let pipes: [(Reader, Writer); 2] = [
                    (Box::new(client_read), Box::new(upstream_write)),
                    (Box::new(upstream_read), Box::new(client_write)),
                ];
                for (mut from, mut to) in pipes {
                    let (quiet, closed) = (Arc::clone(&quiet), Arc::clone(&closed));
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            if number <= closed.load(Ordering::Relaxed) {
                                // Both directions end: the sockets close.
                                break;
                            }
                            if number <= quiet.load(Ordering::Relaxed) {
                                // Silent: hold the socket open, pass nothing.
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                continue;
                            }
                            let read = tokio::select! {
                                read = from.read(&mut buf) => read,
                                // Look at the switches again now and then.
                                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                            };
                            match read {
                                Ok(0) | Err(_) => break,
                                // Silenced while this read waited: what it
                                // got is swallowed, as by a hung peer.
                                Ok(_) if number <= quiet.load(Ordering::Relaxed) => continue,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Self {
            port,
            opened,
            silenced,
            cut,
            accept,
        }
    }

    /// Every connection open now goes silent.
    pub fn silence(&self) {
        use std::sync::atomic::Ordering;
        self.silenced
            .store(self.opened.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Every connection open now is closed, without an AMQP goodbye.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut
            .store(self.opened.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
