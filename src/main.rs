//! The smart-operator binary. Thin: parses the command line and hands over to the library.

use clap::{Parser, Subcommand};

/// Kubernetes operator that registers SMART on FHIR OAuth clients declaratively.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions and admission policies as YAML (pipe to `kubectl apply -f -`).
    Crd,
    /// Print the version.
    Version,
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Crd => match smart_operator::manifests::rendered() {
            Ok(documents) => {
                print!("{}", smart_operator::manifests::as_stream(&documents));
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("smart-operator: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("smart-operator {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
    }
}
