//! The harness command line (docs/GUIDE.md "Command line"): what the user typed, checked by clap, then
//! turned into a [`Config`] in one place, where every default is decided.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use mixtape::stages::Stage;

use crate::paths::{Given, PathPlan};

/// Apply a batch of playlist changes to a mixtape document, with N worker
/// processes over a work store (a SQLite file, or a PostgreSQL database for runs
/// that span hosts). The output is the same bytes for any N:
/// exactly what applying the changes one by one, in file order, gives.
///
/// The arguments come in this order: the document first, then the changes, then
/// where to write the result. Each of them, and each report, may be an object
/// in a bucket, s3://BUCKET/KEY (credentials and endpoint from the AWS_*
/// variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
/// AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
#[derive(Parser, Debug)]
#[command(name = "harness", version, max_term_width = 100)]
pub struct Cli {
    /// The mixtape document (JSON: users, playlists, songs).
    #[arg(required = true)]
    pub mixtape: Option<PathBuf>,
    /// The changes: an object with a `changes` array, a bare array, or JSON Lines.
    #[arg(required = true)]
    pub changes: Option<PathBuf>,
    /// Where the resulting document is written (replaced whole, or not at all; an
    /// existing file keeps its permissions). Checked before any work is done.
    /// `-`: standard output, once the run has succeeded (then the work
    /// database and the rejects report default to stdout.json.work.db and
    /// stdout.json.rejects.jsonl in the current directory).
    #[arg(required = true)]
    pub output: Option<PathBuf>,
    /// Worker processes, 1 to 1024 [default: number of CPUs].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_WORKERS))]
    pub workers: Option<u64>,
    /// Chunks to cut CHANGES into, 1 to 1,000,000 [default: the number of
    /// workers]; each worker takes the next chunk when it finishes one.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=MAX_CHUNKS))]
    pub chunks: Option<u64>,
    /// How long a worker's claim on a chunk lasts unless renewed, 0.1 to
    /// 86400; a worker that dies loses its chunk to another after this long
    /// [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_lease_secs)]
    pub lease_secs: Option<f64>,
    /// Work store: a SQLite file, or a PostgreSQL database
    /// (postgresql://USER@HOST:PORT/DBNAME; password from PGPASSWORD or
    /// ~/.pgpass) [default: OUTPUT with .work.db appended; for OUTPUT in a
    /// bucket, its name with .work.db appended, in the current directory].
    #[arg(long, value_name = "PATH|URL")]
    pub db: Option<std::ffi::OsString>,
    /// Keep the work database after a successful run.
    #[arg(long)]
    pub keep_db: bool,
    /// Discard an existing work database instead of resuming from it (only a
    /// work database: any other file at --db is refused, never deleted).
    #[arg(long)]
    pub fresh: bool,
    /// Rejects report, JSON Lines [default: OUTPUT with .rejects.jsonl appended].
    #[arg(long, value_name = "PATH")]
    pub rejects: Option<PathBuf>,
    /// Also write the applied report to PATH: JSON Lines, one object per
    /// applied change in index order (index, op, playlist_id, song_id), the
    /// ids given to new playlists included (docs/GUIDE.md "Pipelines").
    #[arg(long, value_name = "PATH")]
    pub applied: Option<PathBuf>,
    /// Any rejected change fails the run: exit 3 and no OUTPUT (the rejects
    /// report is still written).
    #[arg(long)]
    pub strict: bool,
    /// Everything but OUTPUT: validate both files, apply and merge, write the
    /// rejects report and the summary (and the run report when asked); OUTPUT
    /// is neither written nor touched. Exit 0, or 3 with --strict when a change
    /// would be rejected.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// When to draw progress bars (auto: only when stderr is a terminal).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ProgressWhen::Auto)]
    pub progress: ProgressWhen,
    /// Stop after this stage and keep the work database (run again to continue).
    #[arg(long, value_enum, value_name = "STAGE")]
    pub stop_after: Option<Stage>,
    /// Write a JSON report of the run to PATH (`-`: stdout) when it ends, also
    /// after `--strict` fails it or `--stop-after` (docs/GUIDE.md "Run report").
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
    /// Print a shell completion script or the man page on stdout, and exit
    /// (docs/GUIDE.md "Shell completions and man pages").
    #[arg(long, value_enum, value_name = "WHAT", exclusive = true)]
    pub generate: Option<mixtape::run::generate::Generate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProgressWhen {
    Auto,
    Always,
    Never,
}

/// The run's configuration, every default resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every file the run reads or writes, resolved and checked.
    pub paths: PathPlan,
    pub workers: usize,
    pub chunks: usize,
    pub lease: std::time::Duration,
    pub keep_db: bool,
    pub fresh: bool,
    pub strict: bool,
    pub dry_run: bool,
    pub draw_progress: DrawProgress,
    pub stop_after: Option<Stage>,
}

impl Config {
    /// Whether the export writes the document to the staging file that goes
    /// to stdout (OUTPUT `-`, and not a dry run).
    pub fn stages_to_stdout(&self) -> bool {
        self.paths.to_stdout && !self.dry_run
    }
}

/// How long leases last: `--lease-secs`, else a testing aid's value
/// ([`mixtape::run::fault::lease_secs`]), else 30 seconds; always within [`LEASE_SECS`].
fn lease_secs(flag: Option<f64>) -> f64 {
    flag.or_else(mixtape::run::fault::lease_secs)
        .filter(|s: &f64| s.is_finite())
        .unwrap_or(DEFAULT_LEASE_SECS)
        .clamp(*LEASE_SECS.start(), *LEASE_SECS.end())
}

const DEFAULT_LEASE_SECS: f64 = 30.0;

/// The leases a run accepts: long enough to renew, short enough to be a
/// duration (a day).
const LEASE_SECS: std::ops::RangeInclusive<f64> = 0.1..=86_400.0;
/// More workers than this would only wait for one another (and for threads).
const MAX_WORKERS: u64 = 1024;
/// The plan keeps a row per chunk; more than this is never useful.
const MAX_CHUNKS: u64 = 1_000_000;

/// `--lease-secs`: a number of seconds within [`LEASE_SECS`].
fn parse_lease_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || !LEASE_SECS.contains(&secs) {
        return Err(format!(
            "{text} is out of range: a lease lasts {} to {} seconds",
            LEASE_SECS.start(),
            LEASE_SECS.end()
        ));
    }
    Ok(secs)
}

/// Whether and how bars are drawn, `--progress` and the terminal considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrawProgress {
    /// Nothing but plain message lines.
    No,
    /// On stderr, which is a terminal.
    OnTerminal,
    /// On stderr, whatever it is (`--progress always`).
    Forced,
}

impl Cli {
    pub fn into_config(self, stderr_is_terminal: bool) -> anyhow::Result<Config> {
        // clap requires the three unless `--generate` (handled before this).
        let (Some(mixtape), Some(changes), Some(output)) =
            (self.mixtape, self.changes, self.output)
        else {
            anyhow::bail!("MIXTAPE, CHANGES and OUTPUT are required");
        };
        let paths = PathPlan::resolve(Given {
            mixtape,
            changes,
            output,
            db: self.db,
            rejects: self.rejects,
            applied: self.applied,
            summary_json: self.summary_json,
        })?;
        let workers = self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            |n| n as usize,
        );
        Ok(Config {
            paths,
            draw_progress: match self.progress {
                ProgressWhen::Auto if stderr_is_terminal => DrawProgress::OnTerminal,
                ProgressWhen::Auto | ProgressWhen::Never => DrawProgress::No,
                ProgressWhen::Always => DrawProgress::Forced,
            },
            workers,
            chunks: self.chunks.map_or(workers, |k| k as usize),
            lease: std::time::Duration::from_secs_f64(lease_secs(self.lease_secs)),
            keep_db: self.keep_db,
            fresh: self.fresh,
            strict: self.strict,
            dry_run: self.dry_run,
            stop_after: self.stop_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use mixtape::store::Location;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_derive_from_output() {
        let cli = Cli::try_parse_from(["harness", "m.json", "c.json", "out/o.json"]).unwrap();
        let c = cli.into_config(false).unwrap();
        assert_eq!(c.paths.db, Location::File("out/o.json.work.db".into()));
        assert_eq!(c.paths.rejects, PathBuf::from("out/o.json.rejects.jsonl"));
        assert!(c.workers >= 1);
        assert_eq!(c.draw_progress, DrawProgress::No);
        assert!(Cli::try_parse_from(["harness", "-w", "0", "m", "c", "o"]).is_err());
        for bad in [
            ["-w", "100000"],
            ["--chunks", "0"],
            ["--chunks", "1000001"],
            ["--lease-secs", "1e20"],
            ["--lease-secs", "NaN"],
            ["--lease-secs", "0.01"],
        ] {
            let args = ["harness", bad[0], bad[1], "m", "c", "o"];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
