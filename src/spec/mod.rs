//! File formats (SPEC §2–3): raw serde types, then compiled, validated types.
//!
//! Validation runs in two stages. Stage one deserializes with
//! `deny_unknown_fields` (each task on its own, so one bad task does not hide
//! the errors of the others). Stage two compiles: ids, dependencies, cycles,
//! durations, CEL and templates. Every error is collected as a [`Diagnostic`]
//! naming the file, the JSON path and what is wrong.

pub mod binding;
pub mod config;
pub mod graph;
pub mod schedule;
pub mod schema;
pub mod workflow;

use std::fmt;
use std::path::{Path, PathBuf};

pub use config::{Config, Secrets};
pub use workflow::{Dep, DepOn, Dependencies, RetryPolicy, Task, Workflow};

/// One validation error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// JSON path inside the file, e.g. `tasks[2].retry.delay`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.path,
                self.message
            )
        }
    }
}

/// All errors found in a set of files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub(crate) struct Collector<'a> {
    pub file: &'a Path,
    pub diagnostics: Vec<Diagnostic>,
    /// Compiling a definition a run already started with (from the log):
    /// the task kinds' load-time policy checks are not applied again, so a
    /// later build that validates more strictly still replays it.
    pub stored: bool,
}

impl<'a> Collector<'a> {
    pub fn new(file: &'a Path) -> Self {
        Self {
            file,
            diagnostics: Vec::new(),
            stored: false,
        }
    }

    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Reads the JSON files to validate under `paths`: files as given,
/// directories for their `*.json` entries (sorted, not recursive).
pub fn json_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| Diagnostic {
                file: path.clone(),
                path: String::new(),
                message: format!("cannot read directory: {e}"),
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(Diagnostic {
                file: path.clone(),
                path: String::new(),
                message: "no such file or directory".into(),
            });
        }
    }
    Ok(files)
}

/// Loads each workflow file, in order; a file whose workflow name an
/// earlier file already took is an error naming both files.
pub fn load_workflow_files(files: &[PathBuf]) -> Vec<(PathBuf, Result<Workflow, Diagnostics>)> {
    let mut taken: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    files
        .iter()
        .map(|file| {
            let loaded =
                Workflow::load(file).and_then(|workflow| match taken.get(&workflow.name) {
                    Some(other) => Err(Diagnostics(vec![Diagnostic {
                        file: file.clone(),
                        path: "name".into(),
                        message: format!(
                            "workflow name `{}` is already used by {}",
                            workflow.name,
                            other.display()
                        ),
                    }])),
                    None => {
                        taken.insert(workflow.name.clone(), file.clone());
                        Ok(workflow)
                    }
                });
            (file.clone(), loaded)
        })
        .collect()
}

/// Loads every workflow under `paths`, checking that names are unique.
/// Returns the workflows that compiled and every diagnostic found.
pub fn load_workflows(paths: &[PathBuf]) -> (Vec<Workflow>, Vec<Diagnostic>) {
    let files = match json_files(paths) {
        Ok(files) => files,
        Err(d) => return (Vec::new(), vec![d]),
    };
    let mut workflows = Vec::new();
    let mut diagnostics = Vec::new();
    for (_, loaded) in load_workflow_files(&files) {
        match loaded {
            Ok(workflow) => workflows.push(workflow),
            Err(Diagnostics(mut found)) => diagnostics.append(&mut found),
        }
    }
    (workflows, diagnostics)
}

/// A serde error message in the words of the file's reader: Rust type
/// names (`u32`, `usize`, `i64`, `f64`, `a sequence`, `a map`, untagged
/// enums) become what they mean in JSON ("a whole number from 0 to
/// 4294967295", "a number", "a list", "an object"). Everything else, the
/// position serde_json appends (`at line 3 column 9`) included, is kept.
/// Every place a serde message reaches a user goes through here.
pub fn in_user_words(message: &str) -> String {
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        return match name.trim() {
            "ExpectStatus" | "StatusPattern" => {
                "expected a status code (200), a class (\"2xx\"), a range (\"200-299\") or a list of them"
                    .to_string()
            }
            "AfterFile" => {
                "expected a task id, a list of them, or {\"all\"|\"any\": [...]}".to_string()
            }
            _ => "not one of the accepted forms (see docs/REFERENCE.md)".to_string(),
        };
    }
    // Rust's integer parsing (query strings, command-line numbers).
    for (rust, words) in [
        (
            "invalid digit found in string",
            "expected a whole number ≥ 0",
        ),
        (
            "cannot parse integer from empty string",
            "expected a whole number, got nothing",
        ),
        (
            "number too large to fit in target type",
            "the number is too large",
        ),
        (
            "number too small to fit in target type",
            "the number is too small",
        ),
    ] {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{words}");
        }
    }
    let mut out = message.to_string();
    if let Some(at) = out.rfind("expected ") {
        let start = at + "expected ".len();
        let end = out[start..]
            .find(" at line ")
            .map_or(out.len(), |i| start + i);
        let expected = &out[start..end];
        if let Some(words) = expected_words(expected) {
            out.replace_range(start..end, &words);
        }
    }
    // What serde found instead, in the part before "expected".
    let head_end = out.rfind(", expected ").unwrap_or(out.len());
    let (head, tail) = out.split_at(head_end);
    let head = head
        .replace("invalid type: floating point `", "invalid type: number `")
        .replace("invalid value: floating point `", "invalid value: number `")
        .replace("invalid type: sequence", "invalid type: a list")
        .replace("invalid type: map", "invalid type: an object")
        .replace("invalid type: unit value", "invalid type: null");
    format!("{head}{tail}")
}

/// What serde's `expected …` part names, in JSON words (None: already
/// fine, e.g. "a string" or "one of `queue`, `skip`").
fn expected_words(expected: &str) -> Option<String> {
    let words = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "u128" | "usize" => "a whole number ≥ 0",
        "i8" => "a whole number from -128 to 127",
        "i16" => "a whole number from -32768 to 32767",
        "i32" => "a whole number from -2147483648 to 2147483647",
        "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" | "sequence" => "a list",
        "a map" | "map" => "an object",
        "a boolean" | "bool" => "true or false",
        "a borrowed string" | "a string" | "string" => "a string",
        "string or map" => "a string or an object",
        "a character" | "char" => "a single character",
        "unit" | "unit struct" => "null",
        "option" => "a value or null",
        "tuple variant" => "a list",
        "newtype variant" => "a value",
        "unit variant" => "a string",
        "struct variant" => "an object",
        other => {
            if let Some(size) = other
                .strip_prefix("a tuple of size ")
                .or_else(|| other.strip_prefix("tuple of size "))
            {
                return Some(format!("a list of {size} items"));
            }
            if other.starts_with("struct ")
                || other.starts_with("tuple struct ")
                || other.starts_with("struct variant ")
            {
                return Some("an object".to_string());
            }
            if other.starts_with("enum ") {
                return Some("one of the documented values (see docs/REFERENCE.md)".to_string());
            }
            return None;
        }
    };
    Some(words.to_string())
}

/// Formats a serde_path_to_error path the way diagnostics show paths.
pub(crate) fn join_path(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty() || inner == ".") {
        (true, _) => inner.trim_start_matches('.').to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{}", inner.trim_start_matches('.')),
    }
}

/// Parses a humantime duration, rejecting zero where it makes no sense.
pub(crate) fn parse_duration(text: &str, allow_zero: bool) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration `{text}`: {e} (examples: \"500ms\", \"30s\", \"1h 30m\")")
    })?;
    if !allow_zero && duration.is_zero() {
        return Err(format!("duration `{text}` must be greater than zero"));
    }
    Ok(duration)
}

/// Parses a duration that may be zero (for `sleep`).
pub fn parse_duration_text(text: &str) -> Result<std::time::Duration, String> {
    parse_duration(text, true)
}

/// Deserializes `T` from a JSON object, reporting every bad key rather than
/// only the first: a key that fails is reported, set aside, and the rest is
/// tried again. Errors are `(path inside the value, message)`.
pub(crate) fn deserialize_all<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, Vec<(String, String)>> {
    let mut value = value.clone();
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    for _ in 0..256 {
        let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) if errors.is_empty() => return Ok(parsed),
            Ok(_) => return Err(errors),
            Err(e) => e,
        };
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = in_user_words(&error.into_inner().to_string());
        // A required key set aside for its own error is not also "missing";
        // serde reports missing keys last, so nothing else is left to find.
        if path.is_empty()
            && let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            && set_aside.iter().any(|k| k == field)
        {
            break;
        }
        // The key to set aside: the first path segment, or for an unknown
        // field (reported at its parent) the field named in the message.
        let key = match path.split(['.', '[']).next().filter(|k| !k.is_empty()) {
            Some(key) => Some(key.to_string()),
            None if message.starts_with("unknown field `") => {
                message.split('`').nth(1).map(str::to_string)
            }
            None => None,
        };
        errors.push((path, message));
        let removed = match (&mut value, key) {
            (serde_json::Value::Object(map), Some(key)) => {
                let removed = map.remove(&key).is_some();
                set_aside.push(key);
                removed
            }
            _ => false,
        };
        if !removed {
            break;
        }
    }
    Err(errors)
}
