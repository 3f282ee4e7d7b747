//! Fault injection, a testing aid: make a process abort at a chosen point.
//!
//! `MIXTAPE_FAULT=POINT@N` makes the process that reaches point `POINT` for the
//! `N`-th time (1-based) abort on the spot, as a crash or `kill -9` would: no
//! destructor runs, no transaction is committed. Workers inherit the variable, so
//! `worker-change@5` crashes every worker at its fifth change.
//! `MIXTAPE_FAULT=POINT@N:pause=SECS` makes it stop there for SECS seconds
//! instead, and then go on: a host that stalls (a long GC pause, a frozen VM)
//! long enough to lose its lease. The points:
//!
//! | point | where |
//! |---|---|
//! | `decompress-block` | after a MiB of a compressed input's text is written ([`crate::decompress`]) |
//! | `import-element` | after an element is inserted, before the transaction commits |
//! | `plan-change` | while scanning CHANGES |
//! | `worker-change` | after a change is handled, its batch not yet committed |
//! | `worker-write` | inside a batch's write transaction, before COMMIT ([`crate::store::Store::commit_batch`]) |
//! | `worker-commit` | just after a batch's COMMIT |
//! | `merge-partition` | inside a partition's transaction, before COMMIT ([`crate::store::Store::commit_partition`]) |
//! | `export-row` | while writing OUTPUT's temporary file |
//!
//! `MIXTAPE_BATCH=N` (also a testing aid) makes workers commit every N changes
//! instead of the chunk's own batch size (see [`crate::apply::BATCH_CHANGES`]:
//! 32,768 to 262,144 changes), so small inputs cross many commits.
//!
//! Without the variables these are a relaxed atomic load and a branch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The configured fault, read once: (point, N, pause in seconds or abort).
fn configured() -> Option<&'static (String, u64, Option<f64>)> {
    static FAULT: OnceLock<Option<(String, u64, Option<f64>)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("MIXTAPE_FAULT").ok()?;
            let (point, rest) = spec.split_once('@')?;
            let (n, pause) = match rest.split_once(":pause=") {
                Some((n, secs)) => (n, Some(secs.parse().ok()?)),
                None => (rest, None),
            };
            Some((point.to_string(), n.parse().ok()?, pause))
        })
        .as_ref()
}

static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if this is the configured point's N-th hit.
#[inline]
pub fn point(name: &str) {
    if let Some((point, n, pause)) = configured() {
        if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            match pause {
                Some(secs) => {
                    eprintln!("fault injection: pausing {secs} s at {name}@{n}");
                    std::thread::sleep(std::time::Duration::from_secs_f64(*secs));
                }
                None => {
                    eprintln!("fault injection: aborting at {name}@{n}");
                    std::process::abort();
                }
            }
        }
    }
}

/// The batch size workers use: `MIXTAPE_BATCH`, or `default`.
pub fn batch_size(default: u64) -> u64 {
    std::env::var("MIXTAPE_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
