//! `switchyard schema`: writes the JSON Schemas to `schemas/`.

use std::path::Path;
use std::process::ExitCode;

pub fn main(out: &Path, print: bool) -> ExitCode {
    let schemas = crate::spec::schema::schemas();
    if print {
        for (_, text) in &schemas {
            print!("{text}");
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for (name, text) in &schemas {
        let path = out.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
