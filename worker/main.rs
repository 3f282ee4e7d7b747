//! `worker`: applies chunks of the plan stored in a work database (docs/GUIDE.md
//! "Command line" and "Debugging a chunk by hand"). The harness runs N of
//! them joined to the run (each claims chunks until none is left) and reads
//! their progress reports ([`mixtape::run::protocol`]) on stdout; more may join by
//! hand, from any host; a person can apply one chunk by hand to debug it.
//! Which of these a process is ([`Role`]) is decided once, from its command
//! line.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::{IsTerminal, Write};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mixtape::run::exit_codes::Exit;
use mixtape::run::protocol::Progress;
use mixtape::stages::apply::{self, WorkerOptions};
use mixtape::store::{Location, RunLock, Store};

/// Apply chunk K of the plan stored in a mixtape work database, or (--join)
/// claim chunks one after another until the plan is done.
///
/// The harness runs workers with --join: each claims a chunk under a lease,
/// applies it, and claims the next, until every chunk is done whoever applied
/// it; more `worker --join` processes may join the run at any time. To debug a
/// chunk by hand, stop the
/// harness after planning (`harness ... --stop-after plan`), then run
/// `worker --db OUTPUT.work.db --chunk K --trace`: every change of the chunk is
/// logged to stderr with its index, op and outcome (recorded for the merge, or
/// the reason it was rejected). Each batch is committed together with the
/// chunk's position, so an interrupted worker continues where it stopped, and a
/// chunk already applied is not applied again. Running the same harness command
/// afterwards continues from the work database. `--redo` applies a finished chunk
/// again (to see its trace again, say), replacing what it recorded before.
#[derive(Parser, Debug)]
#[command(name = "worker", version, max_term_width = 100)]
struct Cli {
    /// The work store made by `harness`: its SQLite file, or its PostgreSQL
    /// URL (postgresql://USER@HOST:PORT/DBNAME; password from PGPASSWORD or
    /// ~/.pgpass).
    #[arg(long, value_name = "PATH|URL", required = true)]
    db: Option<std::ffi::OsString>,
    /// Which chunk of the plan to apply (0-based).
    #[arg(
        long,
        value_name = "K",
        required_unless_present_any = ["join", "generate"],
        conflicts_with = "join"
    )]
    chunk: Option<u64>,
    /// Claim chunks one at a time, under a lease, and apply them until every
    /// chunk is done (also those that other workers hold); then exit 0.
    #[arg(long)]
    join: bool,
    /// Log every change's index, op and outcome to stderr.
    #[arg(long)]
    trace: bool,
    /// Apply the chunk again from its start even if it is done; what it recorded
    /// before is discarded first, in the same transaction.
    #[arg(long, requires = "chunk")]
    redo: bool,
    /// Report progress on stdout for the harness (set by the harness).
    #[arg(long, hide = true, requires = "join")]
    report_progress: bool,
    /// Print a shell completion script or the man page on stdout, and exit
    /// (docs/GUIDE.md "Shell completions and man pages").
    #[arg(long, value_enum, value_name = "WHAT", exclusive = true)]
    generate: Option<mixtape::run::generate::Generate>,
}

/// Who started this worker, and so what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Started by the harness (`--join --report-progress`): claims chunks,
    /// reports progress on stdout, dies with the harness, leaves the merge
    /// to the harness's threads.
    ForHarness,
    /// Joined to a run by hand (`--join`), on any host: claims chunks, then
    /// helps with the merge, and says what it did.
    Joined,
    /// One chunk by hand (`--chunk K`): holds the run lock, as a harness
    /// would, so that it cannot run beside one.
    ByHand { chunk: u64 },
}

impl Role {
    fn of(cli: &Cli) -> Role {
        match (cli.chunk, cli.report_progress) {
            (Some(chunk), _) => Role::ByHand { chunk },
            (None, true) => Role::ForHarness,
            (None, false) => Role::Joined,
        }
    }
}

/// One progress report per committed batch on stdout, read by the harness.
fn report_to_harness(done: u64, total: u64, so_far: &apply::ChunkSummary) {
    let report = Progress {
        chunk: so_far.chunk,
        bytes_done: done,
        bytes_total: total,
        changes: so_far.changes,
        lock_held: so_far.lock_held,
        lock_wait: so_far.lock_wait,
    };
    let mut out = std::io::stdout().lock();
    // A harness that stopped reading is going away; the worker carries on.
    let _ = writeln!(out, "{report}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(what) = cli.generate {
        use clap::CommandFactory;
        return match mixtape::run::generate::write(
            what,
            Cli::command(),
            &mut std::io::stdout().lock(),
        ) {
            Ok(()) => Exit::Success.into(),
            Err(e) => {
                eprintln!("worker: error: writing to standard output: {e}");
                Exit::Failure.into()
            }
        };
    }
    // A testing hook's malformed value is a usage error, before any work.
    if let Err(e) = mixtape::run::fault::check_environment() {
        eprintln!("worker: error: {e:#}");
        return Exit::Usage.into();
    }
    let role = Role::of(&cli);
    if let Err(e) = mixtape::run::interrupt::install() {
        eprintln!("worker: error: {e:#}");
        return Exit::Failure.into();
    }
    if role == Role::ForHarness {
        // Run by the harness: stop if the harness dies, whatever kills it.
        // SIGKILL: a batch not yet committed is simply not there; nothing is lost.
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    }
    match run(&cli, role) {
        Ok(summary) => {
            if role != Role::ForHarness {
                say_what_it_did(&summary);
            }
            Exit::Success.into()
        }
        Err(e) => {
            let exit = Exit::of_error(&e);
            if exit == Exit::Interrupted {
                eprintln!(
                    "worker: interrupted; its chunk continues from its last commit next time"
                );
            } else {
                let e = mixtape::store::explain_lost_connection(e);
                eprintln!("worker: error: {e:#}");
            }
            exit.into()
        }
    }
}

/// Applies the chunk (or joins the run), reporting progress the way this
/// worker was started for.
fn run(cli: &Cli, role: Role) -> anyhow::Result<apply::JoinSummary> {
    let options = WorkerOptions {
        trace: cli.trace,
        redo: cli.redo,
    };
    let argument = anyhow::Context::context(cli.db.as_ref(), "--db is required")?;
    let db = Location::from_argument(argument, &cache_base().join("store"))?;
    db.refuse_foreign_file()?;
    // One chunk by hand: hold the run lock like a harness would (a file
    // store's or the server's advisory lock), so a worker cannot run beside a
    // harness on the same store. Joined workers run beside the harness on
    // purpose: their leases keep them apart.
    let missing_file = db.file().is_some_and(|f| !f.is_file());
    let lock = match role {
        Role::ByHand { .. } if !missing_file => Some(RunLock::acquire(&db)?),
        _ => None,
    };
    let apply = |progress: &mut apply::ProgressFn| match role {
        Role::ByHand { chunk } => {
            apply::run_chunk(&db, chunk, &options, progress).map(|one| apply::JoinSummary {
                chunks: vec![one],
                ..Default::default()
            })
        }
        Role::ForHarness | Role::Joined => apply::join(&db, &options, progress),
    };
    let outcome = if role == Role::ForHarness {
        apply(&mut report_to_harness)
    } else if std::io::stderr().is_terminal() && !cli.trace {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "chunk {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let outcome = apply(&mut |done, total, so_far| {
            bar.set_prefix(so_far.chunk.to_string());
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("{} changes", so_far.changes));
        });
        bar.finish_and_clear();
        outcome
    } else {
        apply(&mut |_, _, _| {})
    };
    if let Some(lock) = lock {
        lock.release_and_remove();
    }
    let mut summary = outcome?;
    // A worker that joined a run by hand helps with the merge too; the
    // harness's own workers leave it to the harness's threads.
    if role == Role::Joined {
        summary.merged = mixtape::stages::merge::help(&Store::open(&db)?)?;
    }
    Ok(summary)
}

/// Where a worker keeps what it fetches from a server store (the id
/// indexes): `$XDG_CACHE_HOME/mixtape`, else `~/.cache/mixtape`, else a
/// directory of this user's own in the temporary directory
/// (`mixtape-cache-UID`, which must be private: see
/// [`mixtape::run::private_file::private_dir`]). A cached index is used only when
/// its hash is the one the store recorded.
fn cache_base() -> PathBuf {
    let absolute = |dir: PathBuf| dir.is_absolute().then_some(dir);
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache"))
                .and_then(absolute)
        })
        .map(|dir| dir.join("mixtape"))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("mixtape-cache-{}", nix::unistd::geteuid()))
        })
}

/// The lines a person who ran the worker by hand reads at the end.
fn say_what_it_did(summary: &apply::JoinSummary) {
    for chunk in &summary.chunks {
        if chunk.already_done {
            eprintln!(
                "worker: chunk {} is already applied; nothing to do (--redo applies it again)",
                chunk.chunk
            );
        } else {
            eprintln!(
                "worker: chunk {}: {} changes, {} recorded, {} rejected; write lock held {:.2?}, waited for {:.2?}",
                chunk.chunk,
                chunk.changes,
                chunk.recorded,
                chunk.rejected,
                chunk.lock_held,
                chunk.lock_wait
            );
        }
    }
    if summary.merged > 0 {
        eprintln!(
            "worker: merged {} partition(s) once every chunk was applied",
            summary.merged
        );
    }
    if summary.lost > 0 {
        eprintln!(
            "worker: {} chunk(s) were taken over by other workers after this worker's lease expired",
            summary.lost
        );
    }
}
