//! The workflows a daemon serves, reloaded when their files change.
//!
//! A reload re-reads every workflow dir. A file that no longer validates is
//! rejected with its errors (kept for the API and logged) and the workflow it
//! defined last stays active; a valid edit replaces the workflow for new runs
//! only (runs hold their own definition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::log::Millis;
use crate::spec::{Diagnostic, Workflow};

/// One workflow's current definition and the versions loaded since start.
#[derive(Debug, Clone)]
pub struct Entry {
    pub current: Arc<Workflow>,
    /// `(content hash, label, loaded at)`, oldest first.
    pub loaded: Vec<(String, Option<u64>, Millis)>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    pub rejected: Vec<Diagnostic>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.rejected.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    workflows: BTreeMap<String, Entry>,
    /// Which file defined which workflow, from the last good load of each file.
    files: BTreeMap<PathBuf, String>,
    /// Errors of files currently rejected.
    pub errors: Vec<Diagnostic>,
}

pub type SharedRegistry = Arc<RwLock<Registry>>;

fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

impl Registry {
    /// Loads the dirs; any invalid file is an error here (start-up refuses it).
    pub fn load(dirs: Vec<PathBuf>) -> Result<Self, Vec<Diagnostic>> {
        let mut registry = Self {
            dirs,
            ..Self::default()
        };
        let report = registry.reload();
        if report.rejected.is_empty() {
            Ok(registry)
        } else {
            Err(report.rejected)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.workflows.get(name)
    }

    pub fn workflows(&self) -> impl Iterator<Item = &Entry> {
        self.workflows.values()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Re-reads every workflow dir and applies what validates.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let files = match crate::spec::json_files(&self.dirs) {
            Ok(files) => files,
            Err(d) => {
                report.rejected.push(d);
                self.errors = report.rejected.clone();
                return report;
            }
        };
        let mut next: BTreeMap<String, Entry> = BTreeMap::new();
        let mut next_files: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (file, loaded) in crate::spec::load_workflow_files(&files) {
            match loaded {
                Ok(workflow) => {
                    next_files.insert(file.clone(), workflow.name.clone());
                    let name = workflow.name.clone();
                    let entry = match self.workflows.get(&name) {
                        Some(old) if old.current.version == workflow.version => old.clone(),
                        Some(old) => {
                            report.updated.push(name.clone());
                            let mut loaded = old.loaded.clone();
                            loaded.push((
                                workflow.version.clone(),
                                workflow.version_label,
                                now_millis(),
                            ));
                            Entry {
                                current: Arc::new(workflow),
                                loaded,
                            }
                        }
                        None => {
                            report.added.push(name.clone());
                            Entry {
                                loaded: vec![(
                                    workflow.version.clone(),
                                    workflow.version_label,
                                    now_millis(),
                                )],
                                current: Arc::new(workflow),
                            }
                        }
                    };
                    next.insert(name, entry);
                }
                Err(diagnostics) => {
                    report.rejected.extend(diagnostics.0);
                    // Keep what this file defined last time it was valid.
                    if let Some(name) = self.files.get(&file)
                        && let Some(old) = self.workflows.get(name)
                        && !next.contains_key(name)
                    {
                        next_files.insert(file.clone(), name.clone());
                        next.insert(name.clone(), old.clone());
                    }
                }
            }
        }
        for name in self.workflows.keys() {
            if !next.contains_key(name) {
                report.removed.push(name.clone());
            }
        }
        self.workflows = next;
        self.files = next_files;
        self.errors = report.rejected.clone();
        report
    }
}
