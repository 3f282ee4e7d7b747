//! Workers that join a run (docs/GUIDE.md "Chunks, leases and joined workers"): the
//! harness with one local worker and `--chunks 6`, plus `worker --join`
//! processes started on their own, give the reference's bytes; a joined worker
//! killed mid-chunk loses its chunk when its lease expires and another worker
//! finishes it; a worker that stalls past its lease is fenced off: its late
//! commit is refused and the output is still exact.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mixtape::store::{Key, Location, Store};
use support::{gen, reference, rest_of, stderr, wait_for, TestCommand};

/// A generated case in `dir`, its reference output, and the paths.
struct Case {
    mixtape: PathBuf,
    changes: PathBuf,
    output: PathBuf,
    expected: reference::Outcome,
}

fn case(dir: &Path, seed: u64) -> Case {
    let generated = gen::case_of(seed, 3000);
    let mixtape = dir.join("mixtape.json");
    let changes = dir.join("changes.json");
    fs::write(&mixtape, &generated.mixtape).unwrap();
    fs::write(&changes, &generated.changes).unwrap();
    Case {
        expected: reference::run(&generated.mixtape, &generated.changes).unwrap(),
        mixtape,
        changes,
        output: dir.join("out.json"),
    }
}

impl Case {
    fn db(&self) -> PathBuf {
        self.output.with_file_name("out.json.work.db")
    }

    fn harness(&self, workers: usize, extra: &[&str]) -> Command {
        let mut cmd = TestCommand::harness();
        cmd.args(["--progress", "never", "-w", &workers.to_string()])
            .args(extra)
            .arg(&self.mixtape)
            .arg(&self.changes)
            .arg(&self.output);
        cmd.into_inner()
    }

    /// Plans `chunks` chunks and stops, with leases of `lease_secs`.
    fn plan(&self, chunks: usize, lease_secs: &str) {
        let o = self
            .harness(
                1,
                &["--stop-after", "plan", "--chunks", &chunks.to_string()],
            )
            .env("MIXTAPE_LEASE_SECS", lease_secs)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }

    /// A `worker --join` started on its own: its own working directory and a
    /// bare environment, sharing only the work database's path.
    fn joined_worker(&self, cwd: &Path, env: &[(&str, &str)]) -> Child {
        let mut cmd = TestCommand::worker();
        cmd.env_clear()
            .envs(env.iter().copied())
            .current_dir(cwd)
            .arg("--db")
            .arg(self.db())
            .arg("--join")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    }

    fn assert_exact(&self) {
        assert_eq!(
            fs::read_to_string(&self.output).unwrap(),
            self.expected.output
        );
        let rejects = fs::read_to_string(self.output.with_file_name("out.json.rejects.jsonl"));
        assert_eq!(rejects.unwrap(), self.expected.rejects);
    }
}

fn finish(child: Child) -> (Option<i32>, String) {
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn joined_workers_share_the_chunks_and_the_output_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let case = case(dir.path(), 11);
    case.plan(6, "30");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Small batches: the chunks take long enough for everyone to get some.
    let slow = [("MIXTAPE_BATCH", "20")];
    let first = case.joined_worker(a.path(), &slow);
    let second = case.joined_worker(b.path(), &slow);
    let o = case
        .harness(1, &[])
        .env("MIXTAPE_BATCH", "20")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (code_a, said_a) = finish(first);
    let (code_b, said_b) = finish(second);
    assert_eq!(code_a, Some(0), "{said_a}");
    assert_eq!(code_b, Some(0), "{said_b}");
    case.assert_exact();
    let by_joined = support::chunks_applied(&said_a) + support::chunks_applied(&said_b);
    assert!(
        (1..=6).contains(&by_joined),
        "joined workers applied {by_joined} chunk(s):\n{said_a}\n{said_b}"
    );
}

#[test]
fn a_killed_joined_worker_loses_its_chunk_when_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let case = case(dir.path(), 12);
    case.plan(3, "1");
    let elsewhere = tempfile::tempdir().unwrap();
    // Another host (by name, so its death cannot be seen from here): it aborts,
    // as kill -9 would, in the middle of its first chunk, after some commits.
    let doomed = case.joined_worker(
        elsewhere.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "elsewhere:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@35"),
        ],
    );
    let (code, said) = finish(doomed);
    assert_eq!(code, None, "killed by a signal: {said}");
    assert!(said.contains("aborting at worker-change@35"), "{said}");
    let db = case.db();
    let o = TestCommand::harness()
        .args(["--progress", "never", "-w", "2"])
        .arg(&case.mixtape)
        .arg(&case.changes)
        .arg(&case.output)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!db.exists());
    case.assert_exact();
}

#[test]
fn a_stalled_worker_is_fenced_off_and_its_late_commit_refused() {
    let dir = tempfile::tempdir().unwrap();
    let case = case(dir.path(), 13);
    case.plan(1, "3");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A stalls for 5 s in the chunk with a batch in hand; its lease (3 s)
    // expires meanwhile.
    let mut stalled = case.joined_worker(
        a.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "stalled:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@25:pause=5"),
        ],
    );
    let mut stalled_err = stalled.stderr.take().unwrap();
    let stalled_said = wait_for(&mut stalled_err, "pausing");
    support::wait_until_lease_expired(&Location::File(case.db()), 0);
    // B takes the chunk over (A's lease has expired), and stalls too, before
    // its first commit but within its own lease: when A wakes, the chunk is
    // still where A left it, and only the lease says A may no longer write.
    let mut taker = case.joined_worker(
        b.path(),
        &[
            ("MIXTAPE_WORKER_NAME", "taker:1"),
            ("MIXTAPE_BATCH", "10"),
            ("MIXTAPE_FAULT", "worker-change@1:pause=2.5"),
        ],
    );
    let mut taker_err = taker.stderr.take().unwrap();
    let taker_said = wait_for(&mut taker_err, "pausing");
    let stalled_status = stalled.wait().unwrap();
    let stalled_said = rest_of(stalled_err, stalled_said);
    assert!(stalled_status.success(), "{stalled_said}");
    assert!(
        stalled_said.contains("was taken over by another worker"),
        "{stalled_said}"
    );
    let taker_status = taker.wait().unwrap();
    let taker_said = rest_of(taker_err, taker_said);
    assert!(taker_status.success(), "{taker_said}");
    assert_eq!(support::chunks_applied(&taker_said), 1, "{taker_said}");
    assert!(!taker_said.contains("taken over"), "{taker_said}");
    let o = case.harness(1, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    case.assert_exact();
}

#[test]
fn a_joined_worker_helps_with_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let case = case(dir.path(), 14);
    let o = case
        .harness(1, &["--stop-after", "apply", "--chunks", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, said) = finish(case.joined_worker(elsewhere.path(), &[]));
    assert_eq!(code, Some(0), "{said}");
    // It merged every partition (the harness was not running).
    let store = Store::open(&Location::File(case.db())).unwrap();
    let partitions = store.meta_number(Key::Partitions).unwrap();
    assert_eq!(store.merged_partitions().unwrap().len() as u64, partitions);
    assert!(
        said.contains(&format!("worker: merged {partitions} partition(s)")),
        "{said}"
    );
    drop(store);
    let o = case.harness(1, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    case.assert_exact();
}
