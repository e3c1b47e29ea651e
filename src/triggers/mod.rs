//! Trigger adapters: turn the outside world into events for the reactor.
//!
//! Adapters are derived from the bindings: every file binding on the same
//! directory shares one watcher, every amqp binding on the same queue shares
//! one consumer, every cron binding has its own timer task,
//! webhooks and API events are routed by the HTTP server at request time, and
//! run chaining happens inside the engine (see `reactor::chain_hook`).
//! [`Triggers::reconcile`] starts and stops adapters when bindings change.

pub mod amqp;
pub mod backfill;
pub mod cron;
pub mod expect;
pub mod file;
pub mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::reactor::Reactor;
use crate::spec::binding::{Binding, Trigger};

/// A running adapter (file watcher, AMQP consumer): its bindings and its stop token.
type Group = (Vec<Arc<Binding>>, CancellationToken);

/// The running adapters.
pub struct Triggers {
    reactor: Reactor,
    /// Where amqp bindings consume from (or why the URL is unusable).
    broker: Result<crate::amqp::Endpoint, String>,
    queues: HashMap<String, Group>,
    clock: Arc<dyn crate::time::Clock>,
    stop: CancellationToken,
    files: HashMap<(PathBuf, bool), Group>,
    crons: HashMap<String, (Arc<Binding>, CancellationToken)>,
    expectations: HashMap<String, (Arc<Binding>, CancellationToken)>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("files", &self.files.len())
            .field("crons", &self.crons.len())
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl Triggers {
    pub fn new(
        reactor: Reactor,
        broker: &crate::amqp::Broker,
        clock: Arc<dyn crate::time::Clock>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            reactor,
            broker: broker.endpoint().cloned(),
            queues: HashMap::new(),
            clock,
            stop,
            files: HashMap::new(),
            crons: HashMap::new(),
            expectations: HashMap::new(),
        }
    }

    /// Starts adapters for new or changed bindings and stops those of removed
    /// ones. A changed file group restarts its watcher (its scan finds what
    /// arrived meanwhile; the ledger keeps handled files from firing again).
    pub fn reconcile(&mut self) {
        let bindings: Vec<Arc<Binding>> = self
            .reactor
            .bindings_where(|b| b.enabled && b.trigger.kind() != "api");

        // A paused binding's watcher or consumer stops, so its files and
        // messages wait at the source; bindings sharing one stop with it
        // (their source is one: a file or message cannot wait for one
        // binding and be taken for another).
        let paused = |group: &Vec<Arc<Binding>>| self.reactor.any_paused(group);
        let mut groups = file::groups(&bindings);
        groups.retain(|_, group| !paused(group));
        for ((path, recursive), group) in keep_unchanged(&mut self.files, groups) {
            let token = self.stop.child_token();
            let (dir, bindings, reactor, stop) = (
                path.clone(),
                group.clone(),
                self.reactor.clone(),
                token.clone(),
            );
            supervise(
                &self.reactor,
                format!("file:{}", path.display()),
                token.clone(),
                move || {
                    file::FileWatch::new(dir.clone(), recursive, bindings.clone(), reactor.clone())
                        .task(stop.clone())
                },
            );
            self.files.insert((path, recursive), (group, token));
        }

        let crons = bindings
            .iter()
            .filter(|b| matches!(b.trigger, Trigger::Cron(_)))
            .map(|b| (b.name.clone(), Arc::clone(b)))
            .collect();
        for (name, binding) in keep_unchanged_one(&mut self.crons, crons) {
            let token = self.timed(format!("cron:{name}"), &binding, cron::task);
            self.crons.insert(name, (binding, token));
        }

        // Absence alerts: api and run bindings too (the filter above
        // leaves out api bindings, which have no adapter of their own).
        let expecting = self
            .reactor
            .bindings_where(|b| b.enabled && b.expect.is_some())
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        for (name, binding) in keep_unchanged_one(&mut self.expectations, expecting) {
            let token = self.timed(format!("expect:{name}"), &binding, expect::task);
            self.expectations.insert(name, (binding, token));
        }

        let mut queues = amqp::groups(&bindings);
        if let Ok(endpoint) = &self.broker {
            // Queues switchyard bound that no binding uses now (removed by a
            // reload, or while the daemon was down). A paused binding's
            // queue stays bound: its messages wait there.
            let log = self.reactor.runtime().log();
            for (queue, pairs) in amqp::queues_bound(log) {
                if !pairs.is_empty() && !queues.contains_key(&queue) {
                    tokio::spawn(amqp::release_queue(queue, log.clone(), endpoint.clone()));
                }
            }
        }
        queues.retain(|_, group| !paused(group));
        for (queue, group) in keep_unchanged(&mut self.queues, queues) {
            let endpoint = match &self.broker {
                Ok(endpoint) => endpoint.clone(),
                Err(e) => {
                    tracing::error!(queue, error = %e, "Cannot consume: the broker URL or its TLS files are unusable.");
                    continue;
                }
            };
            let token = self.stop.child_token();
            let (name, bindings, reactor, stop) = (
                queue.clone(),
                group.clone(),
                self.reactor.clone(),
                token.clone(),
            );
            supervise(
                &self.reactor,
                format!("amqp:{queue}"),
                token.clone(),
                move || {
                    amqp::Consumer::new(
                        name.clone(),
                        bindings.clone(),
                        reactor.clone(),
                        endpoint.clone(),
                    )
                    .task(stop.clone())
                },
            );
            self.queues.insert(queue, (group, token));
        }
    }

    /// Starts a one-binding task on the clock (cron, expect) under
    /// [`supervise`]; returns its stop token.
    fn timed<Fut>(
        &self,
        adapter: String,
        binding: &Arc<Binding>,
        task: fn(Arc<Binding>, Reactor, Arc<dyn crate::time::Clock>, CancellationToken) -> Fut,
    ) -> CancellationToken
    where
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let token = self.stop.child_token();
        let (clock, reactor, stop, binding) = (
            Arc::clone(&self.clock),
            self.reactor.clone(),
            token.clone(),
            Arc::clone(binding),
        );
        supervise(&self.reactor, adapter, token.clone(), move || {
            task(
                Arc::clone(&binding),
                reactor.clone(),
                Arc::clone(&clock),
                stop.clone(),
            )
        });
        token
    }

    /// Stops every adapter.
    pub fn stop(&mut self) {
        self.stop.cancel();
        self.files.clear();
        self.crons.clear();
        self.expectations.clear();
        self.queues.clear();
    }
}

/// A restarted adapter that has run this long is no longer reported dead.
const RECOVERED_AFTER: Duration = Duration::from_secs(10);
/// Longest wait before restarting a dead adapter.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Runs an adapter's task (made by `start`) until `stop`, like a
/// supervisor: a task that ends without being stopped, or panics, is
/// reported dead (`EventMetrics::adapters`, so `/healthz` answers 503 and
/// names it), logged, and started again after a backoff (1 s doubling to
/// 60 s); once a restart has run for [`RECOVERED_AFTER`] it is healthy
/// again. The first task is made now, so it sees the clock as of this call.
fn supervise<F, Fut>(reactor: &Reactor, name: String, stop: CancellationToken, start: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let metrics = Arc::clone(reactor.metrics());
    let owner = metrics.adapters.owner();
    metrics.adapters.started(&name, owner);
    let mut next = Some(start());
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        let mut restarts = 0u64;
        loop {
            let mut task = tokio::spawn(next.take().unwrap_or_else(&start));
            let mut ended = None;
            if restarts > 0 {
                tokio::select! {
                    result = &mut task => ended = Some(result),
                    _ = tokio::time::sleep(RECOVERED_AFTER) => {
                        metrics.adapters.recovered(&name, owner);
                        delay = Duration::from_secs(1);
                        tracing::info!(adapter = %name, "Adapter recovered.");
                    }
                    _ = stop.cancelled() => {}
                }
            }
            let result = match ended {
                Some(result) => result,
                None => task.await,
            };
            if stop.is_cancelled() {
                metrics.adapters.recovered(&name, owner);
                metrics.adapters.stopped(&name, owner);
                return;
            }
            let error = match result {
                Ok(Ok(())) => "stopped without being asked to".to_string(),
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    format!("panicked: {text}")
                }
                Err(e) => e.to_string(),
            };
            tracing::error!(adapter = %name, error, restart_in = ?delay, "Adapter died; restarting it.");
            metrics.adapters.died(&name, owner, error, restarts);
            tokio::select! {
                _ = stop.cancelled() => {
                    metrics.adapters.recovered(&name, owner);
                    metrics.adapters.stopped(&name, owner);
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            restarts += 1;
        }
    });
}

/// An adapter's work until `stop`: Ok when stopped; a `work` that
/// finishes on its own (a schedule with no further instants) waits for
/// the stop, so only a failure ends it early.
async fn until_stopped(
    stop: CancellationToken,
    work: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::select! {
        _ = stop.cancelled() => Ok(()),
        result = work => {
            result?;
            stop.cancelled().await;
            Ok(())
        }
    }
}

/// [`keep_unchanged`] for adapters of one binding each (cron, expect).
fn keep_unchanged_one(
    running: &mut HashMap<String, (Arc<Binding>, CancellationToken)>,
    mut wanted: HashMap<String, Arc<Binding>>,
) -> HashMap<String, Arc<Binding>> {
    running.retain(|name, (current, token)| {
        let same = wanted
            .get(name)
            .is_some_and(|next| Arc::ptr_eq(next, current));
        if same {
            wanted.remove(name);
        } else {
            token.cancel();
        }
        same
    });
    wanted
}

/// Keeps the running adapters whose bindings are the same (by pointer: a
/// reload makes new ones), stops the others; returns the groups to start.
fn keep_unchanged<K: std::hash::Hash + Eq>(
    running: &mut HashMap<K, (Vec<Arc<Binding>>, CancellationToken)>,
    mut wanted: HashMap<K, Vec<Arc<Binding>>>,
) -> HashMap<K, Vec<Arc<Binding>>> {
    running.retain(|key, (current, token)| {
        let same = wanted.get(key).is_some_and(|next| {
            next.len() == current.len()
                && next
                    .iter()
                    .zip(current.iter())
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        if same {
            wanted.remove(key);
        } else {
            token.cancel();
        }
        same
    });
    wanted
}
