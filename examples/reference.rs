//! The in-memory reference as a program, for the benchmark:
//! `cargo run --release --example reference -- MIXTAPE CHANGES OUTPUT`.
//!
//! It is the differential tests' reference (tests/testsuite/support/reference.rs): the
//! whole of both files in memory, hash maps, one change at a time. Writes
//! OUTPUT, `OUTPUT.rejects.jsonl` and `OUTPUT.applied.jsonl` (the harness's
//! `--applied` report); prints its wall time and peak RSS on stderr.

#[path = "../tests/testsuite/support/reference.rs"]
mod reference;

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: reference MIXTAPE CHANGES OUTPUT");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mixtape = std::fs::read_to_string(&args[1]).expect("reading MIXTAPE");
    let changes = std::fs::read_to_string(&args[2]).expect("reading CHANGES");
    let outcome = reference::run(&mixtape, &changes).unwrap_or_else(|e| {
        eprintln!("reference: {e}");
        std::process::exit(1)
    });
    drop((mixtape, changes));
    std::fs::write(&args[3], &outcome.output).expect("writing OUTPUT");
    let mut rejects = args[3].clone();
    rejects.push_str(".rejects.jsonl");
    std::fs::write(rejects, &outcome.rejects).expect("writing rejects");
    let mut applied = args[3].clone();
    applied.push_str(".applied.jsonl");
    std::fs::write(applied, &outcome.applied).expect("writing the applied report");
    let rss_kb = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss())
        .unwrap_or(0);
    eprintln!(
        "reference: {} changes, {} rejected, {} warnings; wall={:.2}s rss_kb={rss_kb}",
        outcome.changes,
        outcome.rejected,
        outcome.warnings,
        started.elapsed().as_secs_f64()
    );
}
