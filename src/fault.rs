//! Fault injection, a testing aid: make a process abort at a chosen point.
//!
//! `MIXTAPE_FAULT=POINT@N` makes the process that reaches point `POINT` for the
//! `N`-th time (1-based) abort on the spot, as a crash or `kill -9` would: no
//! destructor runs, no transaction is committed. Workers inherit the variable, so
//! `worker-change@5` crashes every worker at its fifth change. The points:
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

/// The configured fault, read once: (point, N).
fn configured() -> Option<&'static (String, u64)> {
    static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var("MIXTAPE_FAULT").ok()?;
            let (point, n) = spec.split_once('@')?;
            Some((point.to_string(), n.parse().ok()?))
        })
        .as_ref()
}

static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if this is the configured point's N-th hit.
#[inline]
pub fn point(name: &str) {
    if let Some((point, n)) = configured() {
        if point == name && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("fault injection: aborting at {name}@{n}");
            std::process::abort();
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
