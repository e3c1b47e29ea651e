//! The `switchyard` binary: parses the command line and hands over to [`switchyard::cli`].

/// mimalloc instead of glibc's malloc: the engine thread allocates and frees
/// many short-lived buffers (sled nodes, JSON); under AMQP load glibc spent a
/// third of that thread's time in `_int_malloc`/`malloc_consolidate`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Commands that print (`runs list | head`) end quietly on a closed pipe,
    // as Unix tools do; the daemon keeps Rust's default (EPIPE as an error).
    if std::env::args().nth(1).as_deref() != Some("serve") {
        restore_sigpipe();
    }
    switchyard::cli::main()
}

#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL at start-up, before any
    // other thread exists, has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
