//! Pipelines (docs/GUIDE.md "Pipelines"): OUTPUT `-` writes the document to stdout,
//! whole, only once the run has succeeded; nothing else ever reaches stdout.
//! On generated cases in every form, with one and several workers.

use crate::support;

use std::fs;
use std::io::Read;
use std::process::Stdio;

use support::{gen, reference, stderr, TestCommand};

#[test]
fn output_dash_gives_the_document_on_stdout_in_every_form() {
    for (seed, case) in gen::cases_in_every_form(0..9, 120) {
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        for workers in [1, 3] {
            let (dir, mixtape, changes) = case.write_to_temp();
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
}

#[test]
fn a_failed_run_writes_nothing_to_stdout() {
    let case = gen::case(3, 120);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    assert!(expected.rejected > 0, "the case rejects something");
    let (dir, mixtape, changes) = case.write_to_temp();
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
    let (dir, mixtape, changes) = case.write_to_temp();
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

fn as_refs(args: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(|a| a.as_os_str()).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The harness with `stdin` on standard input, in `dir`.
fn run_with_stdin(
    dir: &std::path::Path,
    args: &[&std::ffi::OsStr],
    stdin: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let mut child = TestCommand::harness()
        .current_dir(dir)
        .args(["--progress", "never"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    o
}

#[test]
fn either_input_from_stdin_plain_or_compressed_gives_the_same_bytes_in_every_form() {
    for (seed, case) in gen::cases_in_every_form(0..9, 120) {
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        for (workers, which) in [
            (1, "MIXTAPE"),
            (3, "CHANGES"),
            (2, "MIXTAPE"),
            (1, "CHANGES"),
        ] {
            for compressed in [false, true] {
                let (dir, mixtape, changes) = case.write_to_temp();
                let text = if which == "MIXTAPE" {
                    &case.mixtape
                } else {
                    &case.changes
                };
                let stdin = match compressed {
                    false => text.as_bytes().to_vec(),
                    true if seed % 2 == 0 => gzip(text.as_bytes()),
                    true => zstd::encode_all(text.as_bytes(), 3).unwrap(),
                };
                let workers = workers.to_string();
                let dash = std::ffi::OsStr::new("-");
                let (m, c) = match which {
                    "MIXTAPE" => (dash, changes.as_os_str()),
                    _ => (mixtape.as_os_str(), dash),
                };
                let args = [
                    std::ffi::OsStr::new("-w"),
                    workers.as_ref(),
                    m,
                    c,
                    "out.json".as_ref(),
                ];
                let o = run_with_stdin(dir.path(), &args, &stdin);
                let what = format!(
                    "seed {seed}, {which} on stdin (compressed: {compressed}), -w {workers}"
                );
                assert!(o.status.success(), "{what}: {}", stderr(&o));
                let output = fs::read_to_string(dir.path().join("out.json")).unwrap();
                support::assert_same_text(&what, &expected.output, &output);
                let rejects =
                    fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
                support::assert_same_text(&what, &expected.rejects, &rejects);
                // Its kept copy goes with the work database.
                let left = fs::read_dir(dir.path()).unwrap().count();
                assert_eq!(left, 4, "{what}: files left beside OUTPUT");
            }
        }
    }
}

#[test]
fn a_rerun_compares_stdin_with_what_it_kept_and_stdin_to_stdout_works() {
    let case = gen::case(4, 150);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap();
    let (dir, mixtape, _) = case.write_to_temp();
    let args = |extra: &'static str| -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![];
        if !extra.is_empty() {
            args.extend([extra.into(), "plan".into()]);
        }
        args.extend([mixtape.clone().into_os_string(), "-".into(), "-".into()]);
        args
    };
    let stopped = args("--stop-after");
    let o = run_with_stdin(dir.path(), &as_refs(&stopped), case.changes.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "--stop-after wrote to stdout");
    // The same stream again: the run resumes from its plan.
    let full = args("");
    let o = run_with_stdin(dir.path(), &as_refs(&full), case.changes.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    support::assert_same_text(
        "stdin to stdout",
        &expected.output,
        &String::from_utf8_lossy(&o.stdout),
    );
    // Other bytes on stdin: a fresh start, never the old plan on new bytes.
    let o = run_with_stdin(dir.path(), &as_refs(&stopped), case.changes.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let other = format!("{}\n", case.changes);
    let o = run_with_stdin(dir.path(), &as_refs(&full), other.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("starting fresh"), "{}", stderr(&o));
    support::assert_same_text(
        "other stdin",
        &expected.output,
        &String::from_utf8_lossy(&o.stdout),
    );
    // Both inputs on stdin: a usage error.
    let both: Vec<&std::ffi::OsStr> = vec!["-".as_ref(), "-".as_ref(), "out.json".as_ref()];
    let o = run_with_stdin(dir.path(), &both, b"");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
