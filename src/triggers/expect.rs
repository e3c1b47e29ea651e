//! Absence alerts (a binding's `expect`): one watcher per binding that has
//! one. When no event came through the binding in time, it records a
//! `switchyard.binding.missed` event (`reactor::expect::missed_event`),
//! offered to the bindings with `on.missed` naming it and published on the
//! events exchange like lifecycle events.
//!
//! - `every: D`: due D after the later of the last event and the last
//!   deadline checked; an event pushes the deadline on.
//! - `by: <cron>`: due at each instant; met by an event after the previous
//!   instant and by this one.
//!
//! Deadlines passed while the daemon was down make one alert (for the
//! latest, with how many windows passed), not one per window. While the
//! binding or its workflow is paused nothing is expected: deadlines pass
//! without alerts. Time comes from a [`Clock`], so tests drive it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::reactor::Reactor;
use crate::reactor::expect::{self as marks, Missed};
use crate::spec::binding::{Binding, Expect, Trigger};
use crate::time::Clock;

/// One binding's expectation watcher, until `stop` (run by
/// `triggers::supervise`).
pub fn task(
    binding: Arc<Binding>,
    reactor: Reactor,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) -> impl Future<Output = Result<(), String>> + Send + 'static {
    let now = clock.now();
    super::until_stopped(stop, run(binding, reactor, clock, now))
}

/// What the watcher does at a moment: wait for a deadline, or decide one.
#[derive(Debug, PartialEq)]
enum Step {
    Wait(DateTime<Utc>),
    /// The deadline(s) passed and were met, or passed while paused.
    Checked(DateTime<Utc>),
    Missed(Missed),
    /// The schedule never fires again.
    Done,
}

fn step(
    expect: &Expect,
    checked: DateTime<Utc>,
    arrived: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Step {
    match expect {
        Expect::Every(every) => {
            let Ok(every) = TimeDelta::from_std(*every) else {
                return Step::Done;
            };
            let since = arrived.map_or(checked, |a| a.max(checked));
            let deadline = since + every;
            if deadline > now {
                return Step::Wait(deadline);
            }
            // Whole windows passed since (more than one only after downtime).
            let late = (now - deadline).num_milliseconds() / every.num_milliseconds().max(1);
            let deadline = deadline + every * i32::try_from(late).unwrap_or(i32::MAX);
            Step::Missed(Missed {
                deadline,
                window_start: deadline - every,
                last_event_at: arrived,
                windows: u64::try_from(late).unwrap_or(0) + 1,
            })
        }
        Expect::By(schedule) => {
            let Some(first) = schedule.next_after(checked) else {
                return Step::Done;
            };
            if first > now {
                return Step::Wait(first);
            }
            let latest = schedule.latest_between(checked, now).unwrap_or(first);
            let window_start = schedule
                .latest_between(checked, latest - TimeDelta::milliseconds(1))
                .unwrap_or(checked);
            if arrived.is_some_and(|a| a > window_start && a <= latest) {
                return Step::Checked(latest);
            }
            let since = arrived.map_or(checked, |a| a.max(checked));
            let windows = schedule.fires_between(since, latest, 100_000).len().max(1);
            Step::Missed(Missed {
                deadline: latest,
                window_start,
                last_event_at: arrived,
                windows: windows as u64,
            })
        }
    }
}

/// Watches until the schedule ends (Ok) or the engine stops (Err).
async fn run(
    binding: Arc<Binding>,
    reactor: Reactor,
    clock: Arc<dyn Clock>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let Some(expect) = &binding.expect else {
        return Ok(());
    };
    let log = reactor.runtime().log().clone();
    let mut checked = match marks::last_checked(&log, &binding.name) {
        Some(checked) => checked,
        None => {
            // First loaded now: the first window starts here. (Beside the
            // log; durable with the next group commit.)
            if let Err(e) = log.put_marks(&[marks::checked_mark(&binding.name, now)]) {
                tracing::warn!(binding = %binding.name, error = %e, "Cannot record when an expectation was first loaded.");
            }
            now
        }
    };
    tracing::info!(binding = %binding.name, expect = %expect.describe(), "Expecting events.");
    loop {
        let arrived = marks::last_arrival(&log, &binding.name);
        match step(expect, checked, arrived, clock.now()) {
            Step::Done => {
                tracing::warn!(binding = %binding.name, "The expectation's schedule has no further instants.");
                return Ok(());
            }
            Step::Wait(deadline) => clock.sleep_until(deadline).await,
            Step::Checked(at) => {
                checked = at;
                if let Err(e) = log.put_marks(&[marks::checked_mark(&binding.name, at)]) {
                    tracing::warn!(binding = %binding.name, error = %e, "Cannot record an expectation met.");
                }
            }
            Step::Missed(missed) if reactor.is_paused(&binding) => {
                tracing::info!(binding = %binding.name, deadline = %crate::time::format(missed.deadline),
                    "Expectation not checked: the binding is paused.");
                checked = missed.deadline;
                if let Err(e) = log.put_marks(&[marks::checked_mark(&binding.name, checked)]) {
                    tracing::warn!(binding = %binding.name, error = %e, "Cannot record an expectation passed while paused.");
                }
            }
            Step::Missed(missed) => {
                alert(&binding, &reactor, &missed).await?;
                checked = missed.deadline;
            }
        }
    }
}

/// Records the missed event (with the checked mark, in its transaction);
/// an error when the engine has stopped.
async fn alert(binding: &Arc<Binding>, reactor: &Reactor, missed: &Missed) -> Result<(), String> {
    let (event, message) = crate::reactor::expect::missed_event(binding, missed);
    let watchers = reactor.bindings_where(|b| {
        b.enabled && matches!(&b.trigger, Trigger::Missed(target) if *target == binding.name)
    });
    tracing::warn!(binding = %binding.name, deadline = %crate::time::format(missed.deadline),
        windows = missed.windows, alert_bindings = watchers.len(),
        "No event came through the binding in time (expect {}).",
        binding.expect.as_ref().map(Expect::describe).unwrap_or_default());
    let checked = marks::checked_mark(&binding.name, missed.deadline);
    let mut delay = Duration::from_millis(100);
    loop {
        match reactor
            .submit_published(
                event.clone().into_value(),
                &watchers,
                vec![checked.clone()],
                message.clone(),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(crate::runtime::Error::Stopped(e)) => {
                return Err(format!("the engine stopped: {e}"));
            }
            Err(e) => {
                tracing::error!(binding = %binding.name, error = %e, "Cannot record an absence alert; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::schedule::Schedule;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn every_waits_from_the_later_of_the_last_event_and_the_last_check() {
        let every = Expect::Every(Duration::from_secs(3600));
        let checked = at("2026-01-01T00:00:00Z");
        assert_eq!(
            step(&every, checked, None, at("2026-01-01T00:30:00Z")),
            Step::Wait(at("2026-01-01T01:00:00Z"))
        );
        assert_eq!(
            step(
                &every,
                checked,
                Some(at("2026-01-01T00:45:00Z")),
                at("2026-01-01T01:10:00Z")
            ),
            Step::Wait(at("2026-01-01T01:45:00Z"))
        );
        let Step::Missed(missed) = step(&every, checked, None, at("2026-01-01T01:00:00Z")) else {
            panic!("due at 01:00");
        };
        assert_eq!(
            (missed.deadline, missed.windows),
            (at("2026-01-01T01:00:00Z"), 1)
        );
    }

    #[test]
    fn every_makes_one_alert_for_the_windows_missed_while_down() {
        let every = Expect::Every(Duration::from_secs(3600));
        let last = at("2026-01-01T00:10:00Z");
        let Step::Missed(missed) = step(
            &every,
            at("2026-01-01T00:00:00Z"),
            Some(last),
            at("2026-01-01T05:20:00Z"),
        ) else {
            panic!("missed");
        };
        assert_eq!(missed.deadline, at("2026-01-01T05:10:00Z"));
        assert_eq!(missed.windows, 5);
        assert_eq!(missed.last_event_at, Some(last));
    }

    #[test]
    fn by_is_met_by_an_event_since_the_previous_instant_only() {
        let tz = crate::spec::schedule::parse_timezone("Europe/Berlin").unwrap();
        let by = Expect::By(Schedule::cron("0 6 * * *", tz).unwrap());
        // 06:00 Berlin is 05:00 UTC in winter.
        let checked = at("2026-01-01T05:00:00Z");
        assert_eq!(
            step(&by, checked, None, at("2026-01-02T04:00:00Z")),
            Step::Wait(at("2026-01-02T05:00:00Z"))
        );
        assert_eq!(
            step(
                &by,
                checked,
                Some(at("2026-01-02T03:00:00Z")),
                at("2026-01-02T05:00:00Z")
            ),
            Step::Checked(at("2026-01-02T05:00:00Z"))
        );
        // An event before the previous deadline does not count, nor a late one.
        for arrived in [at("2026-01-01T04:00:00Z"), at("2026-01-02T05:00:01Z")] {
            let Step::Missed(missed) =
                step(&by, checked, Some(arrived), at("2026-01-02T05:00:02Z"))
            else {
                panic!("missed with an event at {arrived}");
            };
            assert_eq!(missed.deadline, at("2026-01-02T05:00:00Z"));
            assert_eq!(missed.window_start, checked);
        }
    }

    #[test]
    fn by_makes_one_alert_for_the_latest_deadline_after_downtime() {
        let by = Expect::By(Schedule::cron("0 6 * * *", chrono_tz::UTC).unwrap());
        let Step::Missed(missed) = step(
            &by,
            at("2026-01-01T06:00:00Z"),
            None,
            at("2026-01-04T07:00:00Z"),
        ) else {
            panic!("missed");
        };
        assert_eq!(missed.deadline, at("2026-01-04T06:00:00Z"));
        assert_eq!(missed.window_start, at("2026-01-03T06:00:00Z"));
        assert_eq!(missed.windows, 3);
    }
}
