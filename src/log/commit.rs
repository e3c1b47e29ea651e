//! One group commit's writes, gathered by the engine thread while it folds a
//! batch of inputs and written by [`Log::write`] just before the flush.
//!
//! - The records one run gets in one commit are stored as **one value**
//!   under the first record's key: the record itself when it is alone, a
//!   JSON array of them otherwise. A 3-task run is four inserts, not nine;
//!   [`Log::run_history`] reads both shapes, so older logs read as before.
//! - What must be all or nothing is **one sled transaction per commit**:
//!   every event with its dedup entries and marks, the record groups of the
//!   runs those events created, and every group carrying lifecycle events
//!   with its outbox entries. The rest (later records of running runs, run
//!   summaries) are plain inserts written after it, in this order, so a crash
//!   that keeps a prefix of the commit never keeps a run without its event
//!   or a chained event without its run: a run whose end was lost is resumed,
//!   ends again, and its chained event (id `run:<id>`) is deduplicated.

use std::collections::HashMap;

use super::events::{DedupEntry, EventRecord, Mark, dedup_key, transaction_error};
use super::{Error, Log, Record, RecordBody, RunId, record_key};

/// What one group commit writes. Built up by the engine, consumed by
/// [`Log::write`].
#[derive(Debug, Default)]
pub struct Commit {
    groups: Vec<Group>,
    by_run: HashMap<RunId, usize>,
    events: Vec<(u64, Vec<u8>)>,
    dedup: Vec<(Vec<u8>, Vec<u8>)>,
    /// Dedup entries of this commit, so a later event in it sees them.
    fresh: HashMap<Vec<u8>, DedupEntry>,
    marks: Vec<Mark>,
    summaries: Vec<(RunId, Vec<u8>)>,
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
    /// Written in the commit's transaction.
    atomic: bool,
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
    }

    /// Adds a record, with its lifecycle event for the outbox when it has
    /// one. `atomic` puts its run's group in the commit's transaction (a run
    /// created by an event).
    pub fn record(
        &mut self,
        record: &Record,
        outbox: Option<Vec<u8>>,
        atomic: bool,
    ) -> Result<(), Error> {
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
                atomic: false,
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
        serde_json::to_writer(&mut group.value, record)
            .map_err(corrupt(format!("{run_id}/{}", record.seq)))?;
        group.count += 1;
        match record.body {
            RecordBody::RunCreated { .. } => group.created = true,
            RecordBody::RunEnded { .. } => group.ended = true,
            _ => {}
        }
        if let Some(message) = outbox {
            group.outbox.push((record.seq, message));
            group.atomic = true;
        }
        group.atomic |= atomic;
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
        self.events.push((event.seq, bytes));
        for (binding, key, entry) in dedup {
            let bytes =
                serde_json::to_vec(&entry).map_err(corrupt(format!("dedup {binding}/{key}")))?;
            let key = dedup_key(&binding, &key);
            self.dedup.push((key.clone(), bytes));
            self.fresh.insert(key, entry);
        }
        self.marks.extend(marks);
        Ok(())
    }

    /// A dedup entry this commit writes.
    pub fn fresh_dedup(&self, binding: &str, key: &str) -> Option<&DedupEntry> {
        self.fresh.get(&dedup_key(binding, key))
    }

    /// The stored record of a run that ended in this commit.
    pub fn summary(&mut self, run_id: RunId, summary: Vec<u8>) {
        self.summaries.push((run_id, summary));
    }
}

impl Log {
    /// Writes a commit: its transaction, then its plain inserts (see the
    /// module doc for the order). Not durable until the next [`Log::flush`].
    pub fn write(&self, commit: Commit) -> Result<(), Error> {
        let (mut atomic, mut plain): (Vec<Group>, Vec<Group>) =
            commit.groups.into_iter().partition(|g| g.atomic);
        atomic
            .iter_mut()
            .chain(plain.iter_mut())
            .for_each(Group::close);
        if !atomic.is_empty() || !commit.events.is_empty() || !commit.marks.is_empty() {
            use sled::Transactional;
            (
                &self.records,
                &self.unfinished,
                &self.events,
                &self.dedup,
                &self.marks,
                &self.outbox,
            )
                .transaction(|(records, unfinished, events, dedup, marks, outbox)| {
                    for group in &atomic {
                        let key = record_key(group.run_id, group.first_seq);
                        records.insert(&key[..], &group.value[..])?;
                        if group.created {
                            unfinished.insert(&group.run_id.as_bytes()[..], &[][..])?;
                        }
                        for (seq, message) in &group.outbox {
                            outbox.insert(&seq.to_be_bytes()[..], &message[..])?;
                        }
                    }
                    for (seq, bytes) in &commit.events {
                        events.insert(&seq.to_be_bytes()[..], &bytes[..])?;
                    }
                    for (key, bytes) in &commit.dedup {
                        dedup.insert(&key[..], &bytes[..])?;
                    }
                    for mark in &commit.marks {
                        match &mark.value {
                            Some(value) => marks.insert(&mark.key[..], &value[..])?,
                            None => marks.remove(&mark.key[..])?,
                        };
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(transaction_error)?;
        }
        for group in &plain {
            self.records
                .insert(record_key(group.run_id, group.first_seq), &group.value[..])?;
            if group.created {
                self.unfinished.insert(group.run_id.as_bytes(), &[])?;
            }
        }
        for (run_id, summary) in commit.summaries {
            self.runs.insert(run_id.as_bytes(), summary)?;
        }
        for group in atomic.iter().chain(&plain).filter(|g| g.ended) {
            self.unfinished.remove(group.run_id.as_bytes())?;
        }
        Ok(())
    }
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
                .record(&log.next_record(run, 2, body(task)).unwrap(), None, false)
                .unwrap();
            commit
                .record(&log.next_record(other, 2, body(task)).unwrap(), None, false)
                .unwrap();
        }
        log.write(commit).unwrap();
        let mut commit = Commit::default();
        let ended = RecordBody::RunEnded {
            status: super::super::RunStatus::Succeeded,
            error: None,
        };
        commit
            .record(&log.next_record(run, 3, ended).unwrap(), None, false)
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
    fn a_format_1_log_is_read_and_marked_2_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = uuid::Uuid::now_v7();
        let marker = |value: u32| {
            let db = sled::open(dir.path().join("log")).unwrap();
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
        assert_eq!(marker(1), Some(2), "a new log is format 2");
        {
            let log = Log::open(dir.path()).unwrap();
            assert_eq!(log.run_history(run).unwrap().len(), 1);
        }
        assert_eq!(marker(3), Some(2), "opening a format 1 log marks it 2");
        let error = Log::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("version 3; this binary reads [1, 2]"),
            "{error}"
        );
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
