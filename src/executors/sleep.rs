//! `sleep`: waits for `duration`, counted from when the attempt was recorded
//! as started, so a restart resumes the wait instead of starting it over.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AttemptContext, AttemptOutcome, Kind};

/// `"sleep": {"duration": "30s"}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long to wait (humantime, e.g. "30s", "1h").
    pub duration: String,
}

impl Kind for Sleep {
    const NAME: &'static str = "sleep";
    const HOLDS_SLOT: bool = false;
    const RESUMABLE: bool = true;

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        if !self.duration.contains("${")
            && let Err(e) = crate::spec::parse_duration_text(&self.duration)
        {
            errors.push((".duration".into(), e));
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let duration = match crate::spec::parse_duration_text(&self.duration) {
            Ok(d) => d,
            Err(e) => return AttemptOutcome::permanent_failure(e),
        };
        let due = ctx
            .started_at
            .saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        let remaining = due - crate::time::now_millis();
        if remaining > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(remaining as u64)) => {}
                _ = ctx.cancel.cancelled() => return AttemptOutcome::failure("cancelled"),
            }
        }
        AttemptOutcome::success(json!({}))
    }
}
