//! Time, in one place: the wall clock everything reads ([`now_millis`],
//! [`now`]), the injectable [`Clock`] the cron trigger waits on (tests move a
//! [`ManualClock`] by hand), and the one format every timestamp is shown in
//! (RFC 3339, UTC, milliseconds, `Z`: [`rfc3339`], [`format`]).
//!
//! The log stores times as [`Millis`] since the Unix epoch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Longest single sleep: the wall clock is re-read at least this often, so a
/// clock step (NTP, suspend) delays a wake-up by no more than this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The wall clock now.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The wall clock now, in milliseconds since the epoch.
pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// A log timestamp as shown everywhere (API, CLI, events):
/// `2026-12-02T01:02:03.456Z`. Out-of-range values show as empty.
pub fn rfc3339(millis: Millis) -> String {
    DateTime::from_timestamp_millis(millis)
        .map(format)
        .unwrap_or_default()
}

/// A time as shown everywhere: RFC 3339, UTC, milliseconds, `Z`.
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Where time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Waits until `now() >= at` (may return early; callers re-check).
    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        now()
    }

    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(MAX_SLEEP);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock moved by hand (tests): `sleep_until` returns once `set` passes `at`.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    changed: Arc<tokio::sync::watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tx, _) = tokio::sync::watch::channel(start);
        Self {
            now: Arc::new(Mutex::new(start)),
            changed: Arc::new(tx),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        if let Ok(mut now) = self.now.lock() {
            *now = at;
        }
        self.changed.send_replace(at);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.lock().map(|t| *t).unwrap_or_else(|_| Utc::now())
    }

    fn sleep_until(
        &self,
        at: DateTime<Utc>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_format_for_every_timestamp() {
        assert_eq!(rfc3339(1_796_172_310_161), "2026-12-02T00:45:10.161Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }
}
