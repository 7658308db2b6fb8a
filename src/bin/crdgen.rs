//! Writes the CustomResourceDefinitions and admission policies of smart-operator as YAML.
//!
//! `crdgen` prints everything to stdout; `crdgen DIR` writes one file per object into DIR (the
//! repository's `crds/` is produced this way, and a test fails when it differs from the types).

use std::path::PathBuf;

use smart_operator::manifests;

fn main() -> std::process::ExitCode {
    let documents = match manifests::rendered() {
        Ok(documents) => documents,
        Err(error) => {
            eprintln!("crdgen: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match std::env::args_os().nth(1).map(PathBuf::from) {
        None => print!("{}", manifests::as_stream(&documents)),
        Some(dir) => {
            if let Err(error) = manifests::write_dir(&dir, &documents) {
                eprintln!("crdgen: writing {}: {error}", dir.display());
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
