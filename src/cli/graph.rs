//! `switchyard graph WORKFLOW`: the DAG as mermaid or Graphviz dot.

use std::path::Path;
use std::process::ExitCode;

use crate::spec::graph::{dot, mermaid};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

pub fn main(config_path: &Path, workflow: &str, format: Format) -> ExitCode {
    let config = match super::load_config(config_path) {
        Ok(c) => c,
        Err(e) => return super::fail(e),
    };
    let workflow = match super::find_workflow(&config, workflow) {
        Ok(w) => w,
        Err(e) => return super::fail(e),
    };
    print!(
        "{}",
        match format {
            Format::Mermaid => mermaid(&workflow),
            Format::Dot => dot(&workflow),
        }
    );
    ExitCode::SUCCESS
}
