//! Differential property tests: on generated cases, the harness with any number
//! of workers gives exactly the bytes of the in-memory, one-change-at-a-time
//! reference (tests/testsuite/support/reference.rs), output and rejects report alike.

use crate::support;

use std::fs;

use support::{assert_same_text, gen, reference, run, stderr, TestCommand};

const WORKER_COUNTS: [usize; 5] = [1, 2, 3, 5, 8];

/// Runs every seed in `seeds` at every count of [`WORKER_COUNTS`]; on a
/// mismatch, names the seed and keeps the case.
fn check_seeds(seeds: std::ops::Range<u64>, max_changes: u64) {
    for seed in seeds {
        check_case(seed, &gen::case(seed, max_changes), &WORKER_COUNTS, true);
    }
}

/// Runs `case` (of seed `seed`) at each of `worker_counts` against the
/// reference; with `small_batches`, every other count has changes waiting
/// for their lookups and batches of three; the other counts have the
/// playlists exported in pieces.
fn check_case(seed: u64, case: &gen::Case, worker_counts: &[usize], small_batches: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mixtape = dir.path().join("mixtape.json");
    let changes = dir.path().join("changes.json");
    fs::write(&mixtape, &case.mixtape).unwrap();
    fs::write(&changes, &case.changes).unwrap();
    let expected = reference::run(&case.mixtape, &case.changes)
        .unwrap_or_else(|e| panic!("seed {seed}: the reference rejects the generated case: {e}"));
    for (nth, &workers) in worker_counts.iter().enumerate() {
        let out = format!("out{workers}.json");
        // Every other worker count with simple changes waiting for their
        // lookups (large inputs only, unless asked), and batches of
        // three, so that flushes come while changes wait.
        let mut cmd = TestCommand::harness();
        cmd.args(["--progress", "never", "--workers", &workers.to_string()]);
        if small_batches && nth % 2 == 0 {
            cmd.env("MIXTAPE_LOOK_AHEAD", "always")
                .env("MIXTAPE_BATCH", "3");
        }
        // The others with the playlist streams exported in pieces, as large
        // inputs are on several threads.
        if nth % 2 == 1 {
            cmd.env("MIXTAPE_EXPORT_PARTS", (nth + 2).to_string());
        }
        cmd.arg(&mixtape).arg(&changes).arg(dir.path().join(&out));
        let o = cmd.output().expect("running harness");
        let keep = || {
            let kept = std::env::temp_dir().join(format!("mixtape-failed-seed-{seed}"));
            let _ = fs::create_dir_all(&kept);
            let _ = fs::write(kept.join("mixtape.json"), &case.mixtape);
            let _ = fs::write(kept.join("changes.json"), &case.changes);
            kept
        };
        if !o.status.success() {
            panic!(
                "seed {seed}, {workers} workers: harness failed: {}\ncase kept in {}",
                stderr(&o),
                keep().display()
            );
        }
        let output = fs::read_to_string(dir.path().join(&out)).unwrap();
        let rejects = fs::read_to_string(dir.path().join(format!("{out}.rejects.jsonl"))).unwrap();
        let result = std::panic::catch_unwind(|| {
            assert_same_text(
                &format!("seed {seed}, {workers} workers: output"),
                &expected.output,
                &output,
            );
            assert_same_text(
                &format!("seed {seed}, {workers} workers: rejects"),
                &expected.rejects,
                &rejects,
            );
        });
        if let Err(e) = result {
            eprintln!("case kept in {}", keep().display());
            std::panic::resume_unwind(e);
        }
        let summary = stderr(&o);
        let want = format!(
            "{} changes read, {} applied, {} rejected",
            expected.changes,
            expected.changes - expected.rejected,
            expected.rejected
        );
        assert!(
            summary.contains(&want),
            "seed {seed}: summary {summary:?} lacks {want:?}"
        );
        let warned = format!(
            "; {} input playlist(s) name a missing owner or song",
            expected.warnings
        );
        assert_eq!(
            summary.contains(&warned),
            expected.warnings > 0,
            "seed {seed}: warnings: {summary:?}"
        );
        assert!(
            !dir.path().join(format!("{out}.work.db")).exists(),
            "work db left behind"
        );
    }
}

#[test]
fn small_cases_seeds_0_to_60() {
    check_seeds(0..60, 12);
}

#[test]
fn medium_cases_seeds_1000_to_1040() {
    check_seeds(1000..1040, 60);
}

#[test]
fn larger_cases_seeds_5000_to_5010() {
    check_seeds(5000..5010, 400);
}

/// A longer campaign, run by hand: `MIXTAPE_CAMPAIGN=FROM..TO cargo test
/// --release --test differential -- --ignored campaign` checks seeds
/// FROM..TO, of up to 12, 30, 60 or 200 changes by turns, as the tests above
/// do.
#[test]
#[ignore = "by hand: set MIXTAPE_CAMPAIGN=FROM..TO"]
fn campaign() {
    let seeds = std::env::var("MIXTAPE_CAMPAIGN").expect("MIXTAPE_CAMPAIGN=FROM..TO");
    let (from, to) = seeds.split_once("..").expect("MIXTAPE_CAMPAIGN=FROM..TO");
    let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
    for seed in from..to {
        let max_changes = [12, 30, 60, 200][(seed % 4) as usize];
        check_case(seed, &gen::case(seed, max_changes), &WORKER_COUNTS, true);
    }
}

/// Cases of 20,000 changes in batches of the usual size: a block of a
/// partition then holds more records than the merge decodes at once (4,096),
/// so replays go on from one window of a block's records to the next.
#[test]
fn cases_larger_than_the_merges_window_seeds_9000_to_9003() {
    for seed in 9000..9003 {
        check_case(seed, &gen::case_of(seed, 20_000), &[1, 2], false);
    }
}

/// The generator really produces what the tests claim to cover.
#[test]
fn generated_cases_hit_every_reject_reason_and_form() {
    let mut reasons = std::collections::BTreeSet::new();
    let mut forms = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let case = gen::case(seed, 60);
        let t = case.changes.trim_start();
        forms.insert(if t.starts_with('[') {
            "array"
        } else if t.starts_with("{\"note\"") {
            "object"
        } else {
            "lines"
        });
        let r = reference::run(&case.mixtape, &case.changes).unwrap();
        for line in r.rejects.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            reasons.insert(v["reason"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(forms.len(), 3, "{forms:?}");
    assert_eq!(reasons.len(), 9, "{reasons:?}");
}

/// A document larger than the export's pieces (4 MiB of songs and of users),
/// with white space inside elements, so OUTPUT is assembled from several pieces
/// per array, rendered in parallel: the same bytes as the reference.
#[test]
fn a_document_exported_in_many_pieces() {
    let users: Vec<String> = (0..60_000)
        .map(|i| {
            format!("{{ \"id\": \"{i}\",\n  \"name\": \"User number {i} with a longish name\" }}")
        })
        .collect();
    let songs: Vec<String> = (0..150_000)
        .map(|i| format!("{{\"id\": {i}, \"title\": \"Song {i}, \\\"quoted\\\", padded\"}}"))
        .collect();
    let mixtape = format!(
        "{{\"users\": [\n{}\n], \"playlists\": [{{\"id\": \"1\", \"owner_id\": \"7\", \"song_ids\": [1, \"2\"]}}], \"songs\": [{}], \"after\": {{\"x\": [1, 2]}}}}",
        users.join(",\n"),
        songs.join(", ")
    );
    assert!(mixtape.len() > 12 << 20, "{}", mixtape.len());
    let changes = "{\"op\":\"add_song\",\"playlist_id\":\"1\",\"song_id\":\"149999\"}\n\
                   {\"op\":\"add_playlist\",\"owner_id\":59999,\"song_ids\":[\"3\",4]}\n\
                   {\"op\":\"add_song\",\"playlist_id\":\"1\",\"song_id\":\"150000\"}\n";
    output_is_the_references(&mixtape, changes);
}

/// The harness with 1 and 3 workers writes the reference's output for
/// `mixtape` and `changes` (JSON Lines).
fn output_is_the_references(mixtape: &str, changes: &str) {
    let expected = reference::run(mixtape, changes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mixtape.json");
    let c = dir.path().join("changes.jsonl");
    fs::write(&m, mixtape).unwrap();
    fs::write(&c, changes).unwrap();
    for workers in [1, 3] {
        let out = format!("out{workers}.json");
        let o = run(dir.path(), &m, &c, &out, workers, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let output = fs::read_to_string(dir.path().join(&out)).unwrap();
        assert_same_text(&format!("{workers} workers"), &expected.output, &output);
    }
}

/// A merge partition whose slice of document playlists holds more text than
/// the merge keeps whole (1 MiB: a playlist with a long name), beside slices
/// that it does keep: changes to playlists of both, the same bytes as the
/// reference.
#[test]
fn a_slice_of_playlists_too_large_to_keep_whole() {
    let long_name = "n".repeat(1_200_000);
    let playlists: Vec<String> = (1..=24)
        .map(|i| {
            let name = if i == 5 { long_name.as_str() } else { "short" };
            format!(
                "{{\"id\": \"{i}\", \"owner_id\": \"{}\", \"name\": \"{name}\", \"song_ids\": [\"{}\", \"{}\"]}}",
                i % 3 + 1,
                i % 7 + 1,
                i % 5 + 2
            )
        })
        .collect();
    let mixtape = format!(
        "{{\"users\": [{{\"id\": \"1\"}}, {{\"id\": \"2\"}}, {{\"id\": \"3\"}}], \"playlists\": [{}], \"songs\": [{}]}}",
        playlists.join(",\n"),
        (1..=9).map(|i| format!("{{\"id\": \"{i}\"}}")).collect::<Vec<_>>().join(", ")
    );
    let mut changes = String::new();
    for i in 1..=24 {
        changes.push_str(&format!(
            "{{\"op\":\"add_song\",\"playlist_id\":\"{i}\",\"song_id\":\"9\"}}\n\
             {{\"op\":\"remove_song\",\"playlist_id\":\"{i}\",\"song_id\":\"{}\"}}\n",
            i % 7 + 1
        ));
        if i % 4 == 1 {
            changes.push_str(&format!(
                "{{\"op\":\"remove_playlist\",\"playlist_id\":\"{i}\"}}\n\
                 {{\"op\":\"add_playlist\",\"playlist_id\":\"{i}\",\"owner_id\":\"2\",\"song_ids\":[\"8\"]}}\n"
            ));
        }
    }
    output_is_the_references(&mixtape, &changes);
}
