//! Stage 4, merge: settle everything that depends on the order of changes.
//!
//! Workers ran in any order and at any speed, so they could not decide whether a
//! playlist exists "at that moment" or already holds a song (docs/GUIDE.md "Semantics and rejects",
//! the last four reasons). Every change that passed the workers' checks is about exactly
//! one playlist id, and changes about different playlists never affect each other.
//! So the merge replays, for each playlist id on its own, the recorded changes
//! about it in index order, starting from the document's playlist of that id (if
//! any). That gives exactly what applying all changes one by one would give.
//!
//! New playlists without a `playlist_id` cannot be named by any other change
//! (their id `M + k` is larger than every id the changes name), so they need no
//! replay: they are created, with `k` counted across chunks from each chunk's
//! count of such changes.
//!
//! ## Memory
//!
//! Records are spread over partitions by playlist id ([`crate::changes::partition`]:
//! a document playlist's by its position, any other by a hash), and the plan
//! chose the number of partitions so that one holds a few MiB of records
//! whatever the input size. A merge thread reads its slice of the document's
//! playlists in one range scan (keeping them, up to 1 MiB of text, else those
//! its records name; and counting the slice's warnings, unless the import
//! could count them: [`crate::stages::import`]), then streams the
//! partition's records in index order (`merge_partition`) and holds the state
//! of the playlists they touch (their song lists), never the records
//! themselves.
//!
//! ## Parallelism
//!
//! Partitions are independent, so the harness merges them on up to `--workers`
//! threads, each with its own connection. Reading blocks and replaying run in
//! parallel (WAL readers do not wait); a thread holds the write lock only to
//! write one partition's rows.
//!
//! Joined workers (`worker --join`, on any host) help once every chunk is
//! applied ([`help`]): they take partitions from the last one down while the
//! harness goes up from the first, so they meet in the middle. Nobody needs a
//! lease for that: a partition commits with its row in `merged`, whose key
//! admits one ([`AlreadyMerged`]), so two workers that merge the same
//! partition at once cost some work, never a wrong byte, and one who dies
//! leaves its partition to the harness, which merges every partition not yet
//! merged.
//!
//! ## Output and resuming
//!
//! For every playlist whose fate differs from the document the merge writes one
//! `results` row (changed songs, removed, or new), and every rejected change a
//! `rejects` row. Each partition's rows are written, together with the
//! partition's number in `merged`, in one transaction: an interrupted merge
//! continues with the partitions not yet written.

mod context;
mod replay;
mod song_list;
mod warnings;

use context::MergeContext;
use replay::merge_partition;
use song_list::SongListBuffers;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;

use crate::stages::Stage;
use crate::store::{AlreadyMerged, Key, PartitionResults, Store};

/// Page cache shared by the merge threads, in KiB (each gets its share): for
/// the blocks they read and the document playlists they look up by id. The
/// harness also holds each thread's playlist states and its own connection's
/// cache, so the threads share one budget however many run.
///
/// Small, because the merge reads each block and each slice of the document
/// once: a cache keeps little more than the b-trees' inner pages warm, and a
/// larger one filled and showed in the harness's peak memory at the same
/// speed (BENCHMARKS.md, "What was tried": the merge's page cache).
const MERGE_CACHE_KIB: i64 = 8 * 1024;

/// The least page cache a merge thread gets, in KiB.
const MIN_THREAD_CACHE_KIB: i64 = 512;

/// Runs the merge (or continues it) on `store`, with up to `threads` threads;
/// `progress` gets (partitions done, total).
pub fn merge(store: &Store, threads: usize, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    if store.is_done(Stage::Merge)? {
        return Ok(());
    }
    let partitions = store.meta_number(Key::Partitions)?;
    let context = MergeContext::read(store)?;
    let merged = store.merged_partitions()?;
    if merged.is_empty() {
        // Nothing of a merge is committed: clear what a merge of an older
        // state of the apply stage (a chunk redone by hand) may have left.
        store.clear_merge()?;
    }
    let pending: Vec<u64> = (0..partitions).filter(|p| !merged.contains(p)).collect();
    let done = AtomicU64::new(merged.len() as u64);
    let threads = threads.clamp(1, pending.len().max(1));
    let db = store.location();
    // Each thread has its own connection; reading and replaying run in
    // parallel, only the short write of each partition's rows holds the lock.
    crate::run::parallel::run_tasks(
        pending.len(),
        threads,
        || {
            let store = Store::open(db)?;
            store.set_cache_kib((MERGE_CACHE_KIB / threads as i64).max(MIN_THREAD_CACHE_KIB))?;
            store.checkpoint_every(crate::stages::apply::BULK_CHECKPOINT_PAGES)?;
            Ok((store, SongListBuffers::default()))
        },
        |(thread_store, buffers), i| {
            merge_one(thread_store, &context, pending[i], buffers)?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
        &mut || progress(done.load(Ordering::Relaxed), partitions),
    )?;
    progress(partitions, partitions);
    store.release_memory()?;
    store.finish_merge()?;
    store.checkpoint()
}

/// Merges partition `partition` and commits its results, unless another worker
/// has (or does meanwhile); says whether this call merged it.
fn merge_one(
    store: &Store,
    cx: &MergeContext,
    partition: u64,
    buffers: &mut SongListBuffers,
) -> Result<bool> {
    crate::run::interrupt::check()?;
    if store.is_merged(partition)? {
        return Ok(false);
    }
    let mut out = PartitionResults::default();
    merge_partition(store, cx, partition, &mut out, buffers)?;
    match store.commit_partition(partition, &out) {
        Ok(()) => Ok(true),
        Err(e) if e.is::<AlreadyMerged>() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A joined worker's share of the merge, once every chunk is applied: the
/// partitions not yet merged, from the last one down (the harness goes up),
/// until none is left. Returns how many this worker merged.
pub fn help(store: &Store) -> Result<u64> {
    if store.is_done(Stage::Merge)? || !store.is_done(Stage::Apply)? {
        return Ok(0);
    }
    let context = MergeContext::read(store)?;
    let mut buffers = SongListBuffers::default();
    let mut merged = 0;
    for partition in (0..context.partitions.count).rev() {
        if merge_one(store, &context, partition, &mut buffers)? {
            merged += 1;
        }
    }
    Ok(merged)
}
