//! The `switchyard` binary: parses the command line and hands over to [`switchyard::cli`].

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
