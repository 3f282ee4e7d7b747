//! Fault injection, a testing aid: make a process abort at a chosen point.
//!
//! `MIXTAPE_FAULT=POINT@N` makes the process that reaches point `POINT` for the
//! `N`-th time (1-based) abort on the spot, as a crash or `kill -9` would: no
//! destructor runs, no transaction is committed. Workers inherit the variable, so
//! `worker-change@5` crashes every worker at its fifth change.
//! `MIXTAPE_FAULT=POINT@N:pause=SECS` makes it stop there for SECS seconds
//! instead, and then go on: a host that stalls as a whole (a frozen VM, a
//! `SIGSTOP`) long enough to lose its lease, its lease-renewing thread
//! stalled with it ([`paused`]). `POINT@N:hold=SECS` makes only the thread
//! that reaches the point wait SECS seconds: one change that takes that long
//! while the process is alive (its lease is renewed meanwhile); it ends
//! early once the file `MIXTAPE_FAULT_RELEASE` names exists. The points:
//!
//! | point | where |
//! |---|---|
//! | `decompress-block` | after a MiB of a compressed input's text is written ([`crate::stages::decompress`]) |
//! | `import-element` | after an element is inserted, before the transaction commits |
//! | `plan-change` | while scanning CHANGES |
//! | `worker-change` | after a change is handled, its batch not yet committed |
//! | `worker-write` | inside a batch's write transaction, before COMMIT ([`crate::store::Tables::commit_batch`]) |
//! | `worker-commit` | just after a batch's COMMIT |
//! | `merge-partition` | inside a partition's transaction, before COMMIT ([`crate::store::Tables::commit_partition`]) |
//! | `clear-statement` | after each statement of a transaction that undoes a chunk or clears the merge ([`crate::store::Store::clear_merge`]) |
//! | `export-row` | while writing OUTPUT's temporary file |
//! | `output-published` | in the harness, just after OUTPUT is renamed into place, before the run report and the clean-up |
//!
//! `MIXTAPE_BATCH=N` (also a testing aid) makes workers commit every N changes
//! instead of the chunk's own batch size (see [`crate::stages::apply::BATCH_CHANGES`]:
//! 32,768 to 262,144 changes), so small inputs cross many commits.
//!
//! `MIXTAPE_EXPORT_PARTS=N` (also a testing aid) makes the export cut each
//! stream of playlists into N parts, whatever its size ([`export_parts`]).
//!
//! Without the variables these are a relaxed atomic load and a branch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What the configured point does when reached.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Abort,
    /// The whole process stalls for these seconds.
    Pause(f64),
    /// Only the thread that reached the point waits these seconds.
    Hold(f64),
}

/// The configured fault, read once: (point, N, action).
fn configured() -> Option<&'static (String, u64, Action)> {
    static FAULT: OnceLock<Option<(String, u64, Action)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("MIXTAPE_FAULT").ok()?;
            let (point, rest) = spec.split_once('@')?;
            let seconds = |text: &str| -> Option<f64> {
                text.parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
            };
            let (n, action) = if let Some((n, secs)) = rest.split_once(":pause=") {
                (n, Action::Pause(seconds(secs)?))
            } else if let Some((n, secs)) = rest.split_once(":hold=") {
                (n, Action::Hold(seconds(secs)?))
            } else {
                (rest, Action::Abort)
            };
            Some((point.to_string(), n.parse().ok()?, action))
        })
        .as_ref()
}

static HITS: AtomicU64 = AtomicU64::new(0);
static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the process is in a `pause` (a stalled host): its other threads
/// (the lease keeper) stall too.
pub fn paused() -> bool {
    PAUSED.load(Ordering::Relaxed)
}

/// Aborts the process if this is the configured point's N-th hit.
#[inline]
pub fn point(name: &str) {
    if let Some((point, n, action)) = configured() {
        if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            match *action {
                Action::Pause(secs) => {
                    eprintln!("fault injection: pausing {secs} s at {name}@{n}");
                    PAUSED.store(true, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
                    PAUSED.store(false, Ordering::Relaxed);
                }
                Action::Hold(secs) => {
                    eprintln!("fault injection: holding {secs} s at {name}@{n}");
                    hold(secs);
                }
                Action::Abort => {
                    eprintln!("fault injection: aborting at {name}@{n}");
                    std::process::abort();
                }
            }
        }
    }
}

/// Waits `secs` seconds, or less once the file `MIXTAPE_FAULT_RELEASE`
/// names exists (a test says when the held thread may go on).
fn hold(secs: f64) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    let release = std::env::var_os("MIXTAPE_FAULT_RELEASE").map(std::path::PathBuf::from);
    while std::time::Instant::now() < until {
        if release.as_ref().is_some_and(|file| file.exists()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The batch size workers use: `MIXTAPE_BATCH`, or `default`.
pub fn batch_size(default: u64) -> u64 {
    positive_number("MIXTAPE_BATCH").unwrap_or(default)
}

/// How many parts the export cuts each playlist stream into:
/// `MIXTAPE_EXPORT_PARTS`, or `default` (a testing aid: the tests' inputs are
/// far too small to be cut by size, `crate::stages::export`).
pub fn export_parts(default: u64) -> u64 {
    positive_number("MIXTAPE_EXPORT_PARTS").unwrap_or(default)
}

/// The environment variable `name`, when it is a number above 0.
fn positive_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// Whether workers let simple changes wait for their lookups
/// (`crate::stages::apply`): `MIXTAPE_LOOK_AHEAD` = `always` or `never`, else
/// `default` (the tests' inputs are far too small to turn it on by size).
pub fn look_ahead(default: bool) -> bool {
    match std::env::var("MIXTAPE_LOOK_AHEAD").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => default,
    }
}
