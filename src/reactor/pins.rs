//! Versions you can switch to: pinning a workflow to an earlier version
//! (a content hash the log knows) so that triggers run it until unpinned,
//! even though the file has changed; durable in the log's marks. Also the
//! lookup of any version by hash, and the diff between two (RFC 6902).

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::log::{Log, Mark};
use crate::registry::SharedRegistry;
use crate::spec::Workflow;

const PREFIX: &[u8] = b"pin\0";

/// A stored version of `name` by content hash.
pub fn version(log: &Log, name: &str, version: &str) -> Result<Arc<Workflow>, String> {
    let stored = log
        .definition(version)
        .map_err(|e| format!("cannot read version {version}: {e}"))?
        .ok_or_else(|| format!("workflow `{name}` has no version {version} in the log"))?;
    let label = format!("{name}@{version}");
    let workflow = Workflow::parse_stored(Path::new(&label), &stored)
        .map_err(|e| format!("version {version} does not load: {e}"))?;
    if workflow.name != name {
        return Err(format!(
            "version {version} is of workflow `{}`, not `{name}`",
            workflow.name
        ));
    }
    Ok(Arc::new(workflow))
}

/// The pins the log holds, each with its definition.
pub fn load(log: &Log) -> Result<Vec<(String, Arc<Workflow>)>, crate::log::Error> {
    let mut pins = Vec::new();
    for mark in log.marks_with_prefix(PREFIX)? {
        let name = String::from_utf8_lossy(&mark.key[PREFIX.len()..]).into_owned();
        let hash = String::from_utf8_lossy(mark.value.as_deref().unwrap_or_default()).into_owned();
        match version(log, &name, &hash) {
            Ok(workflow) => pins.push((name, workflow)),
            Err(e) => tracing::error!(workflow = %name, version = %hash, error = %e,
                "A pinned version cannot be loaded; the workflow runs its current version."),
        }
    }
    Ok(pins)
}

/// Pins `name` to `workflow` (its version stored in the log first), or
/// unpins it; flushed before the registry changes.
pub fn set(
    log: &Log,
    registry: &SharedRegistry,
    name: &str,
    workflow: Option<Arc<Workflow>>,
) -> Result<(), crate::log::Error> {
    let key = [PREFIX, name.as_bytes()].concat();
    if let Some(workflow) = &workflow {
        log.put_definition(
            &workflow.name,
            &workflow.version,
            workflow.version_label,
            &workflow.source,
            crate::time::now_millis(),
        )?;
    }
    log.put_marks(&[Mark {
        key,
        value: workflow.as_ref().map(|w| w.version.clone().into_bytes()),
    }])?;
    log.flush()?;
    if let Ok(mut registry) = registry.write() {
        registry.set_pin(name, workflow);
    }
    Ok(())
}

/// RFC 6902 JSON Patch turning version `from` into version `to`.
pub fn diff(from: &Workflow, to: &Workflow) -> Value {
    let parse = |w: &Workflow| serde_json::from_slice::<Value>(&w.source).unwrap_or(Value::Null);
    serde_json::to_value(json_patch::diff(&parse(from), &parse(to))).unwrap_or(Value::Null)
}
