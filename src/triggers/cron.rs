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
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::log::{Mark, Millis};
use crate::reactor::Reactor;
use crate::reactor::event::{CRON_TICK, Event};
use crate::spec::binding::{Binding, CatchUp, CronTrigger, Trigger};
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

/// Runs one cron binding until `stop`.
///
/// The schedule counts from the moment of this call (not from when the task
/// first runs), so a clock that moves right after start-up is seen moving.
pub fn spawn(
    binding: Arc<Binding>,
    reactor: Reactor,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let now = clock.now();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            () = run(binding, reactor, clock, now) => {}
        }
    });
}

async fn run(binding: Arc<Binding>, reactor: Reactor, clock: Arc<dyn Clock>, now: DateTime<Utc>) {
    let Trigger::Cron(CronTrigger { schedule, catch_up }) = &binding.trigger else {
        return;
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
        let replay: Vec<DateTime<Utc>> = match catch_up {
            CatchUp::None => Vec::new(),
            // The most recent missed instant, however long the downtime.
            CatchUp::Latest => schedule.latest_between(from, now).into_iter().collect(),
            CatchUp::All => {
                let missed = schedule.fires_between(from, now, MAX_CATCH_UP + 1);
                if missed.len() > MAX_CATCH_UP {
                    tracing::warn!(binding = %binding.name, limit = MAX_CATCH_UP,
                        "More missed cron fires than the catch-up limit; firing the first ones.");
                }
                missed.into_iter().take(MAX_CATCH_UP).collect()
            }
        };
        if !replay.is_empty() {
            tracing::info!(binding = %binding.name, fires = replay.len(), policy = ?catch_up,
                "Catching up on cron fires missed while down.");
        }
        for at in replay {
            if !fire(&binding, &reactor, at).await {
                return;
            }
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
            return;
        };
        while clock.now() < next {
            clock.sleep_until(next).await;
        }
        if !fire(&binding, &reactor, next).await {
            return;
        }
        after = next;
    }
}

/// Records one tick (and its runs) with the new last-fire mark; false when
/// the engine has stopped.
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

async fn fire(binding: &Arc<Binding>, reactor: &Reactor, scheduled: DateTime<Utc>) -> bool {
    let now = crate::time::now_millis();
    let event = tick_event(&binding.name, scheduled, now);
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
            Ok(_) => return true,
            Err(crate::runtime::Error::Stopped(_)) => return false,
            Err(e) => {
                tracing::error!(binding = %binding.name, error = %e, "Cannot record cron tick; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
