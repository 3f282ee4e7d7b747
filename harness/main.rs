//! `harness`: runs the whole job (SPEC §1). `main` is a thin wrapper: parse the
//! command line, run the pipeline, turn the outcome into an exit code. Errors
//! print with their whole context chain.

mod cli;
mod pipeline;
mod progress;
mod workers;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mixtape::exit_codes;

fn main() -> ExitCode {
    // clap exits with code 2 on a usage error, 0 for --help and --version.
    let cli = cli::Cli::parse();
    let config = cli.into_config(std::io::stderr().is_terminal());
    mixtape::interrupt::install();
    match pipeline::run(&config) {
        Ok(code) => exit_codes::exit(code),
        Err(e) if mixtape::interrupt::is_interrupted(&e) => {
            eprintln!(
                "harness: interrupted; the work database is kept at {} (run the same command to resume)",
                config.db.display()
            );
            exit_codes::exit(exit_codes::INTERRUPTED)
        }
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            exit_codes::exit(exit_codes::FAILURE)
        }
    }
}
