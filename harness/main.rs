//! `harness`: runs the whole job (docs/GUIDE.md "Command line"). `main` is a thin
//! wrapper: parse the command line, run the pipeline, turn the outcome into an
//! exit code ([`Exit`], the one place codes are decided). Errors print with
//! their whole context chain.

mod cli;
mod paths;
mod pipeline;
mod progress;
mod report;
mod workers;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mixtape::run::exit_codes::Exit;

fn main() -> ExitCode {
    // clap exits with code 2 on a usage error, 0 for --help and --version.
    let cli = cli::Cli::parse();
    if let Some(what) = cli.generate {
        use clap::CommandFactory;
        return generated(what, cli::Cli::command());
    }
    // A testing hook's malformed value is a usage error, before any work.
    if let Err(e) = mixtape::run::fault::check_environment() {
        eprintln!("harness: error: {e:#}");
        return Exit::Usage.into();
    }
    let config = match cli.into_config(std::io::stderr().is_terminal()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            return Exit::of_error(&e).into();
        }
    };
    if let Err(e) = mixtape::run::interrupt::install() {
        eprintln!("harness: error: {e:#}");
        return Exit::Failure.into();
    }
    let exit = match pipeline::run(&config) {
        Ok(exit) => exit,
        Err(e) => {
            let exit = Exit::of_error(&e);
            if exit == Exit::Interrupted {
                eprintln!(
                    "harness: interrupted; the work database is kept at {} (run the same command to resume)",
                    config.paths.db.display()
                );
            } else {
                let e = mixtape::store::explain_lost_connection(e);
                eprintln!("harness: error: {e:#}");
            }
            exit
        }
    };
    exit.into()
}

/// Prints what `--generate` asks for; exit 0, or 1 when stdout fails.
fn generated(what: mixtape::run::generate::Generate, cmd: clap::Command) -> ExitCode {
    match mixtape::run::generate::write(what, cmd, &mut std::io::stdout().lock()) {
        Ok(()) => Exit::Success.into(),
        Err(e) => {
            eprintln!("harness: error: writing to standard output: {e}");
            Exit::Failure.into()
        }
    }
}
