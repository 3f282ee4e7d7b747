//! A clear of the merge never interleaves with a partition's commit (docs/GUIDE.md
//! "Running on several hosts": the harness's merge and joined workers'
//! partitions). On a server each statement of a transaction sees what
//! committed before it, so a partition committed between the clear's
//! statements could keep its results and lose its `merged` row, and then be
//! merged (and its results written) twice. The race runs in a process of
//! its own (this test binary, run again on one ignored test): its fault point
//! holds for the whole process, which must not reach the suite's other tests.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use mixtape::store::{Fate, Location, PartitionResults, PlaylistResult, Store};
use support::pg;

/// The clear stops for a while after its first statement (`results`).
const HOLD: &str = "clear-statement@1:hold=3";

#[test]
fn a_clear_of_the_merge_and_a_partitions_commit_never_interleave() {
    // Held while the race runs: the server is not restarted under it.
    let Some(_server) = pg::server() else { return };
    let race = "merge_race::race_in_a_process_of_its_own";
    let o = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            race,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MIXTAPE_FAULT", HOLD)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[ignore = "run by a_clear_of_the_merge_and_a_partitions_commit_never_interleave"]
fn race_in_a_process_of_its_own() {
    assert_eq!(
        std::env::var("MIXTAPE_FAULT").as_deref(),
        Ok(HOLD),
        "run only by a_clear_of_the_merge_and_a_partitions_commit_never_interleave"
    );
    // In its own process, which shares the server with no other test.
    let Some(server) = pg::server() else { return };
    let db = server.database("race");
    let local = tempfile::tempdir().unwrap();
    let location = Location::from_argument(db.url().as_ref(), local.path()).unwrap();
    Store::create(&location).unwrap();
    let clearing = {
        let location = location.clone();
        std::thread::spawn(move || Store::open(&location).unwrap().clear_merge().unwrap())
    };
    // The clear is held once its connection sits in its open transaction.
    let mut watcher = db.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
                &[],
            )
            .unwrap()
            .get(0);
        if held > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the clear never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Meanwhile another worker commits a partition.
    let results = PartitionResults {
        results: vec![PlaylistResult {
            id: "7".into(),
            fate: Fate::Removed { doc_seq: 0 },
        }],
        rejects: Vec::new(),
        warnings: 0,
    };
    Store::open(&location)
        .unwrap()
        .commit_partition(3, &results)
        .unwrap();
    clearing.join().unwrap();
    let mut client = db.client();
    let mut count = |table: &str| -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM mixtape.{table}"), &[])
            .unwrap()
            .get(0)
    };
    let (merged, results) = (count("merged"), count("results"));
    assert!(
        (merged, results) == (1, 1) || (merged, results) == (0, 0),
        "a partition half cleared: {merged} merged row(s), {results} result(s)"
    );
}
