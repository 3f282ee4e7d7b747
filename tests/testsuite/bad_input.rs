//! The bad-input catalogue: every entry gets a clean error (file, line, column,
//! byte offset; exit 1; OUTPUT untouched) or, inside a well-formed change, a
//! rejection. Nothing panics.

use crate::support;

use std::fs;

use support::{run, stderr};

const DOC: &[u8] = br#"{"users":[{"id":"1"}],"playlists":[{"id":"1","owner_id":"1","song_ids":["1"]}],"songs":[{"id":"1"}]}"#;
const CHANGES: &[u8] = br#"[{"op":"add_song","playlist_id":"1","song_id":"1"}]"#;

#[derive(Clone, Copy)]
enum Expect {
    /// Exit 1, OUTPUT untouched, stderr has all of these.
    Fails(&'static [&'static str]),
    /// Exit 0; the output and the rejects report have all of these.
    Works(&'static [&'static str], &'static [&'static str]),
    /// As `Works`, for an output nested deeper than serde_json's recursion
    /// limit (128): its validity is checked with the tool's own scanner, which
    /// `tests/testsuite/fuzz.rs` holds to agree with serde_json and has no depth limit.
    WorksDeep(&'static [&'static str], &'static [&'static str]),
}
use Expect::*;

fn deep(open: &str, close: &str, depth: usize, inner: &str) -> Vec<u8> {
    let mut s = open.repeat(depth);
    s.push_str(inner);
    s.push_str(&close.repeat(depth));
    s.into_bytes()
}

fn check(name: &str, mixtape: &[u8], changes: &[u8], expect: Expect) {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json");
    let c = dir.path().join("c.json");
    fs::write(&m, mixtape).unwrap();
    fs::write(&c, changes).unwrap();
    let out = dir.path().join("out.json");
    fs::write(&out, "precious").unwrap();
    let o = run(dir.path(), &m, &c, "out.json", 2, &[]);
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{name}: {e}");
    match expect {
        Fails(needles) => {
            assert_eq!(o.status.code(), Some(1), "{name}: {e}");
            assert_eq!(
                fs::read_to_string(&out).unwrap(),
                "precious",
                "{name}: OUTPUT touched"
            );
            for n in needles {
                assert!(e.contains(n), "{name}: {e:?} lacks {n:?}");
            }
        }
        Works(in_output, in_rejects) | WorksDeep(in_output, in_rejects) => {
            assert_eq!(o.status.code(), Some(0), "{name}: {e}");
            let output = fs::read_to_string(&out).unwrap();
            let rejects = fs::read_to_string(dir.path().join("out.json.rejects.jsonl")).unwrap();
            for n in in_output {
                assert!(output.contains(n), "{name}: output lacks {n:?}");
            }
            for n in in_rejects {
                assert!(
                    rejects.contains(n),
                    "{name}: rejects {rejects:?} lack {n:?}"
                );
            }
            // Whatever went in, OUTPUT is valid JSON.
            if matches!(expect, WorksDeep(..)) {
                let mut scanner = mixtape::json::scan::Scanner::new(output.as_bytes(), 0);
                scanner.value().unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(scanner.peek().unwrap(), None, "{name}: trailing bytes");
            } else {
                serde_json::from_str::<serde_json::Value>(&output)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

#[test]
fn bad_mixtapes() {
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(DOC);
    let long_name = format!(
        r#"{{"users":[{{"id":"1","name":"{}"}}]}}"#,
        "x".repeat(50 << 20)
    );
    let mut deep_member = br#"{"users":[{"id":"1","x":"#.to_vec();
    deep_member.extend(deep("[", "]", 100_000, "7"));
    deep_member.extend_from_slice(b"}]}");
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "empty file",
            b"".to_vec(),
            Fails(&[
                "MIXTAPE",
                "line 1, column 1 (byte 0)",
                "expected a JSON object",
            ]),
        ),
        (
            "only white space",
            b"  \n ".to_vec(),
            Fails(&["line 2, column 2 (byte 4)"]),
        ),
        (
            "byte order mark",
            with_bom,
            Works(&[r#"{"id":"1","owner_id":"1","song_ids":["1"]}"#], &[]),
        ),
        (
            "invalid UTF-8",
            b"{\"users\":[{\"id\":\"\xff\"}]}".to_vec(),
            Fails(&["line 1, column 18 (byte 17)", "invalid UTF-8"]),
        ),
        (
            "random bytes",
            vec![0x13, 0x8f, 0x00, 0xfe, 0x41],
            Fails(&[
                "byte 0",
                "expected a JSON object (the mixtape document), found byte 0x13",
            ]),
        ),
        (
            "a top-level string",
            b"\"hello\"".to_vec(),
            Fails(&["expected a JSON object (the mixtape document), found '\"'"]),
        ),
        (
            "a top-level number",
            b"12".to_vec(),
            Fails(&["expected a JSON object"]),
        ),
        (
            "trailing comma",
            br#"{"users":[{"id":"1"},]}"#.to_vec(),
            Fails(&["line 1, column 22 (byte 21)", "expected a value, found ']'"]),
        ),
        (
            "trailing comma in object",
            br#"{"users":[],}"#.to_vec(),
            Fails(&["expected a member name"]),
        ),
        (
            "two documents",
            b"{} {}".to_vec(),
            Fails(&["byte 3", "expected end of input after the document"]),
        ),
        (
            "deep nesting at the top",
            deep("[", "]", 100_000, ""),
            Fails(&["expected a JSON object"]),
        ),
        (
            "deep nesting in a member",
            deep_member,
            WorksDeep(&["[[[[[[[[7]]]]]]]]"], &[]),
        ),
        (
            "unterminated deep nesting",
            deep("{\"a\":", "", 100_000, "1"),
            Fails(&["expected ',' or '}'"]),
        ),
        (
            "a 50 MB string",
            long_name.into_bytes(),
            Works(&["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"], &[]),
        ),
        (
            "id a float",
            br#"{"users":[{"id":1.0}]}"#.to_vec(),
            Fails(&["users[0]: id must be a string or an integer, found 1.0"]),
        ),
        (
            "id a boolean",
            br#"{"songs":[{"id":true}]}"#.to_vec(),
            Fails(&["songs[0]: id must be a string or an integer, found true"]),
        ),
        (
            "id null",
            br#"{"playlists":[{"id":null}]}"#.to_vec(),
            Fails(&["playlists[0]: id must be a string or an integer, found null"]),
        ),
        (
            "id too large for i64 (still an id)",
            br#"{"users":[{"id":123456789012345678901234567890}]}"#.to_vec(),
            Works(&[r#"{"id":123456789012345678901234567890}"#], &[]),
        ),
        (
            "missing arrays",
            br#"{"users":[]}"#.to_vec(),
            Works(
                &["\"users\": []", "\"playlists\": []", "\"songs\": []"],
                &[],
            ),
        ),
        (
            "none of the three arrays",
            b"{}".to_vec(),
            Fails(&[
                "is not a mixtape document: it has none of users, playlists, songs",
                "harness MIXTAPE CHANGES OUTPUT",
            ]),
        ),
        (
            "an array is null",
            br#"{"songs":null}"#.to_vec(),
            Fails(&["member songs must be an array"]),
        ),
        (
            "duplicate array",
            br#"{"songs":[],"songs":[]}"#.to_vec(),
            Fails(&["member songs appears twice"]),
        ),
        (
            "control character in a string",
            b"{\"users\":[{\"id\":\"a\tb\"}]}".to_vec(),
            Fails(&["control character in string"]),
        ),
        (
            "bad escape",
            br#"{"users":[{"id":"\q"}]}"#.to_vec(),
            Fails(&["invalid escape"]),
        ),
        (
            "lone surrogate",
            br#"{"users":[{"id":"\ud800"}]}"#.to_vec(),
            Fails(&["line 1, column 18 (byte 17)", "lone surrogate"]),
        ),
        (
            "truncated",
            br#"{"users":[{"id":"1"}"#.to_vec(),
            Fails(&["expected ',' or ']' after an array element, found end of input"]),
        ),
        (
            "invalid number",
            br#"{"users":[{"id":01}]}"#.to_vec(),
            Fails(&["invalid number"]),
        ),
    ];
    for (name, mixtape, expect) in cases {
        check(name, &mixtape, CHANGES, expect);
    }
}

#[test]
fn bad_changes() {
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(CHANGES);
    let long_name = format!(
        r#"{{"op":"add_playlist","owner_id":"1","song_ids":["1"],"name":"{}"}}"#,
        "y".repeat(50 << 20)
    );
    let mut deep_member = br#"{"op":"add_playlist","owner_id":"1","song_ids":["1"],"x":"#.to_vec();
    deep_member.extend(deep("{\"a\":", "}", 100_000, "7"));
    deep_member.extend_from_slice(b"}\n");
    let mut deep_line = b"{}\n".to_vec();
    deep_line.extend(deep("[", "]", 100_000, ""));
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "empty file: no changes",
            b"".to_vec(),
            Works(&["\"song_ids\":[\"1\"]"], &[]),
        ),
        (
            "byte order mark",
            with_bom,
            Works(&[], &["song_already_in_playlist"]),
        ),
        (
            "invalid UTF-8",
            b"[{\"op\":\"\xc3\"}]".to_vec(),
            Fails(&["CHANGES", "line 1, column 9 (byte 8)", "invalid UTF-8"]),
        ),
        (
            "random bytes",
            vec![0x7b, 0x8f, 0x00],
            Fails(&["CHANGES", "byte 1"]),
        ),
        (
            "a top-level string is a JSON Lines change",
            b"\"hello\"\n".to_vec(),
            Works(
                &[],
                &[r#""op": null, "reason": "invalid_change", "detail": "change is not an object""#],
            ),
        ),
        (
            "a top-level number is a JSON Lines change",
            b"42".to_vec(),
            Works(&[], &["\"index\": 0", "invalid_change"]),
        ),
        (
            "trailing comma",
            b"[{\"op\":\"x\"},\n]".to_vec(),
            Fails(&[
                "CHANGES",
                "line 2, column 1 (byte 13)",
                "expected a value, found ']'",
            ]),
        ),
        (
            "two arrays",
            b"[] []".to_vec(),
            Fails(&["only JSON Lines may hold several values"]),
        ),
        (
            "two objects with changes",
            br#"{"changes":[]} {"changes":[]}"#.to_vec(),
            Fails(&["only JSON Lines may hold several values"]),
        ),
        (
            "changes not an array",
            br#"{"changes":{}}"#.to_vec(),
            Fails(&["member changes must be an array of changes"]),
        ),
        (
            "deep nesting inside a change",
            deep_member,
            WorksDeep(&["\"x\":{\"a\":{\"a\":{"], &[]),
        ),
        (
            "a deeply nested JSON Lines value",
            deep_line,
            Works(&[], &["\"index\": 1", "change is not an object"]),
        ),
        (
            "a 50 MB string",
            long_name.into_bytes(),
            Works(&["yyyyyyyyyyyyyyyyyyyyyy\"}"], &[]),
        ),
        (
            "playlist_id a float",
            br#"[{"op":"remove_playlist","playlist_id":1.0}]"#.to_vec(),
            Works(
                &[],
                &["member playlist_id must be a string or an integer id"],
            ),
        ),
        (
            "song_id a boolean",
            br#"[{"op":"add_song","playlist_id":"1","song_id":false}]"#.to_vec(),
            Works(&[], &["member song_id must be a string or an integer id"]),
        ),
        (
            "owner null",
            br#"[{"op":"add_playlist","owner_id":null,"song_ids":["1"]}]"#.to_vec(),
            Works(&[], &["member owner_id must be a string or an integer id"]),
        ),
        (
            "numbers too large for i64 are ids",
            br#"[{"op":"remove_playlist","playlist_id":123456789012345678901234567890}]"#.to_vec(),
            Works(
                &[],
                &["playlist 123456789012345678901234567890 does not exist"],
            ),
        ),
        (
            "truncated",
            br#"[{"op":"add_song""#.to_vec(),
            Fails(&["expected ',' or '}' after an object member, found end of input"]),
        ),
    ];
    for (name, changes, expect) in cases {
        check(name, DOC, &changes, expect);
    }
}

#[test]
fn unwritable_output_location_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json");
    let c = dir.path().join("c.json");
    fs::write(&m, DOC).unwrap();
    fs::write(&c, CHANGES).unwrap();
    let o = run(dir.path(), &m, &c, "no/such/dir/out.json", 1, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("OUTPUT directory"), "{}", stderr(&o));
}

/// Disk full, simulated with a file-size limit (RLIMIT_FSIZE, and SIGXFSZ
/// ignored, so a write past the limit fails with EFBIG as a full disk fails
/// with ENOSPC): a clear error, exit 1, OUTPUT untouched, and the work database
/// still good for the next run.
#[test]
fn a_full_disk_while_exporting_leaves_output_untouched_and_the_db_usable() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.json");
    let c = dir.path().join("c.json");
    let songs: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"id":"{i}","title":"song number {i}"}}"#))
        .collect();
    fs::write(
        &m,
        format!(
            r#"{{"users":[{{"id":"1"}}],"songs":[{}]}}"#,
            songs.join(",")
        ),
    )
    .unwrap();
    fs::write(&c, CHANGES).unwrap();
    let out = dir.path().join("out.json");
    fs::write(&out, "precious").unwrap();
    let o = run(
        dir.path(),
        &m,
        &c,
        "out.json",
        2,
        &["--stop-after", "merge"],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let limit = 64 * 1024;
    let mut cmd = support::TestCommand::harness();
    cmd.args(["--progress", "never", "--workers", "2"])
        .arg(&m)
        .arg(&c)
        .arg(&out);
    // SAFETY: only async-signal-safe calls (setrlimit, sigaction) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_FSIZE,
                limit,
                limit,
            )?;
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGXFSZ,
                nix::sys::signal::SigHandler::SigIgn,
            )?;
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("writing"), "{}", stderr(&o));
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(&out).unwrap(), "precious");

    let o = run(dir.path(), &m, &c, "out.json", 2, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming from"), "{}", stderr(&o));
    assert!(fs::read_to_string(&out)
        .unwrap()
        .contains("song number 2999"));
}
