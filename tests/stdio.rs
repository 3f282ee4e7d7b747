//! Pipelines (README "Pipelines"): OUTPUT `-` writes the document to stdout,
//! whole, only once the run has succeeded; nothing else ever reaches stdout.
//! On generated cases in every form, with one and several workers.

mod support;

use std::fs;
use std::io::Read;
use std::process::Stdio;

use support::{gen, reference, stderr, TestCommand};

fn form_of(changes: &str) -> &'static str {
    match changes.trim_start().as_bytes().first() {
        Some(b'[') => "array",
        _ if changes.contains("\"changes\"") => "object",
        _ => "lines",
    }
}

/// A case written to a fresh directory: (dir, mixtape, changes).
fn written(case: &gen::Case) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (mixtape, changes) = (dir.path().join("m.json"), dir.path().join("c.json"));
    fs::write(&mixtape, &case.mixtape).unwrap();
    fs::write(&changes, &case.changes).unwrap();
    (dir, mixtape, changes)
}

#[test]
fn output_dash_gives_the_document_on_stdout_in_every_form() {
    let mut forms = std::collections::BTreeSet::new();
    for seed in 0..9 {
        let case = gen::case(seed, 120);
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        forms.insert(form_of(&case.changes));
        for workers in [1, 3] {
            let (dir, mixtape, changes) = written(&case);
            let o = TestCommand::harness()
                .current_dir(dir.path())
                .args(["--progress", "never", "-w", &workers.to_string()])
                .arg(&mixtape)
                .arg(&changes)
                .arg("-")
                .output()
                .unwrap();
            let what = format!("seed {seed}, {workers} workers");
            assert!(o.status.success(), "{what}: {}", stderr(&o));
            support::assert_same_text(&what, &expected.output, &String::from_utf8_lossy(&o.stdout));
            // The summary went to stderr; the rejects report and nothing else
            // stayed in the directory.
            assert!(stderr(&o).contains("changes read"), "{what}");
            let rejects = fs::read_to_string(dir.path().join("stdout.json.rejects.jsonl")).unwrap();
            support::assert_same_text(&what, &expected.rejects, &rejects);
            let mut left: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            assert_eq!(
                left,
                ["c.json", "m.json", "stdout.json.rejects.jsonl"],
                "{what}"
            );
        }
    }
    assert_eq!(forms.len(), 3, "every form: {forms:?}");
}

#[test]
fn a_failed_run_writes_nothing_to_stdout() {
    let case = gen::case(3, 120);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    assert!(expected.rejected > 0, "the case rejects something");
    let (dir, mixtape, changes) = written(&case);
    let run = |extra: &[&str], changes: &std::path::Path| {
        TestCommand::harness()
            .current_dir(dir.path())
            .args(["--progress", "never"])
            .args(extra)
            .arg(&mixtape)
            .arg(changes)
            .arg("-")
            .output()
            .unwrap()
    };
    // --strict with a rejected change: exit 3, nothing on stdout.
    let o = run(&["--strict"], &changes);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--strict wrote to stdout");
    // Bad input: exit 1, nothing on stdout.
    let bad = dir.path().join("bad.json");
    fs::write(&bad, "{\"changes\": [{\"op\": \"add_song\",").unwrap();
    let o = run(&["--fresh"], &bad);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "a failed run wrote to stdout");
    // --dry-run: nothing on stdout.
    let o = run(&["--fresh", "--dry-run"], &changes);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--dry-run wrote to stdout");
    // Both on stdout: a usage error.
    let o = run(&["--summary-json", "-"], &changes);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn a_closed_pipe_fails_the_run_keeps_the_work_database_and_the_same_command_writes_it_again() {
    // A document far bigger than a pipe's buffer.
    let songs: Vec<String> = (1..=20_000)
        .map(|i| {
            format!(
                "{{\"id\": \"{i}\", \"artist\": \"Artist {i}\", \"title\": \"Song number {i}\"}}"
            )
        })
        .collect();
    let case = gen::Case {
        mixtape: format!(
            "{{\"users\": [{{\"id\": \"1\", \"name\": \"A\"}}], \"playlists\": [], \"songs\": [{}]}}",
            songs.join(",\n")
        ),
        changes: "{\"op\": \"add_playlist\", \"owner_id\": \"1\", \"song_ids\": [\"7\"]}\n".into(),
    };
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    assert!(
        expected.output.len() > 200_000,
        "{} bytes",
        expected.output.len()
    );
    let (dir, mixtape, changes) = written(&case);
    let command = || {
        let mut cmd = TestCommand::harness();
        cmd.current_dir(dir.path())
            .args(["--progress", "never", "-w", "2"])
            .arg(&mixtape)
            .arg(&changes)
            .arg("-");
        cmd
    };
    let mut child = command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader takes a little and stops.
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let mut said = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("writing OUTPUT to standard output"), "{said}");
    assert!(
        dir.path().join("stdout.json.work.db").exists(),
        "the work database was not kept"
    );
    let o = command().output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    support::assert_same_text(
        "after a closed pipe",
        &expected.output,
        &String::from_utf8_lossy(&o.stdout),
    );
}
