//! Compressed inputs (docs/GUIDE.md "Compressed inputs"): the same case plain, gzip,
//! multi-member gzip and zstd gives the same OUTPUT and rejects in every form
//! of CHANGES; a run killed while decompressing resumes; a kept text that is
//! whole is not decompressed again; truncated, corrupt and pretend-compressed
//! files are clear errors, and a syntax error is placed in the decompressed text.

use crate::support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{fixtures, gen, reference, stderr, TestCommand};

/// How a test case's files are stored.
#[derive(Clone, Copy, Debug)]
enum Encoding {
    Plain,
    Gzip,
    /// Three gzip members, cut at arbitrary bytes (what `cat a.gz b.gz c.gz` gives).
    GzipMembers,
    /// Two zstd frames.
    Zstd,
}

const ENCODINGS: [Encoding; 4] = [
    Encoding::Plain,
    Encoding::Gzip,
    Encoding::GzipMembers,
    Encoding::Zstd,
];

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn encode(text: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Plain => text.to_vec(),
        Encoding::Gzip => gzip(text),
        Encoding::GzipMembers => {
            let (a, b) = (text.len() / 3, text.len() * 2 / 3 + 1);
            [gzip(&text[..a]), gzip(&text[a..b]), gzip(&text[b..])].concat()
        }
        Encoding::Zstd => {
            let half = text.len() / 2;
            let mut z = zstd::encode_all(&text[..half], 3).unwrap();
            z.extend(zstd::encode_all(&text[half..], 1).unwrap());
            z
        }
    }
}

/// Writes `text` encoded at `path` (no suffix: only the magic bytes tell).
fn write_encoded(path: &Path, text: &[u8], encoding: Encoding) -> PathBuf {
    fs::write(path, encode(text, encoding)).unwrap();
    path.to_path_buf()
}

/// A harness run's outcome: exit code, OUTPUT and rejects (when written), stderr, report.
struct Ran {
    code: Option<i32>,
    output: Option<String>,
    rejects: Option<String>,
    stderr: String,
    report: Option<Value>,
}

fn harness(dir: &Path, mixtape: &Path, changes: &Path, workers: usize, extra: &[&str]) -> Ran {
    let out = dir.join("out.json");
    let report = dir.join("report.json");
    let _ = fs::remove_file(&report);
    let o = TestCommand::harness()
        .args(["--progress", "never", "--workers", &workers.to_string()])
        .arg("--summary-json")
        .arg(&report)
        .args(extra)
        .arg(mixtape)
        .arg(changes)
        .arg(&out)
        .output()
        .unwrap();
    let ran = Ran {
        code: o.status.code(),
        output: fs::read_to_string(&out).ok(),
        rejects: fs::read_to_string(dir.join("out.json.rejects.jsonl")).ok(),
        stderr: stderr(&o),
        report: fs::read(&report)
            .ok()
            .map(|r| serde_json::from_slice(&r).expect("the report is JSON")),
    };
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    let _ = fs::remove_file(&out);
    ran
}

/// The fixture's changes in all three forms: object, bare array, JSON Lines.
fn fixture_changes_in_every_form() -> Vec<(&'static str, String)> {
    let object = fs::read_to_string(fixtures().join("changes.json")).unwrap();
    let parsed: Value = serde_json::from_str(&object).unwrap();
    let changes = parsed["changes"].as_array().unwrap();
    let array = serde_json::to_string_pretty(changes).unwrap();
    let lines: String = changes.iter().map(|c| format!("{c}\n")).collect();
    vec![("object", object), ("array", array), ("lines", lines)]
}

#[test]
fn every_encoding_gives_the_same_bytes_in_every_form() {
    let mixtape = fs::read(fixtures().join("mixtape.json")).unwrap();
    for (form, changes) in fixture_changes_in_every_form() {
        let expected = reference::run(std::str::from_utf8(&mixtape).unwrap(), &changes).unwrap();
        for encoding in ENCODINGS {
            let dir = tempfile::tempdir().unwrap();
            let m = write_encoded(&dir.path().join("mixtape"), &mixtape, encoding);
            let c = write_encoded(&dir.path().join("changes"), changes.as_bytes(), encoding);
            let what = format!("{form} form, {encoding:?}");
            let ran = harness(dir.path(), &m, &c, 2, &[]);
            assert_eq!(ran.code, Some(0), "{what}: {}", ran.stderr);
            assert_eq!(ran.output.as_deref(), Some(&*expected.output), "{what}");
            assert_eq!(ran.rejects.as_deref(), Some(&*expected.rejects), "{what}");
            let report = ran.report.unwrap();
            let compression = match encoding {
                Encoding::Plain => Value::Null,
                Encoding::Gzip | Encoding::GzipMembers => "gzip".into(),
                Encoding::Zstd => "zstd".into(),
            };
            for input in ["mixtape", "changes"] {
                assert_eq!(
                    report["inputs"][input]["compression"], compression,
                    "{what}"
                );
            }
            assert_eq!(report["inputs"]["changes"]["form"], form, "{what}");
            assert_eq!(
                report["inputs"]["changes"]["text_bytes"],
                changes.len() as u64,
                "{what}"
            );
            assert_eq!(
                report["stages"].get("decompress").is_some(),
                !matches!(encoding, Encoding::Plain),
                "{what}: {report}"
            );
            // The kept decompressed texts go with the work database.
            let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(left.len(), 4, "{what}: {left:?}");
        }
    }
}

#[test]
fn generated_cases_compressed_match_the_reference_across_worker_counts() {
    for seed in 0..6 {
        let case = gen::case(seed, 120);
        let expected = reference::run(&case.mixtape, &case.changes).unwrap();
        let encoding = ENCODINGS[1 + seed as usize % 3];
        let dir = tempfile::tempdir().unwrap();
        let m = write_encoded(&dir.path().join("m"), case.mixtape.as_bytes(), encoding);
        let c = write_encoded(&dir.path().join("c"), case.changes.as_bytes(), encoding);
        for workers in [1, 3] {
            let ran = harness(dir.path(), &m, &c, workers, &[]);
            let what = format!("seed {seed}, {encoding:?}, {workers} workers");
            assert_eq!(ran.code, Some(0), "{what}: {}", ran.stderr);
            assert_eq!(ran.output.as_deref(), Some(&*expected.output), "{what}");
            assert_eq!(ran.rejects.as_deref(), Some(&*expected.rejects), "{what}");
        }
    }
}

/// A case whose CHANGES decompresses to several MiB (several decompression blocks).
fn big_case(dir: &Path, encoding: Encoding) -> (PathBuf, PathBuf, String) {
    let case = gen::case_of(7, 60_000);
    assert!(case.changes.len() > 3 << 20, "{}", case.changes.len());
    let m = write_encoded(&dir.join("m"), case.mixtape.as_bytes(), encoding);
    let c = write_encoded(&dir.join("c"), case.changes.as_bytes(), encoding);
    let expected = reference::run(&case.mixtape, &case.changes).unwrap().output;
    (m, c, expected)
}

#[test]
fn a_run_killed_while_decompressing_resumes() {
    for encoding in [Encoding::Gzip, Encoding::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let (m, c, expected) = big_case(dir.path(), encoding);
        let out = dir.path().join("out.json");
        // Abort (as kill -9 would) after the second MiB of CHANGES' text.
        let o = TestCommand::harness()
            .env("MIXTAPE_FAULT", "decompress-block@3")
            .args(["--progress", "never", "-w", "1"])
            .arg(&m)
            .arg(&c)
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{encoding:?}: the fault did not fire");
        assert!(stderr(&o).contains("decompress-block@3"), "{}", stderr(&o));
        let ran = harness(dir.path(), &m, &c, 2, &[]);
        assert_eq!(ran.code, Some(0), "{encoding:?}: {}", ran.stderr);
        assert_eq!(ran.output.as_deref(), Some(&*expected), "{encoding:?}");
        let report = ran.report.unwrap();
        assert_eq!(report["resumed"], true, "{report}");
        assert_eq!(report["resumed_from"], "decompress", "{report}");
    }
}

#[test]
fn a_whole_kept_text_is_not_decompressed_again() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c, expected) = big_case(dir.path(), Encoding::Zstd);
    let ran = harness(dir.path(), &m, &c, 2, &["--stop-after", "plan"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let report = ran.report.unwrap();
    assert!(report["stages"].get("decompress").is_some(), "{report}");
    assert_eq!(report["stopped_after"], "plan");
    assert_eq!(report["counts"], Value::Null);
    let ran = harness(dir.path(), &m, &c, 2, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.output.as_deref(), Some(&*expected));
    let report = ran.report.unwrap();
    assert_eq!(report["resumed_from"], "apply", "{report}");
    assert!(report["stages"].get("decompress").is_none(), "{report}");

    // A kept text that is damaged is noticed, and made again.
    let dir = tempfile::tempdir().unwrap();
    let (m, c, expected) = big_case(dir.path(), Encoding::Gzip);
    let ran = harness(dir.path(), &m, &c, 2, &["--stop-after", "plan"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let kept = dir.path().join("out.json.work.db.changes");
    let mut text = fs::read(&kept).unwrap();
    text.truncate(text.len() - 10);
    fs::write(&kept, text).unwrap();
    let ran = harness(dir.path(), &m, &c, 2, &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(ran.output.as_deref(), Some(&*expected));
    assert!(ran.report.unwrap()["stages"].get("decompress").is_some());
}

/// Runs the harness on a damaged CHANGES (or MIXTAPE) and checks the error.
fn assert_clear_error(dir: &Path, which: &str, bytes: &[u8], expect: &[&str]) {
    let mixtape = fixtures().join("mixtape.json");
    let changes = fixtures().join("changes.json");
    let bad = dir.join(format!("bad-{which}"));
    fs::write(&bad, bytes).unwrap();
    let (m, c) = match which {
        "MIXTAPE" => (bad.as_path(), changes.as_path()),
        _ => (mixtape.as_path(), bad.as_path()),
    };
    let ran = harness(dir, m, c, 2, &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.output.is_none(), "no OUTPUT on an error");
    assert!(ran.report.is_none(), "no report on an error");
    assert!(ran.stderr.contains(which), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&*bad.to_string_lossy()),
        "{}",
        ran.stderr
    );
    for e in expect {
        assert!(ran.stderr.contains(e), "wanted {e:?} in: {}", ran.stderr);
    }
    let partial = dir.join(format!("out.json.work.db.{}.partial", which.to_lowercase()));
    assert!(!partial.exists(), "a useless partial text is left behind");
}

#[test]
fn truncated_corrupt_and_pretend_compressed_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = gen::case_of(3, 20_000).changes.into_bytes();
    let gz = gzip(&text);
    let zs = zstd::encode_all(&text[..], 3).unwrap();
    let progress = "decompression stopped after";
    let truncated_gzip = &gz[..gz.len() / 2];
    let e = ["gzip data is truncated", progress];
    assert_clear_error(dir.path(), "CHANGES", truncated_gzip, &e);
    let e = ["zstd data is truncated", progress];
    assert_clear_error(dir.path(), "CHANGES", &zs[..zs.len() - 100], &e);
    assert_clear_error(dir.path(), "MIXTAPE", &zs[..zs.len() / 3], &e);
    let mut corrupt = gz.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 32].fill(0xff);
    let e = ["gzip data is corrupt", progress];
    assert_clear_error(dir.path(), "CHANGES", &corrupt, &e);
    let mut corrupt = zs.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 32].fill(0xff);
    let e = ["zstd data is corrupt", progress];
    assert_clear_error(dir.path(), "CHANGES", &corrupt, &e);
    // Gzip's magic bytes, then plain JSON: it only claims to be gzip.
    let pretend = [&[0x1f, 0x8b][..], &text].concat();
    let e = ["gzip data is corrupt", "after 0 bytes of text"];
    assert_clear_error(dir.path(), "CHANGES", &pretend, &e);
}

#[test]
fn a_syntax_error_is_placed_in_the_decompressed_text() {
    let dir = tempfile::tempdir().unwrap();
    let broken =
        "{\"changes\": [\n  {\"op\": \"remove_playlist\", \"playlist_id\": \"1\"},\n  ]\n}\n";
    let c = write_encoded(&dir.path().join("c"), broken.as_bytes(), Encoding::Gzip);
    let ran = harness(dir.path(), &fixtures().join("mixtape.json"), &c, 2, &[]);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.output.is_none());
    let at = broken.find("  ]").unwrap() + 2;
    for wanted in [
        format!("CHANGES {} is gzip-compressed", c.display()),
        "the line, column and byte offset that follow are in its decompressed text".to_string(),
        format!("line 3, column 3 (byte {at})"),
    ] {
        assert!(
            ran.stderr.contains(&wanted),
            "wanted {wanted:?} in: {}",
            ran.stderr
        );
    }
}
