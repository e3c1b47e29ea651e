//! `shell`: runs a program (argv, no shell) or a script (`sh -c`), in its own
//! process group so a timeout or cancel kills everything it started.
//!
//! Event data never reaches the shell as code: `${…}` is refused in `script`
//! at load time, and values arrive as `env` entries or argv elements.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::live::{LiveAttempt, Stream};
use super::process::signal_group;
use super::{AttemptContext, AttemptOutcome, Kind, scalar_text};
use crate::log::TaskLogs;

/// Bytes of stdout in scope as `tasks.<id>.stdout`.
pub const STDOUT_VAR_CAP: usize = 64 * 1024;
/// Largest `$SWITCHYARD_OUTPUT` file accepted.
pub const OUTPUT_CAP: u64 = 1024 * 1024;
/// Bytes of each stream kept as task logs (the tail is kept).
pub const LOG_CAP: usize = 1024 * 1024;
/// How long a cancelled process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for stdout/stderr to close after the process exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// `"shell": {"command": ["prog", "arg"]}` or `"shell": {"script": "…"}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    /// Program and arguments, run without a shell. Elements may be templates.
    #[serde(default, deserialize_with = "argv")]
    pub command: Option<Vec<String>>,
    /// Script run by `sh -c` (or `shell`). No `${…}` here: pass values in `env`.
    #[serde(default)]
    pub script: Option<String>,
    /// Interpreter for `script` (default "sh"), e.g. "bash".
    #[serde(default)]
    pub shell: Option<String>,
    /// Extra environment variables; values may be templates.
    #[serde(default, deserialize_with = "env_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the daemon's).
    #[serde(default)]
    pub cwd: Option<String>,
}

fn argv<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    let items: Option<Vec<Value>> = Option::deserialize(deserializer)?;
    items
        .map(|items| {
            items
                .into_iter()
                .map(|v| scalar_text(v).map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
}

fn env_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map: Map<String, Value> = Map::deserialize(deserializer)?;
    map.into_iter()
        .map(|(k, v)| {
            scalar_text(v)
                .map(|v| (k.clone(), v))
                .map_err(|e| serde::de::Error::custom(format!("env `{k}`: {e}")))
        })
        .collect()
}

impl Kind for Shell {
    const NAME: &'static str = "shell";
    const CAPTURES_OUTPUT: bool = true;

    fn check(&self, _raw: &Value, errors: &mut Vec<(String, String)>) {
        match (&self.command, &self.script) {
            (Some(_), Some(_)) => errors.push((
                String::new(),
                "set either `command` (argv) or `script`, not both".into(),
            )),
            (None, None) => errors.push((
                String::new(),
                "set `command` (argv array) or `script`".into(),
            )),
            (Some(argv), None) if argv.is_empty() => errors.push((
                ".command".into(),
                "`command` needs at least the program".into(),
            )),
            _ => {}
        }
        // What runs is fixed by the file: event data may only become
        // values (env entries, later argv elements), never the script, the
        // interpreter, the program or where it runs.
        let fixed = [
            (".script", "shell.script", self.script.as_deref()),
            (".shell", "shell.shell", self.shell.as_deref()),
            (".cwd", "shell.cwd", self.cwd.as_deref()),
            (
                ".command[0]",
                "command[0] (the program)",
                self.command
                    .as_ref()
                    .and_then(|argv| argv.first())
                    .map(String::as_str),
            ),
        ];
        for (path, name, text) in fixed {
            if text.is_some_and(has_template) {
                errors.push((
                    path.into(),
                    format!(
                        "`${{…}}` is not allowed inside {name}: event data must not choose what \
                         runs. Pass values as env entries, e.g. \"env\": {{\"NAME\": \"${{vars.name}}\"}}, \
                         and use \"$NAME\" in the script, or as later argv elements (write $${{ for a literal ${{)"
                    ),
                ));
            }
        }
        if self.shell.is_some() && self.script.is_none() {
            errors.push((".shell".into(), "`shell` applies only to `script`".into()));
        }
    }

    async fn execute(self, ctx: AttemptContext) -> AttemptOutcome {
        let program = match (&self.command, &self.script) {
            (Some(argv), None) if !argv.is_empty() => argv[0].clone(),
            (None, Some(_)) => self.shell.clone().unwrap_or_else(|| "sh".into()),
            _ => return AttemptOutcome::permanent_failure("set `command` or `script`"),
        };
        let path = self.env.get("PATH").map(std::ffi::OsStr::new);
        let cwd = self.cwd.as_deref().map(std::path::Path::new);
        let mut command = match ctx.processes.command(&program, path, cwd) {
            Ok(command) => command,
            Err(e) => return cannot_start(&program, &e),
        };
        match (&self.command, &self.script) {
            (Some(argv), None) => command.args(&argv[1..]),
            (_, Some(script)) => command.arg("-c").arg(script),
            _ => &mut command,
        };
        let output_path = ctx
            .scratch_dir
            .join(format!("{}-{}-{}.json", ctx.run_id, ctx.task, ctx.attempt));
        if let Err(e) = std::fs::create_dir_all(&ctx.scratch_dir) {
            return AttemptOutcome::failure(format!(
                "cannot create scratch dir {}: {e}",
                ctx.scratch_dir.display()
            ));
        }
        command
            .envs(&self.env)
            .env("SWITCHYARD_OUTPUT", &output_path)
            .env("SWITCHYARD_RUN_ID", ctx.run_id.to_string())
            .env("SWITCHYARD_WORKFLOW", &*ctx.workflow)
            .env("SWITCHYARD_TASK", &*ctx.task)
            .env("SWITCHYARD_ATTEMPT", ctx.attempt.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let name = format!("{}-{}-{}", ctx.run_id, ctx.task, ctx.attempt);
        let (mut child, group) = match ctx.processes.spawn(command, &name).await {
            Ok(spawned) => spawned,
            Err(e) => return cannot_start(&program, &e),
        };
        // However this attempt ends — even if its future is dropped — nothing
        // it started outlives it (and the kernel ends it if we die).
        let pgid = group.pgid();
        let stdout_buf = Arc::new(Mutex::new(Tail::new(LOG_CAP, Arc::clone(&ctx.secrets))));
        let stderr_buf = Arc::new(Mutex::new(Tail::new(LOG_CAP, Arc::clone(&ctx.secrets))));
        let stdout = child.stdout.take().map(|s| {
            let live = ctx.live.clone().map(|l| (l, Stream::Stdout));
            tokio::spawn(read_tail(s, Arc::clone(&stdout_buf), live))
        });
        let stderr = child.stderr.take().map(|s| {
            let live = ctx.live.clone().map(|l| (l, Stream::Stderr));
            tokio::spawn(read_tail(s, Arc::clone(&stderr_buf), live))
        });

        let mut cancelled = false;
        let status: std::io::Result<ExitStatus> = tokio::select! {
            status = child.wait() => status,
            _ = ctx.cancel.cancelled() => {
                cancelled = true;
                signal_group(pgid, libc::SIGTERM);
                match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal_group(pgid, libc::SIGKILL);
                        child.wait().await
                    }
                }
            }
        };
        let mut leftover = false;
        join_reader(stdout, pgid, &ctx.cancel, &mut leftover).await;
        join_reader(stderr, pgid, &ctx.cancel, &mut leftover).await;
        let (stdout, stdout_truncated) = take_tail(&stdout_buf);
        let (mut stderr, stderr_truncated) = take_tail(&stderr_buf);
        if leftover {
            let note = "\n[switchyard] killed processes left holding stdout/stderr after the task exited\n";
            stderr.push_str(note);
            if let Some(live) = &ctx.live {
                live.note(Stream::Stderr, note);
            }
        }
        if let Some(live) = &ctx.live {
            live.finish();
        }
        let stdout_var = tail_str(&stdout, STDOUT_VAR_CAP).to_string();
        let logs = TaskLogs {
            attempt: ctx.attempt,
            stdout,
            stderr,
            truncated: stdout_truncated || stderr_truncated,
        };
        let output = read_output(&output_path);
        let _ = std::fs::remove_file(&output_path);

        let mut outcome = match (status, cancelled) {
            (_, true) => AttemptOutcome::failure("cancelled"),
            (Err(e), _) => AttemptOutcome::failure(format!("waiting for `{program}`: {e}")),
            (Ok(status), _) if status.success() => match output {
                Ok(output) => AttemptOutcome::success(output),
                Err(e) => AttemptOutcome::permanent_failure(e),
            },
            (Ok(status), _) => {
                let mut error = describe_exit(status);
                if let Some(line) = logs.stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                    error.push_str(": ");
                    error.push_str(line.trim());
                }
                let mut outcome = AttemptOutcome::failure(error);
                outcome.output = output.unwrap_or(Value::Null);
                outcome
            }
        };
        outcome.stdout = stdout_var;
        outcome.logs = Some(logs);
        outcome
    }
}

/// A program that cannot start: another attempt will not help when it is
/// missing or not executable.
fn cannot_start(program: &str, e: &std::io::Error) -> AttemptOutcome {
    let retryable = !matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
    );
    let outcome = AttemptOutcome::failure(format!("cannot start `{program}`: {e}"));
    AttemptOutcome {
        retryable,
        ..outcome
    }
}

/// Whether `text` holds a `${…}` template (`$${` is a literal).
pub(super) fn has_template(text: &str) -> bool {
    text.replace("$${", "").contains("${")
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "exited abnormally".into(),
    }
}

/// Reads the JSON object the task wrote to `$SWITCHYARD_OUTPUT`, `{}` if
/// none. Over [`OUTPUT_CAP`] it fails the attempt (outputs live in the log
/// and in every later task's scope; bulk data belongs in files).
fn read_output(path: &PathBuf) -> Result<Value, String> {
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.len() > OUTPUT_CAP
    {
        return Err(format!(
            "$SWITCHYARD_OUTPUT is {} bytes, over the limit of {OUTPUT_CAP} (1 MiB): \
             write bulk data to a file and put its path in the output",
            metadata.len()
        ));
    }
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Value::Object(Map::new())),
        Err(e) => return Err(format!("cannot read $SWITCHYARD_OUTPUT: {e}")),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(other) => Err(format!(
            "$SWITCHYARD_OUTPUT must hold a JSON object, got {}",
            super::json_type(&other)
        )),
        Err(e) => Err(format!("$SWITCHYARD_OUTPUT is not valid JSON: {e}")),
    }
}

/// Waits for a pipe reader to reach end of file. If something still holds
/// the pipe after the process exited, the whole group is killed; if even that
/// does not close it (a process that left the group), the reader is abandoned
/// with what it read so far.
async fn join_reader(
    reader: Option<tokio::task::JoinHandle<()>>,
    pgid: Option<i32>,
    cancel: &tokio_util::sync::CancellationToken,
    leftover: &mut bool,
) {
    let Some(mut reader) = reader else {
        return;
    };
    tokio::select! {
        _ = &mut reader => return,
        _ = tokio::time::sleep(DRAIN_GRACE) => {}
        _ = cancel.cancelled() => {}
    }
    *leftover = true;
    signal_group(pgid, libc::SIGKILL);
    tokio::select! {
        _ = &mut reader => {}
        _ = tokio::time::sleep(DRAIN_GRACE) => reader.abort(),
        _ = cancel.cancelled() => reader.abort(),
    }
}

/// The tail of a stream: at most `cap` bytes, the oldest dropped first.
/// Secrets are redacted from the whole buffer before anything is dropped,
/// so a secret cut by the drop point is never left half visible.
struct Tail {
    bytes: Vec<u8>,
    cap: usize,
    truncated: bool,
    secrets: Arc<crate::spec::Secrets>,
}

impl Tail {
    fn new(cap: usize, secrets: Arc<crate::spec::Secrets>) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            truncated: false,
            secrets,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * self.cap {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if !self.secrets.is_empty() {
            // A secret straddling the drop point lies wholly in the buffer
            // (the drop point is `cap` bytes from the end, and a secret
            // still arriving is at the end): redacted whole, then cut.
            let text = String::from_utf8_lossy(&self.bytes);
            let redacted = self.secrets.redact(&text);
            if redacted != text {
                self.bytes = redacted.into_bytes();
            }
        }
        if self.bytes.len() > self.cap {
            let drop = self.bytes.len() - self.cap;
            self.bytes.drain(..drop);
            self.truncated = true;
        }
    }
}

fn take_tail(tail: &Mutex<Tail>) -> (String, bool) {
    match tail.lock() {
        Ok(mut tail) => {
            tail.trim();
            let bytes = std::mem::take(&mut tail.bytes);
            (String::from_utf8_lossy(&bytes).into_owned(), tail.truncated)
        }
        Err(_) => (String::new(), false),
    }
}

/// Reads a stream to its end into a shared tail buffer, so what was read
/// survives even if the reader is abandoned.
/// Also shows it live, when the attempt is followed (see `live.rs`).
async fn read_tail(
    mut stream: impl AsyncRead + Unpin,
    tail: Arc<Mutex<Tail>>,
    live: Option<(Arc<LiveAttempt>, Stream)>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buf[..n]);
                }
                if let Some((live, which)) = &live {
                    live.push(*which, &buf[..n]);
                }
            }
        }
    }
}

/// The last at most `cap` bytes of `text`, cut at a character boundary.
fn tail_str(text: &str, cap: usize) -> &str {
    if text.len() <= cap {
        return text;
    }
    let mut start = text.len() - cap;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_str_cuts_on_char_boundary() {
        assert_eq!(tail_str("héllo", 4), "llo");
        assert_eq!(tail_str("abc", 10), "abc");
    }
}
