//! The command line (SPEC §10). Glue only: parsing, loading, printing, exit codes.

mod client;
pub mod graph;
mod matching;
mod operations;
mod run;
mod runs;
mod schedule;
mod schema;
mod validate;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::spec::{Config, Diagnostics, Workflow};

/// A numeric argument, its error in words (clap's own says "invalid digit
/// found in string").
pub(crate) fn whole_number(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("expected a whole number ≥ 0, got `{text}`"))
}

/// Exit code for invalid input (files, arguments).
pub const EXIT_INVALID: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Event-triggered workflow orchestrator"
)]
pub struct Cli {
    /// Project config file.
    #[arg(long, global = true, default_value = "switchyard.json")]
    pub config: PathBuf,
    /// Log lines as text, or as one JSON object per line for log shippers
    /// (with the run, task, attempt, event and binding they concern as
    /// fields); default: `SWITCHYARD_LOG_FORMAT`, else text.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate workflow and binding files (default: the project's dirs). Exit 2 on any error.
    Validate {
        /// Workflow or binding files, or directories of them (default: the
        /// config's `workflows` and `bindings` dirs).
        paths: Vec<PathBuf>,
    },
    /// Run a workflow locally, in this process, to its end.
    Run(run::RunArgs),
    /// Print a workflow's graph as mermaid or dot.
    Graph {
        /// Workflow name or file.
        workflow: String,
        /// Output format: a Mermaid flowchart or a Graphviz DOT graph.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: graph::Format,
    },
    /// Run the daemon: API, recovery, workflow reload.
    Serve {
        /// Data directory (default: the config's `data_dir`).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Listen address (default: the config's `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// How long running tasks get to finish on SIGINT/SIGTERM.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// Serve the API without a token on a non-loopback address (only
        /// when something in front of switchyard authenticates requests).
        #[arg(long)]
        allow_unauthenticated: bool,
        /// With no token configured, use `<data dir>/api-token`, generating
        /// a random one there on first start (the container image does this).
        #[arg(long)]
        generate_token: bool,
    },
    /// Show which bindings an event (a CloudEvent JSON file) matches and the
    /// params each would start its workflow with. Exit 0 if any matches, 1 if none.
    /// With --recorded: backtest a binding against the events the running
    /// server recorded.
    Match {
        /// A CloudEvent JSON file; with --recorded, a binding file to backtest.
        file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Evaluate a binding (the file, or --binding NAME) against the
        /// events recorded in the log: what it would have started, with params.
        #[arg(long)]
        recorded: bool,
        /// How far back to look with --recorded.
        #[arg(long, default_value = "7d")]
        since: String,
        /// A loaded binding to backtest instead of a file.
        #[arg(long)]
        binding: Option<String>,
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
    },
    /// Inspect and act on runs, through the server or offline.
    Runs {
        #[command(flatten)]
        target: runs::Target,
        #[command(subcommand)]
        command: runs::RunsCommand,
    },
    /// Start a run of WORKFLOW on the running server.
    Trigger {
        /// The workflow's name.
        workflow: String,
        /// Run parameter `key=value`; the value is JSON if it parses, else a string.
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Run this version (a content hash from `versions`) instead of the
        /// pinned or current one.
        #[arg(long)]
        version: Option<String>,
        /// Wait for the run to end, printing tasks as they end; exit 0 only
        /// if it succeeded.
        #[arg(long, visible_alias = "follow")]
        wait: bool,
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
        /// Print the run record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run remote tasks' jobs from RabbitMQ (tasks with `queue`).
    Worker(worker::WorkerArgs),
    /// Exit 0 when the server answers `/healthz` (for container health checks).
    Health {
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
    },
    /// Pause a binding (or a workflow's bindings): nothing starts, nothing
    /// is lost; durable across restarts. On the running server.
    Pause(operations::PauseArgs),
    /// Resume a paused binding or workflow.
    Resume(operations::PauseArgs),
    /// Start a cron binding's runs for every instant in a range (on the
    /// running server), oldest first; instants that already ran are skipped.
    Backfill(operations::BackfillArgs),
    /// A workflow's versions (content hash, first seen, current, pinned),
    /// or the JSON Patch between two of them.
    Versions(operations::VersionsArgs),
    /// Pin a workflow to a version: triggers run it until unpinned.
    Pin {
        /// The workflow's name.
        workflow: String,
        /// A content hash from `switchyard versions WORKFLOW`.
        version: String,
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
    },
    /// Unpin a workflow: back to its file's current version.
    Unpin {
        /// The workflow's name.
        workflow: String,
        /// Server address (default: the config's `listen`).
        #[arg(long)]
        server: Option<String>,
    },
    /// Recorded events: replay one to the current bindings.
    Events {
        #[command(subcommand)]
        command: operations::EventsCommand,
    },
    /// Print the next fire times of a cron binding or a cron expression.
    Schedule(schedule::ScheduleArgs),
    /// Write the JSON Schemas of the file formats.
    Schema {
        /// Directory to write to.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Print to stdout instead of writing files.
        #[arg(long)]
        print: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        Some(format) => format,
        None => match std::env::var("SWITCHYARD_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("text") | Err(_) => LogFormat::Text,
            Ok(other) => {
                return fail(format!(
                    "SWITCHYARD_LOG_FORMAT must be text or json, not `{other}`"
                ));
            }
        },
    };
    init_tracing(format);
    match cli.command {
        Command::Validate { ref paths } => validate::main(&cli.config, paths),
        Command::Run(ref args) => run::main(&cli.config, args),
        Command::Graph {
            ref workflow,
            format,
        } => graph::main(&cli.config, workflow, format),
        Command::Schema { ref out, print } => schema::main(out, print),
        Command::Schedule(ref args) => schedule::main(&cli.config, args),
        Command::Pause(ref args) => operations::pause(&cli.config, args, true),
        Command::Backfill(ref args) => operations::backfill(&cli.config, args),
        Command::Resume(ref args) => operations::pause(&cli.config, args, false),
        Command::Events { ref command } => operations::events(&cli.config, command),
        Command::Serve {
            ref data_dir,
            ref listen,
            grace,
            allow_unauthenticated,
            generate_token,
        } => serve(crate::daemon::ServeOptions {
            config_path: cli.config.clone(),
            data_dir: data_dir.clone(),
            listen: listen.clone(),
            grace,
            clock: None,
            allow_unauthenticated,
            generate_token,
        }),
        Command::Match {
            ref file,
            json,
            recorded,
            ref since,
            ref binding,
            ref server,
        } => {
            if recorded {
                operations::backtest(
                    &cli.config,
                    (file.as_deref(), binding.as_deref()),
                    since,
                    (server.as_deref(), json),
                )
            } else if let Some(event) = file {
                matching::main(&cli.config, event, json)
            } else {
                fail("name an event file (or use --recorded to backtest a binding)")
            }
        }
        Command::Health { ref server } => runs::health(&cli.config, server.as_deref()),
        Command::Worker(ref args) => worker::main(&cli.config, args),
        Command::Runs {
            ref target,
            ref command,
        } => runs::main(&cli.config, target, command),
        Command::Trigger {
            ref workflow,
            ref params,
            ref version,
            ref server,
            json,
            wait,
        } => runs::trigger(
            &cli.config,
            server.as_deref(),
            (workflow, version.as_deref()),
            params,
            (json, wait),
        ),
        Command::Versions(ref args) => operations::versions(&cli.config, args),
        Command::Pin {
            ref workflow,
            ref version,
            ref server,
        } => operations::pin(&cli.config, server.as_deref(), workflow, Some(version)),
        Command::Unpin {
            ref workflow,
            ref server,
        } => operations::pin(&cli.config, server.as_deref(), workflow, None),
    }
}

fn serve(options: crate::daemon::ServeOptions) -> ExitCode {
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match tokio.block_on(crate::daemon::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_invalid_input() => fail(e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let default = match std::env::args().nth(1).as_deref() {
        Some("serve") => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal, never in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs.with_ansi(ansi).try_init(),
        // The event's fields at the top level; those of the spans it is in
        // (an attempt's run, task and attempt) in `spans`.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}

/// Loads the project config; a missing default `switchyard.json` is fine.
pub(crate) fn load_config(path: &Path) -> Result<Config, Diagnostics> {
    let optional = path == Path::new("switchyard.json");
    Config::load(path, optional)
}

/// Finds a workflow by file path or by name in the project's workflow dirs.
pub(crate) fn find_workflow(config: &Config, name_or_file: &str) -> Result<Arc<Workflow>, String> {
    let path = Path::new(name_or_file);
    if name_or_file.ends_with(".json") || path.is_file() {
        return Workflow::load(path)
            .map(Arc::new)
            .map_err(|d| d.to_string());
    }
    let (workflows, diagnostics) = crate::spec::load_workflows(&config.workflow_dirs());
    if let Some(workflow) = workflows.into_iter().find(|w| w.name == name_or_file) {
        return Ok(Arc::new(workflow));
    }
    let mut message = format!(
        "no workflow named `{name_or_file}` in {}",
        config
            .workflow_dirs()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !diagnostics.is_empty() {
        message.push_str(&format!(
            " (some files are invalid: run `switchyard validate`):\n{}",
            Diagnostics(diagnostics)
        ));
    }
    Err(message)
}

pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_INVALID)
}
