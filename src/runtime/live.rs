//! The output of running attempts, for followers: one
//! [`LiveAttempt`] per attempt of a kind that captures output, registered
//! when the attempt starts and removed once its logs are stored (then the
//! `task_logs` tree has them). Followers hold their attempt's `Arc`, so one
//! that is still reading when the entry goes reads it to its end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::executors::live::{LiveAttempt, Tapped};
use crate::log::RunId;

/// Run, task, attempt.
type AttemptKey = (RunId, Arc<str>, u32);

/// Running attempts' output by run, task and attempt.
#[derive(Default)]
pub struct LiveOutputs {
    attempts: Mutex<HashMap<AttemptKey, Arc<LiveAttempt>>>,
    /// Bumped whenever an attempt is added or removed.
    changed: watch::Sender<u64>,
    /// Where every attempt's output also goes (`switchyard run --output`).
    tap: Mutex<Option<mpsc::UnboundedSender<Tapped>>>,
    /// Cancelled when the server stops: followers end their streams (an
    /// open stream would otherwise hold the HTTP server's graceful
    /// shutdown until the task it follows ends).
    closing: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for LiveOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOutputs").finish_non_exhaustive()
    }
}

impl LiveOutputs {
    /// The output of one attempt while it runs (None: not running, or a
    /// kind without output).
    pub fn get(&self, run_id: RunId, task: &str, attempt: u32) -> Option<Arc<LiveAttempt>> {
        let attempts = self.attempts.lock().ok()?;
        attempts.get(&(run_id, Arc::from(task), attempt)).cloned()
    }

    /// Changes when an attempt starts or its logs are stored.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every piece of output of attempts started from now on, in one
    /// channel (attempts nobody taps pay nothing for it).
    pub fn tap(&self) -> mpsc::UnboundedReceiver<Tapped> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut tap) = self.tap.lock() {
            *tap = Some(tx);
        }
        rx
    }

    pub(super) fn start(
        &self,
        run_id: RunId,
        task: Arc<str>,
        attempt: u32,
        secrets: Arc<crate::spec::Secrets>,
    ) -> Arc<LiveAttempt> {
        let tap = self.tap.lock().ok().and_then(|tap| tap.clone());
        let live = Arc::new(LiveAttempt::new(
            run_id,
            Arc::clone(&task),
            attempt,
            secrets,
            tap,
        ));
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.insert((run_id, task, attempt), Arc::clone(&live));
        }
        self.changed.send_modify(|n| *n += 1);
        live
    }

    /// The attempt ended (its logs, if any, are stored): followers still
    /// reading it get the rest, then its end.
    pub(super) fn end(&self, live: &LiveAttempt) {
        live.finish();
        if let Ok(mut attempts) = self.attempts.lock() {
            attempts.remove(&(live.run_id, Arc::clone(&live.task), live.attempt));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Tells every follower to end its stream now (the server is stopping).
    pub fn close_followers(&self) {
        self.closing.cancel();
    }

    /// Cancelled once followers must end their streams.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closing.clone()
    }

    /// Attempts registered now (for tests and gauges).
    pub fn len(&self) -> usize {
        self.attempts.lock().map_or(0, |a| a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl super::EngineLoop {
    /// Registers the live output of an attempt about to start, for a kind
    /// that captures output (None for the others).
    pub(super) fn start_live(
        &mut self,
        run_id: RunId,
        task: usize,
        attempt: u32,
        kind: crate::executors::KindName,
    ) -> Option<Arc<LiveAttempt>> {
        if !crate::executors::captures_output(kind) {
            return None;
        }
        let id: Arc<str> = Arc::from(self.engine.run(run_id)?.workflow.tasks[task].id.as_str());
        let live = self
            .live
            .start(run_id, id, attempt, Arc::clone(&self.secrets));
        self.live_attempts
            .insert((run_id, task, attempt), Arc::clone(&live));
        Some(live)
    }
}
