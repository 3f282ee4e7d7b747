//! Bad inputs and bad command lines: the right exit code, a message that says
//! where, and an existing OUTPUT never touched.

use crate::support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{fixtures, run, run_on_fixtures, stderr};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn fixture_mixtape() -> PathBuf {
    fixtures().join("mixtape.json")
}

fn fixture_changes() -> PathBuf {
    fixtures().join("changes.json")
}

/// Runs on (mixtape, changes) texts expecting exit 1 and an untouched OUTPUT;
/// returns stderr.
fn fails_cleanly(mixtape: &str, changes: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let m = write(dir.path(), "m.json", mixtape);
    let c = write(dir.path(), "c.json", changes);
    let out = write(dir.path(), "out.json", "precious");
    let o = run(dir.path(), &m, &c, "out.json", 2, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "precious",
        "OUTPUT was touched"
    );
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

const MIXTAPE: &str = r#"{"users":[{"id":"1"}],"playlists":[],"songs":[{"id":"1"}]}"#;

#[test]
fn truncated_mixtape_names_file_line_column_and_byte() {
    let e = fails_cleanly("{\n  \"users\": [\n    {\"id\": \"1\"", "[]");
    assert!(e.contains("MIXTAPE"), "{e}");
    assert!(e.contains("m.json: line 3, column 15 (byte 29)"), "{e}");
}

#[test]
fn invalid_changes_name_file_line_column_and_byte() {
    let e = fails_cleanly(
        MIXTAPE,
        "[\n  {\"op\": \"remove_playlist\", \"playlist_id\": 1},\n]",
    );
    assert!(e.contains("CHANGES"), "{e}");
    assert!(e.contains("c.json: line 3, column 1 (byte 49)"), "{e}");
    assert!(e.contains("expected a value"), "{e}");
    let e = fails_cleanly(MIXTAPE, "{\"op\": \"add_song\"}\n{\"op\": tru}\n");
    assert!(e.contains("line 2, column 8 (byte 26)"), "{e}");
}

#[test]
fn invalid_documents_name_array_position_and_id() {
    let e = fails_cleanly(r#"{"users":[{"id":"1"},{"id":1}]}"#, "[]");
    assert!(e.contains("users[1]: duplicate id \"1\""), "{e}");
    let e = fails_cleanly(r#"{"songs":[{"id":"1"},{"title":"x"}]}"#, "[]");
    assert!(e.contains("songs[1] has no id"), "{e}");
    let e = fails_cleanly(r#"{"playlists":[5]}"#, "[]");
    assert!(e.contains("playlists[0] is not an object"), "{e}");
    let e = fails_cleanly(r#"{"users":[{"id":1.5}]}"#, "[]");
    assert!(
        e.contains("users[0]: id must be a string or an integer, found 1.5"),
        "{e}"
    );
    let e = fails_cleanly(r#"{"users":{}}"#, "[]");
    assert!(e.contains("member users must be an array"), "{e}");
    let e = fails_cleanly(r#"[1]"#, "[]");
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = fails_cleanly(r#"{"playlists":[{"id":"1","song_ids":"1"}]}"#, "[]");
    assert!(e.contains("song_ids must be an array of song ids"), "{e}");
}

#[test]
fn duplicates_in_several_arrays_name_the_same_one_at_any_worker_count() {
    // The id indexes are built side by side at two workers and more; the
    // error is still the first in the order users, songs, playlists.
    let array = |name: &str, dup: bool| {
        let second = if dup { "1" } else { "2" };
        format!(r#""{name}":[{{"id":"1","owner_id":"1","song_ids":[]}},{{"id":{second}}}]"#)
    };
    for (users, songs, playlists, first) in [
        (true, true, true, "users[1]"),
        (false, true, true, "songs[1]"),
        (false, false, true, "playlists[1]"),
        (true, false, true, "users[1]"),
    ] {
        // In the document, the arrays come in the other order.
        let mixtape = format!(
            "{{{},{},{}}}",
            array("playlists", playlists),
            array("songs", songs),
            array("users", users)
        );
        let dir = tempfile::tempdir().unwrap();
        let m = write(dir.path(), "m.json", &mixtape);
        let c = write(dir.path(), "c.json", "[]");
        for workers in [1, 2] {
            let o = run(dir.path(), &m, &c, "out.json", workers, &[]);
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains(&format!("{first}: duplicate id")),
                "{workers}: {e}"
            );
            assert_eq!(e.matches("duplicate id").count(), 1, "{e}");
        }
    }
}

#[test]
fn unreadable_input_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &dir.path().join("missing.json"),
        &fixture_changes(),
        "out.json",
        1,
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot read MIXTAPE"), "{}", stderr(&o));
}

#[test]
fn strict_fails_with_3_and_writes_no_output_but_the_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_on_fixtures(dir.path(), "out.json", 2, &["--strict"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(!dir.path().join("out.json").exists());
    let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().count(), 14);

    let clean = write(
        dir.path(),
        "clean.json",
        r#"[{"op": "add_song", "playlist_id": "1", "song_id": "1"}]"#,
    );
    let o = run(
        dir.path(),
        &fixture_mixtape(),
        &clean,
        "out2.json",
        2,
        &["--strict"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(dir.path().join("out2.json").exists());
    assert_eq!(
        fs::read_to_string(dir.path().join("out2.json.rejects.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec![],
        vec!["m.json", "c.json"],
        vec!["--workers", "0", "m", "c", "o"],
        vec!["--workers", "many", "m", "c", "o"],
        vec!["--progress", "sometimes", "m", "c", "o"],
        vec!["--stop-after", "export", "m", "c", "o"],
        vec!["--no-such-flag", "m", "c", "o"],
    ] {
        let o = support::TestCommand::harness()
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn custom_db_and_rejects_paths_and_keep_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("work.sqlite");
    let rejects = dir.path().join("r.jsonl");
    let o = run_on_fixtures(
        dir.path(),
        "out.json",
        3,
        &[
            "--db",
            db.to_str().unwrap(),
            "--rejects",
            rejects.to_str().unwrap(),
            "--keep-db",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(db.exists(), "--keep-db keeps the database");
    assert_eq!(fs::read_to_string(&rejects).unwrap().lines().count(), 14);
    assert!(!dir.path().join("out.json.rejects.jsonl").exists());
}

#[test]
fn worker_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = support::TestCommand::worker()
        .args([
            "--db",
            dir.path().join("none.db").to_str().unwrap(),
            "--chunk",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no work database at"), "{}", stderr(&o));

    let not_db = write(
        dir.path(),
        "x.db",
        "this is not sqlite, just text long enough to be read as a header...",
    );
    let o = support::TestCommand::worker()
        .args(["--db", not_db.to_str().unwrap(), "--chunk", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a work database"), "{}", stderr(&o));

    let o = run_on_fixtures(dir.path(), "out.json", 2, &["--stop-after", "plan"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = support::TestCommand::worker()
        .args([
            "--db",
            dir.path().join("out.json.work.db").to_str().unwrap(),
            "--chunk",
            "7",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("chunk 7 does not exist: the plan has 2 chunk(s), numbered 0 to 1"),
        "{}",
        stderr(&o)
    );
}
