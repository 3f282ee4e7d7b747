//! The work store's contract, one suite for both backends: every test runs on
//! a SQLite file and, where a server is reachable (tests/testsuite/support/pg.rs; CI runs
//! this file under `pg_virtualenv`), on a PostgreSQL database. Only the
//! store's public operations are used, as the stages use them.
//!
//! - a batch commits once, moves its chunk, and is fenced by its claim;
//! - a batch that fails midway leaves nothing, and the store is usable after;
//! - chunks are claimed one at a time; a held chunk is refused by hand;
//! - an expired lease is taken over and its old holder fenced off;
//! - two claimers at once never hold one chunk;
//! - a merge partition commits once; the merge is done only when every
//!   partition is;
//! - an import's done-marker commits with its last rows, never before; an
//!   unfinished import leaves nothing;
//! - a callback of a stream may query the store;
//! - the document's array ranges round-trip.

use crate::support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use mixtape::changes::reject::{Reason, Reject};
use mixtape::stages::plan::{Chunk, Form, Plan};
use mixtape::stages::Stage;
use mixtape::store::{
    AlreadyMerged, ArrayRange, ArrayRanges, Batch, Claim, Claimed, DocumentFacts, Each, Fate,
    IdKind, InputKind, Key, LeaseLost, Leased, Location, PartitionResults, PlaylistResult, Store,
};
use support::pg;

/// Runs `test` on a new store of each backend (see the module docs), with the
/// store's location so that a test can open more connections to it.
fn on_each_backend(test: impl Fn(&Store, &Location)) {
    let dir = tempfile::tempdir().unwrap();
    let file = Location::File(dir.path().join("w.db"));
    test(&Store::create(&file).unwrap(), &file);
    if let Some(server) = pg::server() {
        let db = server.database("contract");
        let local = dir.path().join("pg");
        let server_store = Location::from_argument(db.url().as_ref(), &local).unwrap();
        test(&Store::create(&server_store).unwrap(), &server_store);
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// Two chunks (bytes 0..10 with changes 0..2, bytes 10..20 with changes
/// 2..5) and 8 merge partitions.
fn plan_two_chunks(store: &Store) {
    plan_chunks(store, &[(0, 10, 0, 2), (10, 20, 2, 3)], 8);
}

/// Plans `chunks` (start, end, first index, changes) and `partitions`.
fn plan_chunks(store: &Store, chunks: &[(u64, u64, u64, u64)], partitions: u64) {
    let chunks: Vec<Chunk> = (chunks.iter())
        .map(|&(start, end, first_index, changes)| Chunk {
            start,
            end,
            first_index,
            changes,
        })
        .collect();
    let plan = Plan {
        form: Form::Lines,
        changes: chunks.iter().map(|c| c.changes).sum(),
        chunks,
    };
    store.save_plan(&plan, partitions).unwrap();
}

/// A batch of `claim` moving its chunk from `from` to `to` (done at 20).
fn batch<'a>(
    claim: Claim,
    blocks: &'a [Vec<u8>],
    rejects: &'a [Reject],
    from: u64,
    to: u64,
) -> Batch<'a> {
    Batch {
        claim,
        lease: LEASE,
        blocks,
        rejects,
        from_offset: from,
        next_offset: to,
        next_index: 3,
        auto_count: 1,
        max_playlist_id: 7,
        done: to == 20,
    }
}

/// How many blocks partition `part` holds.
fn blocks_in(store: &Store, part: u64) -> usize {
    let mut blocks = 0;
    store
        .each_block(part, &mut |_| {
            blocks += 1;
            Ok(())
        })
        .unwrap();
    blocks
}

/// Imports a document of the playlists `ids` (at positions 0, 1, ...), with
/// their id index; the other indexes empty.
fn import_playlists(store: &Store, ids: &[&str]) {
    let mut w = store.document_writer().unwrap();
    for (position, id) in ids.iter().enumerate() {
        w.playlist(position as u64, &format!("{{\"id\":\"{id}\"}}"), None)
            .unwrap();
    }
    build_indexes(store, ids);
    w.finish(&DocumentFacts {
        text: None,
        warnings: None,
        playlists: ids.len() as u64,
        ..DocumentFacts::default()
    })
    .unwrap();
}

fn build_indexes(store: &Store, ids: &[&str]) {
    let mut sorted: Vec<(&str, u64)> = ids.iter().copied().zip(0..).collect();
    sorted.sort();
    for kind in IdKind::ALL {
        let path = store.index_path(kind).unwrap();
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).unwrap();
        mixtape::ids::index::build(
            &path,
            kind.values(),
            sorted.len() as u64,
            None,
            &mut |add| {
                if kind == IdKind::Playlists {
                    for &(id, position) in &sorted {
                        add(id, "", position)?;
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    }
}

#[test]
fn a_batch_commits_once_and_moves_its_chunk() {
    on_each_backend(|store, _| {
        plan_two_chunks(store);
        assert!(!store.is_done(Stage::Apply).unwrap());
        let blocks = vec![Vec::new(), b"abc".to_vec()];
        let rejects = [Reject {
            index: 2,
            op_json: "\"add_song\"".into(),
            reason: Reason::UnknownSong,
            detail: "song 9 does not exist".into(),
        }];
        let claim = store.claim_chunk(1, "a", LEASE).unwrap();
        store
            .commit_batch(&batch(claim, &blocks, &rejects, 10, 15))
            .unwrap();
        // The same batch again (a worker that lost track) must not commit.
        let stale = store.commit_batch(&batch(claim, &blocks, &rejects, 10, 15));
        assert!(stale.unwrap_err().is::<LeaseLost>());
        let row = store.chunk(1).unwrap().unwrap();
        assert_eq!(
            (row.next_offset, row.auto_count, row.max_playlist_id),
            (15, 1, 7)
        );
        assert_eq!(store.batches_committed().unwrap(), 1);
        let mut blocks = Vec::new();
        store
            .each_block(1, &mut |b| {
                blocks.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(blocks, [b"abc".to_vec()]);
        assert_eq!(
            store.rejects_by_reason().unwrap(),
            [(Reason::UnknownSong, 1)]
        );
        store.reset_chunk(1).unwrap();
        let row = store.chunk(1).unwrap().unwrap();
        assert_eq!((row.next_offset, row.next_index), (10, 2));
        assert_eq!(store.rejects_by_reason().unwrap(), []);
    });
}

/// A partition's blocks come back by chunk, then in the order each chunk's
/// batches committed, however the chunks' commits interleaved; a partition
/// no batch wrote to has none.
#[test]
fn a_partitions_blocks_come_back_by_chunk_then_commit() {
    on_each_backend(|store, _| {
        plan_chunks(store, &[(0, 10, 0, 2), (10, 20, 2, 3), (20, 30, 5, 1)], 8);
        let commit = |chunk: u64, from: u64, to: u64, blocks: &[&[u8]]| {
            let claim = store.claim_chunk(chunk, "a", LEASE).unwrap();
            let blocks: Vec<Vec<u8>> = blocks.iter().map(|p| p.to_vec()).collect();
            store
                .commit_batch(&batch(claim, &blocks, &[], from, to))
                .unwrap();
            store.release_lease(claim).unwrap();
        };
        commit(2, 20, 25, &[b"p0 c2 first", b"p1 c2 first"]);
        commit(0, 0, 5, &[b"", b"p1 c0"]);
        commit(2, 25, 28, &[b"", b"p1 c2 second"]);
        commit(1, 10, 15, &[b"p0 c1", b"p1 c1"]);
        let blocks = |part: u64| {
            let mut blocks = Vec::new();
            store
                .each_block(part, &mut |b| {
                    blocks.push(String::from_utf8(b.to_vec()).unwrap());
                    Ok(())
                })
                .unwrap();
            blocks
        };
        assert_eq!(blocks(1), ["p1 c0", "p1 c1", "p1 c2 first", "p1 c2 second"]);
        assert_eq!(blocks(0), ["p0 c1", "p0 c2 first"]);
        assert!(blocks(5).is_empty());
    });
}

#[test]
fn a_batch_that_fails_midway_leaves_nothing() {
    on_each_backend(|store, _| {
        plan_two_chunks(store);
        let blocks = vec![b"x".to_vec()];
        let rejects = [Reject {
            index: 3,
            op_json: "null".into(),
            reason: Reason::InvalidChange,
            detail: "change is not an object".into(),
        }];
        // Chunk 1 is not at offset 99: the batch fails after its rows are
        // written, and the transaction must take them back.
        let claim = store.claim_chunk(1, "a", LEASE).unwrap();
        assert!(store
            .commit_batch(&batch(claim, &blocks, &rejects, 99, 15))
            .is_err());
        assert_eq!(blocks_in(store, 0), 0);
        assert_eq!(store.rejects_by_reason().unwrap(), []);
        assert_eq!(store.batches_committed().unwrap(), 0);
        assert_eq!(store.chunk(1).unwrap().unwrap().next_offset, 10);
        // And the store is usable afterwards (no transaction left open).
        store
            .commit_batch(&batch(claim, &blocks, &rejects, 10, 20))
            .unwrap();
        assert!(store.chunk(1).unwrap().unwrap().done);
        assert_eq!(blocks_in(store, 0), 1);
    });
}

#[test]
fn chunks_are_claimed_one_at_a_time_until_all_are_done() {
    on_each_backend(|store, _| {
        plan_two_chunks(store);
        let first = store.claim_next("a", LEASE).unwrap();
        let second = store.claim_next("b", LEASE).unwrap();
        assert_eq!(first, Claimed::Chunk(Claim { chunk: 0, token: 1 }));
        assert_eq!(second, Claimed::Chunk(Claim { chunk: 1, token: 1 }));
        assert_eq!(store.claim_next("c", LEASE).unwrap(), Claimed::Wait);
        // By hand, a chunk another worker holds is refused, saying who holds it.
        let refused = store.claim_chunk(0, "c", LEASE).unwrap_err();
        assert!(refused.downcast_ref::<Leased>().unwrap().owner == "a");
        let Claimed::Chunk(claim) = second else {
            unreachable!()
        };
        store.commit_batch(&batch(claim, &[], &[], 10, 20)).unwrap();
        store.release_lease(Claim { chunk: 0, token: 1 }).unwrap();
        let again = store.claim_next("c", LEASE).unwrap();
        assert_eq!(again, Claimed::Chunk(Claim { chunk: 0, token: 2 }));
        let Claimed::Chunk(claim) = again else {
            unreachable!()
        };
        let mut last = batch(claim, &[], &[], 0, 10);
        last.done = true;
        store.commit_batch(&last).unwrap();
        assert_eq!(store.claim_next("d", LEASE).unwrap(), Claimed::AllDone);
        assert!(store.is_done(Stage::Apply).unwrap());
    });
}

#[test]
fn an_expired_lease_is_taken_over_and_its_old_holder_fenced_off() {
    on_each_backend(|store, _| {
        plan_two_chunks(store);
        let short = Duration::from_millis(50);
        let Claimed::Chunk(slow) = store.claim_next("slow", short).unwrap() else {
            panic!("no chunk")
        };
        assert_eq!(slow.chunk, 0);
        // Wait for the state, not for a time: until the lease has expired.
        let mut quick = None;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(25));
            match store.claim_next("quick", LEASE).unwrap() {
                Claimed::Chunk(c) if c.chunk == 0 => {
                    quick = Some(c);
                    break;
                }
                Claimed::Chunk(other) => store.release_lease(other).unwrap(),
                _ => {}
            }
        }
        let quick = quick.expect("the short lease never expired");
        assert_eq!(quick.token, slow.token + 1);
        let blocks = vec![b"late".to_vec()];
        let late = store.commit_batch(&batch(slow, &blocks, &[], 0, 5));
        assert!(late.unwrap_err().is::<LeaseLost>());
        assert!(store
            .renew_lease(slow, LEASE)
            .unwrap_err()
            .is::<LeaseLost>());
        // Releasing a lost lease does not free the new holder's chunk.
        store.release_lease(slow).unwrap();
        let refused = store.claim_chunk(0, "other", LEASE).unwrap_err();
        assert_eq!(refused.downcast_ref::<Leased>().unwrap().owner, "quick");
        assert_eq!(blocks_in(store, 0), 0, "the fenced batch wrote nothing");
        store
            .commit_batch(&batch(quick, &blocks, &[], 0, 5))
            .unwrap();
        assert_eq!(store.chunk(0).unwrap().unwrap().next_offset, 5);
    });
}

#[test]
fn two_claimers_at_once_never_hold_one_chunk() {
    on_each_backend(|store, location| {
        let chunks: Vec<(u64, u64, u64, u64)> =
            (0..40).map(|k| (k * 10, k * 10 + 10, k, 1)).collect();
        plan_chunks(store, &chunks, 4);
        // Two workers, each with a connection of its own, claim and finish
        // chunks as fast as they can until none is left.
        let claimed: Vec<Vec<Claim>> = std::thread::scope(|scope| {
            let workers: Vec<_> = ["a", "b"]
                .into_iter()
                .map(|name| {
                    scope.spawn(move || {
                        let store = Store::open(location).unwrap();
                        let mut mine = Vec::new();
                        for _ in 0..10_000 {
                            match store.claim_next(name, LEASE).unwrap() {
                                Claimed::AllDone => break,
                                Claimed::Wait => std::thread::yield_now(),
                                Claimed::Chunk(claim) => {
                                    let at = claim.chunk * 10;
                                    let mut done = batch(claim, &[], &[], at, at + 10);
                                    done.done = true;
                                    store.commit_batch(&done).unwrap();
                                    mine.push(claim);
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut times_claimed: HashMap<u64, usize> = HashMap::new();
        for claim in claimed.iter().flatten() {
            *times_claimed.entry(claim.chunk).or_default() += 1;
        }
        assert_eq!(times_claimed.len(), 40, "every chunk was claimed");
        assert!(times_claimed.values().all(|&n| n == 1), "{times_claimed:?}");
        assert!(store.is_done(Stage::Apply).unwrap());
    });
}

#[test]
fn a_partition_commits_once_whoever_merges_it() {
    on_each_backend(|store, _| {
        plan_two_chunks(store);
        let results = |id: &str| PartitionResults {
            results: vec![PlaylistResult {
                id: id.into(),
                fate: Fate::Removed { doc_seq: 0 },
            }],
            rejects: Vec::new(),
            warnings: 1,
        };
        assert!(!store.is_merged(3).unwrap());
        store.commit_partition(3, &results("first")).unwrap();
        assert!(store.is_merged(3).unwrap());
        let second = store.commit_partition(3, &results("second"));
        assert!(second.unwrap_err().is::<AlreadyMerged>());
        assert_eq!(
            store.warnings().unwrap(),
            1,
            "the second commit wrote nothing"
        );
        assert_eq!(store.merged_partitions().unwrap(), [3]);
    });
}

#[test]
fn the_merge_is_done_only_when_every_partition_is_merged() {
    on_each_backend(|store, _| {
        plan_two_chunks(store); // 8 partitions
        let commit = |part| {
            store
                .commit_partition(part, &PartitionResults::default())
                .unwrap()
        };
        (0..7).for_each(commit);
        let early = store.finish_merge().unwrap_err().to_string();
        assert!(early.contains("7 of 8 partitions"), "{early}");
        assert!(!store.is_done(Stage::Merge).unwrap());
        commit(7);
        // A chunk applied again (worker --redo) clears the merge meanwhile.
        store.reset_chunk(0).unwrap();
        assert!(store.finish_merge().is_err());
        assert!(!store.is_done(Stage::Merge).unwrap());
        (0..8).for_each(commit);
        store.finish_merge().unwrap();
        assert!(store.is_done(Stage::Merge).unwrap());
    });
}

#[test]
fn document_playlists_are_found_through_their_index() {
    on_each_backend(|store, _| {
        import_playlists(store, &["p", "q"]);
        assert!(store.is_done(Stage::Import).unwrap());
        assert_eq!(
            store.document_playlist("q").unwrap(),
            Some((1, "{\"id\":\"q\"}".into()))
        );
        assert_eq!(store.document_playlist("r").unwrap(), None);
        assert_eq!(store.array_ranges().unwrap(), Default::default());
    });
}

/// Many playlists, a few of them large (a store may pack neighbours
/// together), most given with their place in MIXTAPE's text (a store may
/// keep that instead of the text), some of those with white space there:
/// every range of positions, every position and the whole stream give back
/// exactly the minified text that was imported.
#[test]
fn document_playlists_read_back_by_any_range_and_position() {
    on_each_backend(|store, location| {
        let ids: Vec<String> = (0..500).map(|p| format!("p{p}")).collect();
        let texts: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(p, id)| {
                let pad = if p % 97 == 3 { 20_000 } else { p % 50 };
                format!("{{\"id\":\"{id}\",\"name\":\"{}\"}}", "x".repeat(pad))
            })
            .collect();
        // MIXTAPE's text: every third playlist pretty, every seventh given
        // without its place.
        let mut mixtape = String::from("{\"playlists\": [\n");
        let mut places = Vec::new();
        for (position, text) in texts.iter().enumerate() {
            let written = match position % 3 {
                0 => text.replace(':', ": ").replace(',', ",\n  "),
                _ => text.clone(),
            };
            let start = mixtape.len() as u64;
            places.push(start..start + written.len() as u64);
            mixtape.push_str(&written);
            mixtape.push_str(",\n");
        }
        let mixtape_path = match location {
            Location::File(db) => db.with_extension("mixtape.json"),
            _ => std::env::temp_dir().join(format!("contract-{}.json", std::process::id())),
        };
        std::fs::write(&mixtape_path, &mixtape).unwrap();
        store
            .record_input_text(InputKind::Mixtape, &mixtape_path, "print")
            .unwrap();
        let mut w = store.document_writer().unwrap();
        for (position, text) in texts.iter().enumerate() {
            let place = (position % 7 != 5).then(|| places[position].clone());
            w.playlist(position as u64, text, place).unwrap();
        }
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        build_indexes(store, &id_refs);
        w.finish(&DocumentFacts {
            text: None,
            warnings: None,
            playlists: ids.len() as u64,
            ..DocumentFacts::default()
        })
        .unwrap();
        for (from, to) in [
            (0, 500),
            (0, 1),
            (1, 2),
            (63, 65),
            (64, 128),
            (99, 101),
            (250, 499),
            (499, 600),
            (500, 600),
            (7, 7),
        ] {
            let mut seen = Vec::new();
            store
                .each_document_playlist_between(from, to, &mut |position, raw| {
                    seen.push((position, String::from_utf8(raw.to_vec()).unwrap()));
                    Ok(())
                })
                .unwrap();
            let expected: Vec<(u64, String)> = (from..to.min(500))
                .map(|p| (p, texts[p as usize].clone()))
                .collect();
            assert_eq!(seen, expected, "positions {from}..{to}");
        }
        for position in [0, 1, 3, 63, 64, 100, 297, 499] {
            assert_eq!(
                store.document_playlist(&ids[position]).unwrap(),
                Some((position as i64, texts[position].clone()))
            );
        }
        let mut all = Vec::new();
        store
            .each_final_document_playlist(0..u64::MAX, &mut |raw| {
                all.push(String::from_utf8(raw.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(all, texts);
        std::fs::remove_file(&mixtape_path).unwrap();
    });
}

#[test]
fn an_imports_marker_commits_with_its_last_rows_never_before() {
    on_each_backend(|store, location| {
        // Another connection sees what is committed, and only that.
        let other = Store::open(location).unwrap();
        let rows_seen = |store: &Store| {
            let mut rows = 0;
            store
                .each_document_playlist_between(0, 10, &mut |_, _| {
                    rows += 1;
                    Ok(())
                })
                .unwrap();
            rows
        };
        let mut w = store.document_writer().unwrap();
        w.playlist(0, "{\"id\":\"p\"}", None).unwrap();
        w.playlist(1, "{\"id\":\"q\"}", None).unwrap();
        build_indexes(store, &["p", "q"]);
        assert!(!other.is_done(Stage::Import).unwrap());
        assert_eq!(rows_seen(&other), 0, "rows committed before the marker");
        w.finish(&DocumentFacts {
            text: None,
            warnings: None,
            playlists: 2,
            ..DocumentFacts::default()
        })
        .unwrap();
        assert!(other.is_done(Stage::Import).unwrap());
        assert_eq!(rows_seen(&other), 2);
        assert_eq!(other.meta_number(Key::Playlists).unwrap(), 2);
    });
}

#[test]
fn an_unfinished_import_leaves_nothing() {
    on_each_backend(|store, _| {
        import_playlists(store, &["old"]);
        // A new import that stops before its end (a crash, an error).
        let mut w = store.document_writer().unwrap();
        w.playlist(0, "{\"id\":\"new\"}", None).unwrap();
        drop(w);
        let mut rows = Vec::new();
        store
            .each_document_playlist_between(0, 10, &mut |_, raw| {
                rows.push(String::from_utf8(raw.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            rows,
            ["{\"id\":\"old\"}"],
            "the unfinished import left rows"
        );
    });
}

#[test]
fn a_streams_callback_may_query_the_store() {
    on_each_backend(|store, _| {
        import_playlists(store, &["p", "q", "r"]);
        plan_two_chunks(store);
        let claim = store.claim_chunk(0, "a", LEASE).unwrap();
        let blocks = vec![b"block".to_vec()];
        let rejects = [Reject {
            index: 1,
            op_json: "null".into(),
            reason: Reason::InvalidChange,
            detail: "change is not an object".into(),
        }];
        store
            .commit_batch(&batch(claim, &blocks, &rejects, 0, 10))
            .unwrap();
        let results = PartitionResults {
            results: vec![
                PlaylistResult {
                    id: "q".into(),
                    fate: Fate::Changed {
                        doc_seq: 1,
                        json: "{\"id\":\"q\",\"song_ids\":[]}".into(),
                    },
                },
                PlaylistResult {
                    id: "n".into(),
                    fate: Fate::New {
                        doc_seq: None,
                        created: 4,
                        json: "{\"id\":\"n\"}".into(),
                    },
                },
            ],
            rejects: Vec::new(),
            warnings: 0,
        };
        store.commit_partition(0, &results).unwrap();
        // Each stream's callback asks the store something on every row.
        let mut asked = 0;
        let mut ask = |store: &Store| {
            assert_eq!(store.meta_number(Key::Playlists).unwrap(), 3);
            assert_eq!(store.chunks().unwrap().len(), 2);
            assert!(store.document_playlist("p").unwrap().is_some());
            asked += 1;
        };
        let mut finals = Vec::new();
        store
            .each_final_document_playlist(0..u64::MAX, &mut |raw| {
                ask(store);
                finals.push(String::from_utf8(raw.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            finals,
            [
                "{\"id\":\"p\"}",
                "{\"id\":\"q\",\"song_ids\":[]}",
                "{\"id\":\"r\"}"
            ]
        );
        store
            .each_block(0, &mut |_| {
                ask(store);
                Ok(())
            })
            .unwrap();
        store
            .each_new_playlist(0..u64::MAX, &mut |_| {
                ask(store);
                Ok(())
            })
            .unwrap();
        store
            .each_reject(&mut |_| {
                ask(store);
                Ok(())
            })
            .unwrap();
        assert_eq!(asked, 3 + 1 + 1 + 1);
    });
}

#[test]
fn array_ranges_round_trip() {
    on_each_backend(|store, _| {
        let ranges = ArrayRanges {
            users: Some(ArrayRange {
                start: 3,
                end: 90,
                splits: vec![40, 70],
            }),
            songs: None,
        };
        let w = store.document_writer().unwrap();
        build_indexes(store, &[]);
        w.finish(&DocumentFacts {
            text: None,
            warnings: None,
            ranges: ranges.clone(),
            ..DocumentFacts::default()
        })
        .unwrap();
        assert_eq!(store.array_ranges().unwrap(), ranges);
        let users = ranges.users.unwrap();
        assert_eq!(users.pieces(), [(3, 40), (40, 70), (70, 90)]);
    });
}

/// The export reads the playlist streams in blocks, by ranges of positions
/// and of creating changes, on several threads at once: the blocks put
/// together are the whole stream, whatever the cuts, with the partitions'
/// results interleaved over many rows.
#[test]
fn playlist_streams_read_in_ranges_are_the_whole_streams_cut() {
    on_each_backend(|store, _| {
        let ids: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        import_playlists(store, &id_refs);
        plan_two_chunks(store);
        for part in 0..4u64 {
            let mut results = Vec::new();
            for position in (part..300).step_by(4) {
                let fate = match position % 3 {
                    0 => Fate::Changed {
                        doc_seq: position as i64,
                        json: format!("{{\"id\":\"p{position}\",\"changed\":1}}"),
                    },
                    1 => Fate::Removed {
                        doc_seq: position as i64,
                    },
                    _ => continue,
                };
                results.push(PlaylistResult {
                    id: format!("p{position}"),
                    fate,
                });
            }
            for j in 0..150u64 {
                let created = 4 * j + part;
                results.push(PlaylistResult {
                    id: format!("n{created}"),
                    fate: Fate::New {
                        doc_seq: None,
                        created,
                        json: format!("{{\"id\":\"n{created}\"}}"),
                    },
                });
            }
            let out = PartitionResults {
                results,
                rejects: Vec::new(),
                warnings: 0,
            };
            store.commit_partition(part, &out).unwrap();
        }
        // What a stream read gives, as text.
        let texts = |read: &dyn Fn(&mut Each) -> anyhow::Result<()>| {
            let mut seen = Vec::new();
            read(&mut |raw| {
                seen.push(String::from_utf8(raw.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
            seen
        };
        let finals = |range: std::ops::Range<u64>| {
            texts(&|each| store.each_final_document_playlist(range.clone(), each))
        };
        let created = |range: std::ops::Range<u64>| {
            texts(&|each| store.each_new_playlist(range.clone(), each))
        };
        let expected_finals = |range: std::ops::Range<u64>| -> Vec<String> {
            (0..300u64)
                .filter(|p| range.contains(p))
                .filter_map(|p| match p % 3 {
                    0 => Some(format!("{{\"id\":\"p{p}\",\"changed\":1}}")),
                    1 => None,
                    _ => Some(format!("{{\"id\":\"p{p}\"}}")),
                })
                .collect()
        };
        let expected_created = |range: std::ops::Range<u64>| -> Vec<String> {
            (0..600u64)
                .filter(|c| range.contains(c))
                .map(|c| format!("{{\"id\":\"n{c}\"}}"))
                .collect()
        };
        assert_eq!(finals(0..u64::MAX), expected_finals(0..u64::MAX));
        assert_eq!(created(0..u64::MAX), expected_created(0..u64::MAX));
        for cuts in [
            vec![0, u64::MAX],
            vec![0, 1, 2, 3, u64::MAX],
            vec![0, 63, 64, 65, 150, 299, 300, u64::MAX],
            vec![0, 100, 257, 1000, u64::MAX],
            vec![0, 7, 7, 599, 600, u64::MAX],
        ] {
            let mut all_finals = Vec::new();
            let mut all_created = Vec::new();
            for pair in cuts.windows(2) {
                let range = pair[0]..pair[1];
                let part = finals(range.clone());
                assert_eq!(part, expected_finals(range.clone()), "positions {range:?}");
                all_finals.extend(part);
                let part = created(range.clone());
                assert_eq!(part, expected_created(range.clone()), "created {range:?}");
                all_created.extend(part);
            }
            assert_eq!(all_finals, expected_finals(0..u64::MAX), "{cuts:?}");
            assert_eq!(all_created, expected_created(0..u64::MAX), "{cuts:?}");
        }
    });
}
