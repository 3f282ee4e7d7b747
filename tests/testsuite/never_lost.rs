//! What is never lost (docs/GUIDE.md "What is never lost"): one test for each way a
//! run used to destroy a file or leak one with exit 0, each seen to fail on
//! the build before the fix (`MIXTAPE_TEST_BIN_DIR=old/release cargo test
//! --test never_lost` runs them against another build).
//!
//! - paths that collide: the rejects report, the run report or the work
//!   database named as OUTPUT, `--strict` with the rejects report on an
//!   existing document, `--fresh` with `--db` on an input, OUTPUT = CHANGES
//!   (also through a hard link and a symlink), `-` and paths that look like
//!   flags, the printed "reproduce by hand" command pasted into a shell;
//! - a crash after OUTPUT is in place, in place (OUTPUT = MIXTAPE), on both
//!   stores;
//! - a hand-run worker on PostgreSQL beside a harness; the merge marked done
//!   only when every partition is merged, on the server;
//! - a lease kept while one change takes three leases;
//! - decompression on a small file system;
//! - a symlink planted where a kept text is made; the worker cache;
//! - the modes of work files; bounds on flags and inputs; directory syncs
//!   after each rename that publishes a file.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{fixtures, pg, stderr, wait_for, TestCommand};

/// A directory holding copies of the fixtures, where every test runs.
fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["mixtape.json", "changes.json"] {
        fs::copy(fixtures().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn expected_output() -> String {
    fs::read_to_string(fixtures().join("expected-output.json")).unwrap()
}

fn expected_rejects() -> String {
    fs::read_to_string(fixtures().join("expected-rejects.jsonl")).unwrap()
}

/// The harness, run in `dir` with two workers and no bars.
fn harness_in(dir: &Path) -> TestCommand {
    let mut cmd = TestCommand::harness();
    cmd.current_dir(dir)
        .args(["--progress", "never", "-w", "2"]);
    cmd
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    harness_in(dir).args(args).output().unwrap()
}

/// Runs `cmd` to its end, or kills it after `secs` seconds (`None`).
fn output_within(mut cmd: TestCommand, secs: u64) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().unwrap())
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// Asserts a usage error (exit 2) whose message says `says`.
fn assert_refused(o: &Output, says: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, got: {err}");
    for s in says {
        assert!(err.contains(s), "{s:?} not in: {err}");
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The entries of `dir` whose names start with `prefix`.
fn entries_starting(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

// ---- paths that collide ----

#[test]
fn the_rejects_report_named_as_output_is_refused() {
    let dir = fixture_dir();
    fs::write(dir.path().join("out.json"), "previous").unwrap();
    let o = run_in(
        dir.path(),
        &[
            "--rejects",
            "out.json",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert_refused(
        &o,
        &["OUTPUT out.json", "rejects report out.json", "same file"],
    );
    assert_eq!(read(&dir.path().join("out.json")), "previous");
    assert!(entries_starting(dir.path(), "out.json.").is_empty());
}

#[test]
fn the_run_report_named_as_output_is_refused() {
    let dir = fixture_dir();
    let o = run_in(
        dir.path(),
        &[
            "--summary-json",
            "out.json",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert_refused(&o, &["OUTPUT out.json", "--summary-json out.json"]);
    assert!(!dir.path().join("out.json").exists());
}

#[test]
fn the_work_database_named_as_output_is_refused() {
    let dir = fixture_dir();
    let o = run_in(
        dir.path(),
        &[
            "--db",
            "out.json",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert_refused(&o, &["OUTPUT out.json", "work database out.json"]);
    // And a companion of the database (its WAL) on the rejects report.
    let o = run_in(
        dir.path(),
        &[
            "--rejects",
            "o.json.work.db-wal",
            "mixtape.json",
            "changes.json",
            "o.json",
        ],
    );
    assert_refused(&o, &["o.json.work.db-wal", "WAL"]);
}

#[test]
fn strict_with_the_rejects_report_on_an_existing_document_is_refused() {
    let dir = fixture_dir();
    let doc = dir.path().join("doc.json");
    fs::copy(dir.path().join("mixtape.json"), &doc).unwrap();
    let before = read(&doc);
    let o = run_in(
        dir.path(),
        &[
            "--strict",
            "--rejects",
            "doc.json",
            "mixtape.json",
            "changes.json",
            "doc.json",
        ],
    );
    assert_refused(&o, &["OUTPUT doc.json", "rejects report doc.json"]);
    assert_eq!(read(&doc), before);
}

#[test]
fn fresh_deletes_only_a_work_database() {
    let dir = fixture_dir();
    let mixtape = dir.path().join("mixtape.json");
    let before = read(&mixtape);
    let o = run_in(
        dir.path(),
        &[
            "--fresh",
            "--db",
            "mixtape.json",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert_refused(&o, &["MIXTAPE mixtape.json", "work database mixtape.json"]);
    assert_eq!(read(&mixtape), before);
    // A file that is no input but no work database either: kept, with or
    // without --fresh.
    fs::write(dir.path().join("notes.txt"), "my notes").unwrap();
    for extra in [&["--fresh"][..], &[][..]] {
        let mut args = extra.to_vec();
        args.extend([
            "--db",
            "notes.txt",
            "mixtape.json",
            "changes.json",
            "out.json",
        ]);
        let o = run_in(dir.path(), &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("notes.txt is not a work database"), "{err}");
        assert_eq!(read(&dir.path().join("notes.txt")), "my notes");
        assert_eq!(entries_starting(dir.path(), "notes.txt"), ["notes.txt"]);
    }
    // A real work database is still replaced by --fresh.
    let kept = run_in(
        dir.path(),
        &[
            "--stop-after",
            "plan",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert!(kept.status.success(), "{}", stderr(&kept));
    let fresh = run_in(
        dir.path(),
        &["--fresh", "mixtape.json", "changes.json", "out.json"],
    );
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(read(&dir.path().join("out.json")), expected_output());
}

#[test]
fn output_equal_to_changes_is_refused_however_it_is_named() {
    let dir = fixture_dir();
    let changes = dir.path().join("changes.json");
    let before = read(&changes);
    fs::hard_link(&changes, dir.path().join("hard.json")).unwrap();
    std::os::unix::fs::symlink("changes.json", dir.path().join("soft.json")).unwrap();
    for output in [
        "changes.json",
        "hard.json",
        "soft.json",
        "./sub/../changes.json",
    ] {
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        let o = run_in(dir.path(), &["mixtape.json", "changes.json", output]);
        assert_refused(&o, &["CHANGES changes.json", "OUTPUT", "same file"]);
        assert_eq!(read(&changes), before, "{output}");
    }
}

#[test]
fn dash_is_a_usage_error_and_paths_like_flags_reach_the_workers() {
    let dir = fixture_dir();
    // `-` is standard input or output for the inputs and OUTPUT (tests/testsuite/stdio.rs);
    // anywhere else it is refused, and never becomes a file named `-`.
    for args in [
        &["--db", "-", "mixtape.json", "changes.json", "out.json"][..],
        &["--rejects", "-", "mixtape.json", "changes.json", "out.json"][..],
        &["-", "-", "out.json"][..],
    ] {
        let o = run_in(dir.path(), args);
        assert_refused(&o, &["`-`"]);
    }
    assert!(entries_starting(dir.path(), "-").is_empty());
    // An OUTPUT that starts with `-` is a file like any other.
    let o = run_in(
        dir.path(),
        &["mixtape.json", "changes.json", "--", "-o.json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&dir.path().join("-o.json")), expected_output());
    assert_eq!(
        entries_starting(dir.path(), "-"),
        ["-o.json", "-o.json.rejects.jsonl"]
    );
}

#[test]
fn the_printed_reproduce_command_works_when_pasted_into_a_shell() {
    let dir = fixture_dir();
    let odd = dir.path().join("my dir");
    fs::create_dir(&odd).unwrap();
    let failed = harness_in(&odd)
        .env("MIXTAPE_FAULT", "worker-change@2")
        .args(["../mixtape.json", "../changes.json", "--", "-it's.json"])
        .output()
        .unwrap();
    let err = stderr(&failed);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    let command = err
        .lines()
        .skip_while(|l| !l.contains("to reproduce by hand:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no command in: {err}"))
        .trim()
        .to_string();
    let pasted = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(&odd)
        .env_remove("MIXTAPE_FAULT")
        .output()
        .unwrap();
    assert!(pasted.status.success(), "{command}: {}", stderr(&pasted));
    assert!(stderr(&pasted).contains("change 0:") || stderr(&pasted).contains("change 12:"));
    // The same harness command then finishes the run.
    let o = harness_in(&odd)
        .args(["../mixtape.json", "../changes.json", "--", "-it's.json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&odd.join("-it's.json")), expected_output());
}

// ---- a crash after OUTPUT is in place ----

/// Runs in place (OUTPUT = MIXTAPE) with a crash just after OUTPUT is
/// published, then the same command again: the document must be what one
/// application gives, the work store gone.
fn crash_after_publishing_in_place(extra: &[&str], store_is_gone: impl Fn(&Path) -> bool) {
    let dir = fixture_dir();
    let doc = dir.path().join("doc.json");
    fs::copy(dir.path().join("mixtape.json"), &doc).unwrap();
    let mut args = extra.to_vec();
    args.extend([
        "--summary-json",
        "report.json",
        "doc.json",
        "changes.json",
        "doc.json",
    ]);
    let crashed = harness_in(dir.path())
        .env("MIXTAPE_FAULT", "output-published@1")
        .args(&args)
        .output()
        .unwrap();
    assert!(
        !crashed.status.success(),
        "the fault did not fire: {}",
        stderr(&crashed)
    );
    assert!(stderr(&crashed).contains("aborting at output-published@1"));
    assert_eq!(read(&doc), expected_output(), "published before the crash");
    assert!(
        !store_is_gone(dir.path()),
        "the crash left no work store to find"
    );
    let again = run_in(dir.path(), &args);
    let err = stderr(&again);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("already in place"), "{err}");
    assert!(!err.contains("starting fresh"), "{err}");
    assert_eq!(read(&doc), expected_output(), "applied twice");
    assert_eq!(
        read(&dir.path().join("doc.json.rejects.jsonl")),
        expected_rejects()
    );
    let report: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("report.json"))).unwrap();
    assert_eq!(report["output_written"], true);
    assert_eq!(report["counts"]["applied"], 10);
    assert!(
        store_is_gone(dir.path()),
        "the work store was not cleaned up"
    );
    assert!(entries_starting(dir.path(), "doc.json.work").is_empty());
}

#[test]
fn a_crash_after_output_is_in_place_applies_nothing_twice() {
    crash_after_publishing_in_place(&[], |dir| entries_starting(dir, "doc.json.work").is_empty());
}

#[test]
fn a_crash_after_output_is_in_place_applies_nothing_twice_on_postgres() {
    let Some(server) = pg::server() else { return };
    let db = server.database("published");
    let url = db.url();
    let schema_exists = || {
        db.client()
            .query_one(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'mixtape'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            > 0
    };
    crash_after_publishing_in_place(&["--db", &url], |_| !schema_exists());
}

// ---- hand-run workers on PostgreSQL ----

#[test]
fn a_hand_run_worker_on_postgres_refuses_to_run_beside_a_harness() {
    let Some(server) = pg::server() else { return };
    let db = server.database("byhand");
    let dir = fixture_dir();
    let mut running = harness_in(dir.path())
        .env("MIXTAPE_FAULT", "merge-partition@1:pause=4")
        .args([
            "--db",
            &db.url(),
            "mixtape.json",
            "changes.json",
            "out.json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = running.stderr.take().unwrap();
    let said = wait_for(&mut err, "fault injection: pausing");
    let by_hand = TestCommand::worker()
        .env("PGPASSWORD", db.password())
        .args(["--db", &db.url_without_password(), "--chunk", "0", "--redo"])
        .output()
        .unwrap();
    let worker_said = stderr(&by_hand);
    assert!(
        !by_hand.status.success(),
        "a worker ran beside the harness: {worker_said}"
    );
    assert!(worker_said.contains("another harness run"), "{worker_said}");
    let status = running.wait().unwrap();
    let rest = support::rest_of(err, said);
    assert!(status.success(), "{rest}");
    assert_eq!(read(&dir.path().join("out.json")), expected_output());
    assert_eq!(
        read(&dir.path().join("out.json.rejects.jsonl")),
        expected_rejects()
    );
}

/// The merge is marked done only when every partition is in `merged`, on the
/// server as in the SQLite file (whose unit test is in src/store.rs).
#[test]
fn the_merge_is_done_only_when_every_partition_is_merged_on_postgres() {
    use mixtape::stages::plan::{Chunk, Form, Plan};
    use mixtape::stages::Stage;
    use mixtape::store::{Location, PartitionResults, Store};
    let Some(server) = pg::server() else { return };
    let db = server.database("merged");
    let dir = tempfile::tempdir().unwrap();
    let location = Location::from_argument(db.url().as_ref(), &dir.path().join("local")).unwrap();
    let store = Store::create(&location).unwrap();
    let chunk = Chunk {
        start: 0,
        end: 10,
        first_index: 0,
        changes: 2,
    };
    let plan = Plan {
        form: Form::Lines,
        changes: 2,
        chunks: vec![chunk],
    };
    store.save_plan(&plan, 4).unwrap();
    let commit = |part| {
        store
            .commit_partition(part, &PartitionResults::default())
            .unwrap()
    };
    (0..3).for_each(commit);
    let early = store.finish_merge().unwrap_err().to_string();
    assert!(early.contains("3 of 4 partitions"), "{early}");
    assert!(!store.is_done(Stage::Merge).unwrap());
    commit(3);
    store.reset_chunk(0).unwrap(); // a worker --redo meanwhile
    assert!(store.finish_merge().is_err());
    (0..4).for_each(commit);
    store.finish_merge().unwrap();
    assert!(store.is_done(Stage::Merge).unwrap());
}

// ---- leases ----

#[test]
fn a_lease_is_kept_while_one_change_takes_three_leases() {
    let dir = fixture_dir();
    let started = Instant::now();
    // Three chunks of eight changes for two workers: one of them applies two
    // chunks, and its twelfth change takes 3.5 leases of 1 s while the other
    // waits for chunks to free up.
    let o = harness_in(dir.path())
        .env("MIXTAPE_LEASE_SECS", "1")
        .env("MIXTAPE_FAULT", "worker-change@12:hold=3.5")
        .args([
            "--chunks",
            "3",
            "--keep-db",
            "mixtape.json",
            "changes.json",
            "out.json",
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs_f64(3.5),
        "the change was not held: the fault did not fire"
    );
    assert!(!err.contains("taken over"), "{err}");
    assert_eq!(read(&dir.path().join("out.json")), expected_output());
    assert_eq!(
        read(&dir.path().join("out.json.rejects.jsonl")),
        expected_rejects()
    );
    // Every chunk was claimed once: no lease was ever taken over.
    let conn = rusqlite::Connection::open(dir.path().join("out.json.work.db")).unwrap();
    let tokens: Vec<(i64, i64)> = conn
        .prepare("SELECT chunk, lease_token FROM chunks ORDER BY chunk")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tokens, [(0, 1), (1, 1), (2, 1)]);
}

// ---- decompression and the disk ----

/// A small tmpfs, unmounted when dropped; `None` where mounting is not
/// allowed.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn decompression_stops_before_the_disk_is_full() {
    let dir = fixture_dir();
    // 56 MiB of white space, then one change: JSON Lines, valid, and 300 kB
    // compressed.
    let mut text = vec![b' '; 56 << 20];
    text.extend_from_slice(b"\n{\"op\":\"remove_playlist\",\"playlist_id\":\"1\"}\n");
    let compressed = zstd::encode_all(&text[..], 3).unwrap();
    fs::write(dir.path().join("changes.zst"), compressed).unwrap();
    let small = dir.path().join("small");
    let disk = SmallDisk::mount(&small, "64m");
    let mut cmd = harness_in(dir.path());
    if disk.is_none() {
        // Without the right to mount, the margin is made larger than the
        // disk instead (a testing aid): the same refusal, on any disk.
        eprintln!("cannot mount a tmpfs here: using MIXTAPE_MIN_FREE_BYTES instead");
        fs::create_dir_all(&small).unwrap();
        cmd.env("MIXTAPE_MIN_FREE_BYTES", (1u64 << 62).to_string());
    }
    let o = cmd
        .args(["mixtape.json", "changes.zst", "small/out.json"])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for says in [
        "stopped before the disk is full",
        "bytes of text were written to",
        "small/out.json.work.db.changes.partial",
        "bytes are left on that file system",
    ] {
        assert!(err.contains(says), "{says:?} not in: {err}");
    }
    assert!(!small.join("out.json").exists());
    assert!(!small.join("out.json.work.db.changes.partial").exists());
    drop(disk);
}

// ---- files made in shared places ----

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn nothing_is_written_through_a_planted_symlink() {
    let dir = fixture_dir();
    let changes = read(&dir.path().join("changes.json"));
    fs::write(dir.path().join("changes.json.gz"), gzip(changes.as_bytes())).unwrap();
    // A run killed while decompressing leaves its partial text; someone puts
    // a symlink in its place before the run is resumed.
    let args = ["mixtape.json", "changes.json.gz", "out.json"];
    let killed = harness_in(dir.path())
        .env("MIXTAPE_FAULT", "decompress-block@1")
        .args(args)
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the fault did not fire");
    let partial = dir.path().join("out.json.work.db.changes.partial");
    assert!(partial.exists());
    let victim = dir.path().join("victim.txt");
    fs::write(&victim, "precious").unwrap();
    fs::remove_file(&partial).unwrap();
    std::os::unix::fs::symlink(&victim, &partial).unwrap();
    let o = run_in(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&victim), "precious");
    assert_eq!(read(&dir.path().join("out.json")), expected_output());
}

#[test]
fn a_workers_cache_is_private_and_checked_before_use() {
    let Some(server) = pg::server() else { return };
    let db = server.database("cache");
    let dir = fixture_dir();
    let planned = run_in(
        dir.path(),
        &[
            "--db",
            &db.url(),
            "--stop-after",
            "plan",
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert!(planned.status.success(), "{}", stderr(&planned));
    // A worker without HOME or XDG_CACHE_HOME: a private directory of its own
    // in the temporary directory, not a shared one.
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).unwrap();
    let joined = TestCommand::worker()
        .env_clear()
        .env("PGPASSWORD", db.password())
        .env("TMPDIR", &tmp)
        .args(["--db", &db.url_without_password(), "--join"])
        .output()
        .unwrap();
    assert!(joined.status.success(), "{}", stderr(&joined));
    let uid = nix::unistd::getuid();
    let private = tmp.join(format!("mixtape-cache-{uid}"));
    assert_eq!(entries_starting(&tmp, ""), [format!("mixtape-cache-{uid}")]);
    assert_eq!(mode(&private), 0o700);
    let cached = entries_starting(&private, "store.");
    assert_eq!(cached.len(), 3, "{cached:?}");
    for name in &cached {
        assert_eq!(mode(&private.join(name)), 0o600, "{name}");
    }
    // A damaged index in a cache is not trusted: fetched again.
    let cache = dir.path().join("cache");
    let run_id: String = db
        .client()
        .query_one("SELECT value FROM mixtape.meta WHERE key = 'run_id'", &[])
        .unwrap()
        .get(0);
    let planted = cache
        .join("mixtape")
        .join(format!("store.{run_id}.songs.idx"));
    fs::create_dir_all(planted.parent().unwrap()).unwrap();
    fs::write(&planted, "not the index").unwrap();
    let redo = TestCommand::worker()
        .env_clear()
        .env("PGPASSWORD", db.password())
        .env("XDG_CACHE_HOME", &cache)
        .args(["--db", &db.url_without_password(), "--chunk", "0", "--redo"])
        .output()
        .unwrap();
    assert!(redo.status.success(), "{}", stderr(&redo));
    assert_ne!(fs::read(&planted).unwrap(), b"not the index");
    assert_eq!(mode(&planted), 0o600);
    let finished = run_in(
        dir.path(),
        &[
            "--db",
            &db.url(),
            "mixtape.json",
            "changes.json",
            "out.json",
        ],
    );
    assert!(finished.status.success(), "{}", stderr(&finished));
    assert_eq!(read(&dir.path().join("out.json")), expected_output());
    assert_eq!(
        read(&dir.path().join("out.json.rejects.jsonl")),
        expected_rejects()
    );
}

// ---- private data ----

#[test]
fn work_files_are_private_whatever_the_umask() {
    let dir = fixture_dir();
    let mixtape = dir.path().join("mixtape.json");
    fs::set_permissions(&mixtape, fs::Permissions::from_mode(0o600)).unwrap();
    let changes = read(&dir.path().join("changes.json"));
    fs::write(dir.path().join("changes.json.gz"), gzip(changes.as_bytes())).unwrap();
    let mut cmd = harness_in(dir.path());
    cmd.env("MIXTAPE_FAULT", "merge-partition@1:pause=3")
        .args(["mixtape.json", "changes.json.gz", "out.json"])
        .stderr(Stdio::piped());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    let mut running = cmd.spawn().unwrap();
    let mut err = running.stderr.take().unwrap();
    let said = wait_for(&mut err, "fault injection: pausing");
    // In the middle of the merge: the database, its WAL and shared memory,
    // the lock, the id indexes and the kept text are all there.
    let work = entries_starting(dir.path(), "out.json.work.db");
    for expected in [
        "out.json.work.db",
        "out.json.work.db-wal",
        "out.json.work.db-shm",
        "out.json.work.db.lock",
        "out.json.work.db.users.idx",
        "out.json.work.db.songs.idx",
        "out.json.work.db.playlists.idx",
        "out.json.work.db.changes",
    ] {
        assert!(
            work.iter().any(|w| w == expected),
            "{expected} not in {work:?}"
        );
    }
    for name in &work {
        assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
    }
    let status = running.wait().unwrap();
    assert!(status.success(), "{}", support::rest_of(err, said));
    // OUTPUT and the reports keep their rules: 0666 less the umask.
    assert_eq!(mode(&dir.path().join("out.json")), 0o644);
    assert_eq!(mode(&dir.path().join("out.json.rejects.jsonl")), 0o644);
}

// ---- bounds ----

#[test]
fn out_of_range_flags_are_usage_errors_not_panics() {
    let dir = fixture_dir();
    for flag in [
        &["-w", "100000"][..],
        &["--chunks", "18446744073709551615"][..],
        &["--lease-secs", "1e20"][..],
        &["--lease-secs", "NaN"][..],
        &["--lease-secs", "-1"][..],
    ] {
        let mut cmd = harness_in(dir.path());
        cmd.args(flag)
            .args(["mixtape.json", "changes.json", "out.json"]);
        let o =
            output_within(cmd, 30).unwrap_or_else(|| panic!("{flag:?}: still running after 30 s"));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flag:?}: {err}");
        assert!(!err.contains("panicked"), "{flag:?}: {err}");
        assert!(!dir.path().join("out.json").exists());
    }
}

#[test]
fn inputs_that_are_not_regular_files_are_clear_errors() {
    let dir = fixture_dir();
    nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (args, says) in [
        (
            ["/dev/zero", "changes.json", "out.json"],
            "MIXTAPE /dev/zero is not a regular file (it is a character device)",
        ),
        (
            ["mixtape.json", "fifo", "out.json"],
            "CHANGES fifo is not a regular file (it is a named pipe)",
        ),
    ] {
        let mut cmd = harness_in(dir.path());
        cmd.args(args);
        let o =
            output_within(cmd, 20).unwrap_or_else(|| panic!("{args:?}: still running after 20 s"));
        let (status, err) = (o.status, stderr(&o));
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{says:?} not in: {err}");
    }
}

// ---- durability ----

/// The renames and syncs (and writes, with `writes`) of a successful run of
/// the harness with `args` in `dir`, as `strace -f -y` lines (file
/// descriptors shown with their paths); `None` when strace is not installed.
fn renames_and_syncs(dir: &Path, writes: bool, args: &[&str]) -> Option<Vec<String>> {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed");
        return None;
    }
    let trace = dir.join("trace.txt");
    let harness = TestCommand::harness().get_program().to_owned();
    let o = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            if writes {
                "trace=rename,renameat,renameat2,fsync,fdatasync,write,pwrite64"
            } else {
                "trace=rename,renameat,renameat2,fsync,fdatasync"
            },
            "-o",
        ])
        .arg(&trace)
        .arg(harness)
        .args(["--progress", "never"])
        .args(args)
        .current_dir(dir)
        .env_remove("MIXTAPE_FAULT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    Some(read(&trace).lines().map(str::to_string).collect())
}

#[test]
fn each_rename_that_publishes_a_file_is_followed_by_a_directory_sync() {
    let dir = fixture_dir();
    let changes = read(&dir.path().join("changes.json"));
    fs::write(dir.path().join("changes.json.gz"), gzip(changes.as_bytes())).unwrap();
    let args = ["-w", "1", "mixtape.json", "changes.json.gz", "out.json"];
    let Some(lines) = renames_and_syncs(dir.path(), false, &args) else {
        return;
    };
    let dir_name = dir.path().canonicalize().unwrap().display().to_string();
    let dir_synced_after = |i: usize| {
        lines[i + 1..]
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&format!("<{dir_name}>")))
    };
    for published in [
        "out.json\"",
        "out.json.rejects.jsonl\"",
        "out.json.work.db\"",
        "out.json.work.db.changes\"",
        "out.json.work.db.users.idx\"",
    ] {
        let renames: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("rename") && lines[i].trim_end().contains(published))
            .collect();
        assert!(!renames.is_empty(), "no rename to {published} in the trace");
        for i in renames {
            assert!(dir_synced_after(i), "no directory sync after: {}", lines[i]);
        }
    }
}

/// The store's record of OUTPUT being published is on disk before OUTPUT is
/// renamed into place: after a power loss an in-place run must still know
/// that its OUTPUT is the changed document (docs/GUIDE.md "What is never lost"). The
/// work database's commits are otherwise not synced (`synchronous = NORMAL`
/// syncs its WAL only at a checkpoint), so the WAL is synced after the
/// record's last write and before the rename.
#[test]
fn the_publishing_record_is_synced_before_output_is_renamed() {
    let dir = fixture_dir();
    let args = ["-w", "2", "mixtape.json", "changes.json", "out.json"];
    let Some(lines) = renames_and_syncs(dir.path(), true, &args) else {
        return;
    };
    let renamed = lines
        .iter()
        .position(|l| l.contains("rename") && l.trim_end().contains("out.json\")"))
        .expect("no rename to out.json in the trace");
    let wal = "out.json.work.db-wal>";
    let last_write = lines[..renamed]
        .iter()
        .rposition(|l| l.contains("write") && l.contains(wal))
        .expect("no write to the work database's WAL before the rename");
    assert!(
        lines[last_write + 1..renamed]
            .iter()
            .any(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(wal)),
        "the WAL is not synced between its last write and the rename:\n{}\n{}",
        lines[last_write],
        lines[renamed]
    );
}
