//! The spawn trampoline: a static x86-64 Linux program of 252 bytes that
//! sets the parent-death signal and execs the attempt's program.
//!
//! `TRAMPOLINE PARENT_PID PROGRAM ARGS…` does, with raw system calls:
//!
//! 1. `prctl(PR_SET_PDEATHSIG, SIGKILL)`;
//! 2. `getppid() == PARENT_PID`, else the parent died before step 1 took
//!    effect (so the signal was missed) and it kills itself with SIGKILL;
//! 3. `execve(PROGRAM, [PROGRAM, ARGS…], environ)`, and exit 127 if that
//!    fails (as `setpriv` and shells do).
//!
//! It replaces util-linux's `setpriv --pdeathsig KILL`, which does the same
//! but is a dynamically linked glibc program: its start-up alone costs
//! ~1.4 ms per attempt in a VM, where glibc's `cpuid` probing of the
//! caches traps to the hypervisor; this one costs the `execve` (~0.07 ms).
//! The machine code is below, one instruction per line; the test suite
//! checks the exit codes, the death check and the signal itself.

use std::io;
use std::path::{Path, PathBuf};

/// The program's instructions, loaded at `BASE + HEADERS`.
#[rustfmt::skip]
const CODE: &[u8] = &[
    // prctl(PR_SET_PDEATHSIG = 1, SIGKILL = 9)
    0xbf, 0x01, 0x00, 0x00, 0x00,       // mov edi, 1
    0xbe, 0x09, 0x00, 0x00, 0x00,       // mov esi, 9
    0xb8, 0x9d, 0x00, 0x00, 0x00,       // mov eax, 157 (prctl)
    0x0f, 0x05,                         // syscall
    // rbx = the decimal number in argv[1]
    0x48, 0x8b, 0x74, 0x24, 0x10,       // mov rsi, [rsp + 16]
    0x31, 0xdb,                         // xor ebx, ebx
    // parse:
    0x0f, 0xb6, 0x06,                   // movzx eax, byte [rsi]
    0x48, 0xff, 0xc6,                   // inc rsi
    0x83, 0xe8, 0x30,                   // sub eax, '0'
    0x72, 0x0e,                         // jb done
    0x83, 0xf8, 0x09,                   // cmp eax, 9
    0x77, 0x09,                         // ja done
    0x48, 0x6b, 0xdb, 0x0a,             // imul rbx, rbx, 10
    0x48, 0x01, 0xc3,                   // add rbx, rax
    0xeb, 0xe7,                         // jmp parse
    // done: getppid() must still be the parent that spawned us
    0xb8, 0x6e, 0x00, 0x00, 0x00,       // mov eax, 110 (getppid)
    0x0f, 0x05,                         // syscall
    0x48, 0x39, 0xd8,                   // cmp rax, rbx
    0x75, 0x26,                         // jne die
    // execve(argv[2], &argv[2], envp), envp = rsp + 8 * argc + 16
    0x48, 0x8b, 0x7c, 0x24, 0x18,       // mov rdi, [rsp + 24]
    0x48, 0x8d, 0x74, 0x24, 0x18,       // lea rsi, [rsp + 24]
    0x48, 0x8b, 0x0c, 0x24,             // mov rcx, [rsp]
    0x48, 0x8d, 0x54, 0xcc, 0x10,       // lea rdx, [rsp + rcx * 8 + 16]
    0xb8, 0x3b, 0x00, 0x00, 0x00,       // mov eax, 59 (execve)
    0x0f, 0x05,                         // syscall
    // execve failed: exit_group(127)
    0xbf, 0x7f, 0x00, 0x00, 0x00,       // mov edi, 127
    0xb8, 0xe7, 0x00, 0x00, 0x00,       // mov eax, 231 (exit_group)
    0x0f, 0x05,                         // syscall
    // die: kill(getpid(), SIGKILL), then exit_group(137)
    0xb8, 0x27, 0x00, 0x00, 0x00,       // mov eax, 39 (getpid)
    0x0f, 0x05,                         // syscall
    0x89, 0xc7,                         // mov edi, eax
    0xbe, 0x09, 0x00, 0x00, 0x00,       // mov esi, 9
    0xb8, 0x3e, 0x00, 0x00, 0x00,       // mov eax, 62 (kill)
    0x0f, 0x05,                         // syscall
    0xbf, 0x89, 0x00, 0x00, 0x00,       // mov edi, 137
    0xb8, 0xe7, 0x00, 0x00, 0x00,       // mov eax, 231 (exit_group)
    0x0f, 0x05,                         // syscall
];

/// Where the one loadable segment (the whole file) is mapped.
const BASE: u64 = 0x40_0000;
/// The ELF header (64 bytes) and one program header (56 bytes).
const HEADERS: u64 = 64 + 56;

/// The whole executable: ELF header, one `PT_LOAD` segment (read and
/// execute) mapping the file, and [`CODE`] as its entry point.
pub fn elf() -> Vec<u8> {
    let size = HEADERS + CODE.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(CODE);
    elf
}

/// Writes the trampoline to `path` (atomically, mode 0755) and checks that
/// it runs here: a data directory on a `noexec` mount, another CPU or a
/// seccomp filter make it unusable, and `None` says to use `setpriv`.
pub fn install(path: &Path) -> Option<PathBuf> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return None;
    }
    match write(path).and_then(|()| check(path)) {
        Ok(()) => Some(path.to_path_buf()),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e,
                "The spawn trampoline cannot run here; using setpriv.");
            None
        }
    }
}

fn write(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let elf = elf();
    if std::fs::read(path).is_ok_and(|found| found == elf) {
        return Ok(());
    }
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, &elf)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, path)
}

/// Runs it twice: with our pid it must exec (a missing program: exit 127),
/// with a parent that is not ours it must kill itself (signal 9).
fn check(path: &Path) -> io::Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let run = |parent: u32| {
        std::process::Command::new(path)
            .arg(parent.to_string())
            .arg("/nonexistent/switchyard-trampoline-check")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    let execs = run(std::process::id())?;
    let dies = run(0)?;
    if execs.code() == Some(127) && dies.signal() == Some(9) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "unexpected results {execs} and {dies}"
        )))
    }
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn installed() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = install(&dir.path().join("spawn-trampoline")).expect("the trampoline runs");
        (dir, path)
    }

    #[test]
    fn it_passes_the_arguments_environment_and_exit_status_through() {
        let (_dir, tramp) = installed();
        assert_eq!(elf().len(), 252);
        let output = Command::new(&tramp)
            .arg(std::process::id().to_string())
            .args(["/bin/sh", "-c", "echo \"$0|$1|$SY_T\"; exit 3", "a b", "c"])
            .env("SY_T", "v")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "a b|c|v\n");
        // Installing again over a good copy keeps it.
        assert_eq!(install(&tramp), Some(tramp));
    }

    #[test]
    fn its_program_is_killed_when_the_parent_dies() {
        let (_dir, tramp) = installed();
        // A shell starts the trampoline in the background, says the pid,
        // and is SIGKILLed: the program must go with it.
        let mut shell = Command::new("/bin/sh")
            .args(["-c", "\"$0\" $$ /bin/sleep 30 & echo $!; wait"])
            .arg(&tramp)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(shell.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid: u32 = line.trim().parse().unwrap();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with("/bin/sleep"))
        {
            assert!(Instant::now() < deadline, "the program never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        shell.kill().unwrap();
        shell.wait().unwrap();
        while alive() {
            assert!(Instant::now() < deadline, "the program outlived its parent");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
