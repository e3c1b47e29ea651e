//! `switchyard serve`: loads the project, recovers the log, starts the
//! trigger adapters, serves the API and webhooks, reloads workflow and
//! binding files as they change, and shuts down gracefully.

mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::engine::Limits;
use crate::log::{RecordBody, RunId, RunStatus};
use crate::metrics::DaemonMetrics;
use crate::reactor::Reactor;
use crate::runtime::{self, Runtime, RuntimeConfig};
use crate::spec::{Config, Diagnostics, Secrets};
use crate::triggers::Triggers;

/// How `serve` was asked to run; flags override the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config_path: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    /// How long running tasks get to finish on SIGINT/SIGTERM.
    pub grace: Duration,
    /// Where cron time comes from (tests drive it by hand); None: the system clock.
    pub clock: Option<Arc<dyn crate::time::Clock>>,
    /// Serve the API without a token on a non-loopback address (something
    /// in front of switchyard authenticates).
    pub allow_unauthenticated: bool,
    /// With no token configured: use the one in `<data_dir>/api-token`,
    /// generating it (random, mode 0600) on first start. What a container
    /// needs to serve off loopback safely with no setup.
    pub generate_token: bool,
}

impl ServeOptions {
    /// An in-process daemon for tests and benches: the config's data dir,
    /// an ephemeral loopback port (see `Running::addr`), 5 s of grace, the
    /// system clock.
    pub fn local(config_path: PathBuf) -> Self {
        Self {
            config_path,
            data_dir: None,
            listen: Some("127.0.0.1:0".into()),
            grace: Duration::from_secs(5),
            clock: None,
            allow_unauthenticated: false,
            generate_token: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid config or workflow files.
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(
        "refusing to serve the API unauthenticated on {addr}, which is not a loopback address: \
         set `api.token` in switchyard.json or the SWITCHYARD_TOKEN environment variable, \
         or pass --allow-unauthenticated if something in front of switchyard authenticates requests"
    )]
    Unauthenticated { addr: std::net::SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// Whether this is the user's input (exit 2) rather than a failure (exit 1).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_)
                | Error::Listen { .. }
                | Error::Unauthenticated { .. }
                | Error::Runtime(runtime::Error::Log(crate::log::Error::Locked { .. }))
        )
    }
}

/// A daemon that is up: its address, and a way to stop it (tests use this).
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    /// The engine (benches and tests subscribe to its records).
    pub runtime: runtime::RuntimeHandle,
    pub stop: CancellationToken,
    pub done: tokio::task::JoinHandle<Result<(), Error>>,
}

/// Finds a workflow's current definition by name in the served registry
/// (what `workflow` tasks start).
pub(crate) fn workflow_lookup(
    registry: crate::registry::SharedRegistry,
) -> crate::runtime::WorkflowLookup {
    Arc::new(move |name: &str| {
        let registry = registry.read().ok()?;
        registry.serving(name)
    })
}

/// The token in `<data_dir>/api-token`, made (random, 256 bits, readable
/// by this user only) if there is none yet. Its value is never logged.
fn generated_token(data_dir: &Path) -> Result<Arc<str>, std::io::Error> {
    let file = data_dir.join("api-token");
    if let Ok(text) = std::fs::read_to_string(&file)
        && !text.trim().is_empty()
    {
        tracing::info!(file = %file.display(), "API token read from the data dir.");
        return Ok(Arc::from(text.trim()));
    }
    std::fs::create_dir_all(data_dir)?;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options.open(&file)?.write_all(token.as_bytes())?;
    tracing::warn!(
        file = %file.display(),
        "No API token was configured: generated one and stored it in this file. Clients send it \
         as `Authorization: Bearer <token>` (the CLI reads SWITCHYARD_TOKEN); set api.token or \
         SWITCHYARD_TOKEN to choose your own."
    );
    Ok(Arc::from(token.as_str()))
}

/// The API's bearer token: `SWITCHYARD_TOKEN`, else the config's
/// `api.token`. An empty value is no token.
fn api_token(config: &Config) -> Option<Arc<str>> {
    std::env::var("SWITCHYARD_TOKEN")
        .ok()
        .or_else(|| config.api.as_ref().and_then(|a| a.token.clone()))
        .filter(|t| !t.is_empty())
        .map(|t| Arc::from(t.as_str()))
}

/// Loads the config, registry and runtime; binds the listener; returns once
/// serving. Stops when `stop` is cancelled.
pub async fn start(options: ServeOptions) -> Result<Running, Error> {
    crate::tls::install_provider();
    let optional = options.config_path == Path::new("switchyard.json");
    let config = Config::load(&options.config_path, optional).map_err(Error::Invalid)?;
    let secrets = Secrets::resolve(&config, &options.config_path).map_err(Error::Invalid)?;
    let databases = crate::executors::sql::Databases::from_config(&config, &secrets, true)
        .map_err(|(path, message)| {
            Error::Invalid(Diagnostics(vec![crate::spec::Diagnostic {
                file: options.config_path.clone(),
                path,
                message,
            }]))
        })?;
    // A password written into a connection URL is redacted like a secret.
    let secrets = Arc::new(secrets.also_redacting(databases.passwords()));
    for name in secrets.short_ones() {
        tracing::warn!(
            secret = name,
            min_len = crate::spec::config::MIN_SECRET_LEN,
            "Secret is very short; it is redacted wherever it appears, which will also mangle \
             ordinary text in logs and outputs. Use a longer secret."
        );
    }
    let registry = Registry::load_project(&config, Arc::clone(&secrets))
        .map_err(|d| Error::Invalid(Diagnostics(d)))?;
    let registry = Arc::new(RwLock::new(registry));
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir());
    let listen = options
        .listen
        .clone()
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| crate::spec::config::DEFAULT_LISTEN.to_string());
    // Bind before recovering so a second daemon fails fast on the port too.
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let mut token = api_token(&config);
    if token.is_none() && options.generate_token {
        token = Some(generated_token(&data_dir).map_err(Error::Serve)?);
    }
    if token.is_none() && !addr.ip().is_loopback() && !options.allow_unauthenticated {
        return Err(Error::Unauthenticated { addr });
    }
    let broker = crate::amqp::Broker::from_config(&config);
    // Remote tasks: the service exists when the broker URL is usable; it
    // connects only once a task needs it.
    let remote_stop = CancellationToken::new();
    let remote = match (broker.endpoint(), config.remote()) {
        (Ok(endpoint), Ok(remote_config)) => Some(crate::remote::Remote::new(
            endpoint.clone(),
            remote_config,
            remote_stop.clone(),
        )),
        _ => None,
    };
    let runtime = Runtime::start(RuntimeConfig {
        data_dir,
        limits: Limits {
            max_parallel_tasks: config.max_parallel_tasks(),
        },
        recover: true,
        secrets: Arc::clone(&secrets),
        project_vars: config.vars.clone(),
        chain: Some(crate::reactor::chain_hook(Arc::clone(&registry))),
        broker: Some(broker.clone()),
        databases,
        workflows: Some(workflow_lookup(Arc::clone(&registry))),
        remote: remote.clone(),
    })?;
    // After recovery re-attached the remote attempts it found running.
    if let Some(remote) = &remote
        && (remote.has_attempts()
            || registry.read().is_ok_and(|r| {
                r.workflows()
                    .any(|e| e.current.tasks.iter().any(|t| t.queue.is_some()))
            }))
    {
        remote.ensure_consuming();
    }
    let metrics = Arc::new(DaemonMetrics::default());
    let handle = runtime.handle();
    // What was paused stays paused across restarts.
    let paused = crate::reactor::pause::load(handle.log()).map_err(runtime::Error::from)?;
    let pins = crate::reactor::pins::load(handle.log()).map_err(runtime::Error::from)?;
    if let Ok(mut registry) = registry.write() {
        registry.set_paused(paused);
        for (name, workflow) in pins {
            registry.set_pin(&name, Some(workflow));
        }
    }
    tokio::spawn(count_records(
        handle.subscribe(),
        Arc::clone(&metrics),
        Arc::clone(&registry),
    ));
    let stop = CancellationToken::new();
    let reactor = Reactor::new(handle.clone(), Arc::clone(&registry));
    let clock = options
        .clock
        .clone()
        .unwrap_or_else(|| Arc::new(crate::time::SystemClock));
    let triggers_stop = CancellationToken::new();
    let mut triggers = Triggers::new(reactor.clone(), &broker, clock, triggers_stop.clone());
    triggers.reconcile();
    let bindings_changed = Arc::new(tokio::sync::Notify::new());
    {
        let changed = Arc::clone(&bindings_changed);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = changed.notified() => triggers.reconcile(),
                }
            }
            triggers.stop();
        });
    }
    let periods = config.retention().unwrap_or_default();
    tokio::spawn(retention(
        handle.clone(),
        periods,
        Arc::clone(&metrics),
        stop.clone(),
    ));
    if broker.events_exchange().is_some() {
        tokio::spawn(crate::amqp::outbox::publish(
            handle.log().clone(),
            broker.clone(),
            handle.subscribe(),
            stop.clone(),
        ));
    }
    watch::spawn(
        Arc::clone(&registry),
        Arc::clone(&metrics),
        Arc::clone(&bindings_changed),
        stop.clone(),
    );
    let state = AppState {
        bindings_changed: Arc::clone(&bindings_changed),
        runtime: handle.clone(),
        reactor,
        secrets,
        registry,
        token,
        metrics,
        remote,
    };
    let app = api::app(state);
    let grace = options.grace;
    let stopping = stop.clone();
    let followed = handle.clone();
    let done = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                stopping.cancelled().await;
                // Streams of task output end now, or the graceful
                // shutdown would wait for the tasks they follow.
                followed.live().close_followers();
            })
            .await;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "Shutting down: letting running tasks finish."
        );
        runtime.shutdown_within(grace).await;
        // After the engine: a result it could not record is given back to
        // the broker for the next start.
        remote_stop.cancel();
        served.map_err(Error::Serve)
    });
    tracing::info!(addr = %addr, "Serving.");
    Ok(Running {
        addr,
        runtime: handle,
        stop,
        done,
    })
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> Result<(), Error> {
    let running = start(options).await?;
    eprintln!("switchyard listening on http://{}", running.addr);
    let stop = running.stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    running
        .done
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e.to_string())))?
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Retention in the background: expired dedup entries, and what is older
/// than `retention` (runs with their records and logs, events, task logs),
/// in small batches on a blocking thread with pauses between them, so group
/// commits are never held up. Checked every minute, or more often for
/// retention periods shorter than a few minutes.
async fn retention(
    runtime: runtime::RuntimeHandle,
    retention: crate::spec::config::Retention,
    metrics: Arc<DaemonMetrics>,
    stop: CancellationToken,
) {
    const BATCH: usize = 500;
    let shortest = retention
        .runs
        .min(retention.events)
        .min(retention.task_logs);
    let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let millis = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = crate::time::now_millis();
        let cutoffs = crate::log::retention::Cutoffs {
            runs: now.saturating_sub(millis(retention.runs)),
            events: now.saturating_sub(millis(retention.events)),
            task_logs: now.saturating_sub(millis(retention.task_logs)),
        };
        let mut dedup = 0;
        loop {
            let log = runtime.log().clone();
            let done = tokio::task::spawn_blocking(move || {
                let swept = log.sweep_dedup(now, BATCH)?;
                let pruned = log.prune(cutoffs, BATCH)?;
                Ok::<_, crate::log::Error>((swept, pruned))
            })
            .await;
            match done {
                Ok(Ok((swept, pruned))) => {
                    dedup += swept;
                    metrics
                        .retention_runs
                        .fetch_add(pruned.runs as u64, Ordering::Relaxed);
                    metrics
                        .retention_events
                        .fetch_add(pruned.events as u64, Ordering::Relaxed);
                    metrics
                        .retention_task_logs
                        .fetch_add(pruned.task_logs as u64, Ordering::Relaxed);
                    if pruned.runs + pruned.events > 0 {
                        tracing::debug!(
                            runs = pruned.runs,
                            events = pruned.events,
                            task_logs = pruned.task_logs,
                            "Retention deleted old data."
                        );
                    }
                    if (swept < BATCH && !pruned.more) || stop.is_cancelled() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Retention pass failed; retrying later.");
                    break;
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if dedup > 0 {
            tracing::info!(removed = dedup, "Expired dedup keys removed.");
        }
    }
}

/// Keeps the `/metrics` counters and the attempt and event-to-start
/// histograms from the durable record stream.
async fn count_records(
    mut records: tokio::sync::broadcast::Receiver<Arc<crate::log::Record>>,
    metrics: Arc<DaemonMetrics>,
    registry: crate::registry::SharedRegistry,
) {
    use crate::metrics::{AttemptLabels, TriggerLabels};
    use std::collections::HashMap;
    use tokio::sync::broadcast::error::RecvError;
    /// What a run's later records need: its workflow, and its event's time
    /// and trigger until it starts.
    struct Seen {
        workflow: String,
        event: Option<(i64, String)>,
    }
    let mut runs: HashMap<RunId, Seen> = HashMap::new();
    let mut attempts: HashMap<(RunId, String, u32), i64> = HashMap::new();
    let histograms = &metrics.histograms;
    loop {
        let record = match records.recv().await {
            Ok(record) => record,
            Err(RecvError::Lagged(n)) => {
                metrics.records_missed.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let run_id = record.run_id;
        let counter = match &record.body {
            RecordBody::RunCreated {
                workflow, event, ..
            } => {
                let event = event.as_ref().and_then(|e| {
                    let time = chrono::DateTime::parse_from_rfc3339(e["time"].as_str()?).ok()?;
                    Some((time.timestamp_millis(), trigger_of(e["type"].as_str()?)))
                });
                runs.insert(
                    run_id,
                    Seen {
                        workflow: workflow.clone(),
                        event,
                    },
                );
                &metrics.runs_created
            }
            RecordBody::RunStarted {} => {
                if let Some((time, trigger)) = runs.get_mut(&run_id).and_then(|r| r.event.take()) {
                    histograms
                        .event_to_start_seconds
                        .get_or_create(&TriggerLabels { trigger })
                        .observe((record.at - time).max(0) as f64 / 1000.0);
                }
                continue;
            }
            RecordBody::AttemptStarted { task, attempt } => {
                attempts.insert((run_id, task.clone(), *attempt), record.at);
                &metrics.attempts_started
            }
            RecordBody::AttemptFinished {
                task,
                attempt,
                succeeded,
                ..
            } => {
                let started = attempts.remove(&(run_id, task.clone(), *attempt));
                if let (Some(started), Some(run)) = (started, runs.get(&run_id)) {
                    let kind = registry
                        .read()
                        .ok()
                        .and_then(|r| {
                            let workflow = &r.get(&run.workflow)?.current;
                            let index = workflow.task_index(task)?;
                            Some(workflow.tasks[index].kind.to_string())
                        })
                        .unwrap_or_else(|| "unknown".into());
                    histograms
                        .attempt_seconds
                        .get_or_create(&AttemptLabels {
                            workflow: run.workflow.clone(),
                            task: task.clone(),
                            kind,
                        })
                        .observe((record.at - started).max(0) as f64 / 1000.0);
                }
                if *succeeded {
                    continue;
                }
                &metrics.attempts_failed
            }
            RecordBody::RunEnded { status, .. } => {
                runs.remove(&run_id);
                attempts.retain(|(run, _, _), _| *run != run_id);
                match status {
                    RunStatus::Succeeded => &metrics.runs_succeeded,
                    RunStatus::Cancelled => &metrics.runs_cancelled,
                    _ => &metrics.runs_failed,
                }
            }
            _ => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The trigger that made an event, from its type (`switchyard.webhook.…`
/// is `webhook`); events posted to the API with their own type are `external`.
fn trigger_of(event_type: &str) -> String {
    match event_type
        .strip_prefix("switchyard.")
        .and_then(|rest| rest.split('.').next())
    {
        Some(trigger @ ("webhook" | "cron" | "file" | "run" | "binding" | "amqp")) => {
            trigger.to_string()
        }
        _ => "external".to_string(),
    }
}
