//! JSON Schemas of the file formats, generated from the Rust types.
//! `switchyard schema` writes them to `schemas/`; a test fails when the
//! committed copies drift from what the types say.

use super::binding::BindingFile;
use super::config::Config;
use super::workflow::WorkflowFile;

/// `(file name, pretty JSON)` for every schema.
pub fn schemas() -> Vec<(&'static str, String)> {
    let render = |schema: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    };
    vec![
        (
            "workflow.schema.json",
            render(schemars::schema_for!(WorkflowFile)),
        ),
        (
            "binding.schema.json",
            render(schemars::schema_for!(BindingFile)),
        ),
        ("config.schema.json", render(schemars::schema_for!(Config))),
        (
            "event.schema.json",
            render(schemars::schema_for!(crate::reactor::Event)),
        ),
    ]
}
