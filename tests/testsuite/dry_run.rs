//! `--dry-run` (docs/GUIDE.md "Command line"): everything but OUTPUT. On generated
//! cases in every form of CHANGES, with one and several workers: exit 0, no
//! OUTPUT (an existing one untouched, not even its modification time), the
//! same rejects report as the reference (and so as a full run), the work
//! database removed; with `--strict`, exit 3 when a change would be rejected.

use crate::support;

use std::fs;

use support::{gen, reference, stderr};

#[test]
fn a_dry_run_writes_everything_but_output_in_every_form() {
    for (seed, case) in gen::cases_in_every_form(0..9, 120) {
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        for workers in [1, 3] {
            let (dir, mixtape, changes) = case.write_to_temp();
            let out = dir.path().join("out.json");
            // An OUTPUT from before, which a dry run must leave as it is.
            fs::write(&out, "precious").unwrap();
            let before = fs::metadata(&out).unwrap().modified().unwrap();
            let o = support::run(dir.path(), &mixtape, &changes, "out.json", workers, &["-n"]);
            let what = format!("seed {seed}, {workers} workers");
            assert!(o.status.success(), "{what}: {}", stderr(&o));
            assert_eq!(fs::read_to_string(&out).unwrap(), "precious", "{what}");
            assert_eq!(
                fs::metadata(&out).unwrap().modified().unwrap(),
                before,
                "{what}"
            );
            let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
            support::assert_same_text(&what, &expected.rejects, &rejects);
            assert!(
                stderr(&o).contains("--dry-run: OUTPUT"),
                "{what}: {}",
                stderr(&o)
            );
            assert!(
                !dir.path().join("out.json.work.db").exists(),
                "{what}: work db left"
            );
            // No OUTPUT at all, and --strict.
            fs::remove_file(&out).unwrap();
            let o = support::run(
                dir.path(),
                &mixtape,
                &changes,
                "out.json",
                workers,
                &["--dry-run", "--strict"],
            );
            let code = if expected.rejected > 0 { 3 } else { 0 };
            assert_eq!(
                o.status.code(),
                Some(code),
                "{what} --strict: {}",
                stderr(&o)
            );
            assert!(!out.exists(), "{what}: --dry-run wrote OUTPUT");
            let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
            support::assert_same_text(&what, &expected.rejects, &rejects);
        }
    }
}

#[test]
fn a_dry_run_needs_no_writable_output() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = support::fixtures();
    // OUTPUT in a directory that does not exist: a full run refuses before
    // any work, a dry run (its reports elsewhere) does not need it.
    let out = dir.path().join("missing/out.json");
    let rejects = dir.path().join("rejects.jsonl");
    let db = dir.path().join("work.db");
    let o = support::harness(&[
        &"--dry-run",
        &"--rejects",
        &rejects,
        &"--db",
        &db,
        &fixtures.join("mixtape.json"),
        &fixtures.join("changes.json"),
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(&rejects).unwrap(),
        fs::read_to_string(fixtures.join("expected-rejects.jsonl")).unwrap()
    );
    assert!(!out.exists());
}

/// The applied report (`--applied`): on generated cases in every form, with
/// 1, 2 and 4 workers and with `--dry-run`, the reference's bytes (ids given
/// to new playlists included), and with the rejects report every index once.
#[test]
fn the_applied_report_agrees_with_the_reference_and_covers_every_change_with_the_rejects() {
    for (seed, case) in gen::cases_in_every_form(0..12, 150) {
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        for (workers, extra) in [(1, None), (2, Some("--dry-run")), (4, None)] {
            let (dir, mixtape, changes) = case.write_to_temp();
            let applied = dir.path().join("applied.jsonl");
            let applied_arg = applied.to_string_lossy().into_owned();
            let mut args = vec!["--applied", applied_arg.as_str(), "--chunks", "5"];
            args.extend(extra);
            let o = support::run(dir.path(), &mixtape, &changes, "out.json", workers, &args);
            let what = format!("seed {seed}, {workers} workers, {extra:?}");
            assert!(o.status.success(), "{what}: {}", stderr(&o));
            let report = fs::read_to_string(&applied).unwrap();
            support::assert_same_text(&what, &expected.applied, &report);
            // Every index exactly once, in the applied report or the rejects.
            let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
            let mut indexes: Vec<u64> = (report.lines().chain(rejects.lines()))
                .map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    value["index"].as_u64().unwrap()
                })
                .collect();
            indexes.sort_unstable();
            let all: Vec<u64> = (0..expected.changes as u64).collect();
            assert_eq!(indexes, all, "{what}");
        }
    }
}
