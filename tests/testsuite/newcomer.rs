//! Mistakes people make on their first runs, each a clear error before any work
//! (or a quiet fix): arguments swapped, OUTPUT a directory or in a place that
//! cannot be written, a temporary file left by a killed run, and the
//! permissions of the files the run writes.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;

use support::{fixtures, run, run_on_fixtures, stderr, TestCommand};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The harness on the fixtures with the given umask.
fn run_with_umask(umask: u32, mixtape: &Path, out: &Path) -> Output {
    let mut cmd = TestCommand::harness();
    cmd.args(["--progress", "never", "--workers", "2"])
        .arg(mixtape)
        .arg(fixtures().join("changes.json"))
        .arg(out);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn swapped_arguments_say_so_in_every_changes_form() {
    let dir = tempfile::tempdir().unwrap();
    let changes_object = fixtures().join("changes.json");
    let lines = dir.path().join("changes.jsonl");
    fs::write(
        &lines,
        "{\"op\":\"remove_playlist\",\"playlist_id\":\"1\"}\n{\"op\":\"remove_playlist\",\"playlist_id\":\"2\"}\n",
    )
    .unwrap();
    let one_line = dir.path().join("one.jsonl");
    fs::write(
        &one_line,
        "{\"op\":\"remove_playlist\",\"playlist_id\":\"1\"}\n",
    )
    .unwrap();
    let array = dir.path().join("changes-array.json");
    fs::write(
        &array,
        "[{\"op\":\"remove_playlist\",\"playlist_id\":\"1\"}]",
    )
    .unwrap();
    for (changes, looks_like) in [
        (changes_object.as_path(), "it has a changes member"),
        (one_line.as_path(), "it has an op member"),
        (array.as_path(), "an array, as a changes file is"),
        // Two JSON Lines values: not even one JSON document.
        (lines.as_path(), "end of input after the document"),
    ] {
        let out = dir.path().join("out.json");
        let o = run(
            dir.path(),
            changes,
            &fixtures().join("mixtape.json"),
            "out.json",
            2,
            &[],
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {e}", changes.display());
        assert!(e.contains(looks_like), "{}: {e}", changes.display());
        if !looks_like.starts_with("end of input") {
            assert!(
                e.contains("harness MIXTAPE CHANGES OUTPUT"),
                "{}: {e}",
                changes.display()
            );
        }
        assert!(!out.exists(), "{}: OUTPUT written", changes.display());
    }
}

#[test]
fn output_that_is_a_directory_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("out.json")).unwrap();
    let o = run_on_fixtures(dir.path(), "out.json", 2, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["out.json"], "nothing but the directory itself");
}

#[test]
fn output_in_a_directory_that_cannot_be_written_fails_before_any_work() {
    // /proc exists and is a directory, but no file can be created in it, not
    // even by root: the check must try, not trust the mode bits.
    let dir = tempfile::tempdir().unwrap();
    let o = TestCommand::harness()
        .args(["--progress", "never"])
        .arg(fixtures().join("mixtape.json"))
        .arg(fixtures().join("changes.json"))
        .arg("/proc/out.json")
        .arg("--db")
        .arg(dir.path().join("w.db"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("OUTPUT directory /proc is not writable"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing made");
}

#[test]
fn a_temporary_file_left_by_a_killed_export_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".out.json.Xy12Ab.tmp");
    let stale_rejects = dir.path().join(".out.json.rejects.jsonl.Xy12Ab.tmp");
    let someone_elses = dir.path().join(".other.json.Xy12Ab.tmp");
    for f in [&stale, &stale_rejects, &someone_elses] {
        fs::write(f, "half a document").unwrap();
    }
    let o = run_on_fixtures(dir.path(), "out.json", 2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists());
    assert!(!stale_rejects.exists());
    assert!(someone_elses.exists());
    assert!(dir.path().join("out.json").exists());
}

#[test]
fn new_files_get_0666_less_the_umask() {
    for (umask, expected) in [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.json");
        let o = run_with_umask(umask, &fixtures().join("mixtape.json"), &out);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(mode(&out), expected, "OUTPUT, umask {umask:o}");
        let rejects = dir.path().join("out.json.rejects.jsonl");
        assert_eq!(mode(&rejects), expected, "rejects, umask {umask:o}");
    }
}

#[test]
fn replacing_a_file_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    // An existing private OUTPUT stays private under a permissive umask.
    let out = dir.path().join("out.json");
    fs::write(&out, "old").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o600)).unwrap();
    let o = run_with_umask(0o000, &fixtures().join("mixtape.json"), &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(fs::read_to_string(&out).unwrap(), "old");
    assert_eq!(mode(&out), 0o600);

    // OUTPUT = MIXTAPE: a readable document stays readable under umask 077.
    let doc = dir.path().join("doc.json");
    fs::copy(fixtures().join("mixtape.json"), &doc).unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_with_umask(0o077, &doc, &doc);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(&doc).unwrap(),
        fs::read(fixtures().join("expected-output.json")).unwrap()
    );
    assert_eq!(mode(&doc), 0o644);
}
