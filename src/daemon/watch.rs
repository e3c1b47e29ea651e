//! Watches the workflow and binding dirs (notify) and reloads the registry
//! on change; a change of bindings wakes the trigger adapters to reconcile.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::metrics::DaemonMetrics;
use crate::registry::SharedRegistry;

/// Quiet time after the last file event before reloading (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(250);

pub fn spawn(
    registry: SharedRegistry,
    metrics: Arc<DaemonMetrics>,
    bindings_changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dirs = match registry.read() {
        Ok(r) => r
            .dirs()
            .iter()
            .chain(r.binding_dirs().iter().filter(|d| d.exists()))
            .cloned()
            .collect::<Vec<_>>(),
        Err(_) => return,
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch workflow files; edits need a restart.");
            return;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot watch workflow dir.");
        }
    }
    tokio::spawn(async move {
        let _watcher = watcher; // Dropping it stops the watch.
        // Errors already reported; start-up reported the initial ones.
        let mut reported: Vec<crate::spec::Diagnostic> = registry
            .read()
            .map(|r| r.errors.clone())
            .unwrap_or_default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = rx.recv() => if event.is_none() { return },
            }
            // Debounce: wait until events stop for a moment.
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(DEBOUNCE) => break,
                    event = rx.recv() => if event.is_none() { return },
                }
            }
            let shared = Arc::clone(&registry);
            let report =
                tokio::task::spawn_blocking(move || crate::registry::reload_shared(&shared)).await;
            let Ok(Some(report)) = report else { continue };
            metrics.reloads.fetch_add(1, Ordering::Relaxed);
            if !report.rejected.is_empty() {
                metrics.reloads_rejected.fetch_add(1, Ordering::Relaxed);
            }
            // A file that stays broken is reported when its errors change,
            // not at every reload.
            for d in report.rejected.iter().filter(|d| !reported.contains(d)) {
                if report.kept.contains(&d.file) {
                    tracing::warn!(file = %d.file.display(), path = %d.path, error = %d.message,
                        "File rejected; its last good version stays active.");
                } else {
                    tracing::warn!(file = %d.file.display(), path = %d.path, error = %d.message,
                        "File rejected; it never validated, so nothing of it is loaded.");
                }
            }
            reported = report.rejected.clone();
            if report.bindings_changed {
                tracing::info!("Bindings reloaded.");
                bindings_changed.notify_one();
            }
            if !(report.added.is_empty() && report.updated.is_empty() && report.removed.is_empty())
            {
                tracing::info!(added = ?report.added, updated = ?report.updated, removed = ?report.removed,
                    "Workflows reloaded.");
            }
        }
    });
}
