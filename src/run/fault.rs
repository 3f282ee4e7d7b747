//! Testing aids: fault injection (make a process abort, stall or wait at a
//! chosen point) and the knobs that let small test inputs reach paths that
//! only large inputs reach otherwise.
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
//! stream of playlists into N pieces, whatever its size ([`export_pieces`]).
//!
//! `MIXTAPE_MIN_FREE_BYTES=N` sets the free space a decompression leaves
//! ([`crate::stages::decompress::free_space_margin`]), `MIXTAPE_WORKER_NAME`
//! replaces a worker's `host:pid` (to play a worker on another host),
//! `MIXTAPE_LEASE_SECS` is the lease when `--lease-secs` is not given, and
//! `MIXTAPE_LOOK_AHEAD=always|never` forces the workers' look-ahead.
//! `MIXTAPE_S3_TIMEOUT_MS=N` shortens the bounds of every request to a
//! bucket ([`crate::place::s3::Bounds`]), so that a stalled server fails a
//! test in seconds.
//!
//! ## Compiled only for tests
//!
//! All of this exists only under the cargo feature `fault-injection`, which
//! the test suite turns on (the package's dev-dependency on itself). The
//! binaries a user builds have none of it: every function below is then a
//! constant answer that the compiler folds away, and the variables are not
//! read. With the feature, a malformed value is an error at start-up
//! ([`check_environment`]), never silently ignored: a test that meant to
//! inject a fault and did not would pass for the wrong reason.

#[cfg(feature = "fault-injection")]
mod hooks {
    //! The hooks themselves, read once from the environment.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use anyhow::{anyhow, bail, Result};

    /// What the configured point does when reached.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(super) enum Action {
        Abort,
        /// The whole process stalls for these seconds.
        Pause(f64),
        /// Only the thread that reached the point waits these seconds.
        Hold(f64),
    }

    /// Every hook's value, parsed once.
    #[derive(Debug)]
    pub(super) struct Hooks {
        pub fault: Option<(String, u64, Action)>,
        pub batch: Option<u64>,
        pub export_pieces: Option<u64>,
        pub look_ahead: Option<bool>,
        pub min_free_bytes: Option<u64>,
        pub worker_name: Option<String>,
        pub lease_secs: Option<f64>,
        pub s3_timeout_ms: Option<u64>,
    }

    fn var(name: &str) -> Result<Option<String>> {
        match std::env::var(name) {
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => bail!("{name}: {e}"),
        }
    }

    fn seconds(name: &str, text: &str) -> Result<f64> {
        text.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| anyhow!("{name}: {text:?} is not a number of seconds"))
    }

    /// The variable `name` read by `parse`, when set; a value `parse`
    /// refuses is an error saying it is not `what`.
    fn parsed<T>(name: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>> {
        var(name)?
            .map(|v| parse(&v).ok_or_else(|| anyhow!("{name}: {v:?} is not {what}")))
            .transpose()
    }

    fn positive(name: &str) -> Result<Option<u64>> {
        parsed(name, "a number above 0", |v| {
            v.parse().ok().filter(|&n| n > 0)
        })
    }

    fn fault() -> Result<Option<(String, u64, Action)>> {
        const NAME: &str = "MIXTAPE_FAULT";
        let Some(spec) = var(NAME)? else {
            return Ok(None);
        };
        let malformed =
            || anyhow!("{NAME}: {spec:?} is not POINT@N, POINT@N:pause=SECS or POINT@N:hold=SECS");
        let (point, rest) = spec.split_once('@').ok_or_else(malformed)?;
        let (n, action) = if let Some((n, secs)) = rest.split_once(":pause=") {
            (n, Action::Pause(seconds(NAME, secs)?))
        } else if let Some((n, secs)) = rest.split_once(":hold=") {
            (n, Action::Hold(seconds(NAME, secs)?))
        } else {
            (rest, Action::Abort)
        };
        let n = n
            .parse()
            .ok()
            .filter(|&n: &u64| n > 0)
            .ok_or_else(malformed)?;
        if point.is_empty() {
            return Err(malformed());
        }
        Ok(Some((point.to_string(), n, action)))
    }

    fn read() -> Result<Hooks> {
        let look_ahead = parsed("MIXTAPE_LOOK_AHEAD", "always or never", |v| match v {
            "always" => Some(true),
            "never" => Some(false),
            _ => None,
        })?;
        let min_free_bytes = parsed("MIXTAPE_MIN_FREE_BYTES", "a number of bytes", |v| {
            v.parse().ok()
        })?;
        let lease_secs = parsed("MIXTAPE_LEASE_SECS", "a number of seconds", |v| {
            seconds("MIXTAPE_LEASE_SECS", v).ok()
        })?;
        Ok(Hooks {
            fault: fault()?,
            batch: positive("MIXTAPE_BATCH")?,
            export_pieces: positive("MIXTAPE_EXPORT_PARTS")?,
            look_ahead,
            min_free_bytes,
            worker_name: var("MIXTAPE_WORKER_NAME")?,
            lease_secs,
            s3_timeout_ms: positive("MIXTAPE_S3_TIMEOUT_MS")?,
        })
    }

    /// The hooks, or the reason the environment does not configure them.
    pub(super) fn hooks() -> Result<&'static Hooks, &'static str> {
        static HOOKS: OnceLock<Result<Hooks, String>> = OnceLock::new();
        HOOKS
            .get_or_init(|| read().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| e.as_str())
    }

    /// The hooks; a malformed environment was refused at start-up
    /// ([`super::check_environment`]), so here it only means "no hooks".
    pub(super) fn configured() -> Option<&'static Hooks> {
        hooks().ok()
    }

    static HITS: AtomicU64 = AtomicU64::new(0);
    static PAUSED: AtomicBool = AtomicBool::new(false);

    pub(super) fn paused() -> bool {
        PAUSED.load(Ordering::Relaxed)
    }

    pub(super) fn point(name: &str) {
        let Some((point, n, action)) = configured().and_then(|h| h.fault.as_ref()) else {
            return;
        };
        if point != name || HITS.fetch_add(1, Ordering::Relaxed) + 1 != *n {
            return;
        }
        match *action {
            Action::Pause(secs) => {
                eprintln!("fault injection: pausing {secs} s at {name}@{n}");
                PAUSED.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs_f64(secs));
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

    /// Waits `secs` seconds, or less once the file `MIXTAPE_FAULT_RELEASE`
    /// names exists (a test says when the held thread may go on).
    fn hold(secs: f64) {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let release = std::env::var_os("MIXTAPE_FAULT_RELEASE").map(std::path::PathBuf::from);
        while Instant::now() < until {
            if release.as_ref().is_some_and(|file| file.exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn fault_specs_parse_or_are_refused() {
            let parse = |spec: &str| {
                std::env::set_var("MIXTAPE_FAULT", spec);
                let got = fault();
                std::env::remove_var("MIXTAPE_FAULT");
                got
            };
            assert_eq!(
                parse("worker-change@5").unwrap(),
                Some(("worker-change".into(), 5, Action::Abort))
            );
            assert_eq!(
                parse("merge-partition@2:pause=1.5").unwrap(),
                Some(("merge-partition".into(), 2, Action::Pause(1.5)))
            );
            for bad in [
                "worker-change",
                "worker-change@x",
                "worker-change@0",
                "@3",
                "p@1:pause=-1",
                "p@1:hold=soon",
            ] {
                let e = parse(bad).unwrap_err().to_string();
                assert!(e.contains("MIXTAPE_FAULT"), "{bad}: {e}");
            }
        }
    }
}

/// Refuses a malformed testing hook in the environment, naming the variable
/// (with the `fault-injection` feature; without it there are no hooks and
/// nothing to refuse). The binaries call this before anything else.
pub fn check_environment() -> anyhow::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Err(e) = hooks::hooks() {
        anyhow::bail!("{e}");
    }
    Ok(())
}

/// Whether the process is in a `pause` (a stalled host): its other threads
/// (the lease keeper) stall too.
#[inline]
pub fn paused() -> bool {
    #[cfg(feature = "fault-injection")]
    return hooks::paused();
    #[cfg(not(feature = "fault-injection"))]
    false
}

/// Aborts, pauses or holds if this is the configured point's N-th hit.
#[inline]
pub fn point(_name: &str) {
    #[cfg(feature = "fault-injection")]
    hooks::point(_name);
}

/// The batch size workers use: `MIXTAPE_BATCH`, or `default`.
#[inline]
pub fn batch_size(default: u64) -> u64 {
    #[cfg(feature = "fault-injection")]
    return hooks::configured().and_then(|h| h.batch).unwrap_or(default);
    #[cfg(not(feature = "fault-injection"))]
    default
}

/// How many pieces the export cuts each playlist stream into:
/// `MIXTAPE_EXPORT_PARTS`, or `default` (the tests' inputs are far too small
/// to be cut by size, `crate::stages::export`).
#[inline]
pub fn export_pieces(default: u64) -> u64 {
    #[cfg(feature = "fault-injection")]
    return hooks::configured()
        .and_then(|h| h.export_pieces)
        .unwrap_or(default);
    #[cfg(not(feature = "fault-injection"))]
    default
}

/// Whether workers let simple changes wait for their lookups
/// (`crate::stages::apply`): `MIXTAPE_LOOK_AHEAD`, else `default` (the
/// tests' inputs are far too small to turn it on by size).
#[inline]
pub fn look_ahead(default: bool) -> bool {
    #[cfg(feature = "fault-injection")]
    return hooks::configured()
        .and_then(|h| h.look_ahead)
        .unwrap_or(default);
    #[cfg(not(feature = "fault-injection"))]
    default
}

/// The free space a decompression must leave, when `MIXTAPE_MIN_FREE_BYTES`
/// sets it.
#[inline]
pub fn min_free_bytes() -> Option<u64> {
    #[cfg(feature = "fault-injection")]
    return hooks::configured().and_then(|h| h.min_free_bytes);
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// The name a worker gives itself, when `MIXTAPE_WORKER_NAME` sets it.
pub fn worker_name() -> Option<String> {
    #[cfg(feature = "fault-injection")]
    return hooks::configured().and_then(|h| h.worker_name.clone());
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// The bound of a request to a bucket, when `MIXTAPE_S3_TIMEOUT_MS` sets it.
pub fn s3_timeout() -> Option<std::time::Duration> {
    #[cfg(feature = "fault-injection")]
    return hooks::configured()
        .and_then(|h| h.s3_timeout_ms)
        .map(std::time::Duration::from_millis);
    #[cfg(not(feature = "fault-injection"))]
    None
}

/// The lease when `--lease-secs` is not given, when `MIXTAPE_LEASE_SECS`
/// sets it.
pub fn lease_secs() -> Option<f64> {
    #[cfg(feature = "fault-injection")]
    return hooks::configured().and_then(|h| h.lease_secs);
    #[cfg(not(feature = "fault-injection"))]
    None
}
