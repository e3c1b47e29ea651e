//! The dashboard's pages. Each reads what the matching API endpoint reads
//! (through the same functions) and renders it; the script in `app.js`
//! keeps it live.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Live, Section, error_page, page};
use crate::api::{AppState, Error};
use crate::engine::RunRecord;
use crate::log::RunId;
use crate::log::RunStatus;

/// Runs per page of a list or grid.
const PAGE: usize = 50;

fn badge(status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (status) } }
}

/// A time for people: the script shows it in the chosen zone; without the
/// script it reads as UTC.
fn time(iso: Option<&str>) -> Markup {
    match iso {
        Some(iso) => html! { time datetime=(iso) { (iso.replace('T', " ")) } },
        None => html! {},
    }
}

fn parse_time(iso: Option<&str>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(iso?).ok()
}

/// How long from `start` to `end` (or to now), for people.
fn took(start: Option<&str>, end: Option<&str>) -> String {
    let Some(start) = parse_time(start) else {
        return String::new();
    };
    let end = parse_time(end).unwrap_or_else(|| chrono::Utc::now().fixed_offset());
    human((end - start).num_milliseconds().max(0))
}

fn human(ms: i64) -> String {
    match ms {
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 3_600_000 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        ms => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// The tail of a run id (its first digits are a timestamp, shared by runs
/// made in the same minute).
fn short(id: &RunId) -> String {
    let text = id.simple().to_string();
    format!("…{}", &text[text.len() - 10..])
}

fn run_link(id: &RunId) -> Markup {
    html! { a.mono href={ "/runs/" (id) } title=(id) { (short(id)) } }
}

fn status_str(status: RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn render(state: &AppState, result: Result<Response, Error>) -> Response {
    result.unwrap_or_else(|e| error_page(state, e))
}

/// A page of runs, newest first, and the cursor of the next page.
async fn runs(
    state: &AppState,
    workflow: Option<&str>,
    status: Option<RunStatus>,
    before: Option<RunId>,
    limit: usize,
) -> Result<(Vec<RunRecord>, Option<RunId>), Error> {
    crate::api::handlers::runs_page(state, workflow.map(str::to_string), status, before, limit)
        .await
}

fn runs_table(runs: &[RunRecord], with_workflow: bool) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr {
                    th { "Run" }
                    @if with_workflow { th { "Workflow" } }
                    th { "Status" } th { "Started" } th { "Took" } th { "Logical time" } th { "Error" }
                } }
                tbody {
                    @for run in runs {
                        @let status = status_str(run.status);
                        tr data-run=(run.id) {
                            td { (run_link(&run.id)) }
                            @if with_workflow { td { a href={ "/workflows/" (run.workflow) } { (run.workflow) } } }
                            td { (badge(&status)) }
                            td { (time(run.started_at.as_deref())) }
                            @if run.ended_at.is_none() && run.started_at.is_some() {
                                td.num data-duration data-running=[run.started_at.as_deref()] { (took(run.started_at.as_deref(), None)) }
                            } @else {
                                td.num data-duration { (took(run.started_at.as_deref(), run.ended_at.as_deref())) }
                            }
                            td { (time(run.logical_time.as_deref())) }
                            td.muted { (run.error.as_deref().unwrap_or("")) }
                        }
                    }
                    @if runs.is_empty() {
                        tr { td colspan="7" .muted { "No runs." } }
                    }
                }
            }
        }
    }
}

fn new_runs_notice() -> Markup {
    html! {
        p #new-runs .flash hidden {
            span { "0" } " new run(s) started. " a href="" { "Show them" }
        }
    }
}

// ---------------------------------------------------------------- home

pub async fn home(State(state): State<AppState>) -> Response {
    render(&state, home_page(&state).await)
}

async fn home_page(state: &AppState) -> Result<Response, Error> {
    let log_error = state.runtime.gauges().log_error();
    let fatal = state.runtime.fatal();
    let dead = state.reactor.metrics().adapters.dead();
    let healthy = log_error.is_none() && fatal.is_none() && dead.is_empty();
    let active = state
        .runtime
        .active_runs(crate::runtime::RunFilter {
            workflow: None,
            status: None,
            before: None,
            limit: 1000,
        })
        .await?;
    let running = active
        .iter()
        .filter(|r| r.status == RunStatus::Running)
        .count();
    let day_ago = chrono::Utc::now() - chrono::Duration::hours(24);
    let recent = |r: &&RunRecord| parse_time(r.ended_at.as_deref()).is_some_and(|t| t >= day_ago);
    let (failed, _) = runs(state, None, Some(RunStatus::Failed), None, 500).await?;
    let failed_24h: Vec<&RunRecord> = failed.iter().filter(recent).collect();
    let (succeeded, _) = runs(state, None, Some(RunStatus::Succeeded), None, 500).await?;
    let succeeded_24h = succeeded.iter().filter(recent).count();
    let (latest, _) = runs(state, None, None, None, 20).await?;
    let workers = state
        .remote
        .as_ref()
        .map(crate::remote::Remote::workers_json);
    let alive = workers.as_ref().map_or(0, |w| {
        w["workers"]
            .as_array()
            .map_or(0, |ws| ws.iter().filter(|w| w["alive"] == true).count())
    });
    let events = state.reactor.metrics();
    let capped = |n: usize| {
        if n >= 500 {
            "500+".to_string()
        } else {
            n.to_string()
        }
    };
    let content = html! {
        h1 { "Overview" }
        div.cards {
            div.card {
                div.label { "Daemon" }
                @if healthy { div.value.s-succeeded { "Healthy" } } @else { div.value.s-failed { "Unhealthy" } }
            }
            div.card { div.label { "Runs running" } div.value { (running) } }
            div.card { div.label { "Failed, last 24 h" } div class={ "value" @if !failed_24h.is_empty() { " s-failed" } } { (capped(failed_24h.len())) } }
            div.card { div.label { "Succeeded, last 24 h" } div.value.s-succeeded { (capped(succeeded_24h)) } }
            div.card { div.label { "Workers alive" } div.value { (alive) } }
            div.card { div.label { "Events refused at the edge" } div.value { (events.rejected.load(std::sync::atomic::Ordering::Relaxed)) } }
        }
        h2 { "Triggers and consumers" }
        (adapters_table(state))
        @if !healthy {
            h2 { "Health" }
            ul.panel {
                @if let Some(e) = &log_error { li { "The log cannot flush: " (e) } }
                @if let Some(e) = &fatal { li { "The engine stopped: " (e) } }
                @for (name, adapter) in &dead {
                    li { "Trigger adapter " code { (name) } " died and is being restarted: " (adapter.error) }
                }
            }
        }
        h2 { "Recent failures" }
        (runs_table(&failed_24h.iter().take(10).map(|r| (*r).clone()).collect::<Vec<_>>(), true))
        h2 { "Latest runs" }
        (new_runs_notice())
        (runs_table(&latest, true))
    };
    Ok(page(
        state,
        "Overview",
        Section::Home,
        &Live {
            mode: Some("runs"),
            ..Live::default()
        },
        content,
    ))
}

/// Every trigger adapter the daemon supervises (file watchers, cron and
/// absence timers, AMQP consumers with their session's state), the webhook
/// routes it serves, and the remote workers' result consumer.
fn adapters_table(state: &AppState) -> Markup {
    let metrics = state.reactor.metrics();
    let adapters = metrics.adapters.states();
    let webhooks: Vec<(String, String, String)> = state
        .reactor
        .bindings_where(|b| b.enabled)
        .iter()
        .filter_map(|b| match &b.trigger {
            crate::spec::binding::Trigger::Webhook(w) => {
                Some((w.path.clone(), w.methods.join(","), b.name.clone()))
            }
            _ => None,
        })
        .collect();
    let results = state
        .remote
        .as_ref()
        .map(|r| (r.results_queue().to_string(), r.results_state()));
    let kind = |name: &str| match name.split_once(':').map(|(k, _)| k) {
        Some("file") => "Files",
        Some("cron") => "Cron",
        Some("expect") => "Absence alert",
        Some("amqp") => "RabbitMQ queue",
        _ => "Adapter",
    };
    let rows: Vec<(String, String, String, String, String)> = adapters
        .iter()
        .map(|a| {
            let what = a.name.split_once(':').map_or(a.name.as_str(), |(_, w)| w);
            // An AMQP consumer's session says more than its supervisor.
            let consumer = a
                .name
                .strip_prefix("amqp:")
                .and_then(|queue| metrics.amqp.consumer(queue));
            let (status, since, detail) = match (&consumer, a.status) {
                (_, "restarting") => (
                    "failed",
                    a.since.clone(),
                    format!(
                        "died, restarting ({} restarts): {}",
                        a.restarts,
                        a.error.as_deref().unwrap_or("")
                    ),
                ),
                (Some(c), _) => (
                    match c.status {
                        "consuming" => "succeeded",
                        "reconnecting" => "failed",
                        _ => "queued",
                    },
                    c.since.clone(),
                    match &c.error {
                        Some(e) => format!("{}: {e}", c.status),
                        None => c.status.to_string(),
                    },
                ),
                (None, _) => ("succeeded", a.since.clone(), "running".to_string()),
            };
            (
                kind(&a.name).to_string(),
                what.to_string(),
                status.to_string(),
                detail,
                since,
            )
        })
        .collect();
    html! {
        @if rows.is_empty() && webhooks.is_empty() && results.is_none() {
            p.muted { "No trigger adapters: this project's bindings are all API or run bindings." }
        } @else {
            div.scroll {
                table data-adapters {
                    thead { tr { th { "Kind" } th { "Source" } th { "State" } th { "Since" } } }
                    tbody {
                        @for (kind, what, status, detail, since) in &rows {
                            tr data-adapter=(what) {
                                td { (kind) }
                                td { code { (what) } }
                                td { span class={ "badge s-" (status) } { (detail) } }
                                td { (time(Some(since))) }
                            }
                        }
                        @for (path, methods, binding) in &webhooks {
                            tr {
                                td { "Webhook" }
                                td { code { (methods) " /hooks/" (path) } " → " (binding) }
                                td { span.badge.s-succeeded { "served" } }
                                td.muted { "with the daemon" }
                            }
                        }
                        @if let Some((queue, consuming)) = &results {
                            tr {
                                td { "Remote results" }
                                td { code { (queue) } " · " a href="/workers" { "workers" } }
                                td {
                                    @match *consuming {
                                        "consuming" => span.badge.s-succeeded { "consuming" },
                                        "idle" => span.badge.s-skipped title="Starts with the first remote task." { "idle" },
                                        other => span.badge.s-failed { (other) },
                                    }
                                }
                                td.muted { "" }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------- workflows

pub async fn workflows(State(state): State<AppState>) -> Response {
    render(&state, workflows_page(&state).await)
}

async fn workflows_page(state: &AppState) -> Result<Response, Error> {
    struct Row {
        name: String,
        description: Option<String>,
        version: String,
        label: Option<u64>,
        paused: bool,
        pinned: Option<String>,
        bindings: Vec<(String, &'static str)>,
        next_fire: Option<String>,
    }
    let (rows, errors) = {
        let registry = state.registry()?;
        let rows: Vec<Row> = registry
            .workflows()
            .map(|e| {
                let name = e.current.name.clone();
                let bindings: Vec<_> = registry
                    .bindings()
                    .filter(|b| b.workflow == name)
                    .map(|b| (b.name.clone(), b.trigger.kind()))
                    .collect();
                let next_fire = registry
                    .bindings()
                    .filter(|b| b.workflow == name && !registry.is_paused(b))
                    .filter_map(|b| match &b.trigger {
                        crate::spec::binding::Trigger::Cron(c) => {
                            c.schedule.next_after(crate::time::now())
                        }
                        _ => None,
                    })
                    .min()
                    .map(crate::time::format);
                Row {
                    description: e.current.description.clone(),
                    version: e.current.version.clone(),
                    label: e.current.version_label,
                    paused: registry.paused().workflows.contains(&name),
                    pinned: registry.pinned(&name).map(|w| w.version.clone()),
                    name,
                    bindings,
                    next_fire,
                }
            })
            .collect();
        (rows, crate::api::diagnostics_json(&registry.errors))
    };
    let mut strips = Vec::with_capacity(rows.len());
    for row in &rows {
        let (recent, _) = runs(state, Some(&row.name), None, None, 20).await?;
        strips.push(recent);
    }
    let content = html! {
        h1 { "Workflows" }
        @if !errors.is_empty() {
            div.flash.error role="alert" {
                "Files rejected at the last load (the previous versions stay):"
                ul { @for e in &errors { li { code { (e["file"].as_str().unwrap_or("")) } " " (e["path"].as_str().unwrap_or("")) ": " (e["message"].as_str().unwrap_or("")) } } }
            }
        }
        div.scroll {
            table {
                thead { tr {
                    th { "Workflow" } th { "Triggers" } th { "Next cron fire" } th { "Last runs (oldest → newest)" }
                    th { "Success" } th { "Median time" } th { "Version" }
                } }
                tbody {
                    @for (row, recent) in rows.iter().zip(&strips) {
                        @let ended: Vec<&RunRecord> = recent.iter().filter(|r| r.ended_at.is_some()).collect();
                        @let ok = ended.iter().filter(|r| r.status == RunStatus::Succeeded).count();
                        tr {
                            td {
                                a href={ "/workflows/" (row.name) } { strong { (row.name) } }
                                @if row.paused { " " span.badge.s-cancelled title="Paused: its triggers start nothing" { "paused" } }
                                @if let Some(d) = &row.description { div.muted { (d) } }
                            }
                            td {
                                @for (name, kind) in &row.bindings { div { (name) " " span.muted { "(" (kind) ")" } } }
                                @if row.bindings.is_empty() { span.muted { "manual only" } }
                            }
                            td { (time(row.next_fire.as_deref())) }
                            td {
                                span.strip {
                                    @for run in recent.iter().rev() {
                                        @let status = status_str(run.status);
                                        a class={ "s-" (status) } href={ "/runs/" (run.id) } data-run=(run.id)
                                            title={ (status) " · " (run.started_at.as_deref().unwrap_or("")) } aria-label={ "run " (status) } {}
                                    }
                                }
                            }
                            td.num { @if ended.is_empty() { "—" } @else { (ok * 100 / ended.len()) "%" } }
                            td.num { (median_duration(&ended)) }
                            td {
                                span.mono { (row.label.map_or(String::new(), |l| format!("v{l} "))) (row.version) }
                                @if let Some(p) = &row.pinned { div.muted { "pinned to " span.mono { (p) } } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        state,
        "Workflows",
        Section::Workflows,
        &Live {
            mode: Some("runs"),
            ..Live::default()
        },
        content,
    ))
}

fn median_duration(ended: &[&RunRecord]) -> String {
    let mut ms: Vec<i64> = ended
        .iter()
        .filter_map(|r| {
            Some(
                (parse_time(r.ended_at.as_deref())? - parse_time(r.started_at.as_deref())?)
                    .num_milliseconds(),
            )
        })
        .collect();
    if ms.is_empty() {
        return "—".into();
    }
    ms.sort_unstable();
    human(ms[ms.len() / 2])
}

// ------------------------------------------------------------ workflow

#[derive(Debug, Deserialize)]
pub struct Cursor {
    before: Option<String>,
    /// Runs per page of the grid: 50 (default), 200 or 1000.
    rows: Option<usize>,
}

pub async fn workflow(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(cursor): Query<Cursor>,
) -> Response {
    render(&state, workflow_page(&state, &name, cursor).await)
}

async fn workflow_page(state: &AppState, name: &str, cursor: Cursor) -> Result<Response, Error> {
    let entry = state.workflow(name)?;
    let workflow = entry.current.clone();
    let (bindings, paused, pinned) = {
        let registry = state.registry()?;
        let bindings: Vec<(Value, bool)> = registry
            .bindings()
            .filter(|b| b.workflow == name)
            .map(|b| (crate::api::binding_json(b), registry.is_paused(b)))
            .collect();
        (
            bindings,
            registry.paused().workflows.contains(name),
            registry.pinned(name).map(|w| w.version.clone()),
        )
    };
    let before = match cursor.before.as_deref() {
        Some(text) => Some(
            RunId::parse_str(text)
                .map_err(|_| Error::bad_request(format!("`{text}` is not a run id")))?,
        ),
        None => None,
    };
    let rows = match cursor.rows {
        None => PAGE,
        Some(rows @ (50 | 200 | 1000)) => rows,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "`rows` is 50, 200 or 1000, not {other}"
            )));
        }
    };
    let (page_runs, next) = runs(state, Some(name), None, before, rows).await?;
    let versions = state.runtime.log().versions(name)?;
    let svg = super::dag::svg(&workflow, |_| None);
    let content = html! {
        h1 {
            (workflow.name)
            @if paused { span.badge.s-cancelled { "paused" } }
        }
        @if let Some(d) = &workflow.description { p.muted { (d) } }
        div.actions {
            @if paused {
                button data-action={ "POST /api/v1/workflows/" (name) "/resume" } data-reload="1" { "Resume workflow" }
            } @else {
                button data-action={ "POST /api/v1/workflows/" (name) "/pause" } data-reload="1" { "Pause workflow" }
            }
        }
        div.grid2 {
            section {
                h2 { "Graph" }
                div.dag { @if let Some(svg) = &svg { (PreEscaped(svg)) } @else { p.muted { "The graph could not be laid out." } } }
                div.legend { span { "— success" } span.s-failed { "- - failure" } span.s-queued { "··· completion" } span { "(any): one of them is enough" } }
            }
            section {
                h2 { "Start a run" }
                form.panel {
                    @if workflow.vars.is_empty() { p.muted { "This workflow has no vars; params can still be given through the API." } }
                    dl.kv {
                        @for (key, default) in &workflow.vars {
                            dt { label for={ "param-" (key) } { (key) } }
                            dd { input id={ "param-" (key) } data-param=(key) placeholder=(default.as_str().map_or_else(|| default.to_string(), str::to_string)); }
                        }
                    }
                    p.muted { "Empty fields keep the workflow's value. A value that reads as JSON is sent as JSON." }
                    button.primary type="button" data-action={ "POST /api/v1/workflows/" (name) "/runs" } data-go="/runs/{id}" { "Start run" }
                }
                h2 { "Triggers" }
                @if bindings.is_empty() { p.muted { "No bindings start this workflow; it runs when asked." } }
                @for (binding, binding_paused) in &bindings {
                    @let bname = binding["name"].as_str().unwrap_or("");
                    div.panel style="margin-bottom:.5rem" {
                        strong { (bname) } " " span.muted { "(" (binding["trigger"].as_str().unwrap_or("")) ")" }
                        @if *binding_paused { " " span.badge.s-cancelled { "paused" } }
                        @if let Some(s) = binding["schedule"].as_str() { div { "Schedule: " (s) } }
                        @if let Some(n) = binding["next_fire"].as_str() { div { "Next fire: " (time(Some(n))) } }
                        @if let Some(u) = binding["url"].as_str() { div { "URL: " code { (u) } } }
                        @if let Some(f) = binding["filter"].as_str() { div { "Filter: " code { (f) } } }
                        @if !binding["expect"].is_null() { div { "Expects an event: " code { (binding["expect"].to_string()) } " (a missed deadline records switchyard.binding.missed)" } }
                        @if binding["trigger"] == "cron" {
                            details data-occurrences={ "/api/v1/bindings/" (bname) "/occurrences?limit=20" } style="margin-top:.4rem" {
                                summary { "Occurrences: every scheduled instant and what it did" }
                                table { tbody {} }
                            }
                        }
                        @if binding["trigger"] == "cron" {
                            details style="margin-top:.4rem" {
                                summary { "Backfill" }
                                form.actions data-kind="backfill" {
                                    label { "From " input name="from" placeholder="2026-11-01" required; }
                                    label { "To " input name="to" placeholder="2026-11-30T23:59:59Z" required; }
                                    button type="button" data-action={ "POST /api/v1/bindings/" (bname) "/backfill" } data-dry="1" data-show={ "backfill-" (bname) } { "Preview" }
                                    button.primary type="button" data-action={ "POST /api/v1/bindings/" (bname) "/backfill" } data-done="Backfill started: its runs are in the grid below." { "Start backfill" }
                                }
                                div id={ "backfill-" (bname) } .muted {}
                            }
                        }
                        div.actions style="margin-top:.4rem" {
                            @if *binding_paused {
                                button data-action={ "POST /api/v1/bindings/" (bname) "/resume" } data-reload="1" { "Resume" }
                            } @else {
                                button data-action={ "POST /api/v1/bindings/" (bname) "/pause" } data-reload="1" { "Pause" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Runs" }
        (new_runs_notice())
        div.actions style="margin-bottom:.5rem" {
            span.muted { "Selected runs:" }
            button type="button" data-bulk="cancel" { "Cancel" }
            button type="button" data-bulk="rerun" { "Rerun from failed" }
        }
        (runs_grid(&workflow, &page_runs))
        div.pager {
            @if before.is_some() { a href={ "/workflows/" (name) "?rows=" (rows) } { "← Newest" } }
            @if let Some(next) = next { a href={ "/workflows/" (name) "?rows=" (rows) "&before=" (next) } { "Older →" } }
            span.muted {
                "Runs per page: "
                @for n in [50, 200, 1000] {
                    @if n == rows { strong { (n) } " " } @else { a href={ "/workflows/" (name) "?rows=" (n) } { (n) } " " }
                }
            }
        }
        h2 { "Versions" }
        table {
            thead { tr { th { "Version" } th { "First run" } th { "" } } }
            tbody {
                @for v in versions.iter().rev() {
                    tr {
                        td.mono { (v.label.map_or(String::new(), |l| format!("v{l} "))) (v.version) }
                        td { (time(Some(&crate::engine::rfc3339(v.first_run_at)))) }
                        td {
                            @if v.version == workflow.version { span.badge.s-succeeded { "current" } " " }
                            @if pinned.as_deref() == Some(v.version.as_str()) { span.badge.s-running { "pinned" } " " }
                            @if pinned.as_deref() == Some(v.version.as_str()) {
                                button type="button" data-action={ "POST /api/v1/workflows/" (name) "/unpin" } data-reload="1" { "Unpin" }
                            } @else {
                                button type="button" data-action={ "POST /api/v1/workflows/" (name) "/pin" } data-body={ "{\"version\": \"" (v.version) "\"}" } data-reload="1" title="Triggers run this version until unpinned" { "Pin" }
                            }
                            @if v.version != workflow.version {
                                details data-diff={ "/api/v1/workflows/" (name) "/versions/" (v.version) "/diff/" (workflow.version) } {
                                    summary { "Changes to the current version" }
                                    ol.mono {}
                                }
                            }
                        }
                    }
                }
                @if versions.is_empty() { tr { td colspan="3" .muted { "No run has used a version yet; the current one is " span.mono { (workflow.version) } "." } } }
            }
        }
    };
    Ok(page(
        state,
        &workflow.name,
        Section::Workflows,
        &Live {
            mode: Some("runs"),
            run: None,
            workflow: Some(name),
        },
        content,
    ))
}

/// Runs × tasks, like Airflow's grid: one row per run, one cell per task.
fn runs_grid(workflow: &crate::spec::Workflow, runs: &[RunRecord]) -> Markup {
    html! {
        div.scroll {
            table.grid {
                thead { tr {
                    th { span.sr-only { "Select" } } th { "Run" } th { "Status" } th { "Started" } th { "Took" }
                    @for task in &workflow.tasks { th title=(task.id) { (task.id) } }
                } }
                tbody {
                    @for run in runs {
                        @let status = status_str(run.status);
                        tr data-run=(run.id) {
                            td { input type="checkbox" data-select=(run.id) aria-label={ "select run " (run.id) }; }
                            td { (run_link(&run.id)) }
                            td { (badge(&status)) }
                            td { (time(run.started_at.as_deref())) }
                            td.num data-duration { (took(run.started_at.as_deref(), run.ended_at.as_deref())) }
                            @for task in &workflow.tasks {
                                @let task_status = run.tasks.get(&task.id).and_then(|t| t["status"].as_str()).unwrap_or("");
                                td data-cell=(task.id) class={ "s-" (task_status) } {
                                    @if !task_status.is_empty() {
                                        a href={ "/runs/" (run.id) "#task-" (task.id) } title={ (task.id) ": " (task_status) } { (cell_symbol(task_status)) }
                                    }
                                }
                            }
                        }
                    }
                    @if runs.is_empty() { tr { td colspan=(5 + workflow.tasks.len()) .muted { "No runs yet." } } }
                }
            }
        }
    }
}

fn cell_symbol(status: &str) -> &'static str {
    match status {
        "succeeded" => "✓",
        "failed" => "✗",
        "running" => "●",
        "cancelled" => "⊘",
        "skipped" => "–",
        _ => "○",
    }
}

// ----------------------------------------------------------------- run

pub async fn run(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    render(&state, run_page(&state, &id).await)
}

async fn run_page(state: &AppState, id: &str) -> Result<Response, Error> {
    let run_id = RunId::parse_str(id)
        .map_err(|_| Error::bad_request(format!("`{id}` is not a run id (a UUID)")))?;
    let run = state
        .runtime
        .run_record(run_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("run {run_id} not found")))?;
    let log = state.runtime.log().clone();
    let history = tokio::task::spawn_blocking(move || log.run_history(run_id))
        .await
        .map_err(crate::api::internal)??;
    let history: Vec<Value> = history.iter().map(crate::log::Record::to_json).collect();
    // The version the run used, for its graph.
    let workflow =
        crate::api::operations::run_version(state, &run.workflow, Some(&run.version)).ok();
    // The binding that started it: the event's outcome naming this run.
    let started_by = match run.event["id"].as_str() {
        Some(event_id) => {
            let log = state.runtime.log().clone();
            let event_id = event_id.to_string();
            let run_id = run.id;
            tokio::task::spawn_blocking(move || log.event_by_id(&event_id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|event| {
                    event.outcomes.iter().find_map(|o| match o {
                        crate::log::Outcome::Started {
                            binding,
                            run_id: id,
                            ..
                        } if *id == run_id => Some(binding.clone()),
                        _ => None,
                    })
                })
        }
        None => None,
    };
    let status = status_str(run.status);
    let task_status = |task: &str| -> Option<String> {
        run.tasks
            .get(task)
            .and_then(|t| t["status"].as_str())
            .map(str::to_string)
    };
    let svg = workflow
        .as_ref()
        .and_then(|w| super::dag::svg(w, task_status));
    let active = matches!(run.status, RunStatus::Queued | RunStatus::Running);
    let mut spans = attempt_spans(&history);
    // An attempt ended by a cancel or a lost daemon has no finish record:
    // the task's next attempt, or else its end, closes it.
    let next_starts: Vec<Option<i64>> = spans
        .iter()
        .map(|span| {
            spans
                .iter()
                .filter(|s| {
                    s.task == span.task && s.phase == Phase::Attempt && s.attempt > span.attempt
                })
                .map(|s| s.start)
                .min()
        })
        .collect();
    for (span, next) in spans.iter_mut().zip(next_starts) {
        if span.end.is_some() || span.phase != Phase::Attempt {
            continue;
        }
        let ended = run
            .tasks
            .get(&span.task)
            .and_then(|t| parse_time(t["ended_at"].as_str()).map(|end| (end, t)));
        match (next, ended) {
            (Some(next), _) => {
                span.end = Some(next);
                span.outcome = "failed".into();
            }
            (None, Some((end, task))) => {
                span.end = Some(end.timestamp_millis());
                span.outcome = task["status"].as_str().unwrap_or("failed").to_string();
            }
            (None, None) => {}
        }
    }
    waiting_spans(
        &run,
        workflow.as_deref(),
        &mut spans,
        chrono::Utc::now().timestamp_millis(),
    );
    let content = html! {
        h1 {
            "Run " span.mono title=(run.id) { (short(&run.id)) }
            span data-run-status class={ "badge s-" (status) } { (status) }
        }
        p {
            "of " a href={ "/workflows/" (run.workflow) } { (run.workflow) }
            " · version " span.mono { (run.version_label.map_or(String::new(), |l| format!("v{l} "))) (run.version) }
        }
        div.actions {
            button.danger data-when="active" disabled[!active] data-action={ "POST /api/v1/runs/" (run.id) "/cancel" } data-done="Cancel requested." { "Cancel" }
            button data-when="ended" disabled[active] data-action={ "POST /api/v1/runs/" (run.id) "/rerun" } data-body="{\"from\": \"failed\"}" data-go="/runs/{id}" { "Rerun from failed" }
            form.actions {
                label for="rerun-from" { "Rerun from" }
                select #rerun-from name="from" {
                    @for task in run.tasks.keys() { option value=(task) { (task) } }
                }
                button data-when="ended" disabled[active] type="button" data-action={ "POST /api/v1/runs/" (run.id) "/rerun" } data-go="/runs/{id}" { "Rerun" }
                @if !run.params.is_empty() {
                    details {
                        summary { "with params" }
                        dl.kv {
                            @for (key, value) in &run.params {
                                dt { label for={ "rerun-param-" (key) } { (key) } }
                                dd { input id={ "rerun-param-" (key) } data-param=(key) value=(value.as_str().map_or_else(|| value.to_string(), str::to_string)); }
                            }
                        }
                    }
                }
            }
        }
        p data-run-error .flash.error hidden[run.error.is_none()] { (run.error.as_deref().unwrap_or("")) }
        div.grid2 {
            section {
                h2 { "Graph" }
                div.dag { @if let Some(svg) = &svg { (PreEscaped(svg)) } @else { p.muted { "The graph of this version is not available." } } }
            }
            section {
                h2 { "Details" }
                dl.kv.panel {
                    dt { "Started" } dd { (time(run.started_at.as_deref())) }
                    dt { "Ended" } dd data-run-ended { (time(run.ended_at.as_deref())) }
                    dt { "Took" } dd { (took(run.started_at.as_deref(), run.ended_at.as_deref())) }
                    dt { "Logical time" } dd { (time(run.logical_time.as_deref())) }
                    @if let Some(parent) = &run.parent {
                        dt { "Started by" } dd { "task " code { (parent.task) } " of run " (run_link(&parent.run_id)) }
                    }
                    @if !run.event.is_null() {
                        dt { "Event" }
                        dd {
                            code { (run.event["type"].as_str().unwrap_or("")) }
                            " from " code { (run.event["source"].as_str().unwrap_or("")) }
                            @if let Some(eid) = run.event["id"].as_str() { " · " a href={ "/events?id=" (eid) } { "event " (eid) } }
                            @if let Some(binding) = &started_by { " · through binding " strong { (binding) } }
                        }
                    }
                    @let children: Vec<(&String, &str)> = run.tasks.iter().filter_map(|(t, v)| Some((t, v["child_run_id"].as_str()?))).collect();
                    @if !children.is_empty() {
                        dt { "Child runs" }
                        dd { @for (task, child) in &children { div { code { (task) } " → " a.mono href={ "/runs/" (child) } { (child) } } } }
                    }
                }
                details { summary { "Params" } pre { (pretty(&Value::Object(run.params.clone()))) } }
                details { summary { "Vars" } pre { (pretty(&Value::Object(run.vars.clone()))) } }
            }
        }
        h2 { "Tasks" }
        div.scroll {
            table {
                thead { tr { th { "Task" } th { "Status" } th { "Attempts" } th { "Started" } th { "Took" } th { "Output" } th { "Error" } th { "" } } }
                tbody {
                    @for (task, value) in &run.tasks {
                        @let s = value["status"].as_str().unwrap_or("");
                        tr id={ "task-" (task) } data-task=(task) {
                            td { code { (task) } }
                            td { (badge(s)) }
                            td.num data-attempts { (value["attempts"]) }
                            td data-started {
                                (time(value["started_at"].as_str()))
                                @if let Some(from) = value["reused_from"].as_str() { span.muted { "reused from run " (run_ref(from)) } }
                            }
                            td.num data-duration { (took(value["started_at"].as_str(), value["ended_at"].as_str())) }
                            td {
                                @let has_output = value["output"].as_object().is_some_and(|o| !o.is_empty());
                                details hidden[!has_output] {
                                    summary { "show" }
                                    pre data-output { @if has_output { (pretty(&value["output"])) } }
                                }
                            }
                            td.muted {
                                span data-error { (value["error"].as_str().unwrap_or("")) }
                                span data-observation {
                                    @if s == "running" && let Some(summary) = value["observation"]["summary"].as_str() {
                                        "waiting: " (summary)
                                    }
                                }
                            }
                            td { button type="button" data-logs=(task) { "Logs" } }
                        }
                    }
                }
            }
        }
        section #logs hidden {
            h2 { "Logs of " code data-log-task {} }
            div.log-tools {
                label.sr-only for="log-search" { "Search the logs" }
                input #log-search type="search" placeholder="Search the logs";
                span.muted data-matches {}
                a data-download href="#" download { "Download" }
            }
            pre {}
        }
        h2 { "Timeline" }
        (gantt(&run, &spans))
        details {
            summary { "Recorded history (" (history.len()) " records)" }
            div.scroll {
                table {
                    thead { tr { th { "#" } th { "At" } th { "Record" } th { "Task" } th { "Detail" } } }
                    tbody {
                        @for record in &history {
                            tr {
                                td.num { (record["seq"]) }
                                td { (time(record["at"].as_str())) }
                                td { code { (record["type"].as_str().unwrap_or("")) } }
                                td { (record["task"].as_str().unwrap_or("")) @if let Some(a) = record["attempt"].as_u64() { " #" (a) } }
                                td.muted { (record["error"].as_str().or_else(|| record["status"].as_str()).or_else(|| record["reason"].as_str()).unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        state,
        &format!("Run {}", short(&run.id)),
        Section::Workflows,
        &Live {
            mode: Some("run"),
            run: Some(run.id.to_string()),
            workflow: None,
        },
        content,
    ))
}

/// What a bar of the run's Gantt chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Ready (its dependencies ended, or its retry was due) and not started
    /// yet: waiting for a `max_parallel_tasks` slot.
    Waiting,
    /// An attempt.
    Attempt,
    /// Between a failed attempt and its retry's due time.
    RetryDelay,
}

/// One bar: task, attempt, start, end (ms), outcome.
#[derive(Debug, Clone, PartialEq)]
struct Span {
    task: String,
    attempt: u64,
    phase: Phase,
    start: i64,
    end: Option<i64>,
    outcome: String,
}

/// Bars shorter than this are not drawn as waiting (the slot was free).
const WAIT_SHOWN_MS: i64 = 2;

/// The attempts of a run from its recorded history, with the retry delays
/// between them.
fn attempt_spans(history: &[Value]) -> Vec<Span> {
    let at = |r: &Value| parse_time(r["at"].as_str()).map(|t| t.timestamp_millis());
    let mut spans: Vec<Span> = Vec::new();
    for record in history {
        let task = record["task"].as_str().unwrap_or("").to_string();
        let attempt = record["attempt"].as_u64().unwrap_or(0);
        match record["type"].as_str() {
            Some("attempt_started") => {
                if let Some(start) = at(record) {
                    spans.push(Span {
                        task,
                        attempt,
                        phase: Phase::Attempt,
                        start,
                        end: None,
                        outcome: "running".into(),
                    });
                }
            }
            Some("attempt_finished") => {
                if let Some(span) = spans
                    .iter_mut()
                    .rev()
                    .find(|s| s.task == task && s.attempt == attempt && s.phase == Phase::Attempt)
                {
                    span.end = at(record);
                    span.outcome = if record["succeeded"] == true || record["status"] == "succeeded"
                    {
                        "succeeded".into()
                    } else {
                        "failed".into()
                    };
                }
            }
            Some("retry_scheduled") => {
                if let (Some(from), Some(due)) = (at(record), record["due_at"].as_i64()) {
                    spans.push(Span {
                        task,
                        attempt,
                        phase: Phase::RetryDelay,
                        start: from,
                        end: Some(due.max(from)),
                        outcome: "retry".into(),
                    });
                }
            }
            _ => {}
        }
    }
    spans
}

/// Adds the waits before each attempt: from when the task became ready
/// (the run started, for a root; its last dependency ended, otherwise; its
/// retry fell due) to when the attempt started, and, for a ready task not
/// started yet, up to `now`.
fn waiting_spans(
    run: &RunRecord,
    workflow: Option<&crate::spec::Workflow>,
    spans: &mut Vec<Span>,
    now: i64,
) {
    let Some(workflow) = workflow else {
        return;
    };
    let ended = |task: &str| {
        run.tasks
            .get(task)
            .and_then(|t| parse_time(t["ended_at"].as_str()))
            .map(|t| t.timestamp_millis())
    };
    let run_start = parse_time(run.started_at.as_deref()).map(|t| t.timestamp_millis());
    let mut waits = Vec::new();
    for task in &workflow.tasks {
        // Ready when every task it names has ended (an `any` join is
        // judged then too).
        let ends: Option<Vec<i64>> = task
            .after
            .deps()
            .iter()
            .map(|dep| ended(&workflow.tasks[dep.task].id))
            .collect();
        let (Some(run_start), Some(ends)) = (run_start, ends) else {
            continue;
        };
        let mut ready = ends.into_iter().fold(run_start, i64::max);
        let mut attempts: Vec<&Span> = spans
            .iter()
            .filter(|s| s.task == task.id && s.phase != Phase::Waiting)
            .collect();
        attempts.sort_by_key(|s| s.start);
        let status = run.tasks.get(&task.id).and_then(|t| t["status"].as_str());
        let mut pending = None;
        for span in attempts {
            match span.phase {
                Phase::RetryDelay => ready = span.end.unwrap_or(span.start),
                _ => {
                    if span.start - ready >= WAIT_SHOWN_MS {
                        waits.push((ready, Some(span.start), span.attempt));
                    }
                    pending = Some(span.attempt);
                    ready = i64::MAX;
                }
            }
        }
        // Ready, due, and not started yet.
        let open = matches!(status, Some("pending" | "ready" | "waiting" | "retrying"))
            && run.ended_at.is_none();
        if open && ready <= now && now - ready >= WAIT_SHOWN_MS {
            waits.push((ready, None, pending.map_or(1, |a| a + 1)));
        }
        for (start, end, attempt) in waits.drain(..) {
            spans.push(Span {
                task: task.id.clone(),
                attempt,
                phase: Phase::Waiting,
                start,
                end,
                outcome: "waiting".into(),
            });
        }
    }
}

/// A Gantt chart of a run: one row per task; for each attempt, a bar for
/// the wait for a slot, one for the attempt (coloured by its outcome), and
/// one for the retry delay after it.
fn gantt(run: &RunRecord, spans: &[Span]) -> Markup {
    let start = parse_time(run.started_at.as_deref()).map(|t| t.timestamp_millis());
    // The chart ends with the run, or with its last attempt if later (a
    // cancelled attempt's process may outlive the run's end a little).
    let end = parse_time(run.ended_at.as_deref())
        .map(|t| t.timestamp_millis())
        .into_iter()
        .chain(spans.iter().filter_map(|s| s.end))
        .max()
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let Some(start) = start else {
        return html! { p.muted { "Not started yet." } };
    };
    let total = (end - start).max(1) as f64;
    // One row per task, in the order the tasks first became ready.
    let mut ordered: Vec<&Span> = spans.iter().collect();
    ordered.sort_by_key(|s| s.start);
    let mut rows: Vec<(&str, Vec<&Span>)> = Vec::new();
    for span in ordered {
        match rows.iter_mut().find(|(task, _)| *task == span.task) {
            Some((_, row)) => row.push(span),
            None => rows.push((&span.task, vec![span])),
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    let label = |span: &Span| -> String {
        let took = human(span.end.unwrap_or(now) - span.start);
        match span.phase {
            Phase::Waiting => format!("attempt {}: waiting for a slot, {took}", span.attempt),
            Phase::Attempt => format!("attempt {}: {}, {took}", span.attempt, span.outcome),
            Phase::RetryDelay => format!("retry delay after attempt {}, {took}", span.attempt),
        }
    };
    let class = |span: &Span| match span.phase {
        Phase::Waiting => "bar wait".to_string(),
        Phase::Attempt => format!("bar s-{}", span.outcome),
        Phase::RetryDelay => "bar delay".to_string(),
    };
    html! {
        div.gantt.panel {
            @for (task, spans) in &rows {
                div.row {
                    code { (task) }
                    div.track {
                        @for span in spans {
                            @let left = (span.start - start) as f64 / total * 100.0;
                            @let width = ((span.end.unwrap_or(now.min(end)) - span.start) as f64 / total * 100.0).max(0.3);
                            span class=(class(span)) data-phase=(format!("{:?}", span.phase).to_lowercase())
                                style={ "left:" (format!("{left:.2}")) "%;width:" (format!("{width:.2}")) "%" }
                                title=(label(span)) {}
                        }
                    }
                }
            }
            @if rows.is_empty() { p.muted { "No attempts yet." } }
            @else {
                p.legend.muted {
                    span.key { span.bar.wait {} "waiting for a slot" }
                    span.key { span.bar.s-succeeded {} "attempt (coloured by outcome)" }
                    span.key { span.bar.delay {} "retry delay" }
                }
            }
        }
    }
}

// -------------------------------------------------------------- events

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    before: Option<u64>,
    id: Option<String>,
}

pub async fn events(State(state): State<AppState>, Query(query): Query<EventsQuery>) -> Response {
    render(&state, events_page(&state, query).await)
}

async fn events_page(state: &AppState, query: EventsQuery) -> Result<Response, Error> {
    let log = state.runtime.log().clone();
    let lookup = query.id.clone();
    let before = query.before;
    let (events, single) = tokio::task::spawn_blocking(move || match lookup {
        Some(id) => log
            .event_by_id(&id)
            .map(|e| (e.into_iter().collect::<Vec<_>>(), true)),
        None => log.events(before, PAGE).map(|e| (e, false)),
    })
    .await
    .map_err(crate::api::internal)??;
    let next = (!single && events.len() == PAGE)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let metrics = state.reactor.metrics();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let binding_names: Vec<String> = state
        .registry()?
        .bindings()
        .map(|b| b.name.clone())
        .collect();
    let content = html! {
        h1 { "Events" }
        p.muted { "Every event a trigger recorded, and what each binding did with it: why a run started, or why not." }
        div.cards {
            div.card { div.label { "Accepted" } div.value { (count(&metrics.accepted)) } }
            div.card { div.label { "Started a run" } div.value.s-succeeded { (count(&metrics.started)) } }
            div.card { div.label { "Duplicates" } div.value { (count(&metrics.duplicates)) } }
            div.card { div.label { "Filtered out" } div.value { (count(&metrics.filtered)) } }
            div.card { div.label { "Failed" } div class={ "value" @if count(&metrics.failed) > 0 { " s-failed" } } { (count(&metrics.failed)) } }
            div.card { div.label { "Paused" } div.value { (count(&metrics.paused)) } }
            div.card { div.label { "Unrouted" } div.value { (count(&metrics.unrouted)) } }
            div.card {
                div.label { "Refused at the edge" }
                div class={ "value" @if count(&metrics.rejected) > 0 { " s-failed" } } { (count(&metrics.rejected)) }
                div.label {
                    "signature " (count(&metrics.refused.signature))
                    " · too large " (count(&metrics.refused.too_large))
                    " · bad body " (count(&metrics.refused.bad_body))
                    " · no such hook " (count(&metrics.refused.no_route))
                }
            }
        }
        details.panel {
            summary { strong { "Backtest a binding" } " — what it would have done with the events recorded, before it goes live" }
            form data-kind="backtest" style="display:grid;gap:.5rem;margin-top:.6rem" {
                label { "A loaded binding " select name="name" { option value="" { "—" } @for b in &binding_names { option value=(b) { (b) } } } }
                label { "or an edited one (a binding file's JSON) " textarea name="binding" rows="5" style="width:100%;font-family:var(--mono)" placeholder="{\"name\": \"orders\", \"on\": {\"api\": {}}, \"filter\": \"…\", \"workflow\": \"…\"}" {} }
                label { "over the last " input name="since" value="7d" size="6"; }
                div { button.primary type="button" data-action="POST /api/v1/bindings/backtest" data-show="backtest-result" { "Backtest" } }
            }
            div #backtest-result {}
        }
        h2 { @if single { "Event " code { (query.id.as_deref().unwrap_or("")) } " " a href="/events" { "(all events)" } } @else { "Latest" } }
        div.scroll {
            table {
                thead { tr { th { "Received" } th { "Event" } th { "Outcome per binding" } th { "" } } }
                tbody {
                    @for event in &events {
                        @let json = event.to_json();
                        @let e = &json["event"];
                        tr {
                            td { (time(json["at"].as_str())) }
                            td {
                                code { (e["type"].as_str().unwrap_or("")) }
                                div.muted { (e["source"].as_str().unwrap_or("")) }
                                div.mono.muted { (e["id"].as_str().unwrap_or("")) }
                            }
                            td {
                                @for outcome in json["outcomes"].as_array().into_iter().flatten() {
                                    div { (outcome_line(outcome)) }
                                }
                                @if json["outcomes"].as_array().is_none_or(Vec::is_empty) { span.muted { "no binding matched" } }
                            }
                            td {
                                details {
                                    summary { "data" }
                                    pre { (pretty(e)) }
                                }
                                @if let Some(id) = e["id"].as_str() {
                                    button type="button" data-action={ "POST /api/v1/events/" (urlencode(id)) "/replay" } data-done="Replayed to the current bindings." { "Replay" }
                                }
                            }
                        }
                    }
                    @if events.is_empty() { tr { td colspan="4" .muted { "No events recorded." } } }
                }
            }
        }
        div.pager {
            @if before.is_some() { a href="/events" { "← Newest" } }
            @if let Some(next) = next { a href={ "/events?before=" (next) } { "Older →" } }
        }
    };
    Ok(page(
        state,
        "Events",
        Section::Events,
        &Live::default(),
        content,
    ))
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A link to a run given as text.
fn run_ref(id: &str) -> Markup {
    match RunId::parse_str(id) {
        Ok(id) => run_link(&id),
        Err(_) => html! { span.mono { (id) } },
    }
}

/// One binding's outcome for an event, in words.
fn outcome_line(outcome: &Value) -> Markup {
    let binding = outcome["binding"].as_str().unwrap_or("");
    let run = outcome["run_id"].as_str();
    let kind = outcome["outcome"].as_str().unwrap_or("");
    html! {
        @match kind {
            "started" => { span.badge.s-succeeded { "started" } " " (binding) " → " @if let Some(r) = run { (run_ref(r)) } }
            "duplicate" => {
                span.badge.s-skipped { "duplicate" } " " (binding) ": key " code { (outcome["dedup_key"].as_str().unwrap_or("")) }
                " already started run " @if let Some(r) = run { (run_ref(r)) }
                " (event " code { (outcome["first_event"].as_str().unwrap_or("")) } ")"
            }
            "filtered" => { span.badge.s-skipped { "filtered" } " " (binding) ": " (outcome["reason"].as_str().unwrap_or("")) }
            "failed" => { span.badge.s-failed { "failed" } " " (binding) ": " (outcome["error"].as_str().unwrap_or("")) }
            "paused" => { span.badge.s-cancelled { "paused" } " " (binding) " (replay it once resumed)" }
            "unrouted" => {
                span.badge.s-skipped { "unrouted" } " reached queue " code { (outcome["queue"].as_str().unwrap_or("")) }
                " through no binding (exchange " code { (outcome["exchange"].as_str().unwrap_or("")) } ", key " code { (outcome["routing_key"].as_str().unwrap_or("")) } ")"
            }
            other => { span.badge { (other) } " " (binding) }
        }
    }
}

// ------------------------------------------------------------- workers

pub async fn workers(State(state): State<AppState>) -> Response {
    render(&state, workers_page(&state).await)
}

async fn workers_page(state: &AppState) -> Result<Response, Error> {
    let workers = state
        .remote
        .as_ref()
        .map(crate::remote::Remote::workers_json);
    let consumers: Vec<(String, Value)> = {
        let registry = state.registry()?;
        let amqp = &state.reactor.metrics().amqp;
        registry
            .bindings()
            .filter_map(|b| match &b.trigger {
                crate::spec::binding::Trigger::Amqp(a) => Some((
                    b.name.clone(),
                    amqp.consumer(&a.queue).map_or(Value::Null, |c| {
                        serde_json::json!({"queue": a.queue, "status": c.status, "error": c.error, "since": c.since})
                    }),
                )),
                _ => None,
            })
            .collect()
    };
    let content = html! {
        h1 { "Workers and queues" }
        @match &workers {
            None => { p.muted { "Remote workers need a broker: set " code { "amqp.url" } "." } }
            Some(w) => {
                p.muted {
                    "Results queue " code { (w["results_queue"].as_str().unwrap_or("")) }
                    @if w["consuming_results"] == true { " (consuming)" } @else { " (not consuming yet: no remote task has run)" }
                    " · heartbeat every " (w["heartbeat_ms"]) " ms"
                }
                div.cards {
                    div.card { div.label { "Remote attempts running" } div.value { (w["attempts_running"]) } }
                    @for (queue, waiting) in w["attempts_waiting"].as_object().into_iter().flatten() {
                        div.card { div.label { "Waiting in " code { (queue) } } div.value { (waiting) } }
                    }
                }
                h2 { "Workers" }
                div.scroll {
                    table {
                        thead { tr { th { "Worker" } th { "Host" } th { "Queues" } th { "Concurrency" } th { "Running" } th { "Last heartbeat" } th { "State" } } }
                        tbody {
                            @for worker in w["workers"].as_array().into_iter().flatten() {
                                tr {
                                    td.mono { (worker["worker"].as_str().unwrap_or("")) }
                                    td { (worker["host"].as_str().unwrap_or("")) " " span.muted { "pid " (worker["pid"]) } }
                                    td { @for q in worker["queues"].as_array().into_iter().flatten() { code { (q.as_str().unwrap_or("")) } " " } }
                                    td.num { (worker["concurrency"]) }
                                    td.num { (worker["running"].as_array().map_or(0, Vec::len)) }
                                    td { (time(worker["last_heartbeat"].as_str())) }
                                    td { @if worker["alive"] == true { (badge("running")) } @else { span.badge.s-failed { "silent" } } }
                                }
                            }
                            @if w["workers"].as_array().is_none_or(Vec::is_empty) {
                                tr { td colspan="7" .muted { "No worker has been heard from. Start one with " code { "switchyard worker --queue NAME" } "." } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "AMQP trigger consumers" }
        div.scroll {
            table {
                thead { tr { th { "Binding" } th { "Queue" } th { "State" } th { "Since" } th { "Error" } } }
                tbody {
                    @for (binding, consumer) in &consumers {
                        tr {
                            td { (binding) }
                            td { code { (consumer["queue"].as_str().unwrap_or("")) } }
                            td { (consumer["status"].as_str().unwrap_or("not started")) }
                            td { (time(consumer["since"].as_str())) }
                            td.muted { (consumer["error"].as_str().unwrap_or("")) }
                        }
                    }
                    @if consumers.is_empty() { tr { td colspan="5" .muted { "No AMQP bindings." } } }
                }
            }
        }
    };
    Ok(page(
        state,
        "Workers",
        Section::Workers,
        &Live::default(),
        content,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_780_000_000_000;

    fn iso(ms: i64) -> String {
        crate::time::rfc3339(ms)
    }

    fn workflow() -> crate::spec::Workflow {
        let text = json!({"name": "w", "tasks": [
            {"id": "a", "noop": {}},
            {"id": "b", "noop": {}},
            {"id": "c", "after": ["a", "b"], "noop": {}},
        ]})
        .to_string();
        crate::spec::Workflow::parse(std::path::Path::new("w.json"), text.as_bytes()).unwrap()
    }

    fn run(tasks: Value, ended: Option<i64>) -> RunRecord {
        serde_json::from_value(json!({
            "id": "0190a8a0-0000-7000-8000-000000000000", "workflow": "w",
            "version": "x", "status": if ended.is_some() { "succeeded" } else { "running" },
            "params": {}, "vars": {}, "event": null,
            "started_at": iso(T0), "ended_at": ended.map(iso), "tasks": tasks,
        }))
        .unwrap()
    }

    fn record(kind: &str, task: &str, attempt: u32, at: i64) -> Value {
        json!({"type": kind, "task": task, "attempt": attempt, "at": iso(at), "succeeded": kind == "attempt_finished"})
    }

    #[test]
    fn a_task_that_waited_for_a_slot_gets_a_waiting_bar_from_when_it_was_ready() {
        let history = vec![
            record("attempt_started", "a", 1, T0 + 1),
            record("attempt_finished", "a", 1, T0 + 300),
            record("attempt_started", "b", 1, T0 + 300),
            record("attempt_finished", "b", 1, T0 + 600),
            record("attempt_started", "c", 1, T0 + 650),
            record("attempt_finished", "c", 1, T0 + 700),
        ];
        let run = run(
            json!({
                "a": {"status": "succeeded", "ended_at": iso(T0 + 300)},
                "b": {"status": "succeeded", "ended_at": iso(T0 + 600)},
                "c": {"status": "succeeded", "ended_at": iso(T0 + 700)},
            }),
            Some(T0 + 700),
        );
        let mut spans = attempt_spans(&history);
        waiting_spans(&run, Some(&workflow()), &mut spans, T0 + 800);
        let waits: Vec<(&str, i64, Option<i64>)> = spans
            .iter()
            .filter(|s| s.phase == Phase::Waiting)
            .map(|s| (s.task.as_str(), s.start - T0, s.end.map(|e| e - T0)))
            .collect();
        // `a` started at once; `b` waited for `a`'s slot; `c` was ready when
        // `b` (its last dependency) ended, and started 50 ms later.
        assert_eq!(waits, vec![("b", 0, Some(300)), ("c", 600, Some(650))]);
        let chart = gantt(&run, &spans).into_string();
        assert!(chart.contains(r#"data-phase="waiting""#), "{chart}");
        assert!(chart.contains("waiting for a slot"), "{chart}");
    }

    #[test]
    fn a_retry_shows_its_delay_then_its_wait_and_a_due_task_not_started_waits_until_now() {
        let mut history = vec![
            record("attempt_started", "a", 1, T0),
            json!({"type": "attempt_finished", "task": "a", "attempt": 1, "at": iso(T0 + 100), "succeeded": false}),
            json!({"type": "retry_scheduled", "task": "a", "attempt": 1, "at": iso(T0 + 100), "due_at": T0 + 300}),
            record("attempt_started", "a", 2, T0 + 350),
            record("attempt_finished", "a", 2, T0 + 400),
        ];
        history.push(record("attempt_started", "b", 1, T0));
        history.push(record("attempt_finished", "b", 1, T0 + 50));
        let run = run(
            json!({
                "a": {"status": "succeeded", "ended_at": iso(T0 + 400)},
                "b": {"status": "succeeded", "ended_at": iso(T0 + 50)},
                "c": {"status": "pending"},
            }),
            None,
        );
        let mut spans = attempt_spans(&history);
        waiting_spans(&run, Some(&workflow()), &mut spans, T0 + 1000);
        let of = |task: &str| -> Vec<(Phase, u64, i64, Option<i64>)> {
            let mut found: Vec<_> = spans
                .iter()
                .filter(|s| s.task == task)
                .map(|s| (s.phase, s.attempt, s.start - T0, s.end.map(|e| e - T0)))
                .collect();
            found.sort_by_key(|f| f.2);
            found
        };
        assert_eq!(
            of("a"),
            vec![
                (Phase::Attempt, 1, 0, Some(100)),
                (Phase::RetryDelay, 1, 100, Some(300)),
                (Phase::Waiting, 2, 300, Some(350)),
                (Phase::Attempt, 2, 350, Some(400)),
            ]
        );
        // Ready since `a` ended, not started: waiting, still open.
        assert_eq!(of("c"), vec![(Phase::Waiting, 1, 400, None)]);
        let chart = gantt(&run, &spans).into_string();
        assert!(chart.contains(r#"data-phase="retrydelay""#), "{chart}");
    }
}
