//! The lifecycle outbox: events written with the record they describe (see
//! [`super::Commit`]) and handed to the publisher only once durable.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Log};

/// One lifecycle event waiting to be published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    pub routing_key: String,
    /// The CloudEvent (its `id` is the AMQP `message_id`).
    pub event: Value,
}

impl Log {
    /// Up to `limit` messages in sequence order, only those whose record is
    /// durable: an event is never published for a transition a crash could
    /// still take back.
    pub fn outbox_pending(&self, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, Error> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let mut out = Vec::new();
        for entry in self.outbox.range(..=durable.to_be_bytes()) {
            let (key, value) = entry?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&key[..8.min(key.len())]);
            let seq = u64::from_be_bytes(seq);
            let message = serde_json::from_slice(&value).map_err(|source| Error::Corrupt {
                key: format!("outbox {seq}"),
                source,
            })?;
            out.push((seq, message));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Drops published messages (a crash before this is flushed publishes
    /// them again, with the same message id).
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(&seq.to_be_bytes()[..]);
        }
        self.outbox.apply_batch(batch)?;
        let _ = self
            .outbox_pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(seqs.len() as u64))
            });
        Ok(())
    }

    /// Messages not yet confirmed by the broker (a counter: O(1)).
    pub fn outbox_len(&self) -> usize {
        self.outbox_pending.load(Ordering::Relaxed) as usize
    }
}
