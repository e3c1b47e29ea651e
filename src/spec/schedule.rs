//! Cron schedule fire times: a pure module (no I/O, no clock).
//!
//! A binding's trigger is either `{"cron": {"schedule": "30 23 * * *",
//! "timezone": "Europe/Berlin"}}` or `{"cron": {"every": "30s"}}`. This module
//! turns those into a [`Schedule`] and answers "when does it fire next?".
//!
//! # Expressions
//!
//! - **5 fields** (`minute hour day-of-month month day-of-week`): standard
//!   crontab. Day-of-week is numbered 0-7 (0 and 7 are Sunday) and accepts
//!   the names `SUN`..`SAT`; months accept `JAN`..`DEC`; names are
//!   case-insensitive. Lists (`1,15`), ranges (`1-5`), steps (`*/2`, `1-5/2`,
//!   and `5/15` meaning `5-max/15`) are supported; `?` is accepted as a
//!   synonym of `*` in day-of-month and day-of-week. Quartz extensions
//!   (`L`, `W`, `#`) are rejected. Every field is expanded to an explicit
//!   set and handed to the `cron` crate (day-of-week as names, so the
//!   crate's different numbering cannot go wrong). When **both**
//!   day-of-month and day-of-week are restricted (neither starts with `*`
//!   nor is `?`; as in Vixie cron, `*/2` does not count as restricted), a day
//!   matches if **either** matches, as in standard cron (`0 0 13 * FRI`
//!   fires on every 13th and on every Friday).
//! - **6 or 7 fields** (`second minute hour day-of-month month day-of-week
//!   [year]`): passed to the `cron` crate as they are, with **Quartz**
//!   numbering: day-of-week is 1-7 with 1 = Sunday (names `SUN`..`SAT` work
//!   the same in both styles), and day-of-month and day-of-week are combined
//!   with AND.
//! - **Macros**: `@yearly` / `@annually` (Jan 1, 00:00), `@monthly` (the 1st,
//!   00:00), `@weekly` (Sunday, 00:00), `@daily` / `@midnight` (00:00),
//!   `@hourly` (minute 0).
//!
//! # Time zones and daylight saving time
//!
//! Cron schedules are evaluated in local wall-clock time of an IANA time
//! zone (UTC by default, see [`parse_timezone`]):
//!
//! - a wall time skipped by a spring-forward gap fires **once**, at the first
//!   instant after the gap (several skipped wall times, and a scheduled wall
//!   time right at the end of the gap, collapse into that one fire);
//! - a wall time that occurs twice in a fall-back overlap fires **once**, at
//!   its earlier occurrence; it does not fire again during the repeated
//!   period, even when asked from inside it.
//!
//! `every` intervals fire at whole multiples of the interval since the Unix
//! epoch, so fire times do not depend on when the daemon started, and do not
//! depend on any time zone.
//!
//! Fire times are whole seconds for cron schedules; the `cron` crate covers
//! the years 1970 to 2100, after which a cron schedule never fires.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// When a trigger fires: a cron expression in a time zone, or a fixed interval.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron(CronSchedule),
    Every(Duration),
}

#[derive(Clone, Debug)]
struct CronSchedule {
    /// The expression as written (trimmed), for [`Schedule::describe`].
    source: String,
    tz: Tz,
    /// Usually one; two for a 5-field expression restricting both
    /// day-of-month and day-of-week (a day matching either fires).
    parts: Vec<cron::Schedule>,
}

/// The longest spring-forward gap searched for its end (real gaps are at most
/// a day, e.g. Pacific/Apia skipping 2011-12-30).
const MAX_GAP_MINUTES: u32 = 48 * 60;

/// Bound on candidate wall times skipped by one [`Schedule::next_after`]
/// call (they are skipped only inside a fall-back overlap: a few hours of a
/// per-second schedule at most).
const MAX_SKIPPED_CANDIDATES: u32 = 200_000;

/// The last year the `cron` crate evaluates.
const CRON_MAX_YEAR: i32 = 2100;

impl Schedule {
    /// A crontab expression (5, 6 or 7 fields, or a macro) in a timezone.
    ///
    /// 5-field expressions use standard crontab numbering (day-of-week 0-7,
    /// 0 and 7 = Sunday, day-of-month OR day-of-week when both are
    /// restricted); 6/7-field expressions (seconds first, optional year
    /// last) are passed to the `cron` crate unchanged and use Quartz
    /// numbering (day-of-week 1-7, 1 = Sunday). See the module docs.
    ///
    /// The error names the problem, e.g.
    /// `invalid cron schedule "61 * * * *": minute value 61 is out of range 0-59`.
    pub fn cron(expr: &str, tz: Tz) -> Result<Self, String> {
        let source = expr.trim();
        let invalid = |msg: String| format!("invalid cron schedule \"{source}\": {msg}");
        let translated = translate(source).map_err(invalid)?;
        let parts = translated
            .iter()
            .map(|text| {
                cron::Schedule::from_str(text).map_err(|e| invalid(one_line(&e.to_string())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schedule = Schedule {
            kind: Kind::Cron(CronSchedule {
                source: source.to_owned(),
                tz,
                parts,
            }),
        };
        // `0 0 30 2 *` parses but no date matches: a binding that could
        // never fire is a mistake, not a schedule.
        let epoch = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if schedule.next_after(epoch).is_none() {
            return Err(invalid(
                "it never fires: no date matches it (e.g. February 30, or a year before 1970)"
                    .into(),
            ));
        }
        Ok(schedule)
    }

    /// The time zone a cron schedule is in (None for `every`).
    pub fn timezone(&self) -> Option<Tz> {
        match &self.kind {
            Kind::Cron(cron) => Some(cron.tz),
            Kind::Every(_) => None,
        }
    }

    /// A fixed interval; zero is rejected.
    ///
    /// Fires at every whole multiple of `interval` since the Unix epoch
    /// (1970-01-01T00:00:00Z), so fire times are stable across restarts and
    /// independent of any time zone.
    pub fn every(interval: Duration) -> Result<Self, String> {
        if interval.is_zero() {
            return Err("invalid interval: must be greater than zero".to_owned());
        }
        Ok(Schedule {
            kind: Kind::Every(interval),
        })
    }

    /// The first fire time strictly after `after`, or None if there is none.
    ///
    /// None means the schedule never fires again: an impossible date such as
    /// February 30, a year field in the past, or past the year 2100.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => cron.next_after(after),
            Kind::Every(interval) => every_next_after(*interval, after),
        }
    }

    /// Fire times t with after < t <= until, in order, at most `limit` of them.
    ///
    /// Each time appears once, even where daylight saving time collapses
    /// several wall times into one instant.
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::new();
        let mut cursor = after;
        while fires.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    fires.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        fires
    }

    /// The latest fire time t with after < t <= until, if any.
    ///
    /// Cost follows the distance from `until` back to that fire, not the
    /// length of the range: a week of a per-minute schedule is one step
    /// for `every` and a few probes of doubling windows for cron.
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if until <= after {
            return None;
        }
        if let Kind::Every(interval) = &self.kind {
            // The last multiple of the interval at or before `until`.
            let step = TimeDelta::from_std(*interval).ok()?;
            let candidate = every_next_after(*interval, until.checked_sub_signed(step)?)?;
            return (candidate > after && candidate <= until).then_some(candidate);
        }
        let mut window = TimeDelta::seconds(1);
        loop {
            let start = until
                .checked_sub_signed(window)
                .map_or(after, |start| start.max(after));
            if let Some(first) = self.next_after(start).filter(|t| *t <= until) {
                let mut latest = first;
                while let Some(next) = self.next_after(latest).filter(|t| *t <= until) {
                    latest = next;
                }
                return Some(latest);
            }
            if start == after {
                return None;
            }
            window = window.checked_mul(2)?;
        }
    }

    /// Human description for logs/API, e.g. `"30 23 * * *" in Europe/Berlin` or `every 30s`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Cron(cron) => format!("\"{}\" in {}", cron.source, cron.tz.name()),
            Kind::Every(interval) => format!("every {}", humantime::format_duration(*interval)),
        }
    }
}

/// An IANA time zone name (`"UTC"`, `"Europe/Berlin"`, `"America/New_York"`).
///
/// Names are case-sensitive; for a name that only differs in case the error
/// suggests the right spelling.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
    let trimmed = name.trim();
    let suggestion = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(trimmed));
    match suggestion {
        Some(tz) => Err(format!(
            "unknown timezone \"{name}\": did you mean \"{}\"?",
            tz.name()
        )),
        None => Err(format!(
            "unknown timezone \"{name}\": expected an IANA time zone name such as \"UTC\" or \"Europe/Berlin\""
        )),
    }
}

impl CronSchedule {
    /// The first instant strictly after `after` (see the module docs for DST).
    ///
    /// Walks the schedule's wall times (evaluated as naive local times)
    /// from `after`'s local wall time on, maps each to an instant and keeps
    /// the first one later than `after`. Wall times mapping to `after` or
    /// earlier are skipped: the ones inside a fall-back overlap when `after`
    /// is in the repeated period (their earlier occurrence has passed), and
    /// the wall times a spring-forward gap collapsed into an instant already
    /// returned.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        if local.year() > CRON_MAX_YEAR {
            return None;
        }
        // The cron crate cannot start from before year 0; nothing fires
        // before 1970 anyway.
        let floor = NaiveDate::from_ymd_opt(1969, 1, 1)?.and_hms_opt(0, 0, 0)?;
        let mut cursor = local.max(floor);
        for _ in 0..MAX_SKIPPED_CANDIDATES {
            let wall = self.next_wall_time(cursor)?;
            if let Some(instant) = resolve_wall_time(self.tz, wall)
                && instant > after
            {
                return Some(instant);
            }
            cursor = wall;
        }
        None
    }

    /// The first scheduled wall time strictly after `wall` (earliest of the
    /// parts), ignoring time zones.
    fn next_wall_time(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = Utc.from_utc_datetime(&wall);
        self.parts
            .iter()
            .filter_map(|part| part.after(&start).next())
            .min()
            .map(|t| t.naive_utc())
    }
}

/// The instant a scheduled wall time fires at in `tz`: the instant itself;
/// the earlier one when it occurs twice; the end of the gap when it does not
/// occur.
fn resolve_wall_time(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant after the spring-forward gap containing `wall`.
///
/// Steps forward a minute at a time to the first wall time that exists,
/// then back a second at a time in case the gap ended mid-minute. Bounded by
/// [`MAX_GAP_MINUTES`].
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let exists = |t: &NaiveDateTime| !matches!(tz.from_local_datetime(t), LocalResult::None);
    let mut candidate = wall;
    let mut found = false;
    for _ in 0..MAX_GAP_MINUTES {
        candidate = candidate.checked_add_signed(TimeDelta::minutes(1))?;
        if exists(&candidate) {
            found = true;
            break;
        }
    }
    if !found {
        return None;
    }
    // The wall time a minute earlier does not exist, so this stops within 60 steps.
    for _ in 0..60 {
        let previous = candidate.checked_sub_signed(TimeDelta::seconds(1))?;
        if !exists(&previous) {
            break;
        }
        candidate = previous;
    }
    match tz.from_local_datetime(&candidate) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => None,
    }
}

/// The first multiple of `interval` since the epoch strictly after `after`.
fn every_next_after(interval: Duration, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    const NANOS_PER_SEC: i128 = 1_000_000_000;
    let step = i128::try_from(interval.as_nanos()).ok()?;
    if step == 0 {
        return None;
    }
    let now =
        i128::from(after.timestamp()) * NANOS_PER_SEC + i128::from(after.timestamp_subsec_nanos());
    let next = now.div_euclid(step).checked_add(1)?.checked_mul(step)?;
    let secs = i64::try_from(next.div_euclid(NANOS_PER_SEC)).ok()?;
    let nanos = u32::try_from(next.rem_euclid(NANOS_PER_SEC)).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

/// The `cron` crate's parse error as one line: its errors echo the
/// expression and a `^` marker line before the message; keep the message.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().collect();
    let after_marker = lines
        .iter()
        .rposition(|line| {
            let line = line.trim();
            !line.is_empty() && line.chars().all(|c| c == '^')
        })
        .map_or(&lines[..], |i| &lines[i + 1..]);
    let text = if after_marker.iter().all(|l| l.trim().is_empty()) {
        message
    } else {
        &after_marker.join(" ")
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Translation of expressions into the cron crate's (Quartz) syntax.
// ---------------------------------------------------------------------------

/// Translates an expression into one or more `cron` crate expressions whose
/// union is the schedule. Errors are messages without the expression prefix.
fn translate(source: &str) -> Result<Vec<String>, String> {
    if source.is_empty() {
        return Err("the expression is empty".to_owned());
    }
    if source.starts_with('@') {
        return translate_macro(source).map(|e| vec![e.to_owned()]);
    }
    let fields: Vec<&str> = source.split_whitespace().collect();
    match fields.len() {
        5 => translate_standard(&fields),
        6 | 7 => Ok(vec![fields.join(" ")]),
        n => Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), \
             6 or 7 fields with seconds first, or a macro such as @daily; found {n} field{}",
            if n == 1 { "" } else { "s" }
        )),
    }
}

/// `@daily` and friends, as 6-field expressions.
fn translate_macro(source: &str) -> Result<&'static str, String> {
    match source.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => Ok("0 0 0 1 1 *"),
        "@monthly" => Ok("0 0 0 1 * *"),
        "@weekly" => Ok("0 0 0 * * SUN"),
        "@daily" | "@midnight" => Ok("0 0 0 * * *"),
        "@hourly" => Ok("0 0 * * * *"),
        _ => Err(format!(
            "unknown macro {source}; expected one of @yearly, @annually, @monthly, \
             @weekly, @daily, @midnight, @hourly"
        )),
    }
}

/// One field of a 5-field crontab expression.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for values, in order from `names_start`.
    names: &'static [&'static str],
    names_start: u32,
    /// Whether `?` (a synonym of `*`) is allowed.
    allows_any: bool,
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_start: 0,
    allows_any: false,
};

const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_start: 0,
    allows_any: false,
};

const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_start: 0,
    allows_any: true,
};

const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    names_start: 1,
    allows_any: false,
};

const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &WEEKDAY_NAMES,
    names_start: 0,
    allows_any: true,
};

/// Day names in standard numbering (0 = Sunday); also what is emitted.
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed 5-field crontab field.
struct Field {
    /// Written as `*` or `?` (unrestricted).
    any: bool,
    values: BTreeSet<u32>,
}

impl Field {
    /// `*` when unrestricted, else the explicit list of values.
    fn numbers(&self) -> String {
        if self.any {
            return "*".to_owned();
        }
        self.values
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Translates `minute hour day-of-month month day-of-week` into 6-field
/// `cron` crate expressions (one, or two for the day-of-month OR
/// day-of-week case).
fn translate_standard(fields: &[&str]) -> Result<Vec<String>, String> {
    let [minute, hour, dom, month, dow] = fields else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    // As in Vixie cron: a day field written starting with `*` (`*`, `*/2`)
    // does not take part in the OR below; both fields must then match.
    let starred = |text: &str| text.starts_with('*') || text == "?";
    let either_day = !starred(dom) && !starred(dow);
    let minute = parse_field(minute, &MINUTE)?;
    let hour = parse_field(hour, &HOUR)?;
    let dom = parse_field(dom, &DAY_OF_MONTH)?;
    let month = parse_field(month, &MONTH)?;
    let dow = parse_field(dow, &DAY_OF_WEEK)?;

    let prefix = format!("0 {} {}", minute.numbers(), hour.numbers());
    let month = month.numbers();
    let dom_text = dom.numbers();
    let dow_text = if dow.any {
        "*".to_owned()
    } else {
        // Standard numbering (7 = Sunday too) to names: the crate numbers
        // days differently (1 = Sunday), names mean the same in both.
        let days: BTreeSet<u32> = dow.values.iter().map(|d| d % 7).collect();
        days.iter()
            .filter_map(|&d| WEEKDAY_NAMES.get(d as usize).copied())
            .collect::<Vec<_>>()
            .join(",")
    };
    if either_day {
        // Standard cron: a day matches if either field matches.
        Ok(vec![
            format!("{prefix} {dom_text} {month} *"),
            format!("{prefix} * {month} {dow_text}"),
        ])
    } else {
        Ok(vec![format!("{prefix} {dom_text} {month} {dow_text}")])
    }
}

/// Parses and expands one 5-field crontab field, validating it against `spec`.
fn parse_field(text: &str, spec: &FieldSpec) -> Result<Field, String> {
    let name = spec.name;
    if text == "*" {
        return Ok(Field {
            any: true,
            values: (spec.min..=spec.max).collect(),
        });
    }
    if text == "?" {
        if spec.allows_any {
            return Ok(Field {
                any: true,
                values: (spec.min..=spec.max).collect(),
            });
        }
        return Err(format!(
            "{name} \"?\" is not allowed; '?' is only allowed in day-of-month and day-of-week"
        ));
    }
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("{name} field \"{text}\" has an empty list item"));
        }
        reject_extensions(item, spec)?;
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(parse_step(step, spec)?)),
            None => (item, None),
        };
        let (low, high) = if base == "*" {
            (spec.min, spec.max)
        } else if let Some((low, high)) = base.split_once('-') {
            if low.is_empty() || high.is_empty() {
                return Err(format!("{name} range \"{base}\" is incomplete"));
            }
            let low = parse_value(low, spec)?;
            let high = parse_value(high, spec)?;
            if low > high {
                return Err(format!(
                    "{name} range \"{base}\" is backwards (its start is after its end)"
                ));
            }
            (low, high)
        } else {
            let value = parse_value(base, spec)?;
            // `5/15` means `5-max/15`, as in most cron implementations.
            (value, if step.is_some() { spec.max } else { value })
        };
        values.extend((low..=high).step_by(step.unwrap_or(1)));
    }
    Ok(Field { any: false, values })
}

/// The step after `/`: a positive number.
fn parse_step(text: &str, spec: &FieldSpec) -> Result<usize, String> {
    let name = spec.name;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} step \"{text}\" is not a positive number"));
    }
    match text.parse::<usize>() {
        Ok(0) => Err(format!("{name} step 0 is not allowed; steps start at 1")),
        Ok(step) => Ok(step),
        // Too large to matter: only the start of the range matches.
        Err(_) => Ok(usize::MAX),
    }
}

/// A number in range, or a name (for month and day-of-week).
fn parse_value(text: &str, spec: &FieldSpec) -> Result<u32, String> {
    let name = spec.name;
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(value) if (spec.min..=spec.max).contains(&value) => Ok(value),
            _ => Err(format!(
                "{name} value {text} is out of range {}-{}",
                spec.min, spec.max
            )),
        };
    }
    if let Some(index) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        let index = u32::try_from(index).map_err(|e| e.to_string())?;
        return Ok(spec.names_start + index);
    }
    if spec.names.is_empty() {
        Err(format!("{name} value \"{text}\" is not a number"))
    } else {
        Err(format!(
            "{name} value \"{text}\" is not a number or a name ({})",
            spec.names.join(", ")
        ))
    }
}

/// Rejects the Quartz extensions `L`, `W` and `#` with a clear message.
fn reject_extensions(item: &str, spec: &FieldSpec) -> Result<(), String> {
    let name = spec.name;
    let upper = item.to_ascii_uppercase();
    let digits_then = |suffix: char| {
        upper
            .strip_suffix(suffix)
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let extension = if upper.contains('#') {
        Some("'#' (nth weekday of the month)")
    } else if upper == "L" || upper == "LW" || upper.starts_with("L-") || digits_then('L') {
        Some("'L' (last)")
    } else if digits_then('W') {
        Some("'W' (nearest weekday)")
    } else {
        None
    };
    match extension {
        Some(what) => Err(format!(
            "{name} \"{item}\" uses {what}, which standard crontab does not have \
             ('L', 'W' and '#' are not supported)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Timelike, Weekday};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        parse_timezone(name).unwrap()
    }

    fn cron(expr: &str) -> Schedule {
        Schedule::cron(expr, Tz::UTC).unwrap()
    }

    fn cron_err(expr: &str) -> String {
        Schedule::cron(expr, Tz::UTC).unwrap_err()
    }

    /// The fire times in (after, until], up to 1000.
    fn fires(schedule: &Schedule, after: &str, until: &str) -> Vec<DateTime<Utc>> {
        schedule.fires_between(utc(after), utc(until), 1000)
    }

    fn weekdays(times: &[DateTime<Utc>]) -> Vec<Weekday> {
        times.iter().map(|t| t.weekday()).collect()
    }

    #[test]
    fn five_field_daily_in_berlin() {
        let s = Schedule::cron("30 23 * * *", tz("Europe/Berlin")).unwrap();
        // Winter: CET, UTC+1.
        assert_eq!(
            s.next_after(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T22:30:00Z"))
        );
        // Summer: CEST, UTC+2.
        assert_eq!(
            s.next_after(utc("2026-07-10T00:00:00Z")),
            Some(utc("2026-07-10T21:30:00Z"))
        );
        // Strictly after: at a fire time, the next day's.
        assert_eq!(
            s.next_after(utc("2026-07-10T21:30:00Z")),
            Some(utc("2026-07-11T21:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-07-10T21:29:59.999Z")),
            Some(utc("2026-07-10T21:30:00Z"))
        );
    }

    #[test]
    fn default_utc_daily() {
        let s = cron("0 12 * * *");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-03T23:59:59Z"),
            vec![
                utc("2026-01-01T12:00:00Z"),
                utc("2026-01-02T12:00:00Z"),
                utc("2026-01-03T12:00:00Z"),
            ]
        );
    }

    #[test]
    fn day_of_week_zero_and_seven_are_sunday() {
        // 2026-01-01 is a Thursday; the first Sunday is 2026-01-04.
        for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN", "0 12 * * sun"] {
            let s = cron(expr);
            let got = fires(&s, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z");
            assert_eq!(got.len(), 4, "{expr}");
            assert_eq!(got[0], utc("2026-01-04T12:00:00Z"), "{expr}");
            assert!(got.iter().all(|t| t.weekday() == Weekday::Sun), "{expr}");
        }
        // 0 and 7 together: still once per Sunday.
        let s = cron("0 12 * * 0,7");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z").len(),
            4
        );
    }

    #[test]
    fn day_of_week_range_is_monday_to_friday() {
        let s = cron("0 9 * * 1-5");
        // Two full weeks from Sunday 2026-01-04.
        let got = fires(&s, "2026-01-04T00:00:00Z", "2026-01-17T23:59:59Z");
        assert_eq!(got.len(), 10);
        use Weekday::*;
        assert_eq!(
            weekdays(&got),
            vec![Mon, Tue, Wed, Thu, Fri, Mon, Tue, Wed, Thu, Fri]
        );
        // MON-FRI and a 1-7 range ending on Sunday.
        let named = cron("0 9 * * MON-FRI");
        assert_eq!(
            fires(&named, "2026-01-04T00:00:00Z", "2026-01-17T23:59:59Z"),
            got
        );
        let s = cron("0 9 * * 5-7");
        let got = fires(&s, "2026-01-04T12:00:00Z", "2026-01-10T23:59:59Z");
        assert_eq!(weekdays(&got), vec![Fri, Sat]);
        let got = fires(&s, "2026-01-04T12:00:00Z", "2026-01-11T23:59:59Z");
        assert_eq!(weekdays(&got), vec![Fri, Sat, Sun]);
    }

    #[test]
    fn day_of_week_steps() {
        use Weekday::*;
        let week = ("2026-01-03T23:59:59Z", "2026-01-10T23:59:59Z"); // Sun 4th .. Sat 10th
        let s = cron("0 9 * * */2");
        assert_eq!(
            weekdays(&fires(&s, week.0, week.1)),
            vec![Sun, Tue, Thu, Sat]
        );
        let s = cron("0 9 * * 1-5/2");
        assert_eq!(weekdays(&fires(&s, week.0, week.1)), vec![Mon, Wed, Fri]);
        let s = cron("0 9 * * MON-FRI/2");
        assert_eq!(weekdays(&fires(&s, week.0, week.1)), vec![Mon, Wed, Fri]);
        // `1/3` means 1-7/3: Mon, Thu, Sun (7).
        let s = cron("0 9 * * 1/3");
        assert_eq!(weekdays(&fires(&s, week.0, week.1)), vec![Sun, Mon, Thu]);
    }

    #[test]
    fn names_lists_and_minute_steps() {
        use Weekday::*;
        let s = cron("0 9 * * MON,wed,Fri");
        assert_eq!(
            weekdays(&fires(&s, "2026-01-03T23:59:59Z", "2026-01-10T23:59:59Z")),
            vec![Mon, Wed, Fri]
        );
        let s = cron("0 9 * * SUN-SAT");
        assert_eq!(
            fires(&s, "2026-01-03T23:59:59Z", "2026-01-10T23:59:59Z").len(),
            7
        );
        // Month names: the first of each quarter's first month.
        let s = cron("0 0 1 jan,APR,Jul,OCT *");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-12-31T23:59:59Z"),
            vec![
                utc("2026-04-01T00:00:00Z"),
                utc("2026-07-01T00:00:00Z"),
                utc("2026-10-01T00:00:00Z"),
            ]
        );
        let s = cron("0 0 1 JAN-MAR *");
        assert_eq!(
            fires(&s, "2025-12-31T00:00:00Z", "2026-12-31T23:59:59Z").len(),
            3
        );
        let s = cron("*/15 9-10 * * *");
        let got = fires(&s, "2026-01-01T00:00:00Z", "2026-01-01T23:59:59Z");
        assert_eq!(got.len(), 8);
        assert_eq!(got[0], utc("2026-01-01T09:00:00Z"));
        assert_eq!(got[7], utc("2026-01-01T10:45:00Z"));
        let s = cron("5,10-12,50/5 3 * * *");
        let minutes: Vec<u32> = fires(&s, "2026-01-01T00:00:00Z", "2026-01-01T23:59:59Z")
            .iter()
            .map(|t| t.minute())
            .collect();
        assert_eq!(minutes, vec![5, 10, 11, 12, 50, 55]);
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_restricted() {
        // Every 13th AND every Friday. January 2026: Fridays 2, 9, 16, 23, 30;
        // the 13th is a Tuesday.
        let s = cron("0 0 13 * FRI");
        let days: Vec<u32> = fires(&s, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z")
            .iter()
            .map(|t| t.day())
            .collect();
        assert_eq!(days, vec![2, 9, 13, 16, 23, 30]);
        // A Friday the 13th fires once (2026-02-13 is a Friday).
        let feb: Vec<u32> = fires(&s, "2026-02-01T00:00:00Z", "2026-02-28T23:59:59Z")
            .iter()
            .map(|t| t.day())
            .collect();
        assert_eq!(feb, vec![6, 13, 20, 27]);
        // Only one restricted: the other is ignored.
        let dom_only = cron("0 0 13 * *");
        assert_eq!(
            fires(&dom_only, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z"),
            vec![utc("2026-01-13T00:00:00Z")]
        );
        let dom_only = cron("0 0 13 * ?");
        assert_eq!(
            fires(&dom_only, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z"),
            vec![utc("2026-01-13T00:00:00Z")]
        );
        let dow_only = cron("0 0 ? * 5");
        assert_eq!(
            fires(&dow_only, "2026-01-01T00:00:00Z", "2026-01-31T23:59:59Z").len(),
            5
        );
        // The month still restricts both.
        let s = cron("0 0 1 FEB MON");
        let got = fires(&s, "2026-01-01T00:00:00Z", "2026-12-31T23:59:59Z");
        assert_eq!(got[0], utc("2026-02-01T00:00:00Z"));
        assert!(got.iter().all(|t| t.month() == 2));
        assert_eq!(got.len(), 5); // the 1st (a Sunday) and Mondays 2, 9, 16, 23
    }

    #[test]
    fn six_and_seven_field_expressions_with_seconds() {
        let s = cron("*/20 * * * * *");
        assert_eq!(
            fires(&s, "2026-01-01T12:00:05Z", "2026-01-01T12:01:00Z"),
            vec![
                utc("2026-01-01T12:00:20Z"),
                utc("2026-01-01T12:00:40Z"),
                utc("2026-01-01T12:01:00Z"),
            ]
        );
        // Sub-second `after`.
        assert_eq!(
            s.next_after(utc("2026-01-01T12:00:19.5Z")),
            Some(utc("2026-01-01T12:00:20Z"))
        );
        // Quartz numbering is kept as is: 1 = Sunday.
        let s = cron("0 0 12 * * 1");
        let next = s.next_after(utc("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-01-04T12:00:00Z"));
        assert_eq!(next.weekday(), Weekday::Sun);
        let s = cron("0 0 12 ? * MON-FRI");
        assert_eq!(
            s.next_after(utc("2026-01-03T00:00:00Z")),
            Some(utc("2026-01-05T12:00:00Z"))
        );
        // With a year.
        let s = cron("0 0 0 1 1 * 2030");
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2030-01-01T00:00:00Z"))
        );
        assert_eq!(s.next_after(utc("2030-01-01T00:00:00Z")), None);
    }

    #[test]
    fn macros() {
        let after = utc("2026-05-15T10:20:30Z");
        let cases = [
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
            ("@monthly", "2026-06-01T00:00:00Z"),
            ("@weekly", "2026-05-17T00:00:00Z"), // Sunday
            ("@daily", "2026-05-16T00:00:00Z"),
            ("@midnight", "2026-05-16T00:00:00Z"),
            ("@hourly", "2026-05-15T11:00:00Z"),
            ("@DAILY", "2026-05-16T00:00:00Z"),
        ];
        for (expr, want) in cases {
            assert_eq!(cron(expr).next_after(after), Some(utc(want)), "{expr}");
        }
        // In a time zone: local midnight.
        let s = Schedule::cron("@daily", tz("Europe/Berlin")).unwrap();
        assert_eq!(s.next_after(after), Some(utc("2026-05-15T22:00:00Z")));
        let err = cron_err("@fortnightly");
        assert!(
            err.starts_with("invalid cron schedule \"@fortnightly\": unknown macro"),
            "{err}"
        );
    }

    #[test]
    fn every_is_epoch_aligned() {
        let s = Schedule::every(Duration::from_secs(30)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:07Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:30Z")),
            Some(utc("2026-01-01T00:01:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:29.999999999Z")),
            Some(utc("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", "2026-01-01T00:02:00Z").len(),
            4
        );
        // An interval that does not divide a minute: multiples since the epoch.
        let s = Schedule::every(Duration::from_secs(7)).unwrap();
        for t in fires(&s, "2026-03-29T00:00:00Z", "2026-03-29T00:05:00Z") {
            assert_eq!(t.timestamp() % 7, 0);
            assert_eq!(t.timestamp_subsec_nanos(), 0);
        }
        // Sub-second intervals.
        let s = Schedule::every(Duration::from_millis(250)).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00.3Z")),
            Some(utc("2026-01-01T00:00:00.5Z"))
        );
        // Before the epoch too.
        let s = Schedule::every(Duration::from_secs(3600)).unwrap();
        assert_eq!(
            s.next_after(utc("1969-12-31T22:30:00Z")),
            Some(utc("1969-12-31T23:00:00Z"))
        );
    }

    #[test]
    fn every_zero_is_rejected() {
        let err = Schedule::every(Duration::ZERO).unwrap_err();
        assert!(err.contains("greater than zero"), "{err}");
    }

    #[test]
    fn bad_fields_are_rejected_with_messages() {
        assert_eq!(
            cron_err("61 * * * *"),
            "invalid cron schedule \"61 * * * *\": minute value 61 is out of range 0-59"
        );
        assert_eq!(
            cron_err("0 0 * * 8"),
            "invalid cron schedule \"0 0 * * 8\": day-of-week value 8 is out of range 0-7"
        );
        let cases = [
            ("0 24 * * *", "hour value 24 is out of range 0-23"),
            ("0 0 32 * *", "day-of-month value 32 is out of range 1-31"),
            ("0 0 0 * *", "day-of-month value 0 is out of range 1-31"),
            ("0 0 * 13 *", "month value 13 is out of range 1-12"),
            ("0 0 * 0 *", "month value 0 is out of range 1-12"),
            ("0 0 * * 1-8", "day-of-week value 8 is out of range 0-7"),
            (
                "99999999999 * * * *",
                "minute value 99999999999 is out of range",
            ),
            ("0 0 L * *", "day-of-month \"L\" uses 'L'"),
            ("0 0 LW * *", "'L'"),
            ("0 0 15W * *", "day-of-month \"15W\" uses 'W'"),
            ("0 0 * * 5#3", "day-of-week \"5#3\" uses '#'"),
            ("0 0 * * 5L", "day-of-week \"5L\" uses 'L'"),
            ("0 0 * * 5-1", "day-of-week range \"5-1\" is backwards"),
            ("*/0 * * * *", "minute step 0 is not allowed"),
            ("*/x * * * *", "minute step \"x\" is not a positive number"),
            ("abc * * * *", "minute value \"abc\" is not a number"),
            (
                "0 0 * * FUN",
                "day-of-week value \"FUN\" is not a number or a name",
            ),
            (
                "0 0 * FOO *",
                "month value \"FOO\" is not a number or a name",
            ),
            ("0 0 * * MON,", "empty list item"),
            ("0 -1 * * *", "hour range \"-1\" is incomplete"),
            (
                "? 0 * * *",
                "'?' is only allowed in day-of-month and day-of-week",
            ),
            ("* * * *", "found 4 fields"),
            ("* * * * * * * *", "found 8 fields"),
            ("", "the expression is empty"),
            ("   ", "the expression is empty"),
        ];
        for (expr, want) in cases {
            let err = cron_err(expr);
            assert!(
                err.starts_with(&format!("invalid cron schedule \"{}\": ", expr.trim())),
                "{expr}: {err}"
            );
            assert!(err.contains(want), "{expr}: {err} does not contain {want}");
        }
        // 6/7-field errors come from the cron crate, on one line.
        let cases = [
            ("0 61 * * * *", "Minutes"),
            ("x * * * * *", "Seconds"),
            ("0 0 0 * * 8", "Days of Week"),
            ("0 0 0 L * *", "Days of Month"),
        ];
        for (expr, want) in cases {
            let err = cron_err(expr);
            assert!(
                err.starts_with(&format!("invalid cron schedule \"{expr}\": ")),
                "{err}"
            );
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n') && !err.contains('^'), "{err}");
        }
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        assert_eq!(
            parse_timezone("Europe/Berlin").unwrap(),
            chrono_tz::Europe::Berlin
        );
        let err = parse_timezone("Mars/Olympus_Mons").unwrap_err();
        assert!(
            err.contains("unknown timezone \"Mars/Olympus_Mons\""),
            "{err}"
        );
        let err = parse_timezone("europe/berlin").unwrap_err();
        assert!(err.contains("did you mean \"Europe/Berlin\""), "{err}");
        assert!(parse_timezone("").is_err());
    }

    #[test]
    fn spring_forward_in_berlin_fires_once_at_gap_end() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00Z).
        let berlin = tz("Europe/Berlin");
        let s = Schedule::cron("30 2 * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
            vec![
                utc("2026-03-28T01:30:00Z"), // 02:30 CET
                utc("2026-03-29T01:00:00Z"), // 02:30 skipped: 03:00 CEST
                utc("2026-03-30T00:30:00Z"), // 02:30 CEST
            ]
        );
        // Several skipped wall times collapse into one fire.
        let s = Schedule::cron("*/15 2 * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-03-28T12:00:00Z", "2026-03-30T00:20:00Z"),
            vec![
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-30T00:00:00Z"),
                utc("2026-03-30T00:15:00Z"),
            ]
        );
        // ... also with a wall time right at the end of the gap.
        let s = Schedule::cron("0,30 2,3 * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-03-28T23:00:00Z", "2026-03-29T12:00:00Z"),
            vec![utc("2026-03-29T01:00:00Z"), utc("2026-03-29T01:30:00Z")]
        );
        // Asked from exactly the collapsed fire: no second fire.
        let s = Schedule::cron("*/15 2 * * *", berlin).unwrap();
        assert_eq!(
            s.next_after(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-30T00:00:00Z"))
        );
        // Hourly stays hourly across the gap.
        let s = Schedule::cron("0 * * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-03-28T23:30:00Z", "2026-03-29T02:00:00Z"),
            vec![
                utc("2026-03-29T00:00:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T02:00:00Z"),
            ]
        );
        // With seconds: the gap end, not the wall time's seconds.
        let s = Schedule::cron("15 30 2 * * *", berlin).unwrap();
        assert_eq!(
            s.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn fall_back_in_berlin_fires_once_at_earlier_instant() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00Z); 02:00-02:59
        // local happens at 00:00Z-00:59Z and again at 01:00Z-01:59Z.
        let berlin = tz("Europe/Berlin");
        let s = Schedule::cron("30 2 * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
        // From inside the repeated hour (second 02:10): not again that day.
        assert_eq!(
            s.next_after(utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        // From the first 02:40 (after the fire): the second 02:30 does not fire.
        assert_eq!(
            s.next_after(utc("2026-10-25T00:40:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        // From the first 02:10: the first 02:30.
        assert_eq!(
            s.next_after(utc("2026-10-25T00:10:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        // Every 30 minutes: the repeated hour does not fire a second time.
        let s = Schedule::cron("*/30 * * * *", berlin).unwrap();
        assert_eq!(
            fires(&s, "2026-10-24T23:00:00Z", "2026-10-25T02:30:00Z"),
            vec![
                utc("2026-10-24T23:30:00Z"), // 01:30 CEST
                utc("2026-10-25T00:00:00Z"), // 02:00 CEST
                utc("2026-10-25T00:30:00Z"), // 02:30 CEST
                utc("2026-10-25T02:00:00Z"), // 03:00 CET
                utc("2026-10-25T02:30:00Z"), // 03:30 CET
            ]
        );
        assert_eq!(
            s.next_after(utc("2026-10-25T01:15:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
        // A per-second schedule from the start of the repeated hour skips it.
        let s = Schedule::cron("* * * * * *", berlin).unwrap();
        assert_eq!(
            s.next_after(utc("2026-10-25T01:00:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-10-25T00:59:59Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
    }

    #[test]
    fn new_york_dst() {
        let ny = tz("America/New_York");
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let s = Schedule::cron("30 2 * * *", ny).unwrap();
        assert_eq!(
            fires(&s, "2026-03-07T00:00:00Z", "2026-03-09T23:59:59Z"),
            vec![
                utc("2026-03-07T07:30:00Z"), // 02:30 EST
                utc("2026-03-08T07:00:00Z"), // gap: 03:00 EDT
                utc("2026-03-09T06:30:00Z"), // 02:30 EDT
            ]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z); 01:30
        // happens at 05:30Z and 06:30Z.
        let s = Schedule::cron("30 1 * * *", ny).unwrap();
        assert_eq!(
            fires(&s, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            vec![utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]
        );
        assert_eq!(
            s.next_after(utc("2026-11-01T06:00:00Z")),
            Some(utc("2026-11-02T06:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-01T06:30:00Z")),
            Some(utc("2026-11-02T06:30:00Z"))
        );
        // Daily at 09:00 local follows the offset change.
        let s = Schedule::cron("0 9 * * MON-FRI", ny).unwrap();
        assert_eq!(
            fires(&s, "2026-03-06T00:00:00Z", "2026-03-09T23:59:59Z"),
            vec![utc("2026-03-06T14:00:00Z"), utc("2026-03-09T13:00:00Z")]
        );
    }

    #[test]
    fn whole_day_gap_is_bounded() {
        // Pacific/Apia skipped 2011-12-30 (UTC-10 to UTC+14 at 10:00Z).
        let s = Schedule::cron("0 12 * * *", tz("Pacific/Apia")).unwrap();
        assert_eq!(
            fires(&s, "2011-12-29T00:00:00Z", "2011-12-31T00:00:00Z"),
            vec![
                utc("2011-12-29T22:00:00Z"), // 29th 12:00 -10
                utc("2011-12-30T10:00:00Z"), // 30th skipped: 31st 00:00 +14
                utc("2011-12-30T22:00:00Z"), // 31st 12:00 +14
            ]
        );
    }

    #[test]
    fn fires_between_respects_limit_and_bounds() {
        let s = cron("* * * * *");
        let after = utc("2026-01-01T12:00:00Z");
        assert_eq!(
            s.fires_between(after, utc("2026-01-01T12:03:00Z"), 100),
            vec![
                utc("2026-01-01T12:01:00Z"),
                utc("2026-01-01T12:02:00Z"),
                utc("2026-01-01T12:03:00Z"),
            ]
        );
        assert_eq!(
            s.fires_between(after, utc("2026-01-02T12:00:00Z"), 5).len(),
            5
        );
        assert!(
            s.fires_between(after, utc("2026-01-02T12:00:00Z"), 0)
                .is_empty()
        );
        assert!(s.fires_between(after, after, 10).is_empty());
        assert!(
            s.fires_between(after, utc("2026-01-01T11:00:00Z"), 10)
                .is_empty()
        );
        let e = Schedule::every(Duration::from_secs(60)).unwrap();
        assert_eq!(
            e.fires_between(after, utc("2026-01-02T12:00:00Z"), 3).len(),
            3
        );
    }

    #[test]
    fn schedules_that_never_fire_return_none() {
        // No date matches these: refused when parsed, naming why.
        for expr in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 0 30 2 *"] {
            let e = Schedule::cron(expr, chrono_tz::UTC)
                .err()
                .unwrap_or_default();
            assert!(e.contains("it never fires"), "{expr}: {e}");
        }
        // Past the cron crate's last year, and at the extremes.
        let s = cron("@daily");
        assert_eq!(s.next_after(utc("2101-01-01T00:00:00Z")), None);
        assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(
            s.next_after(DateTime::<Utc>::MIN_UTC),
            Some(utc("1970-01-01T00:00:00Z"))
        );
        let e = Schedule::every(Duration::from_secs(30)).unwrap();
        assert_eq!(e.next_after(DateTime::<Utc>::MAX_UTC), None);
        // Leap days only.
        let s = cron("0 0 29 2 *");
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn latest_between_is_the_most_recent_fire_in_the_range() {
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        let after = utc("2026-06-01T12:01:00Z");
        let week = utc("2026-06-08T12:01:30Z");
        assert_eq!(
            every.latest_between(after, week),
            Some(utc("2026-06-08T12:01:00Z"))
        );
        assert_eq!(
            every.latest_between(after, utc("2026-06-01T12:01:59Z")),
            None
        );
        assert_eq!(
            every.latest_between(after, utc("2026-06-01T12:02:00Z")),
            Some(utc("2026-06-01T12:02:00Z"))
        );
        let nightly = Schedule::cron("30 2 * * *", tz("Europe/Berlin")).unwrap();
        assert_eq!(
            nightly.latest_between(utc("2026-01-01T00:00:00Z"), utc("2026-03-30T12:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
        // The spring-forward night's 02:30 fires at the gap's end.
        assert_eq!(
            nightly.latest_between(utc("2026-01-01T00:00:00Z"), utc("2026-03-29T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            nightly.latest_between(utc("2026-03-30T00:30:00Z"), utc("2026-03-30T12:00:00Z")),
            None
        );
        // Rare fires far back: found, not missed by the doubling windows.
        let yearly = cron("0 0 1 1 *");
        assert_eq!(
            yearly.latest_between(utc("2020-06-01T00:00:00Z"), utc("2026-12-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        // Every fire of a range agrees with fires_between's last.
        let busy = cron("*/7 9-17 * * 1-5");
        let (from, to) = (utc("2026-06-01T00:00:00Z"), utc("2026-06-20T13:13:13Z"));
        assert_eq!(
            busy.latest_between(from, to),
            busy.fires_between(from, to, usize::MAX).last().copied()
        );
    }

    #[test]
    fn describe() {
        let s = Schedule::cron(" 30 23 * * * ", tz("Europe/Berlin")).unwrap();
        assert_eq!(s.describe(), "\"30 23 * * *\" in Europe/Berlin");
        assert_eq!(cron("@daily").describe(), "\"@daily\" in UTC");
        let e = Schedule::every(humantime::parse_duration("30s").unwrap()).unwrap();
        assert_eq!(e.describe(), "every 30s");
        let e = Schedule::every(humantime::parse_duration("5m").unwrap()).unwrap();
        assert_eq!(e.describe(), "every 5m");
        assert_eq!(
            e.next_after(utc("2026-01-01T00:04:59Z")),
            Some(utc("2026-01-01T00:05:00Z"))
        );
    }
}
