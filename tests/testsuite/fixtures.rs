//! The bundled fixtures: `fixtures/changes.json` uses every op and hits every
//! reject reason on the classic 7-user mixtape; the expected output and rejects
//! are checked in, and must also be what the independent reference gives.

use crate::support;

use std::fs;

use support::{assert_same_text, fixtures, reference, run_on_fixtures, stderr};

#[test]
fn fixtures_give_the_expected_output_with_any_worker_count() {
    let f = fixtures();
    let expected_output = fs::read_to_string(f.join("expected-output.json")).unwrap();
    let expected_rejects = fs::read_to_string(f.join("expected-rejects.jsonl")).unwrap();
    for workers in [1, 2, 4, 16] {
        let dir = tempfile::tempdir().unwrap();
        let o = run_on_fixtures(dir.path(), "out.json", workers, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let output = fs::read_to_string(dir.path().join("out.json")).unwrap();
        let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
        assert_same_text("output", &expected_output, &output);
        assert_same_text("rejects", &expected_rejects, &rejects);
        let summary = stderr(&o);
        assert!(
            summary.contains("24 changes read, 10 applied, 14 rejected"),
            "{summary}"
        );
    }
}

#[test]
fn expected_fixtures_agree_with_the_reference() {
    let f = fixtures();
    let r = reference::run(
        &fs::read_to_string(f.join("mixtape.json")).unwrap(),
        &fs::read_to_string(f.join("changes.json")).unwrap(),
    )
    .unwrap();
    assert_same_text(
        "output",
        &fs::read_to_string(f.join("expected-output.json")).unwrap(),
        &r.output,
    );
    assert_same_text(
        "rejects",
        &fs::read_to_string(f.join("expected-rejects.jsonl")).unwrap(),
        &r.rejects,
    );
}

#[test]
fn fixture_changes_hit_every_reason() {
    let f = fixtures();
    let rejects = fs::read_to_string(f.join("expected-rejects.jsonl")).unwrap();
    assert_eq!(
        mixtape::changes::reject::Reason::ALL.len(),
        9,
        "docs/GUIDE.md \"Semantics and rejects\" has nine reasons"
    );
    for reason in mixtape::changes::reject::Reason::ALL.map(|r| r.name()) {
        assert!(
            rejects.contains(&format!("\"reason\": \"{reason}\"")),
            "no {reason}"
        );
    }
}
