//! `switchyard pause|resume BINDING|--workflow W` and `switchyard events
//! replay ID`: operations on a running server, through its API.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::client::Blocking;

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The binding to pause or resume.
    #[arg(required_unless_present = "workflow", conflicts_with = "workflow")]
    pub binding: Option<String>,
    /// A workflow instead: every binding that starts it.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Server address (default: the config's `listen`).
    #[arg(long)]
    pub server: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Offer a recorded event again to the current bindings, bypassing
    /// dedup; recorded as a new event that names the original.
    Replay {
        /// The event's id (as in `GET /api/v1/events`).
        id: String,
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
    },
}

pub fn pause(config_path: &Path, args: &PauseArgs, paused: bool) -> ExitCode {
    let verb = if paused { "pause" } else { "resume" };
    let path = match (&args.binding, &args.workflow) {
        (Some(binding), None) => format!("/bindings/{}/{verb}", segment(binding)),
        (None, Some(workflow)) => format!("/workflows/{}/{verb}", segment(workflow)),
        _ => return super::fail("name a binding, or a workflow with --workflow"),
    };
    match call(config_path, args.server.as_deref(), &path) {
        Ok(answer) => {
            let what = answer
                .get("binding")
                .map(|b| format!("binding {}", b.as_str().unwrap_or_default()))
                .or_else(|| {
                    answer
                        .get("workflow")
                        .map(|w| format!("workflow {}", w.as_str().unwrap_or_default()))
                })
                .unwrap_or_default();
            let state = if paused { "paused" } else { "resumed" };
            let already = if answer["changed"] == false {
                " (it already was)"
            } else {
                ""
            };
            println!("{what} {state}{already}");
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}

pub fn events(config_path: &Path, command: &EventsCommand) -> ExitCode {
    match command {
        EventsCommand::Replay { id, server } => {
            let path = format!("/events/{}/replay", segment(id));
            match call(config_path, server.as_deref(), &path) {
                Ok(answer) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&answer).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => super::fail(e),
            }
        }
    }
}

fn call(config_path: &Path, server: Option<&str>, path: &str) -> Result<Value, String> {
    Blocking::new(config_path, server)?.call(reqwest::Method::POST, path, None)
}

/// A name as one URL path segment.
fn segment(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The cron binding to backfill.
    pub binding: String,
    /// First instant of the range (RFC 3339, or a YYYY-MM-DD date: midnight UTC).
    #[arg(long)]
    pub from: String,
    /// Last instant of the range (inclusive).
    #[arg(long)]
    pub to: String,
    /// List the instants without starting anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the runs are started instead of following them to the end.
    #[arg(long)]
    pub no_wait: bool,
    /// Server address (default: the config's `listen`).
    #[arg(long)]
    pub server: Option<String>,
}

pub fn backfill(config_path: &Path, args: &BackfillArgs) -> ExitCode {
    let client = match Blocking::new(config_path, args.server.as_deref()) {
        Ok(client) => client,
        Err(e) => return super::fail(e),
    };
    let body = serde_json::json!({"from": args.from, "to": args.to, "dry_run": args.dry_run});
    let path = format!("/bindings/{}/backfill", segment(&args.binding));
    let answer = match client.call(reqwest::Method::POST, &path, Some(body)) {
        Ok(answer) => answer,
        Err(e) => return super::fail(e),
    };
    if args.dry_run {
        let instants = answer["instants"].as_array().cloned().unwrap_or_default();
        println!(
            "{} instant(s) of {} would run:",
            instants.len(),
            args.binding
        );
        for instant in instants {
            println!("  {}", instant.as_str().unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let id = answer["backfill"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!(
        "backfill {id}: {} started, {} already ran (duplicates)",
        answer["started"], answer["duplicates"]
    );
    if args.no_wait {
        return ExitCode::SUCCESS;
    }
    // Follow the runs to their end, printing progress as it changes.
    let mut last = String::new();
    loop {
        let shown = match client.call(
            reqwest::Method::GET,
            &format!("/backfills/{}", segment(&id)),
            None,
        ) {
            Ok(shown) => shown,
            Err(e) => return super::fail(e),
        };
        let runs = shown["runs"].as_array().cloned().unwrap_or_default();
        let count = |status: &str| runs.iter().filter(|r| r["status"] == status).count();
        let done = count("succeeded") + count("failed") + count("cancelled");
        let line = format!(
            "{done}/{} done: {} succeeded, {} failed, {} cancelled, {} running, {} queued",
            runs.len(),
            count("succeeded"),
            count("failed"),
            count("cancelled"),
            count("running"),
            count("queued")
        );
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if done == runs.len() {
            return if count("failed") + count("cancelled") == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// The workflow's name.
    pub workflow: String,
    /// Print the JSON Patch (RFC 6902) from version FROM to version TO
    /// (hashes, or `current`).
    #[arg(long, num_args = 2, value_names = ["FROM", "TO"])]
    pub diff: Option<Vec<String>>,
    /// Server address (default: the config's `listen`).
    #[arg(long)]
    pub server: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn versions(config_path: &Path, args: &VersionsArgs) -> ExitCode {
    let workflow = segment(&args.workflow);
    let path = match args.diff.as_deref() {
        Some([from, to]) => format!(
            "/workflows/{workflow}/versions/{}/diff/{}",
            segment(from),
            segment(to)
        ),
        _ => format!("/workflows/{workflow}/versions"),
    };
    let answer = match get(config_path, args.server.as_deref(), &path) {
        Ok(answer) => answer,
        Err(e) => return super::fail(e),
    };
    if args.json || args.diff.is_some() {
        let shown = if args.diff.is_some() && !args.json {
            answer["patch"].clone()
        } else {
            answer
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<18}  {:<6}  {:<26}  STATE",
        "VERSION", "LABEL", "FIRST SEEN"
    );
    for v in answer["versions"].as_array().cloned().unwrap_or_default() {
        let mut state = Vec::new();
        if v["current"] == true {
            state.push("current");
        }
        if v["pinned"] == true {
            state.push("pinned");
        }
        println!(
            "{:<18}  {:<6}  {:<26}  {}",
            v["version"].as_str().unwrap_or_default(),
            v["version_label"]
                .as_u64()
                .map(|l| l.to_string())
                .unwrap_or_default(),
            v["first_seen"].as_str().unwrap_or("-"),
            state.join(", ")
        );
    }
    ExitCode::SUCCESS
}

pub fn pin(
    config_path: &Path,
    server: Option<&str>,
    workflow: &str,
    version: Option<&String>,
) -> ExitCode {
    let client = match Blocking::new(config_path, server) {
        Ok(client) => client,
        Err(e) => return super::fail(e),
    };
    let (path, body) = match version {
        Some(version) => (
            format!("/workflows/{}/pin", segment(workflow)),
            Some(serde_json::json!({"version": version})),
        ),
        None => (format!("/workflows/{}/unpin", segment(workflow)), None),
    };
    match client.call(reqwest::Method::POST, &path, body) {
        Ok(answer) => {
            match answer["pinned"].as_str() {
                Some(v) => println!("workflow {workflow} pinned to version {v}"),
                None => println!("workflow {workflow} unpinned: it runs its current version"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(e),
    }
}

fn get(config_path: &Path, server: Option<&str>, path: &str) -> Result<Value, String> {
    Blocking::new(config_path, server)?.call(reqwest::Method::GET, path, None)
}

/// `switchyard match --recorded [BINDING_FILE | --binding NAME] [--since 7d]`.
pub fn backtest(
    config_path: &Path,
    (file, name): (Option<&Path>, Option<&str>),
    since: &str,
    (server, as_json): (Option<&str>, bool),
) -> ExitCode {
    let binding = match (file, name) {
        (Some(file), None) => match std::fs::read(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))
            .and_then(|bytes| {
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| format!("{}: invalid JSON: {e}", file.display()))
            }) {
            Ok(Value::Array(mut items)) if !items.is_empty() => items.remove(0),
            Ok(value) => value,
            Err(e) => return super::fail(e),
        },
        (None, Some(name)) => Value::String(name.to_string()),
        _ => {
            return super::fail("backtest a binding file, or a loaded binding with --binding NAME");
        }
    };
    let client = match Blocking::new(config_path, server) {
        Ok(client) => client,
        Err(e) => return super::fail(e),
    };
    let body = serde_json::json!({"binding": binding, "since": since});
    let answer = match client.call(reqwest::Method::POST, "/bindings/backtest", Some(body)) {
        Ok(answer) => answer,
        Err(e) => return super::fail(e),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        println!(
            "binding {} → {}: {} of {} recorded event(s) since {} came from its trigger; it would have started {}",
            answer["binding"].as_str().unwrap_or_default(),
            answer["workflow"].as_str().unwrap_or_default(),
            answer["from_this_trigger"],
            answer["events_examined"],
            answer["since"].as_str().unwrap_or_default(),
            answer["would_start"],
        );
        for result in answer["results"].as_array().cloned().unwrap_or_default() {
            let detail = match result["verdict"].as_str() {
                Some("match") => format!("params {}", result["params"]),
                _ => result["reason"].as_str().unwrap_or_default().to_string(),
            };
            println!(
                "  {:<9} {}  {}  {detail}",
                result["verdict"].as_str().unwrap_or_default(),
                result["time"].as_str().unwrap_or_default(),
                result["event_id"].as_str().unwrap_or_default(),
            );
        }
    }
    if answer["would_start"].as_u64().unwrap_or(0) > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
