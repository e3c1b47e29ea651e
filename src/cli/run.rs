//! `switchyard run WORKFLOW|FILE`: runs one workflow in this process, with
//! the same engine and log as the daemon, and waits for it to end.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value};

use crate::engine::{Limits, RunRecord};
use crate::executors::live::{Stream, Tapped};
use crate::log::{RecordBody, RunStatus};
use crate::runtime::{Runtime, RuntimeConfig};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Workflow name (looked up in the project's workflow dirs) or file.
    pub workflow: String,
    /// Run parameter `key=value`; the value is JSON if it parses, else a string.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Data directory holding the log (default: the config's `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the run record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Override `max_parallel_tasks`.
    #[arg(long, value_parser = super::whole_number)]
    pub max_parallel_tasks: Option<usize>,
    /// Print the tasks' output live as it is produced, each line prefixed
    /// with its task id (`task | line`; `task#2 | …` for a retry): stdout
    /// to stdout, stderr to stderr (both to stderr with --json).
    #[arg(long, visible_alias = "stream")]
    pub output: bool,
}

/// The project's workflows by name, for `workflow` tasks (the one being
/// run included, even when it came from a file elsewhere).
pub(crate) fn project_workflows(
    config: &crate::spec::Config,
    running: &std::sync::Arc<crate::spec::Workflow>,
) -> crate::runtime::WorkflowLookup {
    let (found, _) = crate::spec::load_workflows(&config.workflow_dirs());
    let mut by_name: std::collections::HashMap<String, std::sync::Arc<crate::spec::Workflow>> =
        found
            .into_iter()
            .map(|w| (w.name.clone(), std::sync::Arc::new(w)))
            .collect();
    by_name.insert(running.name.clone(), std::sync::Arc::clone(running));
    std::sync::Arc::new(move |name: &str| by_name.get(name).cloned())
}

/// Parses `--param key=value` arguments.
pub fn parse_params(params: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            return Err(format!("--param `{param}`: expected KEY=VALUE"));
        };
        if key.is_empty() {
            return Err(format!("--param `{param}`: the key is empty"));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

pub fn main(config_path: &Path, args: &RunArgs) -> ExitCode {
    let config = match super::load_config(config_path) {
        Ok(c) => c,
        Err(e) => return super::fail(e),
    };
    let workflow = match super::find_workflow(&config, &args.workflow) {
        Ok(w) => w,
        Err(e) => return super::fail(e),
    };
    let params = match parse_params(&args.params) {
        Ok(p) => p,
        Err(e) => return super::fail(e),
    };
    // Only the secrets this workflow names must be readable.
    let mut uses = secrets_used(&workflow.source);
    // And those in the URLs of the connections it names.
    let source = String::from_utf8_lossy(&workflow.source);
    for (name, connection) in &config.connections {
        if source.contains(&format!("\"{name}\"")) {
            let used = secrets_used(connection.url.as_bytes());
            uses.dynamic |= used.dynamic;
            uses.names.extend(used.names);
        }
    }
    let needed = |name: &str| uses.dynamic || uses.names.contains(name);
    let secrets = match crate::spec::Secrets::resolve_for(&config, config_path, needed) {
        Ok(s) => s,
        Err(e) => return super::fail(e),
    };
    let databases = match crate::executors::sql::Databases::from_config(&config, &secrets, false) {
        Ok(d) => d,
        Err((path, message)) => return super::fail(format!("{path}: {message}")),
    };
    let secrets = std::sync::Arc::new(secrets.also_redacting(databases.passwords()));
    if args.max_parallel_tasks == Some(0) {
        return super::fail("--max-parallel-tasks must be at least 1");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| config.data_dir());
    let limits = Limits {
        max_parallel_tasks: args
            .max_parallel_tasks
            .unwrap_or_else(|| config.max_parallel_tasks()),
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => return super::fail(format!("cannot start the async runtime: {e}")),
    };
    tokio.block_on(async move {
        let config = RuntimeConfig {
            data_dir,
            limits,
            recover: false,
            secrets,
            project_vars: config.vars.clone(),
            chain: None,
            broker: Some(crate::amqp::Broker::from_config(&config)),
            databases,
            workflows: Some(project_workflows(&config, &workflow)),
            remote: None,
        };
        let runtime = match Runtime::start(config) {
            Ok(r) => r,
            // The data dir belongs to a running server (the demo's `serve`,
            // say): say how to run the workflow there, or beside it.
            Err(crate::runtime::Error::Log(crate::log::Error::Locked { dir })) => {
                return super::fail(format!(
                    "data dir {} is locked by another switchyard process (a running \
                     `switchyard serve`?); run the workflow on that server with `switchyard trigger {name} --wait` (add `--server ADDR` \
                     if it does not listen at the configured address), or here on a data dir \
                     of its own with `switchyard run {file} --data-dir <dir>`",
                    dir.display(),
                    name = workflow.name,
                    file = args.workflow,
                ));
            }
            Err(e) => return super::fail(e),
        };
        let handle = runtime.handle();
        // Every record of the run is broadcast before the run's end is
        // answered, so the printer drains them all once told to stop.
        let (progress_done, progress_stop) = tokio::sync::oneshot::channel::<()>();
        let progress = std::io::stderr()
            .is_terminal()
            .then(|| tokio::spawn(print_progress(handle.subscribe(), progress_stop)));
        // The tap sees every piece of output before the attempt's end is
        // applied, so all of it is in the channel once the run has ended.
        let (output_done, output_stop) = tokio::sync::oneshot::channel::<()>();
        let output = args.output.then(|| {
            let width = workflow.tasks.iter().map(|t| t.id.len()).max().unwrap_or(0);
            let printer = OutputPrinter {
                width,
                all_to_stderr: args.json,
                partial: HashMap::new(),
            };
            tokio::spawn(printer.run(handle.live().tap(), output_stop))
        });
        let (created_tx, created_rx) = tokio::sync::oneshot::channel();
        let run = handle.run_to_end(workflow, params, None, move |run_id| {
            let _ = created_tx.send(run_id);
        });
        tokio::pin!(run);
        let mut created = Some(created_rx);
        let outcome = loop {
            tokio::select! {
                record = &mut run => break record,
                _ = tokio::signal::ctrl_c() => {
                    // Ctrl-C cancels the run: its processes are killed and the
                    // run is recorded as cancelled.
                    eprintln!("interrupted: cancelling the run");
                    let run_id = match created.take() {
                        Some(rx) => rx.await.ok(),
                        None => None,
                    };
                    if let Some(run_id) = run_id
                        && let Err(e) = handle.cancel(run_id, "interrupted (Ctrl-C)").await
                    {
                        eprintln!("error: {e}");
                    }
                }
            }
        };
        let _ = progress_done.send(());
        if let Some(progress) = progress {
            let _ = progress.await;
        }
        let _ = output_done.send(());
        if let Some(output) = output {
            let _ = output.await;
        }
        runtime.shutdown().await;
        match outcome {
            Ok(record) => {
                if args.json {
                    match serde_json::to_string_pretty(&record) {
                        Ok(text) => println!("{text}"),
                        Err(e) => eprintln!("error: cannot print run record: {e}"),
                    }
                } else {
                    print_summary(&record);
                }
                match record.status {
                    RunStatus::Succeeded => ExitCode::SUCCESS,
                    RunStatus::Cancelled => ExitCode::from(130),
                    _ => ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn print_progress(
    mut records: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::log::Record>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut started: HashMap<String, i64> = HashMap::new();
    loop {
        let record = tokio::select! {
            // Records first: `stop` only wins once nothing is waiting.
            biased;
            record = records.recv() => match record {
                Ok(r) => r,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            _ = &mut stop => return,
        };
        if let Some(line) = progress_line(&record, &mut started) {
            eprintln!("{line}");
        }
    }
}

/// `run --output`: prints the tasks' output line by line, each line
/// prefixed with its task (a line still being written waits for its end,
/// or for the run's end).
struct OutputPrinter {
    width: usize,
    all_to_stderr: bool,
    /// The unfinished last line of each attempt's stream.
    partial: HashMap<(String, u32, Stream), String>,
}

impl OutputPrinter {
    async fn run(
        mut self,
        mut pieces: tokio::sync::mpsc::UnboundedReceiver<Tapped>,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                biased;
                piece = pieces.recv() => match piece {
                    Some(piece) => self.piece(&piece),
                    None => break,
                },
                _ = &mut stop => {
                    while let Ok(piece) = pieces.try_recv() {
                        self.piece(&piece);
                    }
                    break;
                }
            }
        }
        let rest: Vec<_> = self.partial.drain().collect();
        for ((task, attempt, stream), line) in rest {
            if !line.is_empty() {
                self.line(&task, attempt, stream, &line);
            }
        }
    }

    fn piece(&mut self, piece: &Tapped) {
        let key = (piece.task.to_string(), piece.attempt, piece.stream);
        let mut text = self.partial.remove(&key).unwrap_or_default();
        text.push_str(&piece.text);
        let mut lines: Vec<&str> = text.split('\n').collect();
        let last = lines.pop().unwrap_or_default().to_string();
        for line in lines {
            self.line(
                &key.0,
                key.1,
                key.2,
                line.strip_suffix('\r').unwrap_or(line),
            );
        }
        if !last.is_empty() {
            self.partial.insert(key, last);
        }
    }

    fn line(&self, task: &str, attempt: u32, stream: Stream, line: &str) {
        use std::io::Write;
        let label = if attempt > 1 {
            format!("{task}#{attempt}")
        } else {
            task.to_string()
        };
        let text = format!("{label:<width$} | {line}\n", width = self.width);
        if stream == Stream::Stdout && !self.all_to_stderr {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        } else {
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
    }
}

/// The live line for one record, if it deserves one.
fn progress_line(
    record: &crate::log::Record,
    started: &mut HashMap<String, i64>,
) -> Option<String> {
    Some(match &record.body {
        RecordBody::AttemptStarted { task, attempt } => {
            started.insert(task.clone(), record.at);
            if *attempt > 1 {
                format!("▶ {task} (attempt {attempt})")
            } else {
                format!("▶ {task}")
            }
        }
        RecordBody::AttemptFinished {
            task,
            succeeded,
            error,
            ..
        } => {
            let took = started
                .get(task)
                .map(|s| format!(" in {:.2}s", (record.at - s) as f64 / 1000.0))
                .unwrap_or_default();
            if *succeeded {
                format!("✓ {task} succeeded{took}")
            } else {
                format!("✗ {task} failed{took}: {}", error.as_deref().unwrap_or(""))
            }
        }
        RecordBody::RetryScheduled {
            task,
            attempt,
            due_at,
        } => format!(
            "↻ {task}: attempt {attempt} in {:.1}s",
            (due_at - record.at).max(0) as f64 / 1000.0
        ),
        RecordBody::TaskSkipped { task, reason } => format!("○ {task} skipped: {reason}"),
        RecordBody::TaskFailed { task, error } => format!("✗ {task} failed: {error}"),
        RecordBody::TaskCancelled { task, reason } => format!("■ {task} cancelled: {reason}"),
        RecordBody::RunTimedOut {} => "⏱ run timed out".to_string(),
        _ => return None,
    })
}

pub(crate) fn print_summary(record: &RunRecord) {
    let took = match (&record.started_at, &record.ended_at) {
        (Some(s), Some(e)) => match (
            chrono::DateTime::parse_from_rfc3339(s),
            chrono::DateTime::parse_from_rfc3339(e),
        ) {
            (Ok(s), Ok(e)) => format!(" in {:.2}s", (e - s).num_milliseconds() as f64 / 1000.0),
            _ => String::new(),
        },
        _ => String::new(),
    };
    println!(
        "run {} of {} {}{took}",
        record.id, record.workflow, record.status
    );
    if let Some(error) = &record.error {
        println!("  error: {error}");
    }
    if let Some(parent) = &record.parent {
        println!(
            "  started by run {} (task {}, attempt {}; depth {})",
            parent.run_id, parent.task, parent.attempt, parent.depth
        );
    }
    let width = record.tasks.keys().map(String::len).max().unwrap_or(0);
    for (id, task) in &record.tasks {
        let status = task.get("status").and_then(Value::as_str).unwrap_or("?");
        let attempts = task.get("attempts").and_then(Value::as_u64).unwrap_or(0);
        let error = task
            .get("error")
            .and_then(Value::as_str)
            .map(|e| format!("  {e}"))
            .or_else(|| {
                task.get("reused_from")
                    .and_then(Value::as_str)
                    .map(|from| format!("  reused from run {from}"))
            })
            .unwrap_or_default();
        let child = task
            .get("child_run_id")
            .and_then(Value::as_str)
            .map(|child| format!("  child run {child}"))
            .unwrap_or_default();
        // A waiting check says what it waits for.
        let waiting = task
            .get("observation")
            .and_then(|o| o.get("summary"))
            .and_then(Value::as_str)
            .filter(|_| status == "running")
            .map(|summary| format!("  waiting: {summary}"))
            .unwrap_or_default();
        println!("  {id:<width$}  {status:<9}  attempts {attempts}{child}{waiting}{error}");
    }
}

/// The secrets a workflow file names (`secrets.NAME`, `secrets["NAME"]`),
/// and whether it indexes them with something else (then all are needed).
#[derive(Debug, Default, PartialEq)]
pub struct SecretsUsed {
    pub names: std::collections::BTreeSet<String>,
    pub dynamic: bool,
}

pub fn secrets_used(source: &[u8]) -> SecretsUsed {
    let text = String::from_utf8_lossy(source);
    let mut used = SecretsUsed::default();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    };
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("secrets") {
        let after = &rest[at + "secrets".len()..];
        let next = after.trim_start();
        let word_ends = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'));
        if before_ok && word_ends {
            if let Some(name) = next.strip_prefix('.') {
                let name = ident(name.trim_start());
                if name.is_empty() {
                    used.dynamic = true;
                } else {
                    used.names.insert(name);
                }
            } else if let Some(index) = next.strip_prefix('[') {
                // A quoted literal names one secret; anything else could be any.
                let index = index.trim_start_matches('\\');
                match index.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let name = ident(&index[q.len_utf8()..]);
                        if name.is_empty() {
                            used.dynamic = true;
                        } else {
                            used.names.insert(name);
                        }
                    }
                    _ => used.dynamic = true,
                }
            } else {
                // `secrets` used whole (`size(secrets)`, `'x' in secrets`),
                // or in words: any secret may be needed.
                used.dynamic = true;
            }
        }
        rest = after;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secrets_a_workflow_names_are_found() {
        let used = secrets_used(
            br#"{"env": {"A": "${secrets.api_token}", "B": "${ secrets[\"db-pass\"] }"},
                "url": "https://x/${vars.secrets_dir}/${mysecrets.x}"}"#,
        );
        assert_eq!(
            used.names.into_iter().collect::<Vec<_>>(),
            ["api_token", "db-pass"]
        );
        assert!(!used.dynamic);
        assert!(secrets_used(br#"{"a": "${secrets[vars.which]}"}"#).dynamic);
        assert!(secrets_used(br#"{"a": "${size(secrets)}"}"#).dynamic);
        let spaced = secrets_used(br#"{"a": "${secrets . token}"}"#);
        assert_eq!(spaced.names.into_iter().collect::<Vec<_>>(), ["token"]);
        assert_eq!(secrets_used(b"{}"), SecretsUsed::default());
    }
}
