//! Events in the log: what each accepted event did, the dedup store, and the
//! adapters' durable marks (cron's last fire, the file ledger).
//!
//! An event, the runs it starts, its dedup entries and its marks are written
//! in its commit's sled transaction ([`super::Commit`]), so after a crash
//! either all of them are there or none is; the caller flushes before
//! acknowledging the source.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Log, Millis, RunId};

/// What the reactor decided for one binding on one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A run was created.
    Started {
        binding: String,
        run_id: RunId,
        dedup_key: String,
    },
    /// The dedup key was seen within its TTL: no second run.
    Duplicate {
        binding: String,
        dedup_key: String,
        /// The run the first event started.
        run_id: RunId,
        /// The event that first used the key.
        first_event: String,
    },
    /// The binding's filter was false.
    Filtered { binding: String, reason: String },
    /// The binding matched but no run could be made (params failed to
    /// render, the workflow is gone): visible here instead of silently lost.
    Failed { binding: String, error: String },
    /// An AMQP message reached a queue through none of its bindings
    /// (another exchange or key bound to the queue outside switchyard, or a
    /// binding removed while the daemon was down). Recorded and acked,
    /// never run. `binding` is empty.
    Unrouted {
        queue: String,
        exchange: String,
        routing_key: String,
    },
    /// The binding, or its workflow, is paused (format 7): recorded, not
    /// run; `POST /events/{id}/replay` offers it again.
    Paused { binding: String },
}

impl Outcome {
    pub fn binding(&self) -> &str {
        match self {
            Outcome::Started { binding, .. }
            | Outcome::Duplicate { binding, .. }
            | Outcome::Filtered { binding, .. }
            | Outcome::Failed { binding, .. }
            | Outcome::Paused { binding } => binding,
            Outcome::Unrouted { .. } => "",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Started { .. } => "started",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Filtered { .. } => "filtered",
            Outcome::Failed { .. } => "failed",
            Outcome::Unrouted { .. } => "unrouted",
            Outcome::Paused { .. } => "paused",
        }
    }
}

/// One accepted event as stored: the envelope and what it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at: Millis,
    pub event: Value,
    /// The runs it started refer to this record instead of carrying a copy
    /// of the event (format 5): retention keeps it as long as any of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub referenced: bool,
    pub outcomes: Vec<Outcome>,
}

impl EventRecord {
    pub fn event_id(&self) -> &str {
        self.event.get("id").and_then(Value::as_str).unwrap_or("")
    }

    /// The event as shown by the API: `at` as RFC 3339.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "seq": self.seq,
            "at": crate::time::rfc3339(self.at),
            "event": self.event,
            "outcomes": self.outcomes,
        })
    }
}

/// A dedup key's entry: which event first used it and the run it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub event_id: String,
    pub run_id: RunId,
    pub expires_at: Millis,
}

/// A durable key/value an adapter keeps beside its events (cron's last fire
/// time, a file's ledger entry). `None` deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub(super) fn dedup_key(binding: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(binding.len() + 1 + key.len());
    k.extend_from_slice(binding.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The dedup expiry index's key: `expires_at (8 B, big-endian) ++ dedup key`,
/// so expired entries are a prefix range, oldest first.
pub(super) fn expiry_key(expires_at: Millis, dedup_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + dedup_key.len());
    k.extend_from_slice(&expires_at.max(0).to_be_bytes());
    k.extend_from_slice(dedup_key);
    k
}

pub(super) fn transaction_error(e: sled::transaction::TransactionError<()>) -> Error {
    match e {
        sled::transaction::TransactionError::Storage(e) => Error::Storage(e),
        sled::transaction::TransactionError::Abort(()) => {
            Error::Storage(sled::Error::Unsupported("transaction aborted".into()))
        }
    }
}

fn corrupt(key: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
    let key = key.into();
    move |source| Error::Corrupt { key, source }
}

impl Log {
    /// The live dedup entry of `(binding, key)`, if it has not expired.
    pub fn dedup_lookup(
        &self,
        binding: &str,
        key: &str,
        now: Millis,
    ) -> Result<Option<DedupEntry>, Error> {
        let Some(bytes) = self.dedup.get(dedup_key(binding, key))? else {
            return Ok(None);
        };
        let entry: DedupEntry =
            serde_json::from_slice(&bytes).map_err(corrupt(format!("dedup {binding}/{key}")))?;
        Ok((entry.expires_at > now).then_some(entry))
    }

    /// Removes up to `limit` dedup entries expired at `now`, oldest first,
    /// through the expiry index (cost follows the expired entries, not the
    /// store). An entry rewritten since its expiry was indexed (a new event
    /// reused the key) is kept: it is removed only if it still holds the
    /// value that was read (compare-and-swap). Returns how many index
    /// entries were processed; fewer than `limit` means none is left.
    pub fn sweep_dedup(&self, now: Millis, limit: usize) -> Result<usize, Error> {
        let upper = expiry_key(now.saturating_add(1), &[]);
        let mut processed = 0;
        for entry in self.dedup_expiry.range(..upper) {
            if processed >= limit {
                break;
            }
            let (index_key, _) = entry?;
            processed += 1;
            let key = &index_key[8..];
            if let Some(bytes) = self.dedup.get(key)? {
                let expired = serde_json::from_slice::<DedupEntry>(&bytes)
                    .map(|e| e.expires_at <= now)
                    .unwrap_or(true);
                if expired {
                    // Fails harmlessly when the engine rewrote it meanwhile.
                    let _ = self
                        .dedup
                        .compare_and_swap(key, Some(bytes), None::<&[u8]>)?;
                }
            }
            self.dedup_expiry.remove(&index_key)?;
        }
        Ok(processed)
    }

    /// Builds the expiry index from the dedup entries (a log from before
    /// the index existed).
    pub(super) fn index_dedup_expiry(&self) -> Result<usize, Error> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for entry in self.dedup.iter() {
            let (key, value) = entry?;
            let expires_at = serde_json::from_slice::<DedupEntry>(&value)
                .map(|e| e.expires_at)
                .unwrap_or(0);
            batch.insert(expiry_key(expires_at, &key), &[][..]);
            n += 1;
        }
        self.dedup_expiry.apply_batch(batch)?;
        Ok(n)
    }

    /// An adapter's mark.
    pub fn mark(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.marks.get(key)?.map(|v| v.to_vec()))
    }

    /// Every mark under `prefix` (values always present).
    pub fn marks_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Mark>, Error> {
        self.marks
            .scan_prefix(prefix)
            .map(|entry| {
                let (k, v) = entry?;
                Ok(Mark {
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                })
            })
            .collect()
    }

    /// Writes marks outside an event (e.g. pruning a file ledger).
    pub fn put_marks(&self, marks: &[Mark]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for mark in marks {
            match &mark.value {
                Some(value) => batch.insert(&mark.key[..], &value[..]),
                None => batch.remove(&mark.key[..]),
            }
        }
        self.marks.apply_batch(batch)?;
        Ok(())
    }

    /// Accepted events, newest first, with seq below `before`.
    pub fn events(&self, before: Option<u64>, limit: usize) -> Result<Vec<EventRecord>, Error> {
        let upper = before.unwrap_or(u64::MAX).to_be_bytes();
        let mut out = Vec::new();
        for entry in self.events.range(..&upper[..]).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            out.push(serde_json::from_slice(&value).map_err(corrupt(format!("event {key:?}")))?);
        }
        Ok(out)
    }

    /// The latest records of the events whose id starts with `prefix`, in
    /// descending id order, with ids below `before` (all when `None`); at
    /// most `limit`. Cron ticks' ids (`cron:<binding>:<instant>`) sort by
    /// instant, so this reads a binding's occurrences newest first.
    pub fn events_with_id_prefix(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, Error> {
        let start = prefix.as_bytes().to_vec();
        let end = match before {
            Some(before) => before.as_bytes().to_vec(),
            None => {
                let mut end = start.clone();
                end.push(0xff);
                end
            }
        };
        let mut out = Vec::new();
        if end <= start {
            return Ok(out);
        }
        for entry in self.event_ids.range(start..end).rev() {
            if out.len() >= limit {
                break;
            }
            let (id, seq) = entry?;
            if !id.starts_with(prefix.as_bytes()) {
                continue;
            }
            if let Some(value) = self.events.get(&seq)? {
                out.push(
                    serde_json::from_slice(&value)
                        .map_err(corrupt(format!("event {}", String::from_utf8_lossy(&id))))?,
                );
            }
        }
        Ok(out)
    }

    /// The most recent accepted event with this id: one index lookup.
    pub fn event_by_id(&self, id: &str) -> Result<Option<EventRecord>, Error> {
        let Some(seq) = self.event_ids.get(id.as_bytes())? else {
            return Ok(None);
        };
        let Some(value) = self.events.get(&seq)? else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(corrupt(format!("event {id}")))
    }
}

/// How a stored run summary refers to its event: the summary's JSON with
/// `event` null and this key, holding the event's seq, last.
const EVENT_REF: &[u8] = b",\"event_seq\":";

/// The stored form of a run summary whose event is the stored event
/// `event_seq`: `summary` (serialized with `event` null) with the reference
/// appended, so the log keeps one copy of each event. Reads put the event
/// back ([`Log::resolve_summary`]).
pub fn summary_with_event_ref(mut summary: Vec<u8>, event_seq: Option<u64>) -> Vec<u8> {
    if let Some(seq) = event_seq
        && summary.last() == Some(&b'}')
        && summary.len() > 2
    {
        summary.pop();
        summary.extend_from_slice(EVENT_REF);
        summary.extend_from_slice(seq.to_string().as_bytes());
        summary.push(b'}');
    }
    summary
}

/// The event seq a stored summary refers to, read off its end.
pub(super) fn summary_event_ref(summary: &[u8]) -> Option<u64> {
    let body = summary.strip_suffix(b"}")?;
    let digits = body.len() - body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, seq) = body.split_at(digits);
    if seq.is_empty() || !head.ends_with(EVENT_REF) {
        return None;
    }
    std::str::from_utf8(seq).ok()?.parse().ok()
}

impl Log {
    /// The event of the stored event record `seq`, if it is still kept.
    pub fn stored_event(&self, seq: u64) -> Result<Option<Value>, Error> {
        let Some(value) = self.events.get(seq.to_be_bytes())? else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct Envelope {
            event: Value,
        }
        serde_json::from_slice::<Envelope>(&value)
            .map(|e| Some(e.event))
            .map_err(corrupt(format!("event {seq}")))
    }

    /// A stored run summary as readers see it: with its event in place when
    /// it refers to a stored one ([`summary_with_event_ref`]).
    pub(super) fn resolve_summary(&self, summary: &[u8]) -> Result<Vec<u8>, Error> {
        let Some(seq) = summary_event_ref(summary) else {
            return Ok(summary.to_vec());
        };
        let broken = || format!("summary referring to event {seq}");
        let mut record: serde_json::Map<String, Value> =
            serde_json::from_slice(summary).map_err(corrupt(broken()))?;
        record.shift_remove("event_seq");
        // An unreadable event shows as null rather than failing the listing.
        let event = self.stored_event(seq).ok().flatten().unwrap_or(Value::Null);
        record.insert("event".into(), event);
        serde_json::to_vec(&record).map_err(corrupt(broken()))
    }
}
