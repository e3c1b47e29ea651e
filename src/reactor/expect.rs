//! Absence alerts' durable state: when an event last came through a
//! binding that has an `expect`, and up to which deadline its expectation
//! was last checked. Both are marks in the log. The arrival is written in
//! the event's own transaction (so a crash never forgets an event that
//! came and then raises a false alert); the watcher that raises
//! `switchyard.binding.missed` is `triggers::expect`.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::log::outbox::OutboxMessage;
use crate::log::{Log, Mark, Millis};
use crate::runtime::SubmitCandidate;
use crate::spec::binding::Binding;

use super::event::{BINDING_MISSED, Event};

const ARRIVED: &[u8] = b"expect\0arrived\0";
const CHECKED: &[u8] = b"expect\0checked\0";

fn key(prefix: &[u8], binding: &str) -> Vec<u8> {
    [prefix, binding.as_bytes()].concat()
}

fn mark(prefix: &[u8], binding: &str, at: Millis) -> Mark {
    Mark {
        key: key(prefix, binding),
        value: Some(at.to_be_bytes().to_vec()),
    }
}

fn read(log: &Log, prefix: &[u8], binding: &str) -> Option<DateTime<Utc>> {
    let bytes = log.mark(&key(prefix, binding)).ok()??;
    DateTime::from_timestamp_millis(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// When an event last came through `binding` (matched its filter).
pub fn last_arrival(log: &Log, binding: &str) -> Option<DateTime<Utc>> {
    read(log, ARRIVED, binding)
}

/// The last deadline the expectation was checked at (or when it was
/// first loaded).
pub fn last_checked(log: &Log, binding: &str) -> Option<DateTime<Utc>> {
    read(log, CHECKED, binding)
}

/// The mark saying the expectation is checked up to `at`.
pub fn checked_mark(binding: &str, at: DateTime<Utc>) -> Mark {
    mark(CHECKED, binding, at.timestamp_millis())
}

/// Arrival marks for the bindings with an `expect` that this event
/// reaches (a run to start, or a duplicate of one: either way the event
/// came). Paused, filtered and failed outcomes are not arrivals.
pub fn arrivals(
    bindings: &[std::sync::Arc<Binding>],
    candidates: &[SubmitCandidate],
    now: Millis,
) -> Vec<Mark> {
    bindings
        .iter()
        .zip(candidates)
        .filter(|(binding, candidate)| {
            binding.expect.is_some() && matches!(candidate, SubmitCandidate::Start { .. })
        })
        .map(|(binding, _)| mark(ARRIVED, &binding.name, now))
        .collect()
}

/// What one missed expectation says.
#[derive(Debug, Clone, PartialEq)]
pub struct Missed {
    /// When the event was due.
    pub deadline: DateTime<Utc>,
    /// Events after this instant (and by the deadline) would have met it.
    pub window_start: DateTime<Utc>,
    pub last_event_at: Option<DateTime<Utc>>,
    /// Deadlines missed since the last event, this one included (more
    /// than one after the daemon was down: one alert stands for them).
    pub windows: u64,
}

/// The `switchyard.binding.missed` event and its lifecycle message
/// (routing key `<workflow>.binding.missed`). Its id is fixed by the
/// binding and deadline, so it is recorded once.
pub fn missed_event(binding: &Binding, missed: &Missed) -> (Event, OutboxMessage) {
    let deadline = crate::time::format(missed.deadline);
    let mut event = Event::new(
        format!("missed:{}:{deadline}", binding.name),
        format!("/bindings/{}", binding.name),
        BINDING_MISSED,
        missed.deadline.timestamp_millis(),
    );
    event.subject = Some(binding.name.clone());
    event.datacontenttype = Some("application/json".into());
    event.data = json!({
        "binding": binding.name,
        "workflow": binding.workflow,
        "expect": binding.expect.as_ref().map(|e| e.describe()),
        "deadline": deadline,
        "window_start": crate::time::format(missed.window_start),
        "last_event_at": missed.last_event_at.map(crate::time::format),
        "windows": missed.windows,
    });
    event
        .switchyard
        .insert("binding".into(), json!(binding.name));
    let mut published = event.clone().into_value();
    if let Some(map) = published.as_object_mut() {
        map.remove("switchyard");
    }
    let message = OutboxMessage {
        routing_key: format!("{}.binding.missed", binding.workflow),
        event: published,
    };
    (event, message)
}
