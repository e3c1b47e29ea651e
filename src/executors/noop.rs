//! `noop`: does nothing and succeeds with `{}`; used to join branches.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{AttemptContext, AttemptOutcome, Kind};

/// `"noop": {}`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Noop {}

impl Kind for Noop {
    const NAME: &'static str = "noop";
    const HOLDS_SLOT: bool = false;
    /// Nothing happens in a noop, so an interrupted one simply runs again.
    const RESUMABLE: bool = true;

    async fn execute(self, _ctx: AttemptContext) -> AttemptOutcome {
        AttemptOutcome::success(json!({}))
    }
}
