//! Crash safety: a crash, `kill -9` or Ctrl-C at any point never leaves a
//! half-written OUTPUT, and running the same command again finishes with exactly
//! the output of an uninterrupted run.
//!
//! Crashes are injected with the `MIXTAPE_FAULT` testing aid (src/fault.rs),
//! which aborts the process on the spot, as a crash would; `MIXTAPE_BATCH`
//! makes workers commit often, so a crash lands between many commits.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::{gen, reference, stderr, TestCommand};

struct Case {
    dir: tempfile::TempDir,
    mixtape: PathBuf,
    changes: PathBuf,
    expected: reference::Outcome,
}

fn case(seed: u64, changes: u64) -> Case {
    let c = gen::case_of(seed, changes);
    let dir = tempfile::tempdir().unwrap();
    let mixtape = dir.path().join("mixtape.json");
    let changes = dir.path().join("changes.json");
    fs::write(&mixtape, &c.mixtape).unwrap();
    fs::write(&changes, &c.changes).unwrap();
    let expected = reference::run(&c.mixtape, &c.changes).unwrap();
    Case {
        dir,
        mixtape,
        changes,
        expected,
    }
}

fn command(case: &Case, out: &Path, workers: usize, env: &[(&str, &str)]) -> TestCommand {
    let mut cmd = TestCommand::harness();
    cmd.args(["--progress", "never", "--workers", &workers.to_string()])
        .arg(&case.mixtape)
        .arg(&case.changes)
        .arg(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(case: &Case, out: &Path, workers: usize, env: &[(&str, &str)]) -> Output {
    command(case, out, workers, env).output().unwrap()
}

/// The output and rejects equal the reference's, and the work db is gone.
fn assert_finished_right(case: &Case, out: &Path, what: &str) {
    let output = fs::read_to_string(out).unwrap_or_else(|e| panic!("{what}: no output: {e}"));
    support::assert_same_text(&format!("{what}: output"), &case.expected.output, &output);
    let mut rejects = out.as_os_str().to_owned();
    rejects.push(".rejects.jsonl");
    support::assert_same_text(
        &format!("{what}: rejects"),
        &case.expected.rejects,
        &fs::read_to_string(PathBuf::from(rejects)).unwrap(),
    );
}

#[test]
fn an_injected_crash_at_any_point_resumes_to_identical_output() {
    let case = case(77, 600);
    let points = [
        ("import-element", vec![1, 3]),
        ("plan-change", vec![1, 250]),
        ("worker-change", vec![1, 40, 130]),
        ("worker-write", vec![1, 3, 9]),
        ("worker-commit", vec![1, 4, 11]),
        ("merge-partition", vec![1, 5, 8]),
        ("export-row", vec![1, 4]),
    ];
    for (point, hits) in points {
        for n in hits {
            for workers in [1, 3] {
                let what = format!("{point}@{n}, {workers} workers");
                let out = case.dir.path().join(format!("{point}-{n}-{workers}.json"));
                fs::write(&out, "precious").unwrap();
                let fault = format!("{point}@{n}");
                let o = run(
                    &case,
                    &out,
                    workers,
                    &[("MIXTAPE_FAULT", &fault), ("MIXTAPE_BATCH", "16")],
                );
                assert!(
                    !o.status.success(),
                    "{what}: the fault did not fire: {}",
                    stderr(&o)
                );
                assert_eq!(
                    fs::read_to_string(&out).unwrap(),
                    "precious",
                    "{what}: OUTPUT touched"
                );
                let o = run(&case, &out, workers, &[("MIXTAPE_BATCH", "16")]);
                assert!(o.status.success(), "{what}: resume failed: {}", stderr(&o));
                assert!(
                    stderr(&o).contains("resuming from") || point == "import-element",
                    "{what}: {}",
                    stderr(&o)
                );
                assert_finished_right(&case, &out, &what);
            }
        }
    }
}

#[test]
fn a_worker_crash_fails_the_run_names_the_chunk_and_keeps_the_db() {
    let case = case(78, 300);
    let out = case.dir.path().join("out.json");
    let o = run(&case, &out, 2, &[("MIXTAPE_FAULT", "worker-change@10")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("worker for chunk"), "{e}");
    assert!(
        e.contains("fault injection: aborting at worker-change@10"),
        "{e}"
    );
    assert!(
        e.contains("--db") && e.contains("--chunk") && e.contains("--trace"),
        "{e}"
    );
    assert!(case.dir.path().join("out.json.work.db").exists());
    assert!(!out.exists());
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}

fn wait_until_gone(needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if processes_mentioning(needle).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits until process `pid` no longer catches SIGINT (its one-shot handler
/// ran and reset itself, `/proc/PID/status` `SigCgt`); false after 5 s.
fn wait_until_sigint_handled(pid: u32) -> bool {
    const SIGINT_BIT: u64 = 1 << (2 - 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
        if caught.is_some_and(|mask| mask & SIGINT_BIT == 0) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Waits until the work database has at least one committed batch.
fn wait_for_apply(db: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let location = mixtape::store::Location::File(db.to_path_buf());
        let batches = mixtape::store::Store::open(&location).and_then(|s| s.batches_committed());
        if batches.is_ok_and(|b| b > 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("apply never started");
}

#[test]
fn kill_9_of_the_harness_at_several_moments_resumes_to_identical_output() {
    let case = case(79, 4000);
    for (i, delay_ms) in [0u64, 15, 40, 90].into_iter().enumerate() {
        let out = case.dir.path().join(format!("kill-{i}.json"));
        let db = case.dir.path().join(format!("kill-{i}.json.work.db"));
        let mut child = command(&case, &out, 3, &[("MIXTAPE_BATCH", "2")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if delay_ms > 0 {
            wait_for_apply(&db);
            std::thread::sleep(Duration::from_millis(delay_ms));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(nix::sys::signal::Signal::SIGKILL as i32),
                "kill after {delay_ms} ms did not land: the run had ended ({status:?})"
            );
        }
        assert!(
            wait_until_gone(&db.display().to_string()),
            "a worker outlived the killed harness"
        );
        assert!(!out.exists() || fs::read_to_string(&out).unwrap() == case.expected.output);
        let o = run(&case, &out, 3, &[]);
        assert!(
            o.status.success(),
            "kill after {delay_ms} ms: resume failed: {}",
            stderr(&o)
        );
        assert_finished_right(&case, &out, &format!("kill -9 after {delay_ms} ms"));
    }
}

#[test]
fn sigint_exits_130_keeps_the_db_leaves_no_worker_and_resumes() {
    let case = case(80, 4000);
    let out = case.dir.path().join("int.json");
    let db = case.dir.path().join("int.json.work.db");
    let child = command(&case, &out, 3, &[("MIXTAPE_BATCH", "2")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_apply(&db);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("interrupted; the work database is kept"), "{e}");
    assert!(!out.exists());
    assert!(db.exists());
    assert!(
        wait_until_gone(&db.display().to_string()),
        "a worker outlived the harness"
    );
    let o = run(&case, &out, 3, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert_finished_right(&case, &out, "after SIGINT");
}

#[test]
fn changed_input_starts_fresh_and_says_why() {
    let case = case(81, 50);
    let out = case.dir.path().join("o.json");
    let o = run(&case, &out, 2, &[("MIXTAPE_FAULT", "merge-partition@1")]);
    assert!(!o.status.success());
    // Append a change: another size, so another fingerprint.
    let c = gen::case_of(82, 50);
    fs::write(&case.changes, &c.changes).unwrap();
    let o = run(&case, &out, 2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("starting fresh: CHANGES changed since the work database was made"),
        "{}",
        stderr(&o)
    );
    let expected = reference::run(&fs::read_to_string(&case.mixtape).unwrap(), &c.changes).unwrap();
    support::assert_same_text(
        "output",
        &expected.output,
        &fs::read_to_string(&out).unwrap(),
    );

    // --fresh discards a database that would otherwise be resumed.
    let o = run(&case, &out, 2, &[("MIXTAPE_FAULT", "merge-partition@1")]);
    assert!(!o.status.success());
    let o = command(&case, &out, 2, &[])
        .arg("--fresh")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("resuming"), "{}", stderr(&o));
}

/// Eight workers committing after every change contend for the write lock all
/// the time: "database is locked" must never surface (BEGIN IMMEDIATE and the
/// busy timeout make them wait instead).
#[test]
fn many_workers_with_tiny_batches_never_see_busy() {
    let case = case(83, 3000);
    let out = case.dir.path().join("busy.json");
    let o = run(&case, &out, 8, &[("MIXTAPE_BATCH", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("locked"), "{}", stderr(&o));
    assert_finished_right(&case, &out, "8 workers, batches of 1");
}

/// A second Ctrl-C kills at once. The workers are frozen (SIGSTOP) so that the
/// first Ctrl-C's graceful stop would wait its full grace period for them; the
/// second one must end the harness long before, by the signal itself, and the
/// frozen workers must die with it.
#[test]
fn a_second_sigint_kills_at_once() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::process::ExitStatusExt;
    let case = case(84, 4000);
    let out = case.dir.path().join("twice.json");
    let db = case.dir.path().join("twice.json.work.db");
    let mut child = command(&case, &out, 2, &[("MIXTAPE_BATCH", "2")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_apply(&db);
    let harness = child.id();
    let workers: Vec<u32> = processes_mentioning(&db.display().to_string())
        .into_iter()
        .filter(|&p| p != harness)
        .collect();
    assert!(!workers.is_empty(), "no worker found");
    for &w in &workers {
        let _ = kill(Pid::from_raw(w as i32), Signal::SIGSTOP);
    }
    let started = Instant::now();
    kill(Pid::from_raw(harness as i32), Signal::SIGINT).unwrap();
    // The first SIGINT has been handled once the handler reset itself: the
    // second one then has its default effect.
    assert!(
        wait_until_sigint_handled(harness),
        "the harness never handled the first SIGINT"
    );
    kill(Pid::from_raw(harness as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGINT as i32), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        wait_until_gone(&db.display().to_string()),
        "a frozen worker outlived the harness"
    );
    assert!(!out.exists());
    let o = run(&case, &out, 2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_finished_right(&case, &out, "after two SIGINTs");
}
