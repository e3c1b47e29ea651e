//! Pause and resume (DataWorks' freeze) of a binding or of a whole
//! workflow, durably: what is paused is kept in the log's marks and put
//! back into the registry when the daemon starts. Paused means nothing
//! starts and nothing is lost: the reactor records events offered to a
//! paused binding with the outcome `paused`, and the adapters that can
//! leave work waiting at its source (an AMQP queue, a watched directory)
//! stop taking it (`Triggers::reconcile`).

use crate::log::{Log, Mark};
use crate::registry::{Paused, SharedRegistry};

const PREFIX: &[u8] = b"pause\0";

/// What is paused: a binding, or every binding of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Binding,
    Workflow,
}

impl Target {
    fn tag(self) -> &'static [u8] {
        match self {
            Target::Binding => b"binding\0",
            Target::Workflow => b"workflow\0",
        }
    }
}

fn key(target: Target, name: &str) -> Vec<u8> {
    [PREFIX, target.tag(), name.as_bytes()].concat()
}

/// What the log says is paused.
pub fn load(log: &Log) -> Result<Paused, crate::log::Error> {
    let mut paused = Paused::default();
    for mark in log.marks_with_prefix(PREFIX)? {
        let rest = &mark.key[PREFIX.len()..];
        for (target, set) in [
            (Target::Binding, &mut paused.bindings),
            (Target::Workflow, &mut paused.workflows),
        ] {
            if let Some(name) = rest.strip_prefix(target.tag()) {
                set.insert(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(paused)
}

/// Pauses (or resumes) `name`: flushed to the log before the registry
/// changes, so a restart never forgets an acknowledged pause. Returns
/// whether anything changed.
pub fn set(
    log: &Log,
    registry: &SharedRegistry,
    target: Target,
    name: &str,
    paused: bool,
) -> Result<bool, crate::log::Error> {
    let at = crate::time::rfc3339(crate::time::now_millis());
    let mark = Mark {
        key: key(target, name),
        value: paused.then(|| serde_json::json!({"since": at}).to_string().into_bytes()),
    };
    let was = log.mark(&mark.key)?.is_some();
    if was == paused {
        return Ok(false);
    }
    log.put_marks(&[mark])?;
    log.flush()?;
    if let Ok(mut registry) = registry.write() {
        let mut now = registry.paused().clone();
        let set = match target {
            Target::Binding => &mut now.bindings,
            Target::Workflow => &mut now.workflows,
        };
        if paused {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
        registry.set_paused(now);
    }
    Ok(true)
}

/// Since when `name` is paused (RFC 3339), if it is.
pub fn since(log: &Log, target: Target, name: &str) -> Option<String> {
    let value = log.mark(&key(target, name)).ok()??;
    let parsed: serde_json::Value = serde_json::from_slice(&value).ok()?;
    parsed.get("since")?.as_str().map(str::to_string)
}
