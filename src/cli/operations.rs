//! `switchyard pause|resume BINDING|--workflow W` and `switchyard events
//! replay ID`: operations on a running server, through its API.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::client::Client;

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
    let config = super::load_config(config_path).map_err(|e| e.to_string())?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let client = Client::new(server, &config);
    tokio.block_on(client.call(reqwest::Method::POST, path, None))
}

/// A name as one URL path segment.
fn segment(name: &str) -> String {
    form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
