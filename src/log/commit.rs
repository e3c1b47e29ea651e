//! One group commit's writes, gathered by the engine thread while it folds a
//! batch of inputs and written by [`Log::write`] just before the flush.
//!
//! - The records one run gets in one commit are stored as **one value**
//!   under the first record's key: the record itself when it is alone, a
//!   JSON array of them otherwise. A 3-task run is four inserts, not nine;
//!   [`Log::run_history`] reads both shapes, so older logs read as before.
//! - What must be all or nothing is **one sled transaction** per commit:
//!   events with their dedup entries (and expiry index), marks and created
//!   runs; runs created or ended with their `unfinished` entry and summary;
//!   records carrying lifecycle events with their outbox entries. A run
//!   group that only adds records is a single insert outside it. So
//!   recovery never meets a run that ended without its summary, or one
//!   created without its index entry (older logs can hold such states;
//!   recovery repairs them).

use std::collections::HashMap;

use super::events::{DedupEntry, EventRecord, Mark, dedup_key, expiry_key, transaction_error};
use super::{Error, Log, Millis, Record, RecordBody, RunId, RunStatus, record_key};

/// What one group commit writes. Built up by the engine, consumed by
/// [`Log::write`].
#[derive(Debug, Default)]
pub struct Commit {
    groups: Vec<Group>,
    by_run: HashMap<RunId, usize>,
    /// Events: seq, stored JSON, event id (for the id index).
    events: Vec<(u64, Vec<u8>, String)>,
    /// Dedup entries: key, value, expiry (for the expiry index).
    dedup: Vec<(Vec<u8>, Vec<u8>, Millis)>,
    /// Dedup entries of this commit, so a later event in it sees them.
    fresh: HashMap<Vec<u8>, DedupEntry>,
    marks: Vec<Mark>,
    /// Ended runs' stored records, with their run index keys.
    summaries: Vec<(RunId, Vec<u8>, [Vec<u8>; 3])>,
    /// Events published as lifecycle events (an absence alert): outbox key
    /// (the event's seq) → message.
    event_outbox: Vec<(u64, Vec<u8>)>,
    /// Runs to drop from `unfinished` without a record of this commit
    /// (recovery finishing a run whose end was recorded earlier).
    finished: Vec<RunId>,
}

/// One run's records in one commit.
#[derive(Debug)]
struct Group {
    run_id: RunId,
    first_seq: u64,
    /// The stored value: the first record's JSON; from the second record
    /// on, `[` and the records joined by commas (`]` is added by
    /// [`Group::close`]).
    value: Vec<u8>,
    count: usize,
    created: bool,
    ended: bool,
    /// Lifecycle events: outbox key (the record's seq) → message.
    outbox: Vec<(u64, Vec<u8>)>,
}

impl Group {
    fn close(&mut self) {
        if self.count > 1 {
            self.value.push(b']');
        }
    }
}

fn corrupt(key: String) -> impl FnOnce(serde_json::Error) -> Error {
    move |source| Error::Corrupt { key, source }
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.events.is_empty()
            && self.marks.is_empty()
            && self.summaries.is_empty()
            && self.finished.is_empty()
    }

    /// Adds a record, with its lifecycle event for the outbox when it has
    /// one.
    pub fn record(&mut self, record: &Record, outbox: Option<Vec<u8>>) -> Result<(), Error> {
        let run_id = record.run_id;
        let index = *self.by_run.entry(run_id).or_insert_with(|| {
            self.groups.push(Group {
                run_id,
                first_seq: record.seq,
                value: Vec::with_capacity(512),
                count: 0,
                created: false,
                ended: false,
                outbox: Vec::new(),
            });
            self.groups.len() - 1
        });
        let group = &mut self.groups[index];
        match group.count {
            0 => {}
            1 => {
                // A second record: the value becomes an array.
                group.value.insert(0, b'[');
                group.value.push(b',');
            }
            _ => group.value.push(b','),
        }
        record
            .write_stored(&mut group.value)
            .map_err(corrupt(format!("{run_id}/{}", record.seq)))?;
        group.count += 1;
        match record.body {
            RecordBody::RunCreated { .. } => group.created = true,
            RecordBody::RunEnded { .. } => group.ended = true,
            _ => {}
        }
        if let Some(message) = outbox {
            group.outbox.push((record.seq, message));
        }
        Ok(())
    }

    /// Adds an accepted event with its new dedup entries and adapter marks.
    pub fn event(
        &mut self,
        event: &EventRecord,
        dedup: Vec<(String, String, DedupEntry)>,
        marks: Vec<Mark>,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(event).map_err(corrupt(format!("event {}", event.seq)))?;
        self.events
            .push((event.seq, bytes, event.event_id().to_string()));
        for (binding, key, entry) in dedup {
            let bytes =
                serde_json::to_vec(&entry).map_err(corrupt(format!("dedup {binding}/{key}")))?;
            let key = dedup_key(&binding, &key);
            self.dedup.push((key.clone(), bytes, entry.expires_at));
            self.fresh.insert(key, entry);
        }
        self.marks.extend(marks);
        Ok(())
    }

    /// Publishes an event of this commit as a lifecycle event: its outbox
    /// entry is written in the event's transaction.
    pub fn publish_event(&mut self, seq: u64, message: Vec<u8>) {
        self.event_outbox.push((seq, message));
    }

    /// A dedup entry this commit writes.
    pub fn fresh_dedup(&self, binding: &str, key: &str) -> Option<&DedupEntry> {
        self.fresh.get(&dedup_key(binding, key))
    }

    /// The stored record of a run that ended in this commit (indexed by
    /// its workflow and status).
    pub fn summary(&mut self, run_id: RunId, workflow: &str, status: RunStatus, summary: Vec<u8>) {
        let keys = super::run_index_keys(run_id, workflow, status);
        self.summaries.push((run_id, summary, keys));
    }

    /// A run whose end is already in the log, finished now: its summary
    /// and its removal from `unfinished`.
    pub fn finished(&mut self, run_id: RunId, workflow: &str, status: RunStatus, summary: Vec<u8>) {
        self.summary(run_id, workflow, status, summary);
        self.finished.push(run_id);
    }
}

impl Log {
    /// Writes a commit. What must be all or nothing is **one sled
    /// transaction**: every event with its dedup entries, marks and the runs
    /// it created; every run group that creates or ends its run (with the
    /// `unfinished` entry, the summary) or carries lifecycle events; and
    /// recovery's finished runs. After a crash either all of that is there
    /// or none of it, so no run ends without its summary and its removal
    /// from `unfinished`, and no run exists without its index entry. A
    /// group that only adds records to a running run is one insert, atomic
    /// on its own, and is written outside the transaction (most commits of
    /// a running workflow are just that). Nothing is acted on before the
    /// flush, so which independent writes survive a crash does not matter.
    /// Not durable until the next [`Log::flush`].
    pub fn write(&self, mut commit: Commit) -> Result<(), Error> {
        let mut groups = std::mem::take(&mut commit.groups);
        groups.iter_mut().for_each(Group::close);
        let (atomic, plain): (Vec<Group>, Vec<Group>) = groups
            .into_iter()
            .partition(|g| g.created || g.ended || !g.outbox.is_empty());
        let transaction = !atomic.is_empty()
            || !commit.events.is_empty()
            || !commit.marks.is_empty()
            || !commit.summaries.is_empty()
            || !commit.finished.is_empty();
        if transaction {
            self.write_atomic(&atomic, &commit)?;
        }
        for group in &plain {
            self.records
                .insert(record_key(group.run_id, group.first_seq), &group.value[..])?;
        }
        Ok(())
    }

    /// The transaction takes only the trees this commit writes: sled stages
    /// and applies every tree a transaction names, so naming all eight for
    /// a commit that touches two costs throughput.
    fn write_atomic(&self, groups: &[Group], commit: &Commit) -> Result<(), Error> {
        use sled::Transactional;
        let mut trees: Vec<&sled::Tree> = Vec::with_capacity(8);
        fn take<'a>(
            trees: &mut Vec<&'a sled::Tree>,
            tree: &'a sled::Tree,
            needed: bool,
        ) -> Option<usize> {
            needed.then(|| {
                trees.push(tree);
                trees.len() - 1
            })
        }
        let mut slot = |tree, needed| take(&mut trees, tree, needed);
        let slots = Slots {
            records: slot(&self.records, !groups.is_empty()),
            unfinished: slot(
                &self.unfinished,
                groups.iter().any(|g| g.created || g.ended) || !commit.finished.is_empty(),
            ),
            runs: slot(&self.runs, !commit.summaries.is_empty()),
            run_index: slot(&self.run_index, !commit.summaries.is_empty()),
            events: slot(&self.events, !commit.events.is_empty()),
            event_ids: slot(&self.event_ids, !commit.events.is_empty()),
            dedup: slot(&self.dedup, !commit.dedup.is_empty()),
            dedup_expiry: slot(&self.dedup_expiry, !commit.dedup.is_empty()),
            marks: slot(&self.marks, !commit.marks.is_empty()),
            outbox: slot(
                &self.outbox,
                groups.iter().any(|g| !g.outbox.is_empty()) || !commit.event_outbox.is_empty(),
            ),
        };
        if trees.is_empty() {
            return Ok(());
        }
        trees
            .as_slice()
            .transaction(|view| {
                let tree = |slot: Option<usize>| slot.and_then(|i| view.get(i));
                let (records, unfinished, runs) = (
                    tree(slots.records),
                    tree(slots.unfinished),
                    tree(slots.runs),
                );
                if let Some(records) = records {
                    for group in groups {
                        let key = record_key(group.run_id, group.first_seq);
                        records.insert(&key[..], &group.value[..])?;
                    }
                }
                if let Some(unfinished) = unfinished {
                    for group in groups {
                        if group.created && !group.ended {
                            unfinished.insert(&group.run_id.as_bytes()[..], &[][..])?;
                        }
                        if group.ended {
                            unfinished.remove(&group.run_id.as_bytes()[..])?;
                        }
                    }
                    for run_id in &commit.finished {
                        unfinished.remove(&run_id.as_bytes()[..])?;
                    }
                }
                if let Some(outbox) = tree(slots.outbox) {
                    for group in groups {
                        for (seq, message) in &group.outbox {
                            outbox.insert(&seq.to_be_bytes()[..], &message[..])?;
                        }
                    }
                    for (seq, message) in &commit.event_outbox {
                        outbox.insert(&seq.to_be_bytes()[..], &message[..])?;
                    }
                }
                if let (Some(events), Some(ids)) = (tree(slots.events), tree(slots.event_ids)) {
                    for (seq, bytes, id) in &commit.events {
                        events.insert(&seq.to_be_bytes()[..], &bytes[..])?;
                        ids.insert(id.as_bytes(), &seq.to_be_bytes()[..])?;
                    }
                }
                if let (Some(dedup), Some(expiry)) = (tree(slots.dedup), tree(slots.dedup_expiry)) {
                    for (key, bytes, expires_at) in &commit.dedup {
                        dedup.insert(&key[..], &bytes[..])?;
                        expiry.insert(expiry_key(*expires_at, key), &[][..])?;
                    }
                }
                if let Some(marks) = tree(slots.marks) {
                    for mark in &commit.marks {
                        match &mark.value {
                            Some(value) => marks.insert(&mark.key[..], &value[..])?,
                            None => marks.remove(&mark.key[..])?,
                        };
                    }
                }
                if let (Some(runs), Some(index)) = (runs, tree(slots.run_index)) {
                    for (run_id, summary, keys) in &commit.summaries {
                        runs.insert(&run_id.as_bytes()[..], &summary[..])?;
                        for key in keys {
                            index.insert(&key[..], &[][..])?;
                        }
                    }
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(transaction_error)?;
        let outboxed: usize =
            groups.iter().map(|g| g.outbox.len()).sum::<usize>() + commit.event_outbox.len();
        if outboxed > 0 {
            self.outbox_pending
                .fetch_add(outboxed as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where each tree sits in a commit's transaction, if it takes part.
struct Slots {
    records: Option<usize>,
    unfinished: Option<usize>,
    runs: Option<usize>,
    run_index: Option<usize>,
    events: Option<usize>,
    event_ids: Option<usize>,
    dedup: Option<usize>,
    dedup_expiry: Option<usize>,
    marks: Option<usize>,
    outbox: Option<usize>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn body(task: &str) -> RecordBody {
        RecordBody::AttemptStarted {
            task: task.into(),
            attempt: 1,
        }
    }

    #[test]
    fn a_runs_records_in_one_commit_are_one_value_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let run = uuid::Uuid::now_v7();
        let other = uuid::Uuid::now_v7();
        // One record on its own (the shape every older log has).
        log.append(run, 1, RecordBody::RunStarted {}).unwrap();
        // Two commits that interleave two runs.
        let mut commit = Commit::default();
        for task in ["a", "b", "c"] {
            commit
                .record(&log.next_record(run, 2, body(task)).unwrap(), None)
                .unwrap();
            commit
                .record(&log.next_record(other, 2, body(task)).unwrap(), None)
                .unwrap();
        }
        log.write(commit).unwrap();
        let mut commit = Commit::default();
        let ended = RecordBody::RunEnded {
            status: super::super::RunStatus::Succeeded,
            error: None,
        };
        commit
            .record(&log.next_record(run, 3, ended).unwrap(), None)
            .unwrap();
        log.write(commit).unwrap();
        log.flush().unwrap();

        assert_eq!(log.records.len(), 4, "one value per run per commit");
        let history = log.run_history(run).unwrap();
        let kinds: Vec<String> = history
            .iter()
            .map(|r| match &r.body {
                RecordBody::AttemptStarted { task, .. } => task.clone(),
                other => format!("{other:?}")
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .into(),
            })
            .collect();
        assert_eq!(kinds, ["RunStarted", "a", "b", "c", "RunEnded"]);
        assert!(history.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(history.iter().all(|r| r.run_id == run));
        assert_eq!(log.run_history(other).unwrap().len(), 3);
    }

    #[test]
    fn an_older_log_is_upgraded_and_a_newer_one_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let run = uuid::Uuid::now_v7();
        let marker = |value: u32| {
            // A log just dropped lets go of its lock a moment later.
            let mut tries = 0;
            let db = loop {
                match sled::open(dir.path().join("log")) {
                    Ok(db) => break db,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let meta = db.open_tree("meta").unwrap();
            let old = meta.insert("format", &value.to_be_bytes()).unwrap();
            db.flush().unwrap();
            old.map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap()))
        };
        {
            let log = Log::open(dir.path()).unwrap();
            log.append(run, 1, RecordBody::RunStarted {}).unwrap();
            log.flush().unwrap();
        }
        let current = crate::log::FORMAT_VERSION;
        let newer = current + 1;
        assert_eq!(marker(1), Some(current), "a new log is the current format");
        {
            let log = Log::open(dir.path()).unwrap();
            assert_eq!(log.run_history(run).unwrap().len(), 1);
        }
        assert_eq!(
            marker(newer),
            Some(current),
            "opening a format 1 log marks it current"
        );
        let error = Log::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("format {newer}, written by a newer switchyard"))
                && error.contains(&format!("reads formats 1-{current}")),
            "{error}"
        );
    }

    #[test]
    fn the_sweeper_removes_only_expired_entries_and_keeps_a_rewritten_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let entry = |event: &str, expires_at| DedupEntry {
            event_id: event.into(),
            run_id: uuid::Uuid::now_v7(),
            expires_at,
        };
        let write = |entries: Vec<(String, DedupEntry)>| {
            let mut commit = Commit::default();
            let event = EventRecord {
                seq: log.next_seq().unwrap(),
                at: 0,
                event: serde_json::json!({"id": "e"}),
                referenced: false,
                outcomes: Vec::new(),
            };
            let dedup = entries
                .into_iter()
                .map(|(k, e)| ("b".to_string(), k, e))
                .collect();
            commit.event(&event, dedup, Vec::new()).unwrap();
            log.write(commit).unwrap();
        };
        // 2,000 live entries, 5 that expire at 10, and `k` that expired at
        // 10 but was rewritten by a later event to live until 1,000.
        write(
            (0..2000)
                .map(|i| (format!("live{i}"), entry("e", 5000)))
                .collect(),
        );
        write(
            (0..5)
                .map(|i| (format!("old{i}"), entry("e", 10)))
                .collect(),
        );
        write(vec![("k".into(), entry("first", 10))]);
        write(vec![("k".into(), entry("second", 1000))]);
        // Only the expired index entries are visited, in batches.
        assert_eq!(log.sweep_dedup(500, 4).unwrap(), 4);
        assert_eq!(log.sweep_dedup(500, 4).unwrap(), 2);
        assert_eq!(log.sweep_dedup(500, 4).unwrap(), 0);
        assert_eq!(log.dedup.len(), 2001, "the 5 expired ones are gone");
        let kept = log.dedup_lookup("b", "k", 500).unwrap().unwrap();
        assert_eq!(kept.event_id, "second", "the rewritten entry is kept");
        assert_eq!(log.sweep_dedup(1000, 100).unwrap(), 1);
        assert!(log.dedup_lookup("b", "k", 0).unwrap().is_none());
        assert_eq!(log.dedup.len(), 2000);
    }

    #[test]
    fn a_format_2_log_gets_its_dedup_expiry_index_when_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("log")).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("format", &2u32.to_be_bytes())
                .unwrap();
            let dedup = db.open_tree("dedup").unwrap();
            for (i, expires_at) in [10, 20, 5000].into_iter().enumerate() {
                let entry = DedupEntry {
                    event_id: format!("e{i}"),
                    run_id: uuid::Uuid::now_v7(),
                    expires_at,
                };
                dedup
                    .insert(
                        dedup_key("b", &format!("k{i}")),
                        serde_json::to_vec(&entry).unwrap(),
                    )
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(log.dedup_expiry.len(), 3);
        assert_eq!(log.sweep_dedup(100, 10).unwrap(), 2);
        assert_eq!(log.dedup.len(), 1);
    }

    #[test]
    fn a_corrupt_group_is_reported_with_its_run_and_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let run = uuid::Uuid::now_v7();
        log.records
            .insert(record_key(run, 7), &b"[{\"seq\": 7}, "[..])
            .unwrap();
        let error = log.run_history(run).unwrap_err().to_string();
        assert!(error.contains(&format!("{run}/7")), "{error}");
    }

    #[test]
    fn an_events_dedup_entries_are_seen_by_later_events_of_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut commit = Commit::default();
        let entry = DedupEntry {
            event_id: "e1".into(),
            run_id: uuid::Uuid::now_v7(),
            expires_at: i64::MAX,
        };
        let event = EventRecord {
            seq: log.next_seq().unwrap(),
            at: 0,
            event: serde_json::json!({"id": "e1"}),
            referenced: false,
            outcomes: Vec::new(),
        };
        commit
            .event(
                &event,
                vec![("b".into(), "k".into(), entry.clone())],
                Vec::new(),
            )
            .unwrap();
        assert_eq!(commit.fresh_dedup("b", "k"), Some(&entry));
        assert_eq!(commit.fresh_dedup("b", "other"), None);
        assert_eq!(commit.fresh_dedup("b\0k", ""), None, "keys do not collide");
        assert!(log.dedup_lookup("b", "k", 0).unwrap().is_none());
        log.write(commit).unwrap();
        assert_eq!(log.dedup_lookup("b", "k", 0).unwrap(), Some(entry));
        assert_eq!(log.events(None, 10).unwrap().len(), 1);
    }
}

#[cfg(test)]
mod index_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ended_runs_are_listed_through_the_index_newest_first_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        let mut commit = Commit::default();
        for i in 0..30 {
            let id = uuid::Uuid::now_v7();
            ids.push(id);
            let (workflow, status) = match i % 3 {
                0 => ("etl", RunStatus::Succeeded),
                1 => ("etl", RunStatus::Failed),
                _ => ("report", RunStatus::Succeeded),
            };
            let summary = serde_json::json!({"id": id, "workflow": workflow, "status": status});
            commit.summary(id, workflow, status, serde_json::to_vec(&summary).unwrap());
        }
        log.write(commit).unwrap();
        let listed = |w: Option<&str>, s: Option<RunStatus>, before, limit| -> Vec<uuid::Uuid> {
            log.ended_runs_where(w, s, before, limit)
                .unwrap()
                .iter()
                .map(|b| {
                    let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                    v["id"].as_str().unwrap().parse().unwrap()
                })
                .collect()
        };
        let etl_failed: Vec<_> = ids
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % 3 == 1)
            .map(|(_, id)| id)
            .rev()
            .collect();
        assert_eq!(
            listed(Some("etl"), Some(RunStatus::Failed), None, 100),
            etl_failed
        );
        assert_eq!(listed(Some("etl"), None, None, 100).len(), 20);
        assert_eq!(
            listed(None, Some(RunStatus::Succeeded), None, 100).len(),
            20
        );
        assert_eq!(
            listed(Some("report"), None, None, 3),
            [ids[29], ids[26], ids[23]]
        );
        assert_eq!(
            listed(Some("report"), None, Some(ids[23]), 2),
            [ids[20], ids[17]]
        );
        assert_eq!(
            listed(Some("nope"), None, None, 10),
            Vec::<uuid::Uuid>::new()
        );
        // A workflow whose name extends another's is not mixed in.
        assert!(listed(Some("et"), None, None, 10).is_empty());
        assert_eq!(
            listed(None, None, None, 5),
            ids.iter().rev().take(5).copied().collect::<Vec<_>>()
        );
    }
}
