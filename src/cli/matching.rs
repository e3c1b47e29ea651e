//! `switchyard match EVENT.json`: which bindings an event matches, the params
//! they would produce, or why each did not match. Runs the reactor's own
//! evaluation, with no server and no log (dedup is not consulted).

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::{EXIT_INVALID, load_config};
use crate::reactor::{Evaluation, evaluate, trigger_accepts};
use crate::registry::Registry;

/// Reads an event file; missing CloudEvents attributes get defaults.
fn read_event(file: &Path) -> Result<Value, String> {
    let text = std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", file.display()))?;
    let Value::Object(mut event) = value else {
        return Err(format!("{}: an event is a JSON object", file.display()));
    };
    if !event.get("type").is_some_and(Value::is_string) {
        return Err(format!(
            "{}: type: missing or not a string (e.g. \"switchyard.file.created\")",
            file.display()
        ));
    }
    let now = crate::time::now_millis();
    event.entry("specversion").or_insert(json!("1.0"));
    event
        .entry("id")
        .or_insert_with(|| json!(uuid::Uuid::now_v7().to_string()));
    event.entry("source").or_insert(json!("/api/v1/events"));
    event
        .entry("time")
        .or_insert_with(|| json!(crate::engine::rfc3339(now)));
    event.entry("data").or_insert(Value::Null);
    Ok(Value::Object(event))
}

pub fn main(config_path: &Path, event_file: &Path, as_json: bool) -> ExitCode {
    let event = match read_event(event_file) {
        Ok(event) => event,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let registry = match Registry::load_project(&config, Default::default()) {
        Ok(registry) => registry,
        Err(found) => {
            for d in &found {
                eprintln!("{d}");
            }
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let now = crate::time::now_millis();
    let mut results = Vec::new();
    for binding in registry.bindings() {
        let mut result = json!({"binding": binding.name, "workflow": binding.workflow});
        let verdict = match trigger_accepts(binding, &event) {
            Err(reason) => Err(reason),
            Ok(()) => match evaluate(binding, &event, now) {
                Evaluation::Matched { params, dedup_key } => Ok((params, dedup_key)),
                Evaluation::Filtered { reason } => Err(reason),
                Evaluation::Failed { error } => Err(format!("error: {error}")),
            },
        };
        match verdict {
            Ok((params, dedup_key)) => {
                result["matched"] = json!(true);
                result["params"] = Value::Object(params);
                result["dedup_key"] = json!(dedup_key);
            }
            Err(reason) => {
                result["matched"] = json!(false);
                result["reason"] = json!(reason);
            }
        }
        results.push(result);
    }
    let any = results.iter().any(|r| r["matched"] == json!(true));
    if as_json {
        let out = json!({"event": event, "bindings": results});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "event {} ({})",
            event["id"].as_str().unwrap_or_default(),
            event["type"].as_str().unwrap_or_default()
        );
        if results.is_empty() {
            println!("  no bindings loaded");
        }
        for r in &results {
            let name = r["binding"].as_str().unwrap_or_default();
            let workflow = r["workflow"].as_str().unwrap_or_default();
            if r["matched"] == json!(true) {
                println!("  match     {name} → {workflow}");
                println!("            params    {}", r["params"]);
                println!("            dedup key {}", r["dedup_key"]);
            } else {
                println!(
                    "  no match  {name}: {}",
                    r["reason"].as_str().unwrap_or_default()
                );
            }
        }
    }
    if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
