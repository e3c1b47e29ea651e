//! Backfill: the runs a cron binding would have started over a past (or
//! any) range, one per instant its schedule fires there (in its time zone,
//! with the same DST rules as live ticks), oldest first. Each is the very
//! tick event the live schedule sends (`cron:<binding>:<time>`, logical
//! time the instant), so an instant that already ran is a duplicate, not a
//! second run. Runs queue behind the workflow's `max_active_runs`. A
//! backfill is recorded in the log's marks with its runs, so it can be
//! shown and cancelled after a restart.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::log::{Mark, Outcome, RunId};
use crate::reactor::Reactor;
use crate::spec::binding::{Binding, Trigger};

/// Most instants one backfill starts.
pub const MAX_INSTANTS: usize = 10_000;

const PREFIX: &[u8] = b"backfill\0";

/// A backfill as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Backfill {
    pub id: String,
    pub binding: String,
    pub from: String,
    pub to: String,
    pub started_at: String,
    /// One entry per instant, oldest first.
    pub instants: Vec<Fired>,
}

/// What one instant did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fired {
    pub scheduled_time: String,
    /// `started`, `duplicate`, `paused`, `filtered` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The instants of `binding`'s schedule in `[from, to]`.
pub fn instants(
    binding: &Binding,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, String> {
    let Trigger::Cron(cron) = &binding.trigger else {
        return Err(format!(
            "binding `{}` is triggered by {}, not a schedule: only cron bindings backfill",
            binding.name,
            binding.trigger.kind()
        ));
    };
    if to < from {
        return Err(format!(
            "`to` ({}) is before `from` ({})",
            crate::time::format(to),
            crate::time::format(from)
        ));
    }
    let before = from - chrono::Duration::milliseconds(1);
    let fires = cron.schedule.fires_between(before, to, MAX_INSTANTS + 1);
    if fires.len() > MAX_INSTANTS {
        return Err(format!(
            "the range holds more than {MAX_INSTANTS} instants of {}: backfill it in parts",
            cron.schedule.describe()
        ));
    }
    Ok(fires)
}

/// Starts one run per instant, oldest first, and records the backfill.
pub async fn start(
    reactor: &Reactor,
    binding: &Arc<Binding>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    fires: &[DateTime<Utc>],
) -> Result<Backfill, crate::runtime::Error> {
    let mut backfill = Backfill {
        id: uuid::Uuid::now_v7().to_string(),
        binding: binding.name.clone(),
        from: crate::time::format(from),
        to: crate::time::format(to),
        started_at: crate::time::format(crate::time::now()),
        instants: Vec::with_capacity(fires.len()),
    };
    for scheduled in fires {
        let now = crate::time::now_millis();
        let mut event = super::cron::tick_event(&binding.name, *scheduled, now);
        super::cron::Origin::Backfill(&backfill.id).stamp(&mut event);
        let event = event.into_value();
        let accepted = reactor
            .submit(event, std::slice::from_ref(binding), Vec::new(), false)
            .await?;
        let outcome = accepted.outcomes.into_iter().next();
        let (name, run_id, error) = match &outcome {
            Some(Outcome::Started { run_id, .. }) => ("started", Some(*run_id), None),
            Some(Outcome::Duplicate { run_id, .. }) => ("duplicate", Some(*run_id), None),
            Some(Outcome::Paused { .. }) => ("paused", None, None),
            Some(Outcome::Filtered { reason, .. }) => ("filtered", None, Some(reason.clone())),
            Some(Outcome::Failed { error, .. }) => ("failed", None, Some(error.clone())),
            Some(Outcome::Unrouted { .. }) | None => ("failed", None, None),
        };
        backfill.instants.push(Fired {
            scheduled_time: crate::time::format(*scheduled),
            outcome: name.to_string(),
            run_id,
            error,
        });
    }
    // The record, flushed off the async threads (a flush waits on the disk).
    let log = reactor.runtime().log().clone();
    let mark = Mark {
        key: [PREFIX, backfill.id.as_bytes()].concat(),
        value: Some(serde_json::to_vec(&backfill).unwrap_or_default()),
    };
    tokio::task::spawn_blocking(move || {
        log.put_marks(&[mark])?;
        log.flush()
    })
    .await
    .map_err(|e| crate::runtime::Error::Stopped(e.to_string()))??;
    Ok(backfill)
}

/// A recorded backfill.
pub fn find(reactor: &Reactor, id: &str) -> Result<Option<Backfill>, crate::log::Error> {
    let key = [PREFIX, id.as_bytes()].concat();
    Ok(reactor
        .runtime()
        .log()
        .mark(&key)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// Cancels the runs a backfill started that have not ended; returns their ids.
pub async fn cancel(reactor: &Reactor, backfill: &Backfill) -> Vec<RunId> {
    let mut cancelled = Vec::new();
    for fired in &backfill.instants {
        let (Some(run_id), "started") = (fired.run_id, fired.outcome.as_str()) else {
            continue;
        };
        if reactor
            .runtime()
            .cancel(run_id, format!("backfill {} cancelled", backfill.id))
            .await
            .is_ok()
        {
            cancelled.push(run_id);
        }
    }
    cancelled
}

/// An RFC 3339 time, or a date (`2026-12-01`, midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{text}` is not an RFC 3339 time or a YYYY-MM-DD date"))
}
