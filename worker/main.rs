//! `worker`: applies one chunk of the plan stored in a work database (SPEC §7).
//! The harness runs one per chunk; a person can run one by hand to debug a chunk.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mixtape::apply::{self, WorkerOptions};
use mixtape::exit_codes;

/// Apply chunk K of the plan stored in a mixtape work database.
///
/// The harness runs one worker per chunk. To debug a chunk by hand, stop the
/// harness after planning (`harness ... --stop-after plan`), then run
/// `worker --db OUTPUT.work.db --chunk K --trace`: every change of the chunk is
/// logged to stderr with its index, op and outcome (recorded for the merge, or
/// the reason it was rejected). Each batch is committed together with the
/// chunk's position, so an interrupted worker continues where it stopped, and a
/// chunk already applied is not applied again. Running the same harness command
/// afterwards continues from the work database.
#[derive(Parser, Debug)]
#[command(name = "worker", version, max_term_width = 100)]
struct Cli {
    /// The work database made by `harness`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// Which chunk of the plan to apply (0-based).
    #[arg(long, value_name = "K")]
    chunk: u64,
    /// Log every change's index, op and outcome to stderr.
    #[arg(long)]
    trace: bool,
    /// Report progress on stdout for the harness (set by the harness).
    #[arg(long, hide = true)]
    report_progress: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.report_progress {
        // Run by the harness: stop if the harness dies, whatever kills it.
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    }
    let options = WorkerOptions {
        trace: cli.trace,
        report_progress: cli.report_progress,
    };
    match apply::run_chunk(&cli.db, cli.chunk, &options) {
        Ok(summary) => {
            if !cli.report_progress {
                if summary.already_done {
                    eprintln!(
                        "worker: chunk {} is already applied; nothing to do",
                        cli.chunk
                    );
                } else {
                    eprintln!(
                        "worker: chunk {}: {} changes, {} recorded, {} rejected",
                        summary.chunk, summary.changes, summary.recorded, summary.rejected
                    );
                }
            }
            exit_codes::exit(exit_codes::SUCCESS)
        }
        Err(e) => {
            eprintln!("worker: error: {e:#}");
            exit_codes::exit(exit_codes::FAILURE)
        }
    }
}
