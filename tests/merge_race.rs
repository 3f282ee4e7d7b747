//! A clear of the merge never interleaves with a partition's commit (README
//! "Running on several hosts": the harness's merge and joined workers'
//! partitions). On a server each statement of a transaction sees what
//! committed before it, so a partition committed between the clear's
//! statements could keep its results and lose its `merged` row, and then be
//! merged (and its results written) twice. Its own test binary: it sets a
//! fault point for the whole process.

mod support;

use std::time::Duration;

use mixtape::store::{Fate, Location, PartitionResults, PlaylistResult, Store};
use support::pg;

#[test]
fn a_clear_of_the_merge_and_a_partitions_commit_never_interleave() {
    let Some(server) = pg::server() else { return };
    let db = server.database("race");
    let local = tempfile::tempdir().unwrap();
    let location = Location::from_argument(db.url().as_ref(), local.path()).unwrap();
    Store::create(&location).unwrap();
    // The clear stops for a while after its first statement (`results`).
    std::env::set_var("MIXTAPE_FAULT", "clear-statement@1:hold=1.5");
    let clearing = {
        let location = location.clone();
        std::thread::spawn(move || Store::open(&location).unwrap().clear_merge().unwrap())
    };
    std::thread::sleep(Duration::from_millis(400));
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
