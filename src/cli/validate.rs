//! `switchyard validate [PATH…]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_INVALID, load_config};

pub fn main(config_path: &Path, paths: &[PathBuf]) -> ExitCode {
    let mut diagnostics = Vec::new();
    let paths: Vec<PathBuf> = if paths.is_empty() {
        match load_config(config_path) {
            Ok(config) => config.workflow_dirs(),
            Err(e) => {
                diagnostics.extend(e.0);
                Vec::new()
            }
        }
    } else {
        paths.to_vec()
    };
    let (workflows, found) = crate::spec::load_workflows(&paths);
    diagnostics.extend(found);
    if diagnostics.is_empty() {
        println!("ok: {} workflow(s) valid", workflows.len());
        ExitCode::SUCCESS
    } else {
        for d in &diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{} error(s)", diagnostics.len());
        ExitCode::from(EXIT_INVALID)
    }
}
