//! The reactor (SPEC §1, §4): matches an event against bindings, evaluates
//! each binding's `filter`, renders its `params` and dedup key, and hands the
//! result to the engine, which checks dedup and writes the event, its runs and
//! its dedup entries in one transaction before anything is acknowledged.
//!
//! Evaluation ([`evaluate`]) is pure, so `switchyard match` shows exactly what
//! the daemon would do.

pub mod cloudevents;
pub mod event;
pub mod expect;
pub mod pause;
pub mod pins;

use std::sync::Arc;

use serde_json::{Map, Value};

pub use event::{Event, EventKind, trigger_accepts};

use crate::engine::RunState;
use crate::expr::MapScope;
use crate::log::{Mark, Millis, Outcome};
use crate::metrics::EventMetrics;
use crate::registry::SharedRegistry;
pub use crate::runtime::Accepted;
use crate::runtime::{self, ChainHook, RuntimeHandle, Submission, SubmitCandidate};
use crate::spec::Workflow;
use crate::spec::binding::{Binding, SignatureScheme, Trigger};

/// How an event fares with one binding, before dedup.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// The binding would start a run with these params, unless the dedup key
    /// was seen within its TTL.
    Matched {
        params: Map<String, Value>,
        dedup_key: String,
    },
    /// The filter was false (or the binding is disabled).
    Filtered { reason: String },
    /// The filter, params or dedup key failed to evaluate.
    Failed { error: String },
}

fn scope(event: &Value, now: Millis) -> MapScope {
    let mut scope = MapScope {
        now,
        ..MapScope::default()
    };
    scope.names.insert("event".into(), event.clone());
    scope
}

/// Evaluates one binding on one event: filter, then params, then dedup key.
pub fn evaluate(binding: &Binding, event: &Value, now: Millis) -> Evaluation {
    if !binding.enabled {
        return Evaluation::Filtered {
            reason: "binding is disabled".into(),
        };
    }
    let scope = scope(event, now);
    if let Some(filter) = &binding.filter {
        match filter.evaluate(&scope) {
            Ok(true) => {}
            Ok(false) => {
                return Evaluation::Filtered {
                    reason: format!("filter `{}` is false", filter.source()),
                };
            }
            Err(e) => {
                return Evaluation::Failed {
                    error: format!("filter `{}`: {e}", filter.source()),
                };
            }
        }
    }
    let params = match binding.params.render(&scope) {
        Ok(Value::Object(params)) => params,
        Ok(_) => Map::new(),
        Err(e) => {
            return Evaluation::Failed {
                error: format!("params{}", prefixed(&e.message)),
            };
        }
    };
    let dedup_key = match &binding.dedup_key {
        None => default_dedup_key(binding, event),
        Some(template) => match template.render(&scope) {
            Ok(Value::String(s)) => s,
            Ok(Value::Null) => {
                return Evaluation::Failed {
                    error: "dedup.key rendered to null".into(),
                };
            }
            Ok(other) => other.to_string(),
            Err(e) => {
                return Evaluation::Failed {
                    error: format!("dedup.key: {}", e.message),
                };
            }
        },
    };
    Evaluation::Matched { params, dedup_key }
}

/// The dedup key of a binding that names none: the event id (the sender's
/// delivery id, a message id, a tick's instant). For webhooks signed with
/// `hmac-sha256` or `github`, whose signatures cover no timestamp, it is
/// the body's hash instead: a captured request replayed with a fresh
/// delivery id carries the same body, so it starts no second run within
/// the dedup TTL (`standard-webhooks` signs its id and timestamp, and stale
/// replays are refused at the edge).
pub fn default_dedup_key(binding: &Binding, event: &Value) -> String {
    if let Trigger::Webhook(hook) = &binding.trigger
        && matches!(
            hook.signature,
            Some(SignatureScheme::HmacSha256 | SignatureScheme::Github)
        )
        && let Some(hash) = event
            .pointer("/switchyard/body_sha256")
            .and_then(Value::as_str)
    {
        return format!("body:{hash}");
    }
    event
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn prefixed(message: &str) -> String {
    if message.starts_with('.') {
        message.to_string()
    } else {
        format!(": {message}")
    }
}

/// Builds a submission: evaluates every candidate binding.
pub fn submission(
    registry: &SharedRegistry,
    event: Value,
    bindings: &[Arc<Binding>],
    marks: Vec<Mark>,
    wait: bool,
    now: Millis,
) -> Submission {
    let (workflows, paused): (Vec<Option<Arc<Workflow>>>, Vec<bool>) = match registry.read() {
        Ok(registry) => bindings
            .iter()
            .map(|b| (registry.serving(&b.workflow), registry.is_paused(b)))
            .unzip(),
        Err(_) => (vec![None; bindings.len()], vec![false; bindings.len()]),
    };
    let candidates = bindings
        .iter()
        .zip(workflows)
        .zip(paused)
        .map(|((binding, workflow), paused)| {
            // Paused: recorded, nothing evaluated or started (a replay
            // evaluates it against the bindings of its day).
            if paused {
                return SubmitCandidate::Done(Outcome::Paused {
                    binding: binding.name.clone(),
                });
            }
            let evaluation = evaluate(binding, &event, now);
            let outcome = match (evaluation, workflow) {
                (Evaluation::Matched { params, dedup_key }, Some(workflow)) => {
                    return SubmitCandidate::Start {
                        binding: binding.name.clone(),
                        workflow,
                        params,
                        dedup_key,
                        ttl: binding.dedup_ttl,
                    };
                }
                (Evaluation::Matched { .. }, None) => Outcome::Failed {
                    binding: binding.name.clone(),
                    error: format!("workflow `{}` is not loaded", binding.workflow),
                },
                (Evaluation::Filtered { reason }, _) => Outcome::Filtered {
                    binding: binding.name.clone(),
                    reason,
                },
                (Evaluation::Failed { error }, _) => Outcome::Failed {
                    binding: binding.name.clone(),
                    error,
                },
            };
            SubmitCandidate::Done(outcome)
        })
        .collect::<Vec<_>>();
    let mut marks = marks;
    marks.extend(expect::arrivals(bindings, &candidates, now));
    Submission {
        event,
        candidates,
        marks,
        wait,
        publish: None,
    }
}

/// Turns events into runs through the engine.
#[derive(Clone)]
pub struct Reactor {
    runtime: RuntimeHandle,
    registry: SharedRegistry,
    metrics: Arc<EventMetrics>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor").finish_non_exhaustive()
    }
}

impl Reactor {
    /// Whether `binding` (or its workflow) is paused now.
    pub fn is_paused(&self, binding: &Binding) -> bool {
        self.any_paused(std::slice::from_ref(binding))
    }

    /// Whether any of `bindings` is paused now (one registry read).
    pub fn any_paused<B: std::borrow::Borrow<Binding>>(&self, bindings: &[B]) -> bool {
        self.registry.read().is_ok_and(|registry| {
            bindings
                .iter()
                .any(|binding| registry.is_paused(binding.borrow()))
        })
    }

    pub fn new(runtime: RuntimeHandle, registry: SharedRegistry) -> Self {
        Self {
            runtime,
            registry,
            metrics: Arc::new(EventMetrics::default()),
        }
    }

    pub fn registry(&self) -> &SharedRegistry {
        &self.registry
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    pub fn metrics(&self) -> &Arc<EventMetrics> {
        &self.metrics
    }

    /// Evaluates `bindings` on the event and submits it. Returns once the
    /// event, its runs and `marks` are durable.
    pub async fn submit(
        &self,
        event: Value,
        bindings: &[Arc<Binding>],
        marks: Vec<Mark>,
        wait: bool,
    ) -> Result<Accepted, runtime::Error> {
        let now = crate::time::now_millis();
        let submission = submission(&self.registry, event, bindings, marks, wait, now);
        self.accept(submission).await
    }

    /// Like [`Reactor::submit`], publishing the event itself on the events
    /// exchange (through the outbox, in its transaction): absence alerts.
    pub async fn submit_published(
        &self,
        event: Value,
        bindings: &[Arc<Binding>],
        marks: Vec<Mark>,
        message: crate::log::outbox::OutboxMessage,
    ) -> Result<Accepted, runtime::Error> {
        let now = crate::time::now_millis();
        let mut submission = submission(&self.registry, event, bindings, marks, false, now);
        submission.publish = Some(message);
        self.accept(submission).await
    }

    /// Records a submission and counts and logs what it did.
    async fn accept(&self, submission: Submission) -> Result<Accepted, runtime::Error> {
        let accepted = self.runtime.accept(submission).await?;
        self.metrics.count(&accepted.outcomes);
        for outcome in &accepted.outcomes {
            match outcome {
                Outcome::Duplicate {
                    binding,
                    dedup_key,
                    run_id,
                    first_event,
                } => tracing::info!(
                    event_id = %accepted.event_id, binding, dedup_key, run_id = %run_id, first_event,
                    "Duplicate event: its run was already started."
                ),
                Outcome::Started {
                    binding, run_id, ..
                } => tracing::debug!(
                    event_id = %accepted.event_id, binding, run_id = %run_id,
                    "Event started a run."
                ),
                Outcome::Failed { binding, error } => tracing::warn!(
                    event_id = %accepted.event_id, binding, error,
                    "Event matched but started no run."
                ),
                _ => {}
            }
        }
        Ok(accepted)
    }

    /// A replayed event: evaluated like [`Reactor::submit`], its runs
    /// started with dedup keys of its own (`replay:<event id>:<binding>`),
    /// so a replay is never taken for a duplicate of the original.
    pub async fn replay(
        &self,
        event: Value,
        bindings: &[Arc<Binding>],
    ) -> Result<Accepted, runtime::Error> {
        let now = crate::time::now_millis();
        let event_id = event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut submission = submission(&self.registry, event, bindings, Vec::new(), false, now);
        for candidate in &mut submission.candidates {
            if let SubmitCandidate::Start {
                binding, dedup_key, ..
            } = candidate
            {
                *dedup_key = format!("replay:{event_id}:{binding}");
            }
        }
        self.accept(submission).await
    }

    /// Records an event whose outcomes are already decided (an AMQP
    /// message no binding routes). Returns once it is durable.
    pub async fn record(
        &self,
        event: Value,
        outcomes: Vec<Outcome>,
    ) -> Result<Accepted, runtime::Error> {
        let submission = Submission {
            event,
            candidates: outcomes.into_iter().map(SubmitCandidate::Done).collect(),
            marks: Vec::new(),
            wait: false,
            publish: None,
        };
        let accepted = self.runtime.accept(submission).await?;
        self.metrics.count(&accepted.outcomes);
        Ok(accepted)
    }

    /// The enabled bindings with a trigger of this kind.
    pub fn bindings_where(&self, keep: impl Fn(&Binding) -> bool) -> Vec<Arc<Binding>> {
        match self.registry.read() {
            Ok(registry) => registry.bindings().filter(|b| keep(b)).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The engine's hook for run chaining (`on.run`): when a run ends, the
/// bindings watching its workflow and status are evaluated, in the same group
/// commit that records the end, so a chain is never lost to a crash.
pub fn chain_hook(registry: SharedRegistry) -> ChainHook {
    Arc::new(move |run: &RunState, now: Millis| {
        let bindings: Vec<Arc<Binding>> = {
            let registry = registry.read().ok()?;
            registry
                .bindings()
                .filter(|b| match &b.trigger {
                    Trigger::Run(r) => {
                        r.workflow == run.workflow.name && r.status.contains(&run.status)
                    }
                    _ => false,
                })
                .cloned()
                .collect()
        };
        if bindings.is_empty() {
            return None;
        }
        // Only now the run's full record (it clones params, vars, event).
        let event = Event::run_ended(&run.record(), now).into_value();
        Some(submission(
            &registry,
            event,
            &bindings,
            Vec::new(),
            false,
            now,
        ))
    })
}
