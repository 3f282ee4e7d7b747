//! The store's contract: [`Tables`], the operations the stages call, and
//! `Backend`, what a backend supplies below the rules of `Store`. The store
//! contract tests check every backend against it.

use super::statements::Statement;
use super::types::Batch;
use super::types::ChunkRow;
use super::types::Claim;
use super::types::Claimed;
use super::types::Each;
use super::types::EachMember;
use super::types::EachPlaylist;
use super::types::IdKind;
use super::types::LockTiming;
use super::types::PartitionResults;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::changes::chunk::Plan;
use crate::changes::reject::{Reason, Reject};

/// The store's tables as the stages use them: plan and chunks, claims and
/// leases, the merge, the export's streams, and this connection's resources.
/// This is the contract each backend implements and the stages call directly
/// (through [`Store`](super::Store), which dereferences to it). Each operation that writes is
/// one transaction: what it writes commits together or not at all, and a typed
/// error ([`LeaseLost`](super::LeaseLost), [`Leased`](super::Leased), [`AlreadyMerged`](super::AlreadyMerged)) means it wrote nothing.
/// Streams (`each_*`) hand rows to a callback that may query the store.
pub trait Tables {
    // ---- this connection's resources: SQLite's; a server keeps its own, so
    // ---- by default there is nothing to do ----
    /// Sets this connection's page cache, in KiB (SQLite).
    fn set_cache_kib(&self, _kib: i64) -> Result<()> {
        Ok(())
    }
    /// Gives back what this connection caches (SQLite's page cache), between
    /// stages: each stage's peak then stays its own instead of adding up in
    /// the harness's resident size. (The allocator's policy is the harness's.)
    fn release_memory(&self) -> Result<()> {
        Ok(())
    }
    /// Checkpoints the WAL only every `pages` pages (SQLite): each checkpoint
    /// syncs the database file, and a worker's batches write thousands of pages.
    fn checkpoint_every(&self, _pages: u32) -> Result<()> {
        Ok(())
    }
    /// Moves the WAL into the database and truncates it (SQLite); done between
    /// stages so the WAL does not grow without bound.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
    // ---- the document's playlists, as imported ----
    /// Streams the document's playlists at positions `from..to`, with their
    /// positions, raw, in order.
    fn each_document_playlist_between(
        &self,
        from: u64,
        to: u64,
        each: &mut EachPlaylist,
    ) -> Result<()>;
    /// [`Tables::each_document_playlist_between`], only the positions
    /// `wanted` says yes to: a store that can leaves the others unread.
    fn each_document_playlist_among(
        &self,
        from: u64,
        to: u64,
        wanted: &dyn Fn(u64) -> bool,
        each: &mut EachPlaylist,
    ) -> Result<()> {
        self.each_document_playlist_between(from, to, &mut |position, raw| match wanted(position) {
            true => each(position, raw),
            false => Ok(()),
        })
    }

    // ---- plan and chunks ----
    /// Replaces the plan: every chunk's row, the form, the number of changes
    /// and of merge partitions, and the plan's done-marker, in one
    /// transaction.
    fn save_plan(&self, plan: &Plan, partitions: u64) -> Result<()>;
    /// Every chunk's row, by chunk number ([`SELECT_CHUNKS`](super::statements::SELECT_CHUNKS)).
    fn chunks(&self) -> Result<Vec<ChunkRow>>;
    /// One chunk's row, if the plan has it ([`SELECT_CHUNK`](super::statements::SELECT_CHUNK)).
    fn chunk(&self, chunk: u64) -> Result<Option<ChunkRow>>;
    /// How many batches have been committed, over all chunks.
    fn batches_committed(&self) -> Result<u64>;

    // ---- claims and leases (the rules: refuse_if_leased, when_none_is_free) ----
    /// Takes the first chunk that is not done and not leased by a live lease,
    /// for `lease`, for `owner` (who it is, for messages), raising its token,
    /// in one transaction; two claimers at once never get one chunk. When none
    /// is free: [`when_none_is_free`](super::rules::when_none_is_free).
    fn claim_next(&self, owner: &str, lease: Duration) -> Result<Claimed>;
    /// Takes chunk `chunk` (done or not: a worker run by hand may redo it),
    /// raising its token, unless [`refuse_if_leased`](super::rules::refuse_if_leased) refuses ([`Leased`](super::Leased));
    /// in one transaction.
    fn claim_chunk(&self, chunk: u64, owner: &str, lease: Duration) -> Result<Claim>;
    /// The chunks with a lease owner, with that owner (expired or not).
    fn leases(&self) -> Result<Vec<(Claim, String)>>;
    /// Extends the claim's lease to `lease` from now; [`LeaseLost`](super::LeaseLost) when the
    /// token is no longer the chunk's (taken over).
    fn renew_lease(&self, claim: Claim, lease: Duration) -> Result<()>;
    /// Frees the chunk at once (a worker that stops) if the claim's token is
    /// still the chunk's, so that another worker need not wait for expiry; a
    /// lost lease frees nothing.
    fn release_lease(&self, claim: Claim) -> Result<()>;
    /// Writes a batch (blocks, rejects) with the chunk's new position and
    /// figures, renewing its lease, in one transaction that first checks the
    /// claim's token and the chunk's position ([`LeaseLost`](super::LeaseLost) otherwise:
    /// nothing written). See [`Batch`].
    fn commit_batch(&self, batch: &Batch) -> Result<LockTiming>;

    // ---- merge ----
    /// The partitions in `merged` (their results are committed).
    fn merged_partitions(&self) -> Result<Vec<u64>>;
    /// Whether partition `partition` is in `merged`.
    fn is_merged(&self, partition: u64) -> Result<bool>;
    /// Streams partition `partition`'s blocks in index order: by chunk, then in the
    /// order the chunk's workers committed them.
    fn each_block(&self, partition: u64, each: &mut Each) -> Result<()>;
    /// Writes a partition's results and rejects with its row in `merged`, in
    /// one transaction; [`AlreadyMerged`](super::AlreadyMerged) (nothing written) when another
    /// worker was first.
    fn commit_partition(&self, partition: u64, out: &PartitionResults) -> Result<()>;
    /// Sets the merge's done-marker, in a transaction that checks
    /// [`check_merge_complete`](super::rules::check_merge_complete) (an error, nothing written, otherwise).
    fn finish_merge(&self) -> Result<()>;
    /// Document playlists that name a missing owner or song, as counted by
    /// the merged partitions.
    fn warnings(&self) -> Result<u64>;

    // ---- export (the rule: join_final_document_playlists) ----
    /// Streams the document's playlists at `positions` as they end: those
    /// that survive, in document order, as the merge left them (see
    /// [`join_final_document_playlists`](super::rules::join_final_document_playlists)). Export threads stream pieces of
    /// the range at once.
    fn each_final_document_playlist(&self, positions: Range<u64>, each: &mut Each) -> Result<()>;
    /// Streams the text of the new playlists created by changes of index in
    /// `created`, in the order they were created.
    fn each_new_playlist(&self, created: Range<u64>, each: &mut Each) -> Result<()>;
    /// Streams the document's other top-level members, (raw key, minified
    /// value), in document order.
    fn each_extra(&self, each: &mut EachMember) -> Result<()>;
    /// Streams every reject in index order.
    fn each_reject(&self, each: &mut dyn FnMut(Reject) -> Result<()>) -> Result<()>;
    /// How many changes were rejected for each reason, in [`Reason::ALL`]
    /// order, only the reasons present ([`counted_by_reason`](super::rules::counted_by_reason)).
    fn rejects_by_reason(&self) -> Result<Vec<(Reason, u64)>>;
}

/// What a backend supplies below the rules of [`Store`](super::Store): `meta` values, the
/// import's sink, lookups by position, id indexes kept for other hosts, and
/// the shared statements ([`Statement`]) run in one transaction.
pub(super) trait Backend: Tables {
    /// Reads one `meta` value; `None` when the key is not set.
    fn meta_text(&self, key: &str) -> Result<Option<String>>;
    /// Sets `meta` values (insert or replace), all in one transaction.
    fn set_meta_texts(&self, pairs: &[(&str, &str)]) -> Result<()>;
    /// [`Backend::set_meta_texts`], durable once it returns, power loss
    /// included: for what must be known before a file outside the store is
    /// replaced. A server's commit is (PostgreSQL syncs its log at commit);
    /// a SQLite file's is not (`synchronous = NORMAL`, `store::sqlite`).
    fn set_meta_texts_durably(&self, pairs: &[(&str, &str)]) -> Result<()> {
        self.set_meta_texts(pairs)
    }
    /// Runs `statements` in order in one transaction: all of them commit, or
    /// (on the first error) none.
    fn run_in_one_transaction(&self, statements: &[Statement]) -> Result<()>;

    /// Starts an import: the sink writes `playlists` and `extras` in
    /// transactions of many rows; the first clears what an earlier import
    /// left, the last (at [`DocumentSink::finish`]) also writes the import's
    /// `meta` values and done-marker. Dropped unfinished, its open
    /// transaction rolls back.
    fn document_writer(&self) -> Result<Box<dyn DocumentSink + '_>>;
    /// The document playlist at position `seq`, with its position.
    fn playlist_at(&self, seq: u64) -> Result<Option<(i64, String)>>;

    // ---- where the backends truly differ: id indexes on other hosts ----
    /// What names this run's id index files on every host (`None`: the files
    /// sit beside the store, which is all there is of it).
    fn index_tag(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Keeps a built id index in the store, with its hash, for other hosts.
    fn publish_index(&self, _kind: IdKind, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// Whether the id index file at `path` (this host's cached copy of
    /// another host's index) is the one the store holds, by its recorded
    /// hash. Files beside a SQLite database are that database's own.
    fn cached_index_is_current(&self, _kind: IdKind, _path: &Path) -> Result<bool> {
        Ok(true)
    }
    /// Fetches a kept id index into `path` (checked against its hash, written
    /// through a private temporary file and a rename).
    fn fetch_index(&self, kind: IdKind, path: &Path) -> Result<()> {
        bail!(
            "the {} index {} is missing: run the harness again to import afresh",
            kind.array_name(),
            path.display()
        )
    }
}

/// Takes the document's elements during the import (see [`DocumentWriter`](super::DocumentWriter)).
pub(super) trait DocumentSink {
    fn playlist(
        &mut self,
        position: u64,
        raw: &str,
        in_mixtape: Option<std::ops::Range<u64>>,
    ) -> Result<()>;
    fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()>;
    /// Writes `meta` (the import's done-marker among it) with the last elements.
    fn finish(self: Box<Self>, meta: &[(&str, String)]) -> Result<()>;
}
