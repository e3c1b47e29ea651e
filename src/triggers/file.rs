//! File arrival (SPEC §4 `file`): one watcher per watched directory, shared
//! by every binding on it.
//!
//! A file becomes a candidate when it is closed after writing, renamed or
//! moved in, or found by a scan (start-up, a new subdirectory, a kernel queue
//! overflow). It fires once it has stayed unchanged (size and mtime) for the
//! binding's `settle`. A plain create or write does not make a candidate, so a
//! writer that pauses longer than `settle` with the file open does not fire
//! early.
//!
//! A durable ledger in the log (`file ++ binding ++ path` → size and mtime),
//! written in the same transaction as the event, keeps a handled file from
//! firing again, across restarts too; a changed file (new size or mtime) is a
//! new arrival. Nothing outside the watched directory is read: symbolic links
//! are ignored (never followed), and every path is checked to lie under it.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::log::Mark;
use crate::reactor::Reactor;
use crate::reactor::event::{Event, FILE_CREATED};
use crate::spec::binding::{Binding, FileTrigger, Trigger};

/// Events submitted at once (each waits for its group commit).
const MAX_IN_FLIGHT: usize = 512;
/// How often a watched directory's ledger drops files that are gone.
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often a directory is rescanned when it cannot be watched.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// How long the loop sleeps with nothing pending.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// What the ledger remembers of a handled file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    mtime_ns: i128,
}

fn ledger_prefix(binding: &str) -> Vec<u8> {
    let mut key = b"file\0".to_vec();
    key.extend_from_slice(binding.as_bytes());
    key.push(0);
    key
}

fn ledger_key(binding: &str, path: &Path) -> Vec<u8> {
    let mut key = ledger_prefix(binding);
    key.extend_from_slice(path.as_os_str().as_bytes());
    key
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// The event id of a file version: a hash of (path, size, mtime).
pub fn file_event_id(path: &Path, size: u64, mtime_ns: i128) -> String {
    let mut hasher = Sha256::new();
    hasher.update(path.as_os_str().as_bytes());
    hasher.update([0]);
    hasher.update(size.to_be_bytes());
    hasher.update(mtime_ns.to_be_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("file:{hex}")
}

/// A file waiting to settle.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seen: Seen,
    /// When its size or mtime last changed (or it became a candidate).
    since: Instant,
    /// The longest `settle` of the bindings whose pattern it matches.
    settle: Duration,
}

/// Why a watched directory cannot be watched at all (the watcher stops and
/// says so; a directory it can read but not watch is polled instead).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot create {}: {source}", .dir.display())]
    Create {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {}: {source}", .dir.display())]
    Resolve {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Pending {
    fn due(&self) -> Instant {
        self.since + self.settle
    }
}

/// The watcher of one directory and the bindings on it.
pub struct FileWatch {
    root: PathBuf,
    recursive: bool,
    bindings: Vec<Arc<Binding>>,
    reactor: Reactor,
}

impl FileWatch {
    /// `bindings` all watch `root` with the same `recursive`.
    pub fn new(
        root: PathBuf,
        recursive: bool,
        bindings: Vec<Arc<Binding>>,
        reactor: Reactor,
    ) -> Self {
        Self {
            root,
            recursive,
            bindings,
            reactor,
        }
    }

    fn trigger(binding: &Binding) -> Option<&FileTrigger> {
        match &binding.trigger {
            Trigger::File(f) => Some(f),
            _ => None,
        }
    }

    /// The watcher's task, until `stop` (run by `triggers::supervise`).
    pub async fn task(self, stop: CancellationToken) -> Result<(), String> {
        self.run(stop).await.map_err(|e| e.to_string())
    }

    async fn run(mut self, stop: CancellationToken) -> Result<(), WatchError> {
        if let Err(source) = std::fs::create_dir_all(&self.root) {
            return Err(WatchError::Create {
                dir: self.root.clone(),
                source,
            });
        }
        // The configured root itself may be a symlink; its target is the root.
        self.root = std::fs::canonicalize(&self.root).map_err(|source| WatchError::Resolve {
            dir: self.root.clone(),
            source,
        })?;
        let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        // Polling: asked for (`poll`, for network filesystems inotify cannot
        // see), or because the kernel watch could not be set up (e.g. the
        // inotify instance limit); then the directory is rescanned instead.
        let asked = self
            .bindings
            .iter()
            .filter_map(|b| Self::trigger(b))
            .filter_map(|f| f.poll)
            .min();
        let watcher = match asked {
            Some(_) => None,
            None => match self.watch(tx) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::warn!(dir = %self.root.display(), error = %e,
                        "Cannot watch the directory; polling it every {}s instead.", FALLBACK_POLL.as_secs());
                    None
                }
            },
        };
        let poll_every = asked.unwrap_or(FALLBACK_POLL);
        tracing::info!(dir = %self.root.display(), bindings = self.bindings.len(),
            polling = watcher.is_none(), "Watching for files.");
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
        // The watch is up before the scan, so nothing arriving meanwhile is missed.
        self.prune_ledger();
        self.scan(&self.root.clone(), &mut pending);
        let mut in_flight = tokio::task::JoinSet::new();
        let mut firing: HashSet<PathBuf> = HashSet::new();
        // A long-running daemon forgets files that are gone (polling does
        // it at every rescan).
        let mut prune = tokio::time::interval_at(
            (Instant::now() + LEDGER_PRUNE_EVERY).into(),
            LEDGER_PRUNE_EVERY,
        );
        loop {
            // Wake exactly when the earliest candidate is due (re-checked
            // after every batch of file events).
            let next_due = pending
                .iter()
                .filter(|(path, _)| !firing.contains(*path))
                .map(|(_, p)| p.due())
                .min()
                .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = poll.tick(), if watcher.is_none() => {
                    self.prune_ledger();
                    self.scan(&self.root.clone(), &mut pending);
                }
                _ = prune.tick(), if watcher.is_some() => self.prune_ledger(),
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    self.on_event(event, &mut pending);
                    // Take everything queued before looking at the clock.
                    while let Ok(event) = rx.try_recv() {
                        self.on_event(event, &mut pending);
                    }
                }
                _ = tokio::time::sleep_until(next_due.into()) => {
                    self.fire_settled(&mut pending, &mut firing, &mut in_flight).await;
                }
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok(path) = done {
                        firing.remove(&path);
                    }
                }
            }
        }
        drop(watcher);
        Ok(())
    }

    fn watch(
        &self,
        tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    ) -> Result<notify::RecommendedWatcher, notify::Error> {
        let mut watcher = notify::RecommendedWatcher::new(
            move |event| {
                let _ = tx.send(event);
            },
            notify::Config::default().with_follow_symlinks(false),
        )?;
        let mode = if self.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(&self.root, mode)?;
        Ok(watcher)
    }

    fn on_event(
        &self,
        event: notify::Result<notify::Event>,
        pending: &mut HashMap<PathBuf, Pending>,
    ) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(dir = %self.root.display(), error = %e, "Watch error; rescanning.");
                self.scan(&self.root.clone(), pending);
                return;
            }
        };
        if event.need_rescan() {
            tracing::warn!(dir = %self.root.display(), "File events overflowed; rescanning.");
            self.scan(&self.root.clone(), pending);
            return;
        }
        for path in &event.paths {
            match event.kind {
                // Complete: closed after writing, or moved in.
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    let target = if matches!(
                        event.kind,
                        EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                    ) {
                        // `Both` carries [from, to].
                        match event.paths.last() {
                            Some(to) if to == path => path,
                            _ => continue,
                        }
                    } else {
                        path
                    };
                    match std::fs::symlink_metadata(target) {
                        Ok(meta) if meta.is_dir() && self.recursive => self.scan(target, pending),
                        _ => self.candidate(target, pending),
                    }
                }
                // A directory created or moved in while recursive: files may
                // have landed in it before its watch was added.
                EventKind::Create(CreateKind::Folder) if self.recursive => self.scan(path, pending),
                // Still being written: restart its settle clock.
                EventKind::Modify(_) => {
                    if let Some(p) = pending.get_mut(path) {
                        p.since = Instant::now();
                    }
                }
                EventKind::Remove(_) => {
                    pending.remove(path);
                }
                _ => {}
            }
        }
    }

    /// Is `path` a regular file inside the root that some binding wants?
    fn wanted(&self, path: &Path) -> Option<std::fs::Metadata> {
        let rest = path.strip_prefix(&self.root).ok()?;
        if rest
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return None;
        }
        if !self.recursive && rest.components().count() != 1 {
            return None;
        }
        // Never follow a link: a symlink could point anywhere.
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        // A parent directory swapped for a symlink must not lead outside.
        let parent = std::fs::canonicalize(path.parent()?).ok()?;
        if !parent.starts_with(&self.root) {
            return None;
        }
        let name = path.file_name()?.to_string_lossy();
        self.bindings
            .iter()
            .filter_map(|b| Self::trigger(b))
            .any(|f| f.pattern.matches(&name))
            .then_some(meta)
    }

    fn candidate(&self, path: &Path, pending: &mut HashMap<PathBuf, Pending>) {
        let Some(meta) = self.wanted(path) else {
            return;
        };
        let seen = Seen {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let settle = self
            .bindings
            .iter()
            .filter_map(|b| Self::trigger(b))
            .filter(|f| f.pattern.matches(&name))
            .map(|f| f.settle)
            .max()
            .unwrap_or_default();
        pending.insert(
            path.to_path_buf(),
            Pending {
                seen,
                since: Instant::now(),
                settle,
            },
        );
    }

    /// Every wanted file under `dir` becomes a candidate (the ledger later
    /// drops the ones already handled).
    fn scan(&self, dir: &Path, pending: &mut HashMap<PathBuf, Pending>) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() && self.recursive {
                    stack.push(path);
                } else if kind.is_file() && !pending.contains_key(&path) {
                    self.candidate(&path, pending);
                }
            }
        }
    }

    /// Drops ledger entries of files that are gone, so the ledger stays as
    /// large as the directory.
    fn prune_ledger(&self) {
        let log = self.reactor.runtime().log();
        let mut gone = Vec::new();
        for binding in &self.bindings {
            let prefix = ledger_prefix(&binding.name);
            let Ok(entries) = log.marks_with_prefix(&prefix) else {
                continue;
            };
            for Mark { key, .. } in entries {
                let path = Path::new(std::ffi::OsStr::from_bytes(&key[prefix.len()..]));
                if std::fs::symlink_metadata(path).is_err() {
                    gone.push(Mark { key, value: None });
                }
            }
        }
        if !gone.is_empty()
            && let Err(e) = log.put_marks(&gone)
        {
            tracing::warn!(error = %e, "Cannot prune the file ledger.");
        }
    }

    async fn fire_settled(
        &self,
        pending: &mut HashMap<PathBuf, Pending>,
        firing: &mut HashSet<PathBuf>,
        in_flight: &mut tokio::task::JoinSet<PathBuf>,
    ) {
        let now = Instant::now();
        let mut ready = Vec::new();
        for (path, p) in pending.iter_mut() {
            if now < p.due() || firing.contains(path) {
                continue;
            }
            // Unchanged for `settle`? If not, wait again from now.
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_file() => {
                    let seen = Seen {
                        size: meta.len(),
                        mtime_ns: mtime_ns(&meta),
                    };
                    if seen == p.seen {
                        ready.push((path.clone(), seen));
                    } else {
                        p.seen = seen;
                        p.since = now;
                    }
                }
                _ => ready.push((
                    path.clone(),
                    Seen {
                        size: 0,
                        mtime_ns: -1,
                    },
                )),
            }
        }
        for (path, seen) in ready {
            pending.remove(&path);
            if seen.mtime_ns == -1 {
                continue; // Gone before it settled.
            }
            while in_flight.len() >= MAX_IN_FLIGHT {
                if let Some(Ok(done)) = in_flight.join_next().await {
                    firing.remove(&done);
                }
            }
            let Some((event, bindings, marks)) = self.prepare(&path, seen) else {
                continue;
            };
            firing.insert(path.clone());
            let reactor = self.reactor.clone();
            in_flight.spawn(async move {
                if let Err(e) = reactor.submit(event, &bindings, marks, false).await {
                    tracing::error!(path = %path.display(), error = %e, "Cannot record file event.");
                }
                path
            });
        }
    }

    /// The event for a settled file, with the bindings that have not handled
    /// this version yet and their ledger marks; None when all have.
    fn prepare(
        &self,
        path: &Path,
        seen: Seen,
    ) -> Option<(serde_json::Value, Vec<Arc<Binding>>, Vec<Mark>)> {
        let log = self.reactor.runtime().log();
        let name = path.file_name()?.to_string_lossy().into_owned();
        let ledger_value = serde_json::to_vec(&seen).ok()?;
        let mut bindings = Vec::new();
        let mut marks = Vec::new();
        for binding in &self.bindings {
            let Some(f) = Self::trigger(binding) else {
                continue;
            };
            if !f.pattern.matches(&name) {
                continue;
            }
            let key = ledger_key(&binding.name, path);
            let handled = log
                .mark(&key)
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Seen>(&v).ok())
                == Some(seen);
            if handled {
                continue;
            }
            bindings.push(Arc::clone(binding));
            marks.push(Mark {
                key,
                value: Some(ledger_value.clone()),
            });
        }
        if bindings.is_empty() {
            return None;
        }
        let now = crate::time::now_millis();
        let mut event = Event::new(
            file_event_id(path, seen.size, seen.mtime_ns),
            format!("file://{}", self.root.display()),
            FILE_CREATED,
            now,
        );
        event.subject = Some(name.clone());
        let modified_ms = i64::try_from(seen.mtime_ns / 1_000_000).unwrap_or(0);
        let mut data = json!({
            "path": path.to_string_lossy(),
            "name": name,
            "size": seen.size,
            "modified": crate::reactor::event::rfc3339(modified_ms),
        });
        // A name that is not UTF-8 cannot be carried in JSON as is: the exact
        // bytes go along in base64 so a task can still open the file.
        if path.to_str().is_none() {
            data["path_base64"] = json!(
                base64::engine::general_purpose::STANDARD.encode(path.as_os_str().as_bytes())
            );
        }
        event.data = data;
        Some((event.into_value(), bindings, marks))
    }
}

/// The bindings on file triggers grouped by watched directory.
pub fn groups(bindings: &[Arc<Binding>]) -> HashMap<(PathBuf, bool), Vec<Arc<Binding>>> {
    let mut out: HashMap<(PathBuf, bool), Vec<Arc<Binding>>> = HashMap::new();
    for binding in bindings {
        if let Trigger::File(f) = &binding.trigger {
            out.entry((f.path.clone(), f.recursive))
                .or_default()
                .push(Arc::clone(binding));
        }
    }
    out
}
