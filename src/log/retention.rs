//! Retention: deleting what is older than `retention` (`switchyard.json`) in small
//! batches, so the store stays bounded under a steady load.
//!
//! Every pass costs what it deletes, not what is kept: ended runs are
//! visited oldest first (run ids are UUID v7, ordered by creation time) and
//! the walk stops at the first run created after the cutoff; events are
//! keyed by sequence, oldest first, and the walk stops at the first newer
//! one. A run still unfinished is never deleted (it is not in `runs`); one
//! created before the cutoff but ended after it is kept until it is old by
//! its end time too. Deletions are plain batches, one per tree, index and
//! records first and the run's summary last, so a crash in the middle
//! leaves at worst a summary whose history is already gone, and the next
//! pass finishes it. Nothing here takes the commit's transaction.
//!
//! An event is stored once and the runs it started refer to it (a
//! `referenced` event), so it is kept as long as any of those runs: the
//! events pass walks from a durable cursor (`meta` `events_pruned_to`), deletes
//! what is old and unreferenced, and steps over a referenced event whose runs
//! are still kept; the runs pass deletes such an event with its last run.
//! Either way each event is visited once by each pass.

use serde::Deserialize;

use super::events::summary_event_ref;
use super::{
    Error, EventRecord, Log, Millis, Outcome, RunId, RunStatus, run_id_from_key, run_index_keys,
};

/// `meta` key: every event below this seq has been visited by the events
/// pass (deleted, or stepped over because its runs were still kept).
const EVENTS_CURSOR: &[u8] = b"events_pruned_to";

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub runs: usize,
    pub records: usize,
    pub task_logs: usize,
    pub events: usize,
    /// More is due: call again (after letting commits through).
    pub more: bool,
}

/// The cutoffs of one pass: what is older (in Unix milliseconds) goes.
#[derive(Debug, Clone, Copy)]
pub struct Cutoffs {
    pub runs: Millis,
    pub events: Millis,
    pub task_logs: Millis,
}

#[derive(Deserialize)]
struct Ended {
    workflow: String,
    status: RunStatus,
    #[serde(default)]
    ended_at: Option<String>,
}

/// Creation time of a run from its id (UUID v7), in Unix milliseconds.
fn created_at(run_id: uuid::Uuid) -> Option<Millis> {
    let (secs, nanos) = run_id.get_timestamp()?.to_unix();
    Some(secs as Millis * 1000 + Millis::from(nanos / 1_000_000))
}

fn ended_at(text: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Log {
    /// Deletes at most `limit` of each kind that is past its cutoff.
    pub fn prune(&self, cutoffs: Cutoffs, limit: usize) -> Result<Pruned, Error> {
        let mut pruned = Pruned::default();
        self.prune_runs(cutoffs.runs, limit, &mut pruned)?;
        self.prune_task_logs(cutoffs.task_logs, limit, &mut pruned)?;
        self.prune_events(cutoffs.events, limit, &mut pruned)?;
        Ok(pruned)
    }

    fn prune_runs(&self, cutoff: Millis, limit: usize, pruned: &mut Pruned) -> Result<(), Error> {
        let mut doomed = Vec::new();
        for entry in self.runs.iter() {
            let (key, value) = entry?;
            let Some(run_id) = run_id_from_key(&key) else {
                continue;
            };
            if created_at(run_id).is_none_or(|t| t >= cutoff) {
                break; // Every later run was created later.
            }
            let ended: Option<Ended> = serde_json::from_slice(&value).ok();
            if let Some(end) = ended
                .as_ref()
                .and_then(|e| e.ended_at.as_deref())
                .and_then(ended_at)
                && end >= cutoff
            {
                continue; // Long-running: kept until old by its end too.
            }
            if doomed.len() >= limit {
                pruned.more = true;
                break;
            }
            doomed.push((run_id, ended, summary_event_ref(&value)));
        }
        let cursor = self.events_cursor()?;
        for (run_id, ended, event_seq) in doomed {
            let mut index = sled::Batch::default();
            if let Some(ended) = &ended {
                for key in run_index_keys(run_id, &ended.workflow, ended.status) {
                    index.remove(key);
                }
            }
            self.run_index.apply_batch(index)?;
            pruned.records += self.remove_prefix(&self.records, run_id.as_bytes())?;
            pruned.task_logs += self.remove_prefix(&self.task_logs, run_id.as_bytes())?;
            // The event pass has stepped over this run's event: it goes
            // with its last run.
            if let Some(seq) = event_seq.filter(|seq| *seq < cursor)
                && let Some(record) = self.event_record(seq)?
                && !self.runs_kept(&record, Some(run_id))?
            {
                self.remove_event(&record)?;
                pruned.events += 1;
            }
            self.runs.remove(run_id.as_bytes())?;
            pruned.runs += 1;
        }
        Ok(())
    }

    /// Task logs older than their own cutoff (a shorter `task_logs` than
    /// `runs` keeps the run and drops its output), never of a run that is
    /// still unfinished.
    fn prune_task_logs(
        &self,
        cutoff: Millis,
        limit: usize,
        pruned: &mut Pruned,
    ) -> Result<(), Error> {
        let mut doomed = Vec::new();
        for key in self.task_logs.iter().keys() {
            let key = key?;
            let Some(run_id) = key.get(..16).and_then(run_id_from_key) else {
                continue;
            };
            if created_at(run_id).is_none_or(|t| t >= cutoff) {
                break;
            }
            if self.unfinished.contains_key(run_id.as_bytes())? {
                continue;
            }
            if doomed.len() >= limit {
                pruned.more = true;
                break;
            }
            doomed.push(key);
        }
        let mut batch = sled::Batch::default();
        pruned.task_logs += doomed.len();
        for key in doomed {
            batch.remove(key);
        }
        self.task_logs.apply_batch(batch)?;
        Ok(())
    }

    fn prune_events(&self, cutoff: Millis, limit: usize, pruned: &mut Pruned) -> Result<(), Error> {
        let mut events = sled::Batch::default();
        let mut ids = sled::Batch::default();
        let mut n = 0;
        let mut cursor = self.events_cursor()?;
        for (visited, entry) in self.events.range(cursor.to_be_bytes()..).enumerate() {
            let (key, value) = entry?;
            let record: Option<EventRecord> = serde_json::from_slice(&value).ok();
            if record.as_ref().is_some_and(|r| r.at >= cutoff) {
                break; // Events are in the order they were accepted.
            }
            // Events stepped over count too: a pass costs what it visits.
            if n >= limit || visited >= limit.saturating_mul(4) {
                pruned.more = true;
                break;
            }
            let seq = key_to_seq(&key);
            cursor = seq.saturating_add(1);
            if let Some(record) = &record {
                if self.runs_kept(record, None)? {
                    continue; // Goes with its last run.
                }
                // The id index points at the latest record of an id: drop it
                // only if it is this one.
                let id = record.event_id().as_bytes();
                if self.event_ids.get(id)?.is_some_and(|seq| seq == key) {
                    ids.remove(id);
                }
            }
            events.remove(key);
            n += 1;
        }
        self.event_ids.apply_batch(ids)?;
        self.events.apply_batch(events)?;
        self.meta.insert(EVENTS_CURSOR, &cursor.to_be_bytes())?;
        pruned.events += n;
        Ok(())
    }

    fn events_cursor(&self) -> Result<u64, Error> {
        Ok(self.meta.get(EVENTS_CURSOR)?.map_or(0, |v| key_to_seq(&v)))
    }

    fn event_record(&self, seq: u64) -> Result<Option<EventRecord>, Error> {
        Ok(self
            .events
            .get(seq.to_be_bytes())?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Whether a referenced event still has a run that is kept (other than
    /// `leaving`, the run being deleted).
    fn runs_kept(&self, record: &EventRecord, leaving: Option<RunId>) -> Result<bool, Error> {
        if !record.referenced {
            return Ok(false);
        }
        for outcome in &record.outcomes {
            if let Outcome::Started { run_id, .. } = outcome
                && Some(*run_id) != leaving
                // `unfinished` first: a run ending now moves from it to
                // `runs` in one transaction, so this order cannot miss it.
                && (self.unfinished.contains_key(run_id.as_bytes())?
                    || self.runs.contains_key(run_id.as_bytes())?)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn remove_event(&self, record: &EventRecord) -> Result<(), Error> {
        let key = record.seq.to_be_bytes();
        let id = record.event_id().as_bytes();
        if self.event_ids.get(id)?.is_some_and(|seq| seq == key) {
            self.event_ids.remove(id)?;
        }
        self.events.remove(key)?;
        Ok(())
    }

    fn remove_prefix(&self, tree: &sled::Tree, prefix: &[u8]) -> Result<usize, Error> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for key in tree.scan_prefix(prefix).keys() {
            batch.remove(key?);
            n += 1;
        }
        tree.apply_batch(batch)?;
        Ok(n)
    }
}

fn key_to_seq(key: &[u8]) -> u64 {
    <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::log::{Commit, RecordBody, TaskLogs};

    fn run_at(millis: Millis) -> uuid::Uuid {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (millis / 1000) as u64,
            ((millis % 1000) * 1_000_000) as u32,
        );
        uuid::Uuid::new_v7(ts)
    }

    fn ended_run(log: &Log, created: Millis, ended: Millis) -> uuid::Uuid {
        ended_run_of(log, created, ended, None)
    }

    /// An ended run; with `event`, one that refers to that stored event.
    fn ended_run_of(log: &Log, created: Millis, ended: Millis, event: Option<u64>) -> uuid::Uuid {
        let id = run_at(created);
        log.append(id, created, RecordBody::RunStarted {}).unwrap();
        log.put_task_logs(
            id,
            "a",
            &TaskLogs {
                attempt: 1,
                stdout: "out".into(),
                ..TaskLogs::default()
            },
        )
        .unwrap();
        let end = chrono::DateTime::from_timestamp_millis(ended)
            .unwrap()
            .to_rfc3339();
        let summary = serde_json::json!({
            "id": id, "workflow": "w", "status": "succeeded", "event": null, "ended_at": end
        });
        let summary =
            crate::log::summary_with_event_ref(serde_json::to_vec(&summary).unwrap(), event);
        let mut commit = Commit::default();
        commit.summary(id, "w", RunStatus::Succeeded, summary);
        log.write(commit).unwrap();
        id
    }

    #[test]
    fn old_runs_their_records_logs_and_index_go_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        let old: Vec<_> = (0..5)
            .map(|i| ended_run(&log, now - 40 * day + i, now - 40 * day + i))
            .collect();
        // Created long ago, ended yesterday: kept until old by its end.
        let long = ended_run(&log, now - 35 * day, now - day);
        let new = ended_run(&log, now - day, now - day);
        let cutoffs = Cutoffs {
            runs: now - 30 * day,
            events: now - 7 * day,
            task_logs: now - 30 * day,
        };
        let first = log.prune(cutoffs, 3).unwrap();
        assert_eq!((first.runs, first.more), (3, true));
        let second = log.prune(cutoffs, 3).unwrap();
        assert_eq!((second.runs, second.more), (2, false));
        for id in &old {
            assert!(log.run_summary(*id).unwrap().is_none());
            assert!(log.run_history(*id).unwrap().is_empty());
            assert!(log.task_logs(*id, "a").unwrap().is_empty());
        }
        for id in [long, new] {
            assert!(log.run_summary(id).unwrap().is_some());
            assert_eq!(log.run_history(id).unwrap().len(), 1);
        }
        let listed = log.ended_runs_where(Some("w"), None, None, 100).unwrap();
        assert_eq!(listed.len(), 2, "the index lost the deleted runs");
        assert_eq!(log.prune(cutoffs, 3).unwrap(), Pruned::default());
    }

    #[test]
    fn old_events_go_with_their_id_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        for (id, at) in [("e-old", 1_000), ("e-new", 9_000)] {
            let mut commit = Commit::default();
            let event = EventRecord {
                seq: log.next_seq().unwrap(),
                at,
                event: serde_json::json!({"id": id}),
                referenced: false,
                outcomes: Vec::new(),
            };
            commit.event(&event, Vec::new(), Vec::new()).unwrap();
            log.write(commit).unwrap();
        }
        let cutoffs = Cutoffs {
            runs: 0,
            events: 5_000,
            task_logs: 0,
        };
        assert_eq!(log.prune(cutoffs, 10).unwrap().events, 1);
        assert!(log.event_by_id("e-old").unwrap().is_none());
        assert!(log.event_by_id("e-new").unwrap().is_some());
        assert_eq!(log.events(None, 10).unwrap().len(), 1);
    }

    fn event_at(log: &Log, id: &str, at: Millis, runs: &[uuid::Uuid], seq: u64) {
        let outcomes = runs
            .iter()
            .map(|run_id| Outcome::Started {
                binding: "b".into(),
                run_id: *run_id,
                dedup_key: run_id.to_string(),
            })
            .collect();
        let event = EventRecord {
            seq,
            at,
            event: serde_json::json!({"id": id, "data": {"body": id}}),
            referenced: !runs.is_empty(),
            outcomes,
        };
        let mut commit = Commit::default();
        commit.event(&event, Vec::new(), Vec::new()).unwrap();
        log.write(commit).unwrap();
    }

    #[test]
    fn an_event_its_runs_refer_to_is_kept_as_long_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        let created = now - 10 * day;
        // The event's seq is taken first, as the runtime does.
        let seq = log.next_seq().unwrap();
        let short = ended_run_of(&log, created, created, Some(seq));
        let long = ended_run_of(&log, created + 1, now - day, Some(seq));
        event_at(&log, "e-runs", created, &[short, long], seq);
        event_at(&log, "e-none", created, &[], log.next_seq().unwrap());
        let summary = |id| -> serde_json::Value {
            serde_json::from_slice(&log.run_summary(id).unwrap().unwrap()).unwrap()
        };
        assert_eq!(
            summary(short)["event"]["id"],
            "e-runs",
            "read back in place"
        );
        assert!(summary(short).get("event_seq").is_none());

        // Events are old, their runs are not: only the unreferenced one goes.
        let mut cutoffs = Cutoffs {
            runs: now - 30 * day,
            events: now - 7 * day,
            task_logs: now - 30 * day,
        };
        assert_eq!(log.prune(cutoffs, 10).unwrap().events, 1);
        assert!(log.event_by_id("e-none").unwrap().is_none());
        assert!(log.event_by_id("e-runs").unwrap().is_some());

        // One run goes; the other still refers to the event.
        cutoffs.runs = now - 5 * day;
        let pruned = log.prune(cutoffs, 10).unwrap();
        assert_eq!((pruned.runs, pruned.events), (1, 0));
        assert_eq!(summary(long)["event"]["data"]["body"], "e-runs");

        // The last run goes and takes the event with it.
        cutoffs.runs = now;
        let pruned = log.prune(cutoffs, 10).unwrap();
        assert_eq!((pruned.runs, pruned.events), (1, 1));
        assert!(log.event_by_id("e-runs").unwrap().is_none());
        assert!(log.events(None, 10).unwrap().is_empty());
        assert_eq!(log.prune(cutoffs, 10).unwrap(), Pruned::default());
    }

    #[test]
    fn events_stepped_over_count_toward_a_pass_and_a_broken_one_reads_as_null() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        // Ten old events, each referred to by a run that is still kept.
        let mut seqs = Vec::new();
        for i in 0..10 {
            let seq = log.next_seq().unwrap();
            let run = ended_run_of(&log, now - 10 * day + i, now - day, Some(seq));
            event_at(&log, &format!("e-{i}"), now - 10 * day + i, &[run], seq);
            seqs.push((seq, run));
        }
        let cutoffs = Cutoffs {
            runs: now - 30 * day,
            events: now - 7 * day,
            task_logs: now - 30 * day,
        };
        // A pass with a batch of 1 visits at most four of them, says more
        // is due, and deletes none (their runs are kept).
        let pruned = log.prune(cutoffs, 1).unwrap();
        assert_eq!((pruned.events, pruned.more), (0, true));
        assert_eq!(log.events_cursor().unwrap(), seqs[3].0 + 1);
        assert_eq!(log.events(None, 100).unwrap().len(), 10);
        // An event record that cannot be read shows as null in its run's
        // summary; the listing still works.
        let (seq, run) = seqs[9];
        log.events
            .insert(seq.to_be_bytes(), &b"{not json"[..])
            .unwrap();
        let summary: serde_json::Value =
            serde_json::from_slice(&log.run_summary(run).unwrap().unwrap()).unwrap();
        assert!(summary["event"].is_null(), "{summary}");
        assert_eq!(log.ended_runs(None, 100, |_| true).unwrap().len(), 10);
    }
}
