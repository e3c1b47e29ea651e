//! The durable log: the only code that touches sled.
//!
//! Every run transition is a [`Record`] written here before anyone acts on it.
//! The engine thread gathers a batch's records, events and summaries in a
//! [`Commit`], writes it ([`Log::write`]: in-memory inserts), then makes it
//! durable with one fsync ([`Log::flush`], group commit), and only then
//! performs effects or answers callers.
//!
//! Trees:
//! - `records`: `run_id (16 B) ++ seq (8 B, big-endian)` → the JSON of the
//!   records one commit wrote for the run: one record, or an array of them
//!   keyed by the first one's seq. A run's history is one prefix scan.
//! - `unfinished`: `run_id` → empty, for every run created and not yet ended,
//!   so start-up cost follows unfinished work, not history size.
//! - `runs`: `run_id` → the final run record JSON, written when a run ends.
//! - `definitions`: content hash → the workflow file's JSON, as it was when a
//!   run started with it.
//! - `versions`: `workflow name ++ 0 ++ content hash` → when a run first used
//!   that version, for `GET /workflows/{name}`.
//! - `task_logs`: `run_id ++ task ++ 0 ++ attempt` → captured stdout/stderr.
//! - `events`: `seq` → an accepted event and what it did ([`EventRecord`]).
//!   The one copy of the event: the runs it started refer to it by seq
//!   (`event_seq` in their `run_created` and summary), and reads of their
//!   history and summaries put it back.
//! - `dedup`: `binding ++ 0 ++ dedup key` → the event and run that first used
//!   the key, with its expiry.
//! - `marks`: adapters' durable state (cron's last fire, the file ledger).
//! - `outbox`: `seq` → a lifecycle event waiting to be published to
//!   `amqp.events_exchange`, written in one transaction with the record it
//!   describes and removed once the broker confirmed it.
//! - `dedup_expiry`: `expires_at (8 B) ++ dedup key` → empty: the dedup
//!   entries in expiry order, so the sweeper reads only expired ones.
//! - `run_index`: ended runs by `w\0<workflow>\0`, `s\0<status>\0` and
//!   `x\0<workflow>\0<status>\0`, each followed by the run id (time
//!   ordered) → empty: `GET /runs` with a filter reads only matches.
//! - `event_ids`: event id → the seq of its latest record in `events`.
//! - `meta`: the log format version ([`FORMAT_VERSION`]; older logs are
//!   upgraded on open, newer ones refused with both versions named).
//!
//! Sequence numbers come from sled's `generate_id`, which never hands out a
//! number twice, not even after a crash that lost unflushed appends.

pub mod commit;
mod durable;
pub mod events;
pub mod outbox;
pub mod record;
pub mod retention;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use commit::Commit;
pub use events::{DedupEntry, EventRecord, Mark, Outcome, summary_with_event_ref};
pub use record::{Millis, ParentRun, Record, RecordBody, ReusedTask, RunId, RunStatus};
use serde::{Deserialize, Serialize};

/// Errors of the log. Any of them means the data dir cannot be trusted for
/// writing any more; callers stop rather than act on an undurable transition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "data dir {dir} is locked by another switchyard process (a running `serve`?); \
         stop it, or talk to it with `--server`, or use another `--data-dir`"
    )]
    Locked { dir: PathBuf },
    #[error("cannot open the log in {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "data dir {dir} holds a log of another format ({found}); use a matching switchyard version"
    )]
    Format { dir: PathBuf, found: String },
    #[error("log storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("corrupt log record {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Captured output of one attempt, stored beside the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskLogs {
    pub attempt: u32,
    pub stdout: String,
    pub stderr: String,
    /// True when output beyond the cap was dropped (the head is dropped, the tail kept).
    #[serde(default)]
    pub truncated: bool,
}

/// Handle on the log. Cloning is cheap; all clones share one database.
/// Only the engine driver appends; anyone may read.
#[derive(Clone)]
pub struct Log {
    db: sled::Db,
    records: sled::Tree,
    unfinished: sled::Tree,
    runs: sled::Tree,
    definitions: sled::Tree,
    versions: sled::Tree,
    task_logs: sled::Tree,
    events: sled::Tree,
    dedup: sled::Tree,
    dedup_expiry: sled::Tree,
    run_index: sled::Tree,
    event_ids: sled::Tree,
    marks: sled::Tree,
    outbox: sled::Tree,
    meta: sled::Tree,
    /// Highest sequence number appended by this handle.
    last_seq: Arc<AtomicU64>,
    /// Highest sequence number known to be on disk.
    durable_seq: Arc<AtomicU64>,
    /// Group commits so far (observability, and tests proving batching).
    flushes: Arc<AtomicU64>,
    /// Time spent in those flushes, in nanoseconds.
    flush_nanos: Arc<AtomicU64>,
    /// Each flush's latency and size (`/metrics`); clones share them.
    commits: crate::metrics::CommitHistograms,
    /// Test hook: make flushes fail ([`Log::inject_flush_failures`]).
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// What sled's flush leaves undone for power loss.
    durability: Arc<durable::Durability>,
    /// Entries in `outbox`, kept as writes and removals happen (so
    /// `/metrics` never counts a tree).
    outbox_pending: Arc<AtomicU64>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("last_seq", &self.last_seq.load(Ordering::Relaxed))
            .finish()
    }
}

/// Attempts, 100 ms apart, to take the data dir's lock.
const LOCK_TRIES: u32 = 10;
const FORMAT_KEY: &[u8] = b"format";
/// Version of the on-disk format: trees, keys, and the record and event
/// variants that may appear. Bumped whenever any of them is added to, so a
/// binary never meets data it cannot read in the middle of a run: it
/// refuses the whole log at open instead, naming both versions.
/// 2: a `records` value may hold an array of one commit's records.
/// 3: the `dedup_expiry` index; events may carry the `unrouted` outcome.
/// 4: the `run_index` (ended runs by workflow and status) and `event_ids`
///    (event id → its latest record) indexes.
/// 5: an event is stored once: runs it started refer to it by `event_seq`
///    (in `run_created` and in their summaries) instead of carrying a copy.
/// 6: `run_created` may carry the project's `vars` (an older binary would
///    replay such a run without them).
/// 7: `run_created` may carry `parent` (a sub-workflow's run: the `workflow`
///    task attempt that started it, and its depth) and `logical_time`;
///    events may carry the `paused` outcome.
/// 8: `check_observed` records (a `check` task's observation, when it
///    changes).
pub const FORMAT_VERSION: u32 = 8;
/// Formats this binary reads; an older one is upgraded on open (3 builds
/// the dedup expiry index) and marked current, so an older binary refuses
/// the log instead of misreading it.
const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT_VERSION;

impl Log {
    /// Opens (or creates) the log under `data_dir/log`. Fails with
    /// [`Error::Locked`] when another process holds it.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("log");
        let config = sled::Config::new()
            .path(&dir)
            .mode(sled::Mode::HighThroughput)
            // Durability is ours to decide: flush only at group commits.
            .flush_every_ms(None)
            .cache_capacity(32 * 1024 * 1024);
        // A process killed while spawning a task can leave a forked child
        // holding the lock until that child execs, a moment later; so a
        // locked dir is retried briefly before it is reported.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    tries += 1;
                    if tries >= LOCK_TRIES {
                        return Err(Error::Locked {
                            dir: data_dir.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(Error::Open {
                        dir: data_dir.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let records = db.open_tree("records")?;
        let unfinished = db.open_tree("unfinished")?;
        let runs = db.open_tree("runs")?;
        let definitions = db.open_tree("definitions")?;
        let versions = db.open_tree("versions")?;
        let task_logs = db.open_tree("task_logs")?;
        let events = db.open_tree("events")?;
        let dedup = db.open_tree("dedup")?;
        let dedup_expiry = db.open_tree("dedup_expiry")?;
        let run_index = db.open_tree("run_index")?;
        let event_ids = db.open_tree("event_ids")?;
        let marks = db.open_tree("marks")?;
        let outbox = db.open_tree("outbox")?;
        let meta = db.open_tree("meta")?;
        let found = meta
            .get(FORMAT_KEY)?
            .map(|v| <[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes));
        let upgrade_from = match found {
            None => {
                meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                None
            }
            Some(Ok(version)) if version == FORMAT_VERSION => None,
            Some(Ok(version)) if READABLE_FORMATS.contains(&version) => Some(version),
            Some(Ok(version)) => {
                return Err(Error::Format {
                    dir: data_dir.to_path_buf(),
                    found: format!(
                        "format {version}, written by a newer switchyard; this binary ({}) \
                         reads formats {}-{}",
                        env!("CARGO_PKG_VERSION"),
                        READABLE_FORMATS.start(),
                        READABLE_FORMATS.end()
                    ),
                });
            }
            Some(Err(_)) => {
                return Err(Error::Format {
                    dir: data_dir.to_path_buf(),
                    found: "an unreadable format marker".into(),
                });
            }
        };
        let on_disk = db.generate_id()?;
        let durability = durable::Durability::open(&dir).map_err(|e| Error::Open {
            dir: data_dir.to_path_buf(),
            source: sled::Error::Io(e),
        })?;
        let log = Self {
            db,
            records,
            unfinished,
            runs,
            definitions,
            versions,
            task_logs,
            events,
            dedup,
            dedup_expiry,
            run_index,
            event_ids,
            marks,
            outbox,
            meta: meta.clone(),
            last_seq: Arc::new(AtomicU64::new(0)),
            // Whatever is on disk at open is durable; every later record
            // gets a higher number.
            durable_seq: Arc::new(AtomicU64::new(on_disk)),
            flushes: Arc::new(AtomicU64::new(0)),
            flush_nanos: Arc::new(AtomicU64::new(0)),
            commits: crate::metrics::CommitHistograms::default(),
            failing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            durability: Arc::new(durability),
            outbox_pending: Arc::new(AtomicU64::new(0)),
        };
        log.outbox_pending
            .store(log.outbox.iter().count() as u64, Ordering::Relaxed);
        if let Some(version) = upgrade_from {
            if version < 3 {
                let entries = log.index_dedup_expiry()?;
                let runs = log.reindex_unfinished()?;
                tracing::info!(
                    dedup_entries = entries,
                    runs_reindexed = runs,
                    "Log upgraded to format 3: dedup expiry index built, unfinished runs checked."
                );
            }
            if version < 4 {
                let (runs, events) = log.build_indexes()?;
                tracing::info!(
                    runs,
                    events,
                    "Log upgraded to format 4: run and event id indexes built."
                );
            }
            // The upgrade is durable before the marker says it happened.
            log.db.flush()?;
            meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
            meta.flush()?;
        }
        Ok(log)
    }

    /// Appends one transition on its own (recovery's and offline cancel's
    /// writes; the engine thread gathers a whole [`Commit`]). Not durable
    /// until the next [`Log::flush`].
    pub fn append(&self, run_id: RunId, at: Millis, body: RecordBody) -> Result<Record, Error> {
        let record = self.next_record(run_id, at, body)?;
        let mut commit = Commit::default();
        commit.record(&record, None)?;
        self.write(commit)?;
        Ok(record)
    }

    /// The next sequence number (records and events share one sequence).
    pub fn next_seq(&self) -> Result<u64, Error> {
        let seq = self.db.generate_id()? + 1;
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
        Ok(seq)
    }

    /// Numbers a transition without writing it: the engine applies it first
    /// (to learn what it means, e.g. whether a task failed for good), then
    /// adds it to its [`Commit`] before anything acts on it.
    pub fn next_record(
        &self,
        run_id: RunId,
        at: Millis,
        body: RecordBody,
    ) -> Result<Record, Error> {
        Ok(Record {
            seq: self.next_seq()?,
            at,
            run_id,
            body,
        })
    }

    /// Makes everything appended so far durable (one fsync for all of it),
    /// against power loss too ([`durable`]).
    pub fn flush(&self) -> Result<(), Error> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(Error::Storage(sled::Error::Io(std::io::Error::other(
                "injected flush failure (test hook)",
            ))));
        }
        let last = self.last_seq.load(Ordering::Relaxed);
        let before = self.durable_seq.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        self.db.flush()?;
        self.durability.sync().map_err(sled::Error::Io)?;
        let took = started.elapsed();
        self.flush_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.commits.seconds.observe(took.as_secs_f64());
        self.commits
            .records
            .observe(last.saturating_sub(before) as f64);
        self.durable_seq.fetch_max(last, Ordering::Release);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Test hook: while on, every [`Log::flush`] fails without flushing
    /// (what was written stays in memory), as a full or failing disk would.
    #[doc(hidden)]
    pub fn inject_flush_failures(&self, on: bool) {
        self.failing.store(on, Ordering::Relaxed);
    }

    /// The highest sequence number made durable by a flush.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// How many group commits this handle's database has done.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Each group commit's latency and number of records, as histograms.
    pub fn commit_histograms(&self) -> &crate::metrics::CommitHistograms {
        &self.commits
    }

    /// Time spent making group commits durable so far (the fsyncs).
    pub fn flush_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.flush_nanos.load(Ordering::Relaxed))
    }

    /// Every record of one run, in sequence order. A value holds one
    /// record, or a JSON array of the records one commit wrote for the run.
    pub fn run_history(&self, run_id: RunId) -> Result<Vec<Record>, Error> {
        let mut history = Vec::new();
        for entry in self.records.scan_prefix(run_id.as_bytes()) {
            let (key, value) = entry?;
            let corrupt = |source| Error::Corrupt {
                key: format!("{run_id}/{}", key_seq(&key)),
                source,
            };
            history.extend(decode_records(&value).map_err(corrupt)?);
        }
        // A run started by a stored event refers to it (format 5).
        if let Some(Record {
            body:
                RecordBody::RunCreated {
                    event: event @ None,
                    event_seq: Some(seq),
                    ..
                },
            ..
        }) = history.first_mut()
        {
            *event = self.stored_event(*seq)?;
        }
        Ok(history)
    }

    /// Puts every run with records but neither a summary nor an
    /// `unfinished` entry into `unfinished`. Logs before format 3 wrote a
    /// commit's later parts as plain inserts, so a crash could keep a run's
    /// records without its index entry; recovery then folds it and resumes
    /// it (or, if it had ended, finishes it). One scan of every key, once,
    /// when such a log is upgraded.
    fn reindex_unfinished(&self) -> Result<usize, Error> {
        let mut found = 0;
        let mut last: Option<[u8; 16]> = None;
        for key in self.records.iter().keys() {
            let key = key?;
            let Some(run) = key.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()) else {
                continue;
            };
            if last == Some(run) {
                continue;
            }
            last = Some(run);
            if !self.runs.contains_key(run)? && !self.unfinished.contains_key(run)? {
                self.unfinished.insert(run, &[])?;
                found += 1;
            }
        }
        Ok(found)
    }

    /// Runs created and not yet ended: what start-up must resume.
    pub fn unfinished_runs(&self) -> Result<Vec<RunId>, Error> {
        self.unfinished
            .iter()
            .keys()
            .filter_map(|key| match key {
                Ok(key) => run_id_from_key(&key).map(Ok),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    /// Stores a workflow definition under its content hash (idempotent) and
    /// notes the version under the workflow's name.
    pub fn put_definition(
        &self,
        workflow: &str,
        version: &str,
        label: Option<u64>,
        source: &[u8],
        at: Millis,
    ) -> Result<(), Error> {
        if !self.definitions.contains_key(version)? {
            self.definitions.insert(version, source)?;
            let info = VersionInfo {
                version: version.to_string(),
                label,
                first_run_at: at,
            };
            let bytes = serde_json::to_vec(&info).map_err(|source| Error::Corrupt {
                key: version.to_string(),
                source,
            })?;
            self.versions
                .insert(version_key(workflow, version), bytes)?;
        }
        Ok(())
    }

    /// Versions of a workflow that runs have used, oldest first.
    pub fn versions(&self, workflow: &str) -> Result<Vec<VersionInfo>, Error> {
        let mut prefix = workflow.as_bytes().to_vec();
        prefix.push(0);
        let mut out: Vec<VersionInfo> = self
            .versions
            .scan_prefix(prefix)
            .values()
            .map(|v| {
                let v = v?;
                serde_json::from_slice(&v).map_err(|source| Error::Corrupt {
                    key: workflow.to_string(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|v| v.first_run_at);
        Ok(out)
    }

    /// Stored records of ended runs, newest first, starting below `before`.
    /// `keep` filters; at most `limit` are returned.
    pub fn ended_runs(
        &self,
        before: Option<RunId>,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let range = match before {
            Some(before) => self.runs.range(..before.as_bytes().to_vec()),
            None => self.runs.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for entry in range.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, value) = entry?;
            if keep(&value) {
                out.push(self.resolve_summary(&value)?);
            }
        }
        Ok(out)
    }

    /// Stored records of ended runs of `workflow` and/or with `status`,
    /// newest first, below `before`: at most `limit`, read through the run
    /// index (the cost follows `limit`, not the store's size).
    pub fn ended_runs_where(
        &self,
        workflow: Option<&str>,
        status: Option<RunStatus>,
        before: Option<RunId>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let prefix = match (workflow, status) {
            (None, None) => return self.ended_runs(before, limit, |_| true),
            (Some(w), None) => run_index_prefix(b'w', &[w.as_bytes()]),
            (None, Some(s)) => run_index_prefix(b's', &[s.as_str().as_bytes()]),
            (Some(w), Some(s)) => run_index_prefix(b'x', &[w.as_bytes(), s.as_str().as_bytes()]),
        };
        let mut upper = prefix.clone();
        match before {
            Some(before) => upper.extend_from_slice(before.as_bytes()),
            None => upper.extend_from_slice(&[0xff; 17]),
        }
        let mut out = Vec::new();
        for entry in self.run_index.range(prefix.clone()..upper).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some(run_id) = key.get(prefix.len()..).and_then(run_id_from_key) else {
                continue;
            };
            if let Some(summary) = self.runs.get(run_id.as_bytes())? {
                out.push(self.resolve_summary(&summary)?);
            }
        }
        Ok(out)
    }

    /// The newest ended run of `workflow` with `status` whose stored
    /// summary (as written: its event not resolved) `matches`, looking at
    /// up to `scan` of them, newest first, through the run index: each is
    /// read only when reached, and the walk stops at the first match.
    pub fn find_ended_run(
        &self,
        workflow: &str,
        status: RunStatus,
        scan: usize,
        mut matches: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, Error> {
        let prefix = run_index_prefix(b'x', &[workflow.as_bytes(), status.as_str().as_bytes()]);
        let mut upper = prefix.clone();
        upper.extend_from_slice(&[0xff; 17]);
        for entry in self.run_index.range(prefix.clone()..upper).rev().take(scan) {
            let (key, _) = entry?;
            let Some(run_id) = key.get(prefix.len()..).and_then(run_id_from_key) else {
                continue;
            };
            if let Some(summary) = self.runs.get(run_id.as_bytes())?
                && matches(&summary)
            {
                return Ok(Some(summary.to_vec()));
            }
        }
        Ok(None)
    }

    /// Builds the run and event id indexes (a log from before they existed).
    fn build_indexes(&self) -> Result<(usize, usize), Error> {
        let mut runs = 0;
        for entry in self.runs.iter() {
            let (key, value) = entry?;
            let Some(run_id) = run_id_from_key(&key) else {
                continue;
            };
            let Ok(summary) = serde_json::from_slice::<IndexedRun>(&value) else {
                continue;
            };
            for key in run_index_keys(run_id, &summary.workflow, summary.status) {
                self.run_index.insert(key, &[])?;
            }
            runs += 1;
        }
        let mut events = 0;
        for entry in self.events.iter() {
            let (key, value) = entry?;
            if let Ok(event) = serde_json::from_slice::<EventRecord>(&value) {
                self.event_ids
                    .insert(event.event_id().as_bytes(), &key[..])?;
                events += 1;
            }
        }
        Ok((runs, events))
    }

    pub fn definition(&self, version: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.definitions.get(version)?.map(|v| v.to_vec()))
    }

    /// Stores the final record of an ended run (recovery's broken runs; the
    /// engine adds summaries to its [`Commit`]).
    pub fn put_run_summary(&self, run_id: RunId, summary: &[u8]) -> Result<(), Error> {
        self.runs.insert(run_id.as_bytes(), summary)?;
        Ok(())
    }

    pub fn run_summary(&self, run_id: RunId) -> Result<Option<Vec<u8>>, Error> {
        match self.runs.get(run_id.as_bytes())? {
            Some(summary) => self.resolve_summary(&summary).map(Some),
            None => Ok(None),
        }
    }

    pub fn put_task_logs(&self, run_id: RunId, task: &str, logs: &TaskLogs) -> Result<(), Error> {
        let bytes = serde_json::to_vec(logs).map_err(|source| Error::Corrupt {
            key: format!("{run_id}/{task}"),
            source,
        })?;
        self.task_logs
            .insert(task_log_key(run_id, task, logs.attempt), bytes)?;
        Ok(())
    }

    /// Captured output of every attempt of one task, oldest attempt first.
    pub fn task_logs(&self, run_id: RunId, task: &str) -> Result<Vec<TaskLogs>, Error> {
        let mut prefix = run_id.as_bytes().to_vec();
        prefix.extend_from_slice(task.as_bytes());
        prefix.push(0);
        self.task_logs
            .scan_prefix(prefix)
            .map(|entry| {
                let (key, value) = entry?;
                serde_json::from_slice(&value).map_err(|source| Error::Corrupt {
                    key: format!("{:?}", key.as_ref()),
                    source,
                })
            })
            .collect()
    }
}

/// A version of a workflow that a run has used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u64>,
    pub first_run_at: Millis,
}

fn version_key(workflow: &str, version: &str) -> Vec<u8> {
    let mut key = workflow.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(version.as_bytes());
    key
}

/// A `records` value: one record, or a JSON array of one commit's records.
pub fn decode_records(value: &[u8]) -> Result<Vec<Record>, serde_json::Error> {
    if value.first() == Some(&b'[') {
        serde_json::from_slice(value)
    } else {
        serde_json::from_slice(value).map(|record| vec![record])
    }
}

/// What the run index needs of a stored run record.
#[derive(Deserialize)]
struct IndexedRun {
    workflow: String,
    status: RunStatus,
}

fn run_index_prefix(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![kind, 0];
    for part in parts {
        key.extend_from_slice(part);
        key.push(0);
    }
    key
}

/// The run index's keys for an ended run.
pub(crate) fn run_index_keys(run_id: RunId, workflow: &str, status: RunStatus) -> [Vec<u8>; 3] {
    let status = status.as_str().as_bytes();
    let with_id = |mut key: Vec<u8>| {
        key.extend_from_slice(run_id.as_bytes());
        key
    };
    [
        with_id(run_index_prefix(b'w', &[workflow.as_bytes()])),
        with_id(run_index_prefix(b's', &[status])),
        with_id(run_index_prefix(b'x', &[workflow.as_bytes(), status])),
    ]
}

fn record_key(run_id: RunId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(run_id.as_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn task_log_key(run_id: RunId, task: &str, attempt: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + task.len() + 5);
    key.extend_from_slice(run_id.as_bytes());
    key.extend_from_slice(task.as_bytes());
    key.push(0);
    key.extend_from_slice(&attempt.to_be_bytes());
    key
}

fn key_seq(key: &[u8]) -> u64 {
    key.get(16..24)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

fn run_id_from_key(bytes: &[u8]) -> Option<RunId> {
    <[u8; 16]>::try_from(bytes).ok().map(RunId::from_bytes)
}
