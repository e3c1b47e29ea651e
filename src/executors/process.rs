//! Attempt processes that never outlive the process that started them.
//!
//! Two mechanisms, because neither is enough alone:
//!
//! - **The kernel ends them with us.** Every attempt process is spawned by
//!   one dedicated thread ([`Processes`]' spawner) that lives as long as the
//!   runtime, with `PR_SET_PDEATHSIG = SIGKILL` set before the program
//!   runs. `PDEATHSIG` fires when the *thread* that forked the child ends,
//!   which is why the spawner is a thread of its own and not a tokio worker
//!   (workers can be retired). So a SIGKILL of the daemon kills the
//!   attempt's main process at once. The signal is set by a trampoline
//!   that runs before the program (`executors/trampoline.rs`), which keeps the
//!   spawn a cheap `posix_spawn`: setting it in a `pre_exec` hook forces a
//!   full `fork` of the daemon, which measured ~25 ms per attempt here
//!   against ~0.5 ms. On x86-64 Linux the trampoline is a 252-byte static
//!   program written into the data directory at start (no libc: it costs
//!   the exec alone, ~0.07 ms); elsewhere, or where the data directory
//!   cannot hold an executable, it is util-linux's `setpriv --pdeathsig
//!   KILL`, whose dynamic start-up costs ~1.4 ms per attempt in a VM (glibc
//!   reads the CPU's caches through `cpuid`, which traps to the
//!   hypervisor); without either, the hook.
//! - **Recovery ends what is left.** The main process's children (a script's
//!   `sleep`, a pipeline) are not covered by `PDEATHSIG`. Each running
//!   attempt's process group is recorded in a file under
//!   `<data_dir>/attempts/` (a plain file: it survives a SIGKILL of the
//!   daemon, and lives only as long as the attempt). On start, before any
//!   lost attempt is retried, [`kill_leftovers`] kills every recorded group
//!   still alive and waits (bounded) until it is gone.
//!
//! A recorded group is killed only when it is certainly ours: the file
//! carries the boot id and the leader's start time, so a group id reused by
//! an unrelated process after a reboot, or after the leader's pid was
//! recycled, is left alone. (While any process of a group lives, Linux does
//! not hand its id out as a new pid.)

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How long start-up waits for killed leftover groups to disappear.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// A command, whether it needs the `pre_exec` hook, and where to answer.
type SpawnRequest = (Command, bool, oneshot::Sender<io::Result<Child>>);

/// Spawns attempt processes from a thread that lives as long as the runtime,
/// and records their process groups while they run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Processes {
    spawner: mpsc::Sender<SpawnRequest>,
    dir: PathBuf,
    /// What sets the parent-death signal and execs the program.
    trampoline: Option<Trampoline>,
}

/// A program that sets the parent-death signal, then execs its arguments.
#[derive(Debug, Clone)]
enum Trampoline {
    /// [`trampoline::ELF`] at this path: `PATH <our pid> PROGRAM ARGS…`.
    Own(PathBuf),
    /// `setpriv --pdeathsig KILL -- PROGRAM ARGS…`.
    Setpriv(PathBuf),
}

impl Processes {
    /// Starts the spawner thread; `dir` records running groups, and the
    /// trampoline is written beside it. Must be called inside the tokio
    /// runtime that will wait on the children. The thread ends when the
    /// last clone is dropped.
    pub fn start(dir: PathBuf) -> io::Result<Self> {
        let (spawner, requests) = mpsc::channel::<SpawnRequest>();
        let tokio = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("switchyard-spawn".into())
            .spawn(move || {
                // tokio's Child registers with the runtime's SIGCHLD driver.
                let _entered = tokio.enter();
                for (mut command, hook, reply) in requests {
                    let _ = reply.send(spawn_here(&mut command, hook));
                }
            })?;
        let trampoline = super::trampoline::install(&dir.with_file_name("spawn-trampoline"))
            .map(Trampoline::Own)
            .or_else(|| find_in_path("setpriv", None).map(Trampoline::Setpriv));
        if trampoline.is_none() {
            tracing::debug!(
                "No trampoline and no setpriv; attempts are spawned with a pre_exec hook (slower)."
            );
        }
        Ok(Self {
            spawner,
            dir,
            trampoline,
        })
    }

    /// A command that runs `program` (a name looked up in `path`, default
    /// the daemon's PATH, or a path) with the parent-death signal set.
    /// A name found nowhere is `NotFound`, as a spawn would say.
    pub fn command(
        &self,
        program: &str,
        path: Option<&OsStr>,
        cwd: Option<&Path>,
    ) -> io::Result<Command> {
        let Some(trampoline) = &self.trampoline else {
            return Ok(Command::new(program));
        };
        let resolved = if program.contains('/') {
            // Checked as exec would (relative to the working directory the
            // program gets), so a missing program is a spawn error here
            // too, not the trampoline's exit 127.
            let file = cwd.map_or_else(|| PathBuf::from(program), |cwd| cwd.join(program));
            if !is_executable(&std::fs::metadata(&file)?) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "not executable",
                ));
            }
            PathBuf::from(program)
        } else {
            find_in_path(program, path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))?
        };
        let command = match trampoline {
            Trampoline::Own(path) => {
                let mut command = Command::new(path);
                command.arg(std::process::id().to_string()).arg(resolved);
                command
            }
            Trampoline::Setpriv(path) => {
                let mut command = Command::new(path);
                command.args(["--pdeathsig", "KILL", "--"]).arg(resolved);
                command
            }
        };
        Ok(command)
    }

    /// Spawns `command` in its own process group, killed by the kernel if
    /// the spawner thread (hence this process) dies; records the group under
    /// `name` until the returned guard is dropped, which kills the group.
    pub async fn spawn(&self, command: Command, name: &str) -> io::Result<(Child, GroupGuard)> {
        let (reply, answer) = oneshot::channel();
        let hook = self.trampoline.is_none();
        self.spawner
            .send((command, hook, reply))
            .map_err(|_| io::Error::other("the process spawner has stopped"))?;
        let child = answer
            .await
            .map_err(|_| io::Error::other("the process spawner has stopped"))??;
        let pgid = child.id().map(|id| id as i32);
        let record = pgid.and_then(|pgid| {
            let file = self.dir.join(sanitize(name));
            let text = format!("{pgid} {} {}\n", start_time(pgid)?, boot_id()?);
            std::fs::create_dir_all(&self.dir).ok()?;
            std::fs::write(&file, text).ok()?;
            Some(file)
        });
        Ok((child, GroupGuard { pgid, record }))
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `name` in the directories of `path` (default `$PATH`), if executable.
fn find_in_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let path = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| std::fs::metadata(file).is_ok_and(|m| is_executable(&m)))
}

fn is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
}

#[allow(unsafe_code)]
fn spawn_here(command: &mut Command, hook: bool) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    command.process_group(0).kill_on_drop(true);
    if !hook {
        return command.spawn();
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid, kill).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the signal was missed.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Kills an attempt's process group when dropped, and forgets its record.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: Option<i32>,
    record: Option<PathBuf>,
}

impl GroupGuard {
    pub fn pgid(&self) -> Option<i32> {
        self.pgid
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, libc::SIGKILL);
        if let Some(record) = &self.record {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// Sends `signal` to a whole process group.
#[allow(unsafe_code)]
pub fn signal_group(pgid: Option<i32>, signal: i32) {
    if let Some(pgid) = pgid
        && pgid > 0
    {
        // SAFETY: killpg has no memory-safety preconditions; a stale or
        // foreign group id only makes it fail with ESRCH/EPERM.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

#[allow(unsafe_code)]
fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> Option<String> {
    Some(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()?
            .trim()
            .to_string(),
    )
}

/// What start-up found of attempts a previous process left running.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Leftovers {
    /// Groups still alive and killed.
    pub killed: usize,
    /// Groups still alive after the grace period (stuck in the kernel).
    pub stuck: usize,
}

/// Kills every recorded attempt group a previous process left alive, waits
/// until they are gone (at most a couple of seconds), and forgets them.
pub fn kill_leftovers(dir: &Path) -> Leftovers {
    let mut leftovers = Leftovers::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return leftovers;
    };
    let boot = boot_id();
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(pgid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| ours(&text, boot.as_deref()))
            && group_exists(pgid)
        {
            signal_group(Some(pgid), libc::SIGKILL);
            tracing::warn!(
                pgid,
                attempt = %entry.file_name().to_string_lossy(),
                "Killed the processes of an attempt the previous daemon left running."
            );
            killed.push(pgid);
        }
        let _ = std::fs::remove_file(&path);
    }
    leftovers.killed = killed.len();
    let deadline = Instant::now() + LEFTOVER_GRACE;
    while killed.iter().any(|pgid| group_exists(*pgid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    leftovers.stuck = killed.iter().filter(|pgid| group_exists(**pgid)).count();
    leftovers
}

/// The group id of a record when killing it can only hit our processes.
fn ours(text: &str, boot: Option<&str>) -> Option<i32> {
    let mut fields = text.split_whitespace();
    let pgid: i32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    let recorded_boot = fields.next()?;
    if pgid <= 1 || boot != Some(recorded_boot) {
        return None;
    }
    match start_time(pgid) {
        // The leader lives: it must be the process we started.
        Some(now) => (now == started).then_some(pgid),
        // The leader is gone; the group id cannot have been reused while
        // any of its members live, so whatever is in it is ours.
        None => Some(pgid),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_record_from_another_boot_or_of_a_recycled_pid_is_not_ours() {
        let boot = boot_id().unwrap();
        let me = std::process::id() as i32;
        let started = start_time(me).unwrap();
        assert_eq!(
            ours(&format!("{me} {started} {boot}"), Some(&boot)),
            Some(me)
        );
        assert_eq!(
            ours(&format!("{me} {} {boot}", started + 1), Some(&boot)),
            None
        );
        assert_eq!(
            ours(&format!("{me} {started} other-boot"), Some(&boot)),
            None
        );
        assert_eq!(ours("1 0 x", Some("x")), None);
        assert_eq!(ours("garbage", Some(&boot)), None);
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_spaces_and_parens() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }
}
