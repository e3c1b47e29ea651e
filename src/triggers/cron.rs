//! Cron ticks (SPEC §4 `cron`): one task per cron binding.
//!
//! The last fire time is a mark in the log, written in the same transaction
//! as the tick's event and runs. On start the missed fires between that mark
//! and now follow `catch_up`: `none` skips them, `latest` fires the most
//! recent one, `all` fires each in order (at most [`MAX_CATCH_UP`]). Every
//! tick's event id is `cron:<binding>:<scheduled time>` and is the default
//! dedup key, so a tick never starts twice, not even when a crash interrupts
//! a catch-up. Time comes from a [`Clock`], so tests drive it by hand.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::log::{Mark, Millis, Outcome};
use crate::reactor::Reactor;
use crate::reactor::event::{CRON_TICK, Event};
use crate::spec::binding::{Binding, CatchUp, CronTrigger, Trigger};
use crate::spec::schedule::Schedule;
use crate::time::Clock;

/// Most missed fires `catch_up: "all"` replays after one downtime.
pub const MAX_CATCH_UP: usize = 10_000;

fn mark_key(binding: &str) -> Vec<u8> {
    let mut key = b"cron\0".to_vec();
    key.extend_from_slice(binding.as_bytes());
    key
}

/// The event id of one tick.
pub fn tick_id(binding: &str, scheduled: DateTime<Utc>) -> String {
    format!("cron:{binding}:{}", crate::time::format(scheduled))
}

/// The last fire time recorded for a binding.
pub fn last_fire(reactor: &Reactor, binding: &str) -> Option<DateTime<Utc>> {
    let bytes = reactor.runtime().log().mark(&mark_key(binding)).ok()??;
    let millis = i64::from_be_bytes(bytes.try_into().ok()?);
    DateTime::from_timestamp_millis(millis)
}

/// One cron binding's task, until `stop` (run by `triggers::supervise`).
///
/// The schedule counts from the moment of this call (not from when the task
/// first runs), so a clock that moves right after start-up is seen moving.
pub fn task(
    binding: Arc<Binding>,
    reactor: Reactor,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) -> impl Future<Output = Result<(), String>> + Send + 'static {
    let now = clock.now();
    super::until_stopped(stop, run(binding, reactor, clock, now))
}

/// Ticks until the schedule ends (Ok) or the engine stops (Err).
async fn run(
    binding: Arc<Binding>,
    reactor: Reactor,
    clock: Arc<dyn Clock>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let Trigger::Cron(CronTrigger { schedule, catch_up }) = &binding.trigger else {
        return Ok(());
    };
    let mut last = last_fire(&reactor, &binding.name);
    if last.is_none() {
        // Never fired: count from now, the first time it is loaded, so a
        // tick missed while the daemon is down later is caught up too.
        // (Written beside the log; durable with the next group commit.)
        let mark = Mark {
            key: mark_key(&binding.name),
            value: Some(now.timestamp_millis().to_be_bytes().to_vec()),
        };
        if let Err(e) = reactor.runtime().log().put_marks(&[mark]) {
            tracing::warn!(binding = %binding.name, error = %e, "Cannot record when a cron binding was first loaded.");
        }
    }
    if let Some(from) = last {
        let plan = catch_up_plan(schedule, *catch_up, from, now);
        if let Some(skipped) = &plan.skipped {
            record_skipped(&reactor, &binding.name, skipped, *catch_up);
        }
        if !plan.fire.is_empty() {
            tracing::info!(binding = %binding.name, fires = plan.fire.len(), policy = ?catch_up,
                "Catching up on cron fires missed while down.");
        }
        for at in plan.fire {
            fire(&binding, &reactor, at, Origin::CatchUp).await?;
            last = Some(at);
        }
    }
    tracing::info!(binding = %binding.name, schedule = %schedule.describe(), "Cron schedule armed.");
    let mut after = match last {
        Some(last) if last > now => last,
        _ => now,
    };
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(binding = %binding.name, "Cron schedule has no further fire times.");
            return Ok(());
        };
        while clock.now() < next {
            clock.sleep_until(next).await;
        }
        fire(&binding, &reactor, next, Origin::Schedule).await?;
        after = next;
    }
}

/// The event of one tick (live, caught up or backfilled: the same event,
/// so a backfilled instant that already ran is a duplicate).
pub fn tick_event(binding: &str, scheduled: DateTime<Utc>, now: Millis) -> Event {
    let mut event = Event::new(
        tick_id(binding, scheduled),
        format!("cron:{binding}"),
        CRON_TICK,
        now,
    );
    event.datacontenttype = Some("application/json".into());
    let scheduled_text = crate::time::format(scheduled);
    event.data = json!({ "scheduled_time": scheduled_text });
    event.switchyard.insert("binding".into(), json!(binding));
    event
}

/// Why a tick fires: on time, caught up after downtime, or backfilled.
/// Stamped on the tick's event (`switchyard.origin`, and the backfill's id
/// as `switchyard.backfill`), which the occurrence log reads back.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Schedule,
    CatchUp,
    Backfill(&'a str),
}

impl Origin<'_> {
    pub fn stamp(self, event: &mut Event) {
        let name = match self {
            Origin::Schedule => "schedule",
            Origin::CatchUp => "catch_up",
            Origin::Backfill(id) => {
                event.switchyard.insert("backfill".into(), json!(id));
                "backfill"
            }
        };
        event.switchyard.insert("origin".into(), json!(name));
    }
}

/// What to do about the instants missed while the daemon was down.
#[derive(Debug, Default, PartialEq)]
struct CatchUpPlan {
    /// Instants to fire now, oldest first.
    fire: Vec<DateTime<Utc>>,
    /// Instants `catch_up` leaves unfired.
    skipped: Option<Skipped>,
}

/// A run of instants skipped by `catch_up`, as the occurrence log keeps it:
/// one entry however long the downtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// How many instants; a lower bound when `more` is set.
    pub count: usize,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    pub catch_up: String,
    pub recorded_at: DateTime<Utc>,
}

fn catch_up_plan(
    schedule: &Schedule,
    policy: CatchUp,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> CatchUpPlan {
    let Some(latest) = schedule.latest_between(from, now) else {
        return CatchUpPlan::default();
    };
    let missed = schedule.fires_between(from, now, MAX_CATCH_UP + 1);
    let capped = missed.len() > MAX_CATCH_UP;
    let skipped =
        |first: Option<DateTime<Utc>>, last: Option<DateTime<Utc>>, count: usize, more| {
            Some(Skipped {
                first: first?,
                last: last?,
                count,
                more,
                catch_up: format!("{policy:?}").to_lowercase(),
                recorded_at: now,
            })
            .filter(|s| s.count > 0)
        };
    match policy {
        CatchUp::None => CatchUpPlan {
            fire: Vec::new(),
            skipped: skipped(missed.first().copied(), Some(latest), missed.len(), capped),
        },
        // The most recent missed instant, however long the downtime.
        CatchUp::Latest => {
            let before = schedule.latest_between(from, latest - chrono::Duration::milliseconds(1));
            let count = if capped {
                MAX_CATCH_UP
            } else {
                missed.len() - 1
            };
            CatchUpPlan {
                fire: vec![latest],
                skipped: skipped(missed.first().copied(), before, count, capped),
            }
        }
        CatchUp::All => {
            if capped {
                tracing::warn!(
                    limit = MAX_CATCH_UP,
                    "More missed cron fires than the catch-up limit; firing the first ones."
                );
            }
            let rest = capped.then(|| missed[MAX_CATCH_UP]);
            CatchUpPlan {
                skipped: skipped(rest, Some(latest), 1, capped),
                fire: missed.into_iter().take(MAX_CATCH_UP).collect(),
            }
        }
    }
}

const OCCURRENCE_PREFIX: &[u8] = b"occurrence\0";
/// Skipped runs kept per binding (one per downtime that skipped any).
const MAX_SKIPPED_KEPT: usize = 1000;

fn skipped_prefix(binding: &str) -> Vec<u8> {
    [OCCURRENCE_PREFIX, binding.as_bytes(), b"\0"].concat()
}

/// Keeps a run of skipped instants in the occurrence log (beside the log:
/// durable with the next group commit, which the first tick brings).
fn record_skipped(reactor: &Reactor, binding: &str, skipped: &Skipped, policy: CatchUp) {
    tracing::info!(binding, skipped = skipped.count, more = skipped.more, policy = ?policy,
        first = %crate::time::format(skipped.first), "Cron instants missed while down are skipped by catch_up.");
    let log = reactor.runtime().log();
    let prefix = skipped_prefix(binding);
    let mut marks = vec![Mark {
        key: [&prefix[..], &skipped.first.timestamp_millis().to_be_bytes()].concat(),
        value: serde_json::to_vec(skipped).ok(),
    }];
    if let Ok(kept) = log.marks_with_prefix(&prefix)
        && kept.len() >= MAX_SKIPPED_KEPT
    {
        let drop = kept.len() + 1 - MAX_SKIPPED_KEPT;
        marks.extend(kept.into_iter().take(drop).map(|m| Mark {
            key: m.key,
            value: None,
        }));
    }
    if let Err(e) = log.put_marks(&marks) {
        tracing::warn!(binding, error = %e, "Cannot record skipped cron instants.");
    }
}

/// One scheduled instant and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Occurrence {
    pub scheduled_time: String,
    /// `fired`, `caught_up`, `backfilled`, `duplicate`, `skipped_paused`,
    /// `filtered`, `failed` or `skipped_catch_up`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<crate::log::RunId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
    /// Why (a filter's reason, an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For `skipped_catch_up`: the last instant of the run and how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scheduled_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// Replays of this instant's event (`POST /events/{id}/replay`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<Occurrence>,
}

impl Occurrence {
    fn of_event(scheduled_time: String, record: &crate::log::EventRecord) -> Self {
        let switchyard = record.event.get("switchyard");
        let stamp = |key: &str| {
            switchyard
                .and_then(|s| s.get(key))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let origin = stamp("origin");
        let outcome = record.outcomes.first();
        let (status, run_id, detail) = match outcome {
            Some(Outcome::Started { run_id, .. }) => (
                match origin.as_deref() {
                    Some("catch_up") => "caught_up",
                    Some("backfill") => "backfilled",
                    _ => "fired",
                },
                Some(*run_id),
                None,
            ),
            Some(Outcome::Duplicate {
                run_id,
                first_event,
                ..
            }) => (
                "duplicate",
                Some(*run_id),
                Some(format!("of event {first_event}")),
            ),
            Some(Outcome::Paused { .. }) => ("skipped_paused", None, None),
            Some(Outcome::Filtered { reason, .. }) => ("filtered", None, Some(reason.clone())),
            Some(Outcome::Failed { error, .. }) => ("failed", None, Some(error.clone())),
            Some(Outcome::Unrouted { .. }) | None => ("failed", None, None),
        };
        Occurrence {
            scheduled_time,
            status,
            run_id,
            event_id: Some(record.event_id().to_string()),
            recorded_at: Some(crate::time::rfc3339(record.at)),
            backfill: stamp("backfill"),
            detail,
            last_scheduled_time: None,
            count: None,
            more: false,
            replays: Vec::new(),
        }
    }

    fn of_skipped(skipped: Skipped) -> Self {
        Occurrence {
            scheduled_time: crate::time::format(skipped.first),
            status: "skipped_catch_up",
            run_id: None,
            event_id: None,
            recorded_at: Some(crate::time::format(skipped.recorded_at)),
            backfill: None,
            detail: Some(format!("catch_up is `{}`", skipped.catch_up)),
            last_scheduled_time: Some(crate::time::format(skipped.last)),
            count: Some(skipped.count),
            more: skipped.more,
            replays: Vec::new(),
        }
    }
}

/// A cron binding's occurrence log, newest first: every instant the log
/// recorded a tick for (fired on time, caught up, backfilled, duplicate,
/// skipped because paused, filtered, failed) and every run of instants
/// `catch_up` skipped, with scheduled time before `before` (RFC 3339), at
/// most `limit` entries.
pub fn occurrences(
    log: &crate::log::Log,
    binding: &str,
    before: Option<DateTime<Utc>>,
    limit: usize,
) -> Result<Vec<Occurrence>, crate::log::Error> {
    let prefix = format!("cron:{binding}:");
    let upper = before.map(|b| tick_id(binding, b));
    // Read a little more than asked: replays sort beside their instant.
    let mut from_events: Vec<Occurrence> = Vec::new();
    let mut cursor = upper;
    // Descending ids: a replay (`<instant>#replay-…`) comes before its
    // instant's own event, possibly on an earlier page.
    let mut pending_replays: Vec<Occurrence> = Vec::new();
    while from_events.len() <= limit {
        let page = log.events_with_id_prefix(&prefix, cursor.as_deref(), limit.max(16))?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.event_id().to_string());
        let exhausted = page.len() < limit.max(16);
        for record in &page {
            let rest = &record.event_id()[prefix.len()..];
            match rest.split_once("#replay-") {
                Some((instant, _)) => {
                    pending_replays.push(Occurrence::of_event(instant.to_string(), record));
                }
                None => {
                    let mut occurrence = Occurrence::of_event(rest.to_string(), record);
                    pending_replays.retain(|r| {
                        if r.scheduled_time == occurrence.scheduled_time {
                            occurrence.replays.push(r.clone());
                            false
                        } else {
                            true
                        }
                    });
                    occurrence.replays.reverse();
                    from_events.push(occurrence);
                }
            }
        }
        if exhausted {
            break;
        }
    }
    let mut all = from_events;
    let before_millis = before.map(|b| b.timestamp_millis());
    for mark in log.marks_with_prefix(&skipped_prefix(binding))? {
        let Some(value) = mark.value else { continue };
        let Ok(skipped) = serde_json::from_slice::<Skipped>(&value) else {
            continue;
        };
        if before_millis.is_some_and(|b| skipped.first.timestamp_millis() >= b) {
            continue;
        }
        all.push(Occurrence::of_skipped(skipped));
    }
    all.sort_by(|a, b| b.scheduled_time.cmp(&a.scheduled_time));
    all.truncate(limit);
    Ok(all)
}

async fn fire(
    binding: &Arc<Binding>,
    reactor: &Reactor,
    scheduled: DateTime<Utc>,
    origin: Origin<'_>,
) -> Result<(), String> {
    let now = crate::time::now_millis();
    let mut event = tick_event(&binding.name, scheduled, now);
    origin.stamp(&mut event);
    let mark = Mark {
        key: mark_key(&binding.name),
        value: Some(scheduled.timestamp_millis().to_be_bytes().to_vec()),
    };
    // A failed write is retried; the tick is not skipped.
    let mut delay = Duration::from_millis(100);
    loop {
        match reactor
            .submit(
                event.clone().into_value(),
                std::slice::from_ref(binding),
                vec![mark.clone()],
                false,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(crate::runtime::Error::Stopped(e)) => {
                return Err(format!("the engine stopped: {e}"));
            }
            Err(e) => {
                tracing::error!(binding = %binding.name, error = %e, "Cannot record cron tick; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
