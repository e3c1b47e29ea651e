//! `switchyard validate [PATH…]`: workflow and binding files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{EXIT_INVALID, load_config};
use crate::registry::Registry;
use crate::spec::binding::{self, Binding};
use crate::spec::{Diagnostics, json_files, load_workflow_files};

/// A binding file holds an object with `on`, or an array; a workflow file an
/// object with `tasks`. Unreadable files count as workflows (whose loader
/// reports why).
fn is_binding_file(file: &Path) -> bool {
    let Ok(text) = std::fs::read(file) else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Array(_)) => true,
        Ok(serde_json::Value::Object(map)) => map.contains_key("on") && !map.contains_key("tasks"),
        _ => false,
    }
}

pub fn main(config_path: &Path, paths: &[PathBuf]) -> ExitCode {
    let mut diagnostics = Vec::new();
    let config = match load_config(config_path) {
        Ok(config) => Some(config),
        Err(e) => {
            diagnostics.extend(e.0);
            None
        }
    };
    let (workflows, bindings) = if paths.is_empty() {
        match &config {
            Some(config) => match Registry::load_project(config, Default::default()) {
                Ok(registry) => (registry.workflows().count(), registry.bindings().count()),
                Err(found) => {
                    diagnostics.extend(found);
                    (0, 0)
                }
            },
            None => (0, 0),
        }
    } else {
        match json_files(paths) {
            Ok(files) => check_files(config.as_ref(), &files, &mut diagnostics),
            Err(d) => {
                diagnostics.push(d);
                (0, 0)
            }
        }
    };
    if diagnostics.is_empty() {
        println!("ok: {workflows} workflow(s), {bindings} binding(s) valid");
        ExitCode::SUCCESS
    } else {
        for d in &diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{} error(s)", diagnostics.len());
        ExitCode::from(EXIT_INVALID)
    }
}

/// Validates the given files; bindings may name workflows among them or in
/// the project's workflow dirs.
fn check_files(
    config: Option<&crate::spec::Config>,
    files: &[PathBuf],
    diagnostics: &mut Vec<crate::spec::Diagnostic>,
) -> (usize, usize) {
    let (binding_files, workflow_files): (Vec<PathBuf>, Vec<PathBuf>) =
        files.iter().cloned().partition(|f| is_binding_file(f));
    let mut known: HashSet<String> = HashSet::new();
    let mut workflows = 0;
    for (_, loaded) in load_workflow_files(&workflow_files) {
        match loaded {
            Ok(w) => {
                known.insert(w.name.clone());
                workflows += 1;
            }
            Err(Diagnostics(found)) => diagnostics.extend(found),
        }
    }
    if !binding_files.is_empty()
        && let Some(config) = config
    {
        let (project, _) = crate::spec::load_workflows(&config.workflow_dirs());
        known.extend(project.into_iter().map(|w| w.name));
    }
    let base = config.map_or_else(|| PathBuf::from("."), |c| c.base.clone());
    let exists = |name: &str| known.contains(name);
    let mut loaded = Vec::new();
    for file in &binding_files {
        match Binding::load_file(file, &base, &exists) {
            Ok(found) => loaded.extend(found),
            Err(Diagnostics(found)) => diagnostics.extend(found),
        }
    }
    let refs: Vec<&Binding> = loaded.iter().collect();
    diagnostics.extend(binding::check_shared_sources(&refs));
    (workflows, loaded.len())
}
