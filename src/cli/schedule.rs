//! `switchyard schedule BINDING|EXPR`: the next fire times of a cron
//! binding, or of a cron expression (or `every 30s`), in UTC and in the
//! schedule's time zone, computed by the same code the cron trigger runs.

use std::path::Path;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::registry::Registry;
use crate::spec::binding::Trigger;
use crate::spec::schedule::{Schedule, parse_timezone};

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// A cron binding's name, a cron expression ("30 23 * * *", "@daily",
    /// 6/7 fields with seconds) or an interval ("every 30s").
    pub what: String,
    /// Time zone of an expression (IANA name, default UTC); a binding has its own.
    #[arg(long)]
    pub timezone: Option<String>,
    /// How many fire times to print.
    #[arg(long, default_value_t = 10, value_parser = super::whole_number)]
    pub count: usize,
    /// Start after this instant (RFC 3339; default now).
    #[arg(long)]
    pub after: Option<String>,
    /// Print JSON: `{"schedule", "fires": [RFC 3339…]}`.
    #[arg(long)]
    pub json: bool,
}

pub fn main(config_path: &Path, args: &ScheduleArgs) -> ExitCode {
    let schedule = match resolve(config_path, args) {
        Ok(schedule) => schedule,
        Err(e) => return super::fail(e),
    };
    let mut at = match &args.after {
        None => Utc::now(),
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => return super::fail(format!("--after `{text}` is not an RFC 3339 time: {e}")),
        },
    };
    let mut fires = Vec::new();
    while fires.len() < args.count {
        match schedule.next_after(at) {
            Some(next) => {
                fires.push(next);
                at = next;
            }
            None => break,
        }
    }
    if args.json {
        let fires: Vec<String> = fires
            .iter()
            .map(|t| crate::time::rfc3339(t.timestamp_millis()))
            .collect();
        let out = json!({"schedule": schedule.describe(), "fires": fires});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("{}", schedule.describe());
    for fire in &fires {
        let utc = crate::time::rfc3339(fire.timestamp_millis());
        match schedule.timezone() {
            Some(tz) if tz != chrono_tz::UTC => {
                let local = fire.with_timezone(&tz);
                println!("  {utc}  {}", local.format("%Y-%m-%d %H:%M:%S %Z"));
            }
            _ => println!("  {utc}"),
        }
    }
    if fires.len() < args.count {
        println!("  (no more fire times)");
    }
    ExitCode::SUCCESS
}

/// A binding's schedule by name, else the argument as an expression.
fn resolve(config_path: &Path, args: &ScheduleArgs) -> Result<Schedule, String> {
    let what = args.what.trim();
    if let Some(interval) = what.strip_prefix("every ") {
        let interval = humantime::parse_duration(interval.trim())
            .map_err(|e| format!("`{what}`: invalid interval: {e}"))?;
        return Schedule::every(interval);
    }
    let looks_like_a_name = !what.contains(' ') && !what.starts_with('@');
    if looks_like_a_name {
        let config = super::load_config(config_path).map_err(|e| e.to_string())?;
        let registry = Registry::load_project(&config, Default::default()).map_err(|found| {
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        return match registry.binding(what) {
            Some(binding) => match &binding.trigger {
                Trigger::Cron(cron) => {
                    if args.timezone.is_some() {
                        eprintln!(
                            "note: --timezone is ignored: binding `{what}` has its own time zone"
                        );
                    }
                    Ok(cron.schedule.clone())
                }
                other => Err(format!(
                    "binding `{what}` is triggered by {}, not a schedule",
                    other.kind()
                )),
            },
            None => Err(format!(
                "no binding named `{what}` (to see an expression's fire times, quote it: \"30 23 * * *\")"
            )),
        };
    }
    let tz = match &args.timezone {
        Some(name) => parse_timezone(name)?,
        None => chrono_tz::UTC,
    };
    Schedule::cron(what, tz)
}
