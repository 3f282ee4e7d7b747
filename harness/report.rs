//! The run report (`--summary-json PATH`, docs/GUIDE.md "Run report"): one JSON object
//! a script reads instead of the summary line.
//!
//! It is written at the end of every run that gets there: after export (also
//! when `--strict` fails the run) and after `--stop-after`. A run that fails
//! (exit 1) or is interrupted (exit 130) writes none and leaves an existing
//! report as it was: scripts check the exit code first. The report goes through
//! the same temporary-file-and-rename as OUTPUT, so it is whole or absent;
//! `-` writes it to stdout, where the harness writes nothing else.
//!
//! Every figure comes from the store (counts, chunks, form) or from this run's
//! own clocks and `getrusage`, the same sources as the summary line, so the two
//! cannot disagree. The struct below is the format: its field order is the
//! order in the file, and docs/GUIDE.md "Run report" documents each field.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use mixtape::changes::reject::Reason;

/// Where the report goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportTarget {
    Stdout,
    File(PathBuf),
}

impl ReportTarget {
    /// `-` is stdout; anything else a file.
    pub fn from_argument(argument: PathBuf) -> ReportTarget {
        if argument.as_os_str() == "-" {
            ReportTarget::Stdout
        } else {
            ReportTarget::File(argument)
        }
    }
}

/// The run report.
#[derive(Serialize, Debug)]
pub struct Report {
    pub mixtape_version: &'static str,
    pub exit_code: u8,
    pub output_written: bool,
    pub stopped_after: Option<&'static str>,
    pub inputs: Inputs,
    pub outputs: Outputs,
    pub counts: Option<Counts>,
    pub workers: usize,
    pub chunks: Option<usize>,
    pub stages: Ordered<Seconds>,
    pub total_seconds: Seconds,
    pub resumed: bool,
    pub resumed_from: Option<&'static str>,
    pub peak_rss_kb: PeakRss,
}

#[derive(Serialize, Debug)]
pub struct Inputs {
    pub mixtape: InputReport,
    pub changes: InputReport,
}

#[derive(Serialize, Debug)]
pub struct InputReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub compression: Option<&'static str>,
    /// Bytes of text the stages read (`bytes` for a plain input).
    pub text_bytes: u64,
    /// CHANGES only: `object`, `array` or `lines`, once planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Outputs {
    pub output: PathBuf,
    pub rejects: PathBuf,
    pub work_db: String,
    pub work_db_kept: bool,
}

#[derive(Serialize, Debug)]
pub struct Counts {
    pub changes_read: u64,
    pub applied: u64,
    pub rejected: u64,
    pub rejected_by_reason: Ordered<u64>,
    pub warnings: u64,
}

/// A JSON object whose keys keep the order given (serde_json's own map sorts
/// them): stages in run order, reasons in precedence order.
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Rejected changes per reason: every reason, in precedence order, zeros
/// included, so a script finds every key in every report.
pub fn by_reason(rejected: &[(Reason, u64)]) -> Ordered<u64> {
    Ordered(
        Reason::ALL
            .iter()
            .map(|&reason| {
                let count = rejected.iter().find(|(r, _)| *r == reason);
                (reason.name(), count.map_or(0, |(_, n)| *n))
            })
            .collect(),
    )
}

#[derive(Serialize, Debug)]
pub struct PeakRss {
    pub harness: u64,
    pub largest_worker: u64,
}

/// Seconds, written with millisecond precision.
#[derive(Debug, Clone, Copy)]
pub struct Seconds(pub f64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64((self.0 * 1000.0).round() / 1000.0)
    }
}

/// Peak resident set sizes in KiB: this process, and the largest of the
/// children it waited for (its workers; 0 when this run started none).
pub fn peak_rss_kb() -> PeakRss {
    use nix::sys::resource::{getrusage, UsageWho};
    let rss = |who| getrusage(who).map_or(0, |u| u.max_rss().max(0) as u64);
    PeakRss {
        harness: rss(UsageWho::RUSAGE_SELF),
        largest_worker: rss(UsageWho::RUSAGE_CHILDREN),
    }
}

/// Writes `report` to `target`: a file atomically, or stdout.
pub fn write(report: &Report, target: &ReportTarget) -> Result<()> {
    let write_to = |w: &mut dyn Write| -> Result<()> {
        serde_json::to_writer_pretty(&mut *w, report)?;
        w.write_all(b"\n")?;
        Ok(())
    };
    match target {
        ReportTarget::Stdout => {
            let mut out = std::io::stdout().lock();
            write_to(&mut out).context("writing the run report to stdout")?;
            out.flush().context("writing the run report to stdout")
        }
        ReportTarget::File(path) => mixtape::place::write_atomically(path, write_to),
    }
}

/// The file a report target names, for the checks made before a run.
pub fn file_of(target: &Option<ReportTarget>) -> Option<&Path> {
    match target {
        Some(ReportTarget::File(path)) => Some(path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_a_key_in_precedence_order() {
        let json = serde_json::to_string(&by_reason(&[(Reason::SongNotInPlaylist, 4)])).unwrap();
        let names: Vec<String> = Reason::ALL
            .iter()
            .map(|r| {
                let n = if *r == Reason::SongNotInPlaylist {
                    4
                } else {
                    0
                };
                format!("\"{}\":{n}", r.name())
            })
            .collect();
        assert_eq!(json, format!("{{{}}}", names.join(",")));
    }

    #[test]
    fn dash_is_stdout() {
        assert_eq!(
            ReportTarget::from_argument("-".into()),
            ReportTarget::Stdout
        );
        assert_eq!(
            ReportTarget::from_argument("r.json".into()),
            ReportTarget::File("r.json".into())
        );
    }
}
