//! `switchyard runs list|show|history|logs|rerun|cancel` and `trigger`:
//! through a running server (`--server`), or offline on a data dir.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::{Blocking, Client};
use crate::engine::RunRecord;
use crate::engine::rerun::RerunFrom;
use crate::log::{Log, RunId, RunStatus};
use crate::runtime::{Runtime, RuntimeConfig};

#[derive(Debug, clap::Args)]
pub struct Target {
    /// Server address (default: the config's `listen`).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Work offline on this data dir (no server may hold it).
    #[arg(long, global = true, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs in this status: queued, running, succeeded, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many runs (the server allows 1 to 1000).
        #[arg(long, default_value_t = 20, value_parser = super::whole_number)]
        limit: usize,
        /// Only runs older than this run id (paging).
        #[arg(long)]
        before: Option<String>,
    },
    /// One run's record.
    Show {
        /// The run's id.
        id: String,
    },
    /// A run's transitions, as recorded.
    History {
        /// The run's id.
        id: String,
    },
    /// The captured stdout/stderr of a task, per attempt.
    Logs {
        /// The run's id.
        id: String,
        /// The task's id in the workflow.
        task: String,
        /// Print the output as it is produced, across retries, until the
        /// task ends (needs the server); the exit code says whether the
        /// task succeeded.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Start a rerun: from the failed tasks, or from `--from TASK`.
    Rerun {
        /// The id of the run to rerun.
        id: String,
        /// `failed` (the failed tasks and what follows them) or a task id.
        #[arg(long, default_value = "failed")]
        from: String,
        /// Change a param for the rerun (`key=value`, the value parsed as
        /// JSON when it parses; `key=null` removes it).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Cancel an active run.
    Cancel {
        /// The run's id.
        id: String,
    },
}

pub fn main(config_path: &Path, target: &Target, command: &RunsCommand) -> ExitCode {
    let config = match super::load_config(config_path) {
        Ok(c) => c,
        Err(e) => return super::fail(e),
    };
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(t) => t,
        Err(e) => return super::fail(format!("cannot start the async runtime: {e}")),
    };
    if let RunsCommand::Logs {
        id,
        task,
        follow: true,
    } = command
    {
        if target.data_dir.is_some() {
            return super::fail(
                "`runs logs --follow` follows a task on the running server; drop --data-dir \
                 (without --follow it prints the stored logs offline)",
            );
        }
        let client = Client::new(target.server.as_deref(), &config);
        return tokio.block_on(follow_logs(&client, id, task, target.json));
    }
    let result = tokio.block_on(async {
        match &target.data_dir {
            Some(dir) => offline(&config, config_path, dir, command).await,
            None => online(&Client::new(target.server.as_deref(), &config), command).await,
        }
    });
    match result {
        Ok(value) => {
            print_result(command, &value, target.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the daemon's commit path needs for an offline change: the project's
/// bindings (run chaining), its lifecycle events setting and its secrets.
/// A project that does not load is reported; the change still goes ahead,
/// without chaining.
fn offline_commit_config(
    config: &crate::spec::Config,
    config_path: &Path,
    dir: &Path,
) -> RuntimeConfig {
    // Every secret that can be read is redacted; none is required here (a
    // missing one must not leave the others unredacted).
    let secrets =
        crate::spec::Secrets::resolve_for(config, config_path, |_| false).unwrap_or_default();
    let databases =
        crate::executors::sql::Databases::from_config(config, &secrets, false).unwrap_or_default();
    let secrets = std::sync::Arc::new(secrets.also_redacting(databases.passwords()));
    let mut workflows = None;
    let chain = match crate::registry::Registry::load_project(
        config,
        std::sync::Arc::clone(&secrets),
    ) {
        Ok(registry) => {
            let registry = std::sync::Arc::new(std::sync::RwLock::new(registry));
            workflows = Some(crate::daemon::workflow_lookup(std::sync::Arc::clone(
                &registry,
            )));
            Some(crate::reactor::chain_hook(registry))
        }
        Err(errors) => {
            eprintln!(
                "warning: the project's files do not load ({} error(s)); `on.run` bindings will not see this change",
                errors.len()
            );
            None
        }
    };
    RuntimeConfig {
        recover: false,
        secrets,
        project_vars: config.vars.clone(),
        chain,
        broker: Some(crate::amqp::Broker::from_config(config)),
        databases,
        workflows,
        ..RuntimeConfig::new(dir)
    }
}

fn parse_id(id: &str) -> Result<RunId, String> {
    RunId::parse_str(id).map_err(|_| format!("`{id}` is not a run id"))
}

async fn online(client: &Client, command: &RunsCommand) -> Result<Value, String> {
    use reqwest::Method;
    match command {
        RunsCommand::List {
            workflow,
            status,
            limit,
            before,
        } => {
            let mut query = vec![format!("limit={limit}")];
            if let Some(w) = workflow {
                query.push(format!("workflow={w}"));
            }
            if let Some(s) = status {
                query.push(format!("status={s}"));
            }
            if let Some(b) = before {
                query.push(format!("before={b}"));
            }
            client
                .call(Method::GET, &format!("/runs?{}", query.join("&")), None)
                .await
        }
        RunsCommand::Show { id } => {
            client
                .call(Method::GET, &format!("/runs/{}", parse_id(id)?), None)
                .await
        }
        RunsCommand::History { id } => {
            client
                .call(
                    Method::GET,
                    &format!("/runs/{}/history", parse_id(id)?),
                    None,
                )
                .await
        }
        RunsCommand::Logs { id, task, .. } => {
            client
                .call(
                    Method::GET,
                    &format!("/runs/{}/tasks/{task}/logs", parse_id(id)?),
                    None,
                )
                .await
        }
        RunsCommand::Rerun { id, from, params } => {
            let params = super::run::parse_params(params)?;
            client
                .call(
                    Method::POST,
                    &format!("/runs/{}/rerun", parse_id(id)?),
                    Some(json!({"from": from, "params": params})),
                )
                .await
        }
        RunsCommand::Cancel { id } => {
            client
                .call(
                    Method::POST,
                    &format!("/runs/{}/cancel", parse_id(id)?),
                    None,
                )
                .await
        }
    }
}

async fn offline(
    config: &crate::spec::Config,
    config_path: &Path,
    dir: &Path,
    command: &RunsCommand,
) -> Result<Value, String> {
    if let RunsCommand::Cancel { id } = command {
        let run_id = parse_id(id)?;
        let record = Runtime::cancel_offline(
            offline_commit_config(config, config_path, dir),
            run_id,
            "cancelled from the command line",
        )
        .map_err(|e| e.to_string())?;
        return Ok(json!({"id": run_id, "run": record}));
    }
    if let RunsCommand::Rerun { id, from, params } = command {
        // A rerun runs here, to its end, like `switchyard run`, with the
        // project's secrets, connections and workflows.
        let run_id = parse_id(id)?;
        let patch = super::run::parse_params(params)?;
        let runtime = Runtime::start(offline_commit_config(config, config_path, dir))
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle();
        let mut records = handle.subscribe();
        let new_id = handle
            .rerun_with(run_id, &RerunFrom::parse(from), patch)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("rerun {new_id} of {run_id} started");
        loop {
            match records.recv().await {
                Ok(record)
                    if record.run_id == new_id
                        && matches!(record.body, crate::log::RecordBody::RunEnded { .. }) =>
                {
                    break;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let record = handle.run_record(new_id).await.map_err(|e| e.to_string())?;
        runtime.shutdown().await;
        return serde_json::to_value(record).map_err(|e| e.to_string());
    }
    let log = Log::open(dir).map_err(|e| e.to_string())?;
    match command {
        RunsCommand::List {
            workflow,
            status,
            limit,
            before,
        } => {
            let before = before.as_deref().map(parse_id).transpose()?;
            let status = status.clone();
            let wanted: Option<RunStatus> = match &status {
                Some(s) => Some(
                    serde_json::from_value(Value::String(s.clone()))
                        .map_err(|_| format!("unknown status `{s}`"))?,
                ),
                None => None,
            };
            let stored = log
                .ended_runs_where(workflow.as_deref(), wanted, before, *limit)
                .map_err(|e| e.to_string())?;
            let mut runs: Vec<RunRecord> = stored
                .iter()
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect();
            // Unfinished runs (the daemon is down) are folded from the log.
            for run_id in log.unfinished_runs().map_err(|e| e.to_string())? {
                if before.is_some_and(|b| run_id >= b) {
                    continue;
                }
                if let Ok(state) = crate::engine::replay::fold(&log, run_id) {
                    let record = state.record();
                    if workflow.as_ref().is_none_or(|w| *w == record.workflow)
                        && status.as_ref().is_none_or(|s| *s == record.status.as_str())
                    {
                        runs.push(record);
                    }
                }
            }
            runs.sort_by_key(|r| std::cmp::Reverse(r.id));
            runs.truncate(*limit);
            Ok(json!({"runs": runs, "next": null}))
        }
        RunsCommand::Show { id } => {
            let run_id = parse_id(id)?;
            let state = crate::engine::replay::fold(&log, run_id).map_err(|e| e.to_string())?;
            serde_json::to_value(state.record()).map_err(|e| e.to_string())
        }
        RunsCommand::History { id } => {
            let run_id = parse_id(id)?;
            let history = log.run_history(run_id).map_err(|e| e.to_string())?;
            if history.is_empty() {
                return Err(format!("run {run_id} not found"));
            }
            let records: Vec<Value> = history.iter().map(crate::log::Record::to_json).collect();
            Ok(json!({"run_id": run_id, "records": records}))
        }
        RunsCommand::Logs { id, task, .. } => {
            let run_id = parse_id(id)?;
            let logs = log.task_logs(run_id, task).map_err(|e| e.to_string())?;
            Ok(json!({"run_id": run_id, "task": task, "attempts": logs}))
        }
        RunsCommand::Cancel { .. } | RunsCommand::Rerun { .. } => Err("unreachable".into()),
    }
}

fn print_result(command: &RunsCommand, value: &Value, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match command {
        RunsCommand::List { .. } => {
            let runs = value["runs"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<36}  {:<24}  {:<9}  {:<24}  STARTED",
                "ID", "WORKFLOW", "STATUS", "LOGICAL TIME"
            );
            for run in &runs {
                println!(
                    "{:<36}  {:<24}  {:<9}  {:<24}  {}",
                    run["id"].as_str().unwrap_or(""),
                    run["workflow"].as_str().unwrap_or(""),
                    run["status"].as_str().unwrap_or(""),
                    run["logical_time"].as_str().unwrap_or("-"),
                    run["started_at"].as_str().unwrap_or("-"),
                );
            }
            if let Some(next) = value["next"].as_str() {
                println!("(more: --before {next})");
            }
        }
        RunsCommand::History { .. } => {
            for record in value["records"].as_array().cloned().unwrap_or_default() {
                let mut rest = record.clone();
                if let Value::Object(map) = &mut rest {
                    map.remove("seq");
                    map.remove("at");
                    map.remove("type");
                }
                println!(
                    "{:>8}  {}  {:<20}  {}",
                    record["seq"],
                    record["at"].as_str().unwrap_or(""),
                    record["type"].as_str().unwrap_or(""),
                    rest
                );
            }
        }
        RunsCommand::Logs { .. } => {
            for attempt in value["attempts"].as_array().cloned().unwrap_or_default() {
                println!("--- attempt {} stdout ---", attempt["attempt"]);
                print!("{}", attempt["stdout"].as_str().unwrap_or(""));
                println!("--- attempt {} stderr ---", attempt["attempt"]);
                print!("{}", attempt["stderr"].as_str().unwrap_or(""));
            }
        }
        RunsCommand::Cancel { id } => println!("run {id} cancelled"),
        RunsCommand::Show { .. } | RunsCommand::Rerun { .. } => {
            match serde_json::from_value::<RunRecord>(value.clone()) {
                Ok(record) => super::run::print_summary(&record),
                Err(_) => println!(
                    "{}",
                    serde_json::to_string_pretty(value).unwrap_or_default()
                ),
            }
        }
    }
}

/// `runs logs ID TASK --follow`: the task's output as the server streams
/// it (`GET …/logs?follow=true`), stdout to stdout and stderr to stderr,
/// until the task ends; 0 when it succeeded. With `--json`, one JSON
/// object per event (`{"event", "data"}`).
async fn follow_logs(client: &Client, id: &str, task: &str, as_json: bool) -> ExitCode {
    use std::io::Write;
    let run_id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return super::fail(e),
    };
    let mut end: Option<Value> = None;
    let mut closed: Option<String> = None;
    let path = format!("/runs/{run_id}/tasks/{task}/logs?follow=true");
    let result = client
        .events(&path, |event, data| {
            if as_json {
                let data = match event {
                    "stdout" | "stderr" => Value::String(data.to_string()),
                    _ => serde_json::from_str(data).unwrap_or(Value::String(data.to_string())),
                };
                println!("{}", json!({"event": event, "data": data}));
            }
            match event {
                "stdout" if !as_json => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(data.as_bytes());
                    let _ = out.flush();
                }
                "stderr" if !as_json => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(data.as_bytes());
                    let _ = err.flush();
                }
                "attempt" if !as_json => {
                    let info: Value = serde_json::from_str(data).unwrap_or_default();
                    let attempt = info["attempt"].as_u64().unwrap_or(0);
                    if attempt > 1 {
                        eprintln!("[switchyard] attempt {attempt}");
                    }
                }
                "missed" if !as_json => {
                    let info: Value = serde_json::from_str(data).unwrap_or_default();
                    match info["bytes"].as_u64() {
                        Some(bytes) => eprintln!("[switchyard] {bytes} bytes of output not shown"),
                        None => {
                            eprintln!("[switchyard] earlier output was cut (only the tail is kept)")
                        }
                    }
                }
                "end" => {
                    end = serde_json::from_str(data).ok();
                    return false;
                }
                "closed" => {
                    let info: Value = serde_json::from_str(data).unwrap_or_default();
                    closed = info["reason"].as_str().map(str::to_string);
                    return false;
                }
                _ => {}
            }
            true
        })
        .await;
    if let Err(e) = result {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let Some(end) = end else {
        let why = closed.unwrap_or_else(|| "the server closed the stream".into());
        eprintln!("error: {why} before task `{task}` ended");
        return ExitCode::FAILURE;
    };
    let status = end["status"].as_str().unwrap_or("unknown");
    if !as_json {
        let attempts = end["attempts"].as_u64().unwrap_or(0);
        match end["error"].as_str() {
            Some(error) => {
                eprintln!("[switchyard] task {task} {status} after {attempts} attempt(s): {error}")
            }
            None => eprintln!("[switchyard] task {task} {status} after {attempts} attempt(s)"),
        }
    }
    if status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `switchyard trigger WORKFLOW -p k=v`: starts a run on the server.
pub fn trigger(
    config_path: &Path,
    server: Option<&str>,
    (workflow, version): (&str, Option<&str>),
    params: &[String],
    (as_json, wait): (bool, bool),
) -> ExitCode {
    let params = match super::run::parse_params(params) {
        Ok(p) => p,
        Err(e) => return super::fail(e),
    };
    let client = match Blocking::new(config_path, server) {
        Ok(client) => client,
        Err(e) => return super::fail(e),
    };
    let result = client.call(
        reqwest::Method::POST,
        &format!("/workflows/{workflow}/runs"),
        Some(json!({"params": params, "version": version})),
    );
    match result {
        Ok(record) if wait => {
            let id = record["id"].as_str().unwrap_or_default().to_string();
            eprintln!("run {id} of {workflow} started; waiting for it to end");
            follow(&client, &id, as_json)
        }
        Ok(record) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&record).unwrap_or_default()
                );
            } else {
                println!("{}", record["id"].as_str().unwrap_or(""));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Polls a run until it ends, printing each task as it ends; its summary
/// (or record, with `--json`) at the end. Exit 0 when it succeeded.
fn follow(client: &Blocking, id: &str, as_json: bool) -> ExitCode {
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let record = match client.call(reqwest::Method::GET, &format!("/runs/{id}"), None) {
            Ok(record) => record,
            Err(e) => return super::fail(e),
        };
        if let Some(tasks) = record["tasks"].as_object() {
            for (task, state) in tasks {
                let status = state["status"].as_str().unwrap_or_default();
                let ended = ["succeeded", "failed", "skipped", "cancelled"].contains(&status);
                if ended && reported.insert(task.clone()) {
                    let error = state["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    eprintln!("  {task} {status}{error}");
                }
            }
        }
        let status = record["status"].as_str().unwrap_or_default();
        if ["succeeded", "failed", "cancelled"].contains(&status) {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&record).unwrap_or_default()
                );
            } else if let Ok(record) = serde_json::from_value::<RunRecord>(record.clone()) {
                super::run::print_summary(&record);
            }
            return if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `switchyard health`: 0 when the server is healthy, 1 otherwise.
pub fn health(config_path: &Path, server: Option<&str>) -> ExitCode {
    let client = match Blocking::new(config_path, server) {
        Ok(client) => client,
        Err(e) => return super::fail(e),
    };
    match client.health() {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("unhealthy: {problem}");
            ExitCode::FAILURE
        }
    }
}
