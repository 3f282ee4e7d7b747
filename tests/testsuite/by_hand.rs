//! Debugging a chunk by hand (docs/GUIDE.md "Debugging a chunk by hand"): stop after a
//! stage, run one worker with --trace, run it again, finish with the harness,
//! and get exactly the output of a plain run.

use crate::support;

use std::fs;

use support::{run_on_fixtures, stderr, TestCommand};

#[test]
fn stop_after_plan_then_worker_by_hand_then_finish_equals_a_plain_run() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "plain.json", 3, &[]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run_on_fixtures(dir.path(), "out.json", 3, &["--stop-after", "plan"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("stopped after plan"), "{}", stderr(&o));
    assert!(!dir.path().join("out.json").exists());
    let db = dir.path().join("out.json.work.db");
    assert!(db.exists());

    let worker = |extra: &[&str]| {
        TestCommand::worker()
            .arg("--db")
            .arg(&db)
            .args(["--chunk", "0", "--trace"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = worker(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let trace = stderr(&first);
    assert!(
        trace.contains("change 0: {\"op\":\"add_playlist\""),
        "{trace}"
    );
    assert!(trace.contains("-> recorded"), "{trace}");
    let traced = trace.lines().filter(|l| l.starts_with("change ")).count();
    assert!(traced > 0);

    let second = worker(&[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("already applied"),
        "{}",
        stderr(&second)
    );

    let redo = worker(&["--redo"]);
    assert!(redo.status.success(), "{}", stderr(&redo));
    assert_eq!(
        stderr(&redo)
            .lines()
            .filter(|l| l.starts_with("change "))
            .count(),
        traced,
        "a redo traces the same changes"
    );

    let o = run_on_fixtures(dir.path(), "out.json", 3, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 of 3 chunks applied"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fs::read(dir.path().join("out.json")).unwrap(),
        fs::read(dir.path().join("plain.json")).unwrap()
    );
    assert_eq!(
        fs::read(dir.path().join("out.json.rejects.jsonl")).unwrap(),
        fs::read(dir.path().join("plain.json.rejects.jsonl")).unwrap()
    );
    assert!(!db.exists(), "the work database is removed after success");
}

#[test]
fn every_stop_after_stage_resumes_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "plain.json", 2, &[]);
    assert!(o.status.success());
    let plain = fs::read(dir.path().join("plain.json")).unwrap();
    for stage in ["import", "plan", "apply", "merge"] {
        let out = format!("{stage}.json");
        let o = run_on_fixtures(dir.path(), &out, 2, &["--stop-after", stage]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!dir.path().join(&out).exists());
        let o = run_on_fixtures(dir.path(), &out, 2, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            fs::read(dir.path().join(&out)).unwrap(),
            plain,
            "after --stop-after {stage}"
        );
    }
}

#[test]
fn a_worker_beside_a_running_harness_is_refused() {
    // The harness holds the run lock for the whole run; a hand-run worker on the
    // same database takes the same lock, so it cannot apply a chunk twice.
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "out.json", 2, &["--stop-after", "plan"]);
    assert!(o.status.success());
    let db = dir.path().join("out.json.work.db");
    let lock =
        mixtape::store::RunLock::acquire(&mixtape::store::Location::File(db.clone())).unwrap();
    let o = TestCommand::worker()
        .arg("--db")
        .arg(&db)
        .args(["--chunk", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("another harness run is using the work database"),
        "{}",
        stderr(&o)
    );
    let o = run_on_fixtures(dir.path(), "out.json", 2, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("another harness run is using the work database"),
        "{}",
        stderr(&o)
    );
    drop(lock);
}

#[test]
fn a_resumed_run_keeps_the_stored_plan_whatever_workers_says() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "plain.json", 1, &[]);
    assert!(o.status.success());
    let o = run_on_fixtures(dir.path(), "out.json", 4, &["--stop-after", "plan"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_on_fixtures(dir.path(), "out.json", 1, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 of 4 chunks applied"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        fs::read(dir.path().join("out.json")).unwrap(),
        fs::read(dir.path().join("plain.json")).unwrap()
    );
}

#[test]
fn a_worker_before_the_plan_or_on_a_foreign_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "out.json", 2, &["--stop-after", "import"]);
    assert!(o.status.success());
    let o = TestCommand::worker()
        .arg("--db")
        .arg(dir.path().join("out.json.work.db"))
        .args(["--chunk", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has no plan yet"), "{}", stderr(&o));

    // The harness never overwrites a file at --db that is not its database.
    let foreign = dir.path().join("precious.sqlite");
    fs::write(
        &foreign,
        "not a database, and not ours to delete........................",
    )
    .unwrap();
    let o = run_on_fixtures(
        dir.path(),
        "o2.json",
        2,
        &["--db", foreign.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not a work database"),
        "{}",
        stderr(&o)
    );
    assert!(fs::read_to_string(&foreign)
        .unwrap()
        .starts_with("not a database"));
}
