//! The workflows and bindings a daemon serves, reloaded when their files change.
//!
//! A reload re-reads every workflow dir, then every binding dir (bindings are
//! checked against the workflows just loaded). A file that no longer
//! validates is rejected with its errors (kept for the API and logged) and
//! what it defined last stays active; a valid edit replaces the workflow for
//! new runs only (runs hold their own definition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::log::Millis;
use crate::spec::binding::{self, Binding};
use crate::spec::binding::{SignatureScheme, Trigger};
use crate::spec::{Diagnostic, Diagnostics, Secrets, Workflow};

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
    /// Rejected files whose last good version stays active (a rejected
    /// file not here never validated: nothing of it is loaded).
    pub kept: std::collections::BTreeSet<PathBuf>,
    /// True when the set of bindings changed (adapters must be reconciled).
    pub bindings_changed: bool,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.rejected.is_empty()
            && !self.bindings_changed
    }
}

#[derive(Debug, Default, Clone)]
pub struct Registry {
    dirs: Vec<PathBuf>,
    binding_dirs: Vec<PathBuf>,
    /// The binding dirs were named in switchyard.json (`bindings`): one
    /// that does not exist is an error, not a project without bindings.
    binding_dirs_configured: bool,
    /// Relative paths inside bindings resolve against this (the project dir).
    base: PathBuf,
    bindings: BTreeMap<String, Arc<Binding>>,
    /// Which file defined which bindings, from the last good load of each file.
    binding_files: BTreeMap<PathBuf, Vec<String>>,
    workflows: BTreeMap<String, Entry>,
    /// Which file defined which workflow, from the last good load of each file.
    files: BTreeMap<PathBuf, String>,
    /// Errors of files currently rejected.
    pub errors: Vec<Diagnostic>,
    /// For checks of rendered secrets (a `whsec_` webhook secret).
    secrets: Arc<Secrets>,
    /// Paused bindings and workflows (durable: the daemon restores them
    /// from the log's marks at start). A reload keeps them.
    paused: Paused,
    /// Workflows pinned to an earlier version: triggers run it instead of
    /// the file's current one (durable, like `paused`).
    pins: BTreeMap<String, Arc<Workflow>>,
}

/// What is paused, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Paused {
    pub bindings: std::collections::BTreeSet<String>,
    pub workflows: std::collections::BTreeSet<String>,
}

pub type SharedRegistry = Arc<RwLock<Registry>>;

/// Rebuilds the registry from its files without holding its lock (readers
/// — the engine's chain hook, webhooks, consumers — are never held up by
/// file reads and compiles), then swaps the result in at once.
pub fn reload_shared(registry: &SharedRegistry) -> Option<ReloadReport> {
    let mut next = registry.read().ok()?.clone();
    let report = next.reload();
    *registry.write().ok()? = next;
    Some(report)
}

use crate::time::now_millis;

impl Registry {
    /// Loads the project `config` names: its workflow and binding dirs,
    /// relative paths against its directory. A binding dir the config's
    /// `bindings` key names must exist; the default one may be missing.
    pub fn load_project(
        config: &crate::spec::Config,
        secrets: Arc<Secrets>,
    ) -> Result<Self, Vec<Diagnostic>> {
        Self {
            dirs: config.workflow_dirs(),
            binding_dirs: config.binding_dirs(),
            binding_dirs_configured: config.bindings_configured,
            base: config.base.clone(),
            secrets,
            ..Self::default()
        }
        .loaded()
    }

    /// Loads the dirs; any invalid file is an error here (start-up refuses it).
    /// A binding dir that does not exist holds no bindings.
    pub fn load(
        dirs: Vec<PathBuf>,
        binding_dirs: Vec<PathBuf>,
        base: PathBuf,
        secrets: Arc<Secrets>,
    ) -> Result<Self, Vec<Diagnostic>> {
        Self {
            dirs,
            binding_dirs,
            base,
            secrets,
            ..Self::default()
        }
        .loaded()
    }

    fn loaded(mut self) -> Result<Self, Vec<Diagnostic>> {
        let report = self.reload();
        if report.rejected.is_empty() {
            Ok(self)
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

    /// The project directory (relative paths in bindings resolve against it).
    pub fn base(&self) -> &std::path::Path {
        &self.base
    }

    pub fn binding_dirs(&self) -> &[PathBuf] {
        &self.binding_dirs
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Arc<Binding>> {
        self.bindings.values()
    }

    pub fn binding(&self, name: &str) -> Option<&Arc<Binding>> {
        self.bindings.get(name)
    }

    /// Whether events through `binding` start nothing now: it is paused, or
    /// its workflow is.
    pub fn is_paused(&self, binding: &Binding) -> bool {
        self.paused.bindings.contains(&binding.name)
            || self.paused.workflows.contains(&binding.workflow)
    }

    pub fn paused(&self) -> &Paused {
        &self.paused
    }

    /// The version triggers run: the pinned one, else the current one.
    pub fn serving(&self, name: &str) -> Option<Arc<Workflow>> {
        self.pins
            .get(name)
            .cloned()
            .or_else(|| self.workflows.get(name).map(|e| Arc::clone(&e.current)))
    }

    /// The version `name` is pinned to, if it is.
    pub fn pinned(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.pins.get(name)
    }

    /// Pins `name` to `version` (None: unpins).
    pub fn set_pin(&mut self, name: &str, version: Option<Arc<Workflow>>) {
        match version {
            Some(workflow) => {
                self.pins.insert(name.to_string(), workflow);
            }
            None => {
                self.pins.remove(name);
            }
        }
    }

    /// Replaces what is paused (from the log's marks, or after a change).
    pub fn set_paused(&mut self, paused: Paused) {
        self.paused = paused;
    }

    /// Re-reads every workflow dir and applies what validates.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let files = match crate::spec::json_files(&self.dirs) {
            Ok(files) => files,
            Err(mut d) => {
                if !d.file.exists() {
                    d.message = "the workflows directory does not exist: it is set by `workflows` \
                         in switchyard.json (default `[\"workflows\"]`, relative to the project \
                         directory); create it or point the key at your workflow files"
                        .into();
                }
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
                        report.kept.insert(file.clone());
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
        self.reload_bindings(&mut report);
        self.errors = report.rejected.clone();
        report
    }

    fn reload_bindings(&mut self, report: &mut ReloadReport) {
        if self.binding_dirs_configured {
            for dir in self.binding_dirs.iter().filter(|d| !d.exists()) {
                report.rejected.push(Diagnostic {
                    file: dir.clone(),
                    path: String::new(),
                    message: "the bindings directory does not exist: it is set by `bindings` in \
                              switchyard.json (relative to the project directory); create it or \
                              point the key at your binding files (without the key, a missing \
                              default `bindings` directory just means no bindings)"
                        .into(),
                });
            }
        }
        let dirs: Vec<PathBuf> = self
            .binding_dirs
            .iter()
            .filter(|d| d.exists())
            .cloned()
            .collect();
        let files = match crate::spec::json_files(&dirs) {
            Ok(files) => files,
            Err(d) => {
                report.rejected.push(d);
                return;
            }
        };
        let workflows = &self.workflows;
        let exists = |name: &str| workflows.contains_key(name);
        let mut next: BTreeMap<String, Arc<Binding>> = BTreeMap::new();
        let mut next_files: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        let mut loaded: Vec<(PathBuf, Result<Vec<Binding>, Diagnostics>)> = files
            .iter()
            .map(|file| (file.clone(), Binding::load_file(file, &self.base, &exists)))
            .collect();
        // Names must be unique across files; sources shared by several
        // bindings must agree. A file breaking either is rejected whole.
        {
            let good: Vec<&Binding> = loaded
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .flatten()
                .collect();
            let mut conflicts = binding::check_shared_sources(&good);
            conflicts.extend(check_rendered_secrets(&good, &self.secrets));
            for conflict in conflicts {
                if let Some((_, result)) = loaded.iter_mut().find(|(f, _)| *f == conflict.file) {
                    match result {
                        Ok(_) => *result = Err(Diagnostics(vec![conflict])),
                        Err(d) => d.0.push(conflict),
                    }
                }
            }
        }
        for (file, result) in loaded {
            match result {
                Ok(bindings) => {
                    let names = bindings.iter().map(|b| b.name.clone()).collect();
                    for b in bindings {
                        let b = Arc::new(b);
                        let keep = self
                            .bindings
                            .get(&b.name)
                            .filter(|old| old.source == b.source && old.file == b.file);
                        next.insert(b.name.clone(), keep.cloned().unwrap_or(b));
                    }
                    next_files.insert(file, names);
                }
                Err(diagnostics) => {
                    report.rejected.extend(diagnostics.0);
                    if let Some(names) = self.binding_files.get(&file) {
                        // Keep what this file defined when it was last valid,
                        // as long as its workflows are still there.
                        let mut kept = Vec::new();
                        for name in names {
                            if next.contains_key(name) {
                                continue;
                            }
                            if let Some(b) = self.bindings.get(name)
                                && exists(&b.workflow)
                            {
                                next.insert(b.name.clone(), Arc::clone(b));
                                kept.push(b.name.clone());
                            }
                        }
                        if !kept.is_empty() {
                            report.kept.insert(file.clone());
                        }
                        next_files.insert(file, kept);
                    }
                }
            }
        }
        let changed = next.len() != self.bindings.len()
            || next.iter().any(|(name, b)| {
                self.bindings
                    .get(name)
                    .is_none_or(|old| !Arc::ptr_eq(old, b))
            });
        report.bindings_changed = changed;
        self.bindings = next;
        self.binding_files = next_files;
    }
}

/// Webhook secrets that render to something no request could ever match
/// (a `whsec_` value that is not base64) are load-time errors. Secrets that
/// are not resolved here (a CLI without them) are not checked.
fn check_rendered_secrets(bindings: &[&Binding], secrets: &Secrets) -> Vec<Diagnostic> {
    if secrets.is_empty() {
        return Vec::new();
    }
    let mut scope = crate::expr::MapScope::default();
    scope.names.insert("secrets".into(), secrets.to_json());
    let mut out = Vec::new();
    for binding in bindings {
        let Trigger::Webhook(hook) = &binding.trigger else {
            continue;
        };
        let (Some(template), Some(SignatureScheme::StandardWebhooks)) =
            (&hook.secret, hook.signature)
        else {
            continue;
        };
        let Ok(secret) = template.render_string(&scope) else {
            continue;
        };
        if let Err(message) = binding::standard_webhooks_key(&secret) {
            out.push(Diagnostic {
                file: binding.file.clone().unwrap_or_default(),
                path: crate::spec::join_path(&binding.at, "on.webhook.secret"),
                message: format!(
                    "{message}: every request would be refused; use the secret exactly as \
                     issued (whsec_ followed by base64), or a plain secret without the prefix"
                ),
            });
        }
    }
    out
}
