//! Shared test support: running the real binaries in a fresh temporary directory,
//! comparing files with a readable diff, the reference implementation and the
//! case generator.

#![allow(dead_code)]

pub mod gen;
pub mod netns;
pub mod pg;
pub mod reference;
pub mod s3_server;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The harness executable Cargo built for these tests.
pub fn harness_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

/// One of the project's binaries, as every test runs it: the real executable
/// Cargo built, with none of the testing aids (`MIXTAPE_FAULT`, ...) inherited
/// from the environment. Derefs to [`Command`] for arguments, environment,
/// pipes and spawning.
pub struct TestCommand(Command);

impl TestCommand {
    pub fn harness() -> TestCommand {
        TestCommand::of(env!("CARGO_BIN_EXE_harness"))
    }

    pub fn worker() -> TestCommand {
        TestCommand::of(env!("CARGO_BIN_EXE_worker"))
    }

    /// The harness, run on `host` (`None`: this one).
    pub fn harness_on(host: Option<&netns::Host>) -> TestCommand {
        TestCommand::of_on(env!("CARGO_BIN_EXE_harness"), host)
    }

    /// A worker, run on `host` (`None`: this one).
    pub fn worker_on(host: Option<&netns::Host>) -> TestCommand {
        TestCommand::of_on(env!("CARGO_BIN_EXE_worker"), host)
    }

    fn of(program: &str) -> TestCommand {
        TestCommand::of_on(program, None)
    }

    /// `MIXTAPE_TEST_BIN_DIR`, when set, runs the binaries of another build
    /// instead (to watch a new test fail on an older build).
    fn of_on(program: &str, host: Option<&netns::Host>) -> TestCommand {
        let program = match std::env::var_os("MIXTAPE_TEST_BIN_DIR") {
            Some(dir) => PathBuf::from(dir).join(Path::new(program).file_name().unwrap()),
            None => PathBuf::from(program),
        };
        let mut cmd = match host {
            Some(host) => host.command(&program),
            None => Command::new(program),
        };
        without_testing_aids(&mut cmd);
        TestCommand(cmd)
    }
}

/// Removes from `cmd`'s environment every testing aid a test run might have
/// inherited (CONTRIBUTING.md "Testing aids"): each test sets the ones it wants.
pub fn without_testing_aids(cmd: &mut Command) {
    for aid in [
        "MIXTAPE_FAULT",
        "MIXTAPE_FAULT_RELEASE",
        "MIXTAPE_BATCH",
        "MIXTAPE_BENCH",
        "MIXTAPE_LEASE_SECS",
        "MIXTAPE_WORKER_NAME",
        "MIXTAPE_MIN_FREE_BYTES",
        "MIXTAPE_LOOK_AHEAD",
    ] {
        cmd.env_remove(aid);
    }
}

impl TestCommand {
    /// The command itself, to keep and hand on.
    pub fn into_inner(self) -> Command {
        self.0
    }
}

impl Deref for TestCommand {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.0
    }
}

impl DerefMut for TestCommand {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.0
    }
}

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Runs the harness with `args` (progress off), returning its output.
pub fn harness(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = TestCommand::harness();
    cmd.arg("--progress").arg("never");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("running harness")
}

/// Runs the harness on MIXTAPE, CHANGES, OUTPUT with `workers` and extra args.
pub fn run(
    dir: &Path,
    mixtape: &Path,
    changes: &Path,
    out: &str,
    workers: usize,
    extra: &[&str],
) -> Output {
    let mut cmd = TestCommand::harness();
    cmd.arg("--progress")
        .arg("never")
        .arg("--workers")
        .arg(workers.to_string());
    cmd.args(extra);
    cmd.arg(mixtape).arg(changes).arg(dir.join(out));
    cmd.output().expect("running harness")
}

/// Runs the harness on the bundled fixtures, writing `out` in `dir`.
pub fn run_on_fixtures(dir: &Path, out: &str, workers: usize, extra: &[&str]) -> Output {
    let f = fixtures();
    run(
        dir,
        &f.join("mixtape.json"),
        &f.join("changes.json"),
        out,
        workers,
        extra,
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Panics with the first differing line (and a little context) when `actual`
/// differs from `expected`.
pub fn assert_same_text(what: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let first = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let from = first.saturating_sub(2);
    let mut msg = format!(
        "{what} differs at line {} (expected {} lines, got {}):\n",
        first + 1,
        e.len(),
        a.len()
    );
    for i in from..(first + 3) {
        if let Some(x) = e.get(i) {
            msg.push_str(&format!("  expected {:>4}: {x}\n", i + 1));
        }
        if let Some(y) = a.get(i) {
            msg.push_str(&format!("  actual   {:>4}: {y}\n", i + 1));
        }
    }
    if e.len() == a.len() && first == e.len() {
        msg.push_str("  (only the final newline differs)\n");
    }
    panic!("{msg}");
}

/// Reads a child's stderr until it says `what`; returns what it said so far.
pub fn wait_for(err: &mut std::process::ChildStderr, what: &str) -> Vec<u8> {
    use std::io::Read;
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&said).contains(what) {
        assert_eq!(
            err.read(&mut byte).unwrap(),
            1,
            "ended early: {}",
            String::from_utf8_lossy(&said)
        );
        said.push(byte[0]);
    }
    said
}

/// The rest of a child's stderr after `said`, once it has ended.
pub fn rest_of(mut err: std::process::ChildStderr, mut said: Vec<u8>) -> String {
    use std::io::Read;
    err.read_to_end(&mut said).unwrap();
    String::from_utf8_lossy(&said).into_owned()
}

/// Waits (bounded: 20 s) until no live lease holds chunk `chunk` of the store
/// at `location`: the state a test of lease expiry waits for, instead of a
/// time. Asks the store by claiming the chunk as "probe" (refused while the
/// lease lives) and, once that succeeds, releases it at once: the next worker
/// takes it as it would take an expired one, and the old holder is fenced off
/// just the same (every claim raises the token).
pub fn wait_until_lease_expired(location: &mixtape::store::Location, chunk: u64) {
    let store = mixtape::store::Store::open(location).expect("opening the store");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match store.claim_chunk(chunk, "probe:0", std::time::Duration::from_secs(60)) {
            Ok(claim) => {
                store
                    .release_lease(claim)
                    .expect("releasing the probe's claim");
                return;
            }
            Err(e) if e.is::<mixtape::store::Leased>() => {}
            Err(e) => panic!("probing chunk {chunk}: {e:#}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease on chunk {chunk} never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Chunks a worker's stderr says it applied.
pub fn chunks_applied(said: &str) -> usize {
    said.lines()
        .filter(|l| l.starts_with("worker: chunk ") && l.contains(" changes, "))
        .count()
}
