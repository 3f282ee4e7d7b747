//! Stage 3, apply: what a `worker` process does with the chunks it claims.
//!
//! A worker reads its chunk's byte range of CHANGES (streaming, a few MiB at a
//! time), and for every change decides what can be decided without knowing the
//! order of changes (docs/GUIDE.md "Semantics and rejects", the first five reasons):
//!
//! 1. the shape ([`crate::changes::change`]): `invalid_change`;
//! 2. lookups in the imported document: `unknown_user`, `unknown_song`;
//! 3. the song list of a new playlist: `empty_playlist`, `duplicate_song`.
//!
//! A change that passes is *recorded*, with its global index, for the merge to
//! settle in order; a change that does not goes to `rejects` with the batch.
//!
//! ## Batches and the write lock
//!
//! Work goes in batches of [`BATCH_CHANGES`] to [`MAX_BATCH_CHANGES`] changes,
//! sized by the whole run ([`batch_changes`]), not by the chunk. Parsing and
//! lookups (in the memory-mapped id indexes, [`crate::ids::index`]) touch no
//! database; the recorded changes are encoded into one blob per merge
//! partition ([`crate::changes::record`]). Only then does the worker take the write lock
//! ([`crate::store::Tables::commit_batch`]) to write those few rows, its rejects and its new
//! position in the chunk. So the serial part of the stage is a few row inserts
//! per batch, not one per change.
//!
//! ## Resuming
//!
//! The chunk's position (`next_offset`, `next_index`, and the running figures the
//! merge needs) is committed in the same transaction as the batch it follows. A
//! worker that is killed loses only its uncommitted batch, and running it again
//! continues from the last commit: no change is recorded twice or skipped. A
//! chunk marked done is not applied again, unless `--redo` asks, which discards
//! what the chunk recorded in the same transaction that restarts it.
//!
//! A batch commits only if the chunk's position is still the one this worker
//! started from, so two workers on one chunk (by accident) cannot both record it.
//! On Ctrl-C or SIGTERM the worker commits what it has and stops.
//!
//! ## Claims and leases
//!
//! A worker applies a chunk only while it holds a lease on it ([`Claim`]):
//! [`join`] claims chunks one after another until all are done, [`run_chunk`]
//! claims the one chunk asked for. Every commit renews the lease, and a thread
//! of the worker's renews it every third of its length meanwhile, however
//! long one change takes (`keep_lease`); every write checks the claim's token in its
//! own transaction, so a worker whose lease expired and was taken over cannot
//! write again ([`LeaseLost`]). Why leases and not a fixed chunk per process:
//! a process (or a host) that dies must not hold its chunk for ever, and
//! workers that join a run late must find work.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::changes::change::{self, Change, Op};
use crate::changes::partition::Partitions;
use crate::changes::record::{self, Body, NewId, Recorded};
use crate::changes::reject::{Reason, Reject, Rejection};
use crate::ids::key::{FxSet, IdKey};
use crate::json;
use crate::run::fingerprint;
use crate::stages::Stage;
use crate::store::{Batch, Claim, Claimed, InputKind, Key, LeaseLost, Location, Store};

/// Changes per batch, at least (one read transaction and one write transaction
/// each).
///
/// ## Why batches grow with the run, and not with the chunk
///
/// Every batch writes one row per merge partition, and each of those rows adds
/// an entry at its own place in the `blocks` index, so a batch dirties about one
/// index page per partition whatever its size. With thousands of partitions
/// (50M changes) and small batches, those pages (and the checkpoints that copy
/// them back) were most of the write lock's time. Fewer, larger batches write the
/// same records with far fewer dirty pages; memory stays bounded by the maximum.
///
/// The size follows the run's number of changes, not the chunk's: sized by the
/// chunk, 16 workers wrote 16 times as many batches as one (a chunk of 1/16 of
/// the changes, cut into as many batches), and on many cores the workers
/// queued for the write lock (BENCHMARKS.md, "Many cores").
pub const BATCH_CHANGES: u64 = 32_768;

/// Changes per batch, at most: about 10 MB of encoded records.
pub const MAX_BATCH_CHANGES: u64 = 262_144;

/// How many batches the whole run's changes are cut into, roughly, when that
/// keeps batches between [`BATCH_CHANGES`] and [`MAX_BATCH_CHANGES`].
pub const BATCHES_PER_RUN: u64 = 64;

/// Changes per batch for a run of `run_changes` changes, however many chunks
/// (and workers) share them.
pub fn batch_changes(run_changes: u64) -> u64 {
    (run_changes / BATCHES_PER_RUN).clamp(BATCH_CHANGES, MAX_BATCH_CHANGES)
}

/// WAL pages between automatic checkpoints in a worker and a merge thread
/// (SQLite's default is 1000): each checkpoint syncs the database file, and
/// batches (and merged partitions) write thousands of pages in all; fewer,
/// larger checkpoints copy a page written twice once. The harness
/// checkpoints, and truncates the WAL, after the stage.
pub const BULK_CHECKPOINT_PAGES: u32 = 2048;

/// How the worker was asked to run.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Log every change's index, op and outcome to stderr.
    pub trace: bool,
    /// Apply the chunk again from its start, even if it is done (what it recorded
    /// before is discarded in the same transaction, so nothing is recorded twice).
    pub redo: bool,
}

/// What one run of a worker did.
#[derive(Debug, Clone, Default)]
pub struct ChunkSummary {
    pub chunk: u64,
    pub already_done: bool,
    pub changes: u64,
    pub recorded: u64,
    pub rejected: u64,
    /// Time spent holding the write lock: the serial part of the apply stage.
    pub lock_held: Duration,
    /// Time spent waiting for the write lock.
    pub lock_wait: Duration,
}

/// Progress after a batch: bytes of the chunk done, bytes in the chunk, and
/// what this run did so far.
pub type ProgressFn<'a> = dyn FnMut(u64, u64, &ChunkSummary) + 'a;

/// Who this worker is, in lease records and messages: `host:pid`.
/// A testing aid replaces it ([`crate::run::fault::worker_name`]), to play a worker on
/// another host.
pub fn worker_name() -> String {
    if let Some(name) = crate::run::fault::worker_name() {
        return name;
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// How long a joined worker waits before asking again when every chunk left
/// is leased by another worker: from the first of these, doubling up to the
/// second. Short at first because the usual reason is a colleague about to
/// finish its last chunk; longer later because a dead host's lease takes its
/// whole length to expire, and every question costs the store a query.
const WAIT_FOR_CHUNKS: (Duration, Duration) =
    (Duration::from_millis(2), Duration::from_millis(250));

/// Opens the work database for a worker: it must hold a plan.
fn open_for_work(db: &Location) -> Result<Store> {
    let store = Store::open(db)?;
    store.checkpoint_every(BULK_CHECKPOINT_PAGES)?;
    if !store.is_done(Stage::Plan)? {
        bail!(
            "the work database {} has no plan yet: run the harness with --stop-after plan first",
            store.location().display()
        );
    }
    Ok(store)
}

/// Applies chunk `chunk` of the plan in the work database at `db` (a worker
/// run by hand); `progress` is called after every committed batch. Refuses a
/// chunk that another worker holds a live lease on.
pub fn run_chunk(
    db: &Location,
    chunk: u64,
    options: &WorkerOptions,
    progress: &mut ProgressFn,
) -> Result<ChunkSummary> {
    let store = open_for_work(db)?;
    if store.chunk(chunk)?.is_none() {
        let count = store.chunks()?.len();
        bail!(
            "chunk {chunk} does not exist: the plan has {count} chunk(s){}",
            if count > 0 {
                format!(", numbered 0 to {}", count - 1)
            } else {
                String::new()
            }
        );
    }
    let lease = store.lease()?;
    let name = worker_name();
    release_leases_of_dead_local_workers(&store, &name)?;
    let claim = store.claim_chunk(chunk, &name, lease)?;
    if options.redo {
        store.reset_chunk(chunk)?;
    }
    let applied = apply_claimed(&store, claim, lease, options, progress);
    // Whatever happened, the chunk is free for the next worker at once.
    let _ = store.release_lease(claim);
    applied
}

/// `worker --join`: claims chunks one at a time and applies them until every
/// chunk of the plan is done, whoever did it; waits while the chunks left are
/// leased by other workers (one of which may die, its lease expiring). A chunk
/// whose lease this worker lost is left to its new holder.
pub fn join(
    db: &Location,
    options: &WorkerOptions,
    progress: &mut ProgressFn,
) -> Result<JoinSummary> {
    let store = open_for_work(db)?;
    let lease = store.lease()?;
    let name = worker_name();
    let mut summary = JoinSummary::default();
    let mut wait = WAIT_FOR_CHUNKS.0;
    loop {
        crate::run::interrupt::check()?;
        match store.claim_next(&name, lease)? {
            Claimed::AllDone => return Ok(summary),
            Claimed::Wait => {
                release_leases_of_dead_local_workers(&store, &name)?;
                std::thread::sleep(wait);
                wait = (wait * 2).min(WAIT_FOR_CHUNKS.1);
            }
            Claimed::Chunk(claim) => match apply_claimed(&store, claim, lease, options, progress) {
                Ok(chunk) => {
                    wait = WAIT_FOR_CHUNKS.0;
                    summary.chunks.push(chunk);
                }
                Err(e) if e.is::<LeaseLost>() => {
                    summary.lost += 1;
                    eprintln!("worker: {e}");
                }
                Err(e) => {
                    let _ = store.release_lease(claim);
                    return Err(e);
                }
            },
        }
    }
}

/// Frees at once the chunks leased by workers of this host that no longer
/// run (killed, crashed): waiting for their leases to expire would only
/// waste time. Leases of other hosts' workers expire as they should. A
/// process id reused since is taken for alive, which only means waiting.
fn release_leases_of_dead_local_workers(store: &Store, me: &str) -> Result<()> {
    let Some((host, _)) = me.rsplit_once(':') else {
        return Ok(());
    };
    for (claim, owner) in store.leases()? {
        let Some((owner_host, pid)) = owner.rsplit_once(':') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if owner_host == host && gone {
            store.release_lease(claim)?;
        }
    }
    Ok(())
}

/// What a joined worker did.
#[derive(Debug, Default)]
pub struct JoinSummary {
    /// The chunks it applied (or finished), in the order it did them.
    pub chunks: Vec<ChunkSummary>,
    /// Chunks whose lease it lost to another worker.
    pub lost: u64,
    /// Merge partitions it merged once every chunk was applied
    /// ([`crate::stages::merge::help`]).
    pub merged: u64,
}

/// Applies the chunk of `claim` from its last committed position.
fn apply_claimed(
    store: &Store,
    claim: Claim,
    lease: Duration,
    options: &WorkerOptions,
    progress: &mut ProgressFn,
) -> Result<ChunkSummary> {
    let chunk = claim.chunk;
    let state = store.chunk(chunk)?.context("chunk vanished")?;
    let mut summary = ChunkSummary {
        chunk,
        ..Default::default()
    };
    if state.done {
        summary.already_done = true;
        return Ok(summary);
    }
    let changes_path = checked_changes_path(store)?;
    let partitions = store.partitions()?;
    let lease_lost = AtomicBool::new(false);
    let mut worker = Worker {
        store,
        chunk,
        claim,
        lease,
        lease_lost: &lease_lost,
        partitions,
        options,
        blocks: vec![Vec::new(); partitions.count as usize],
        rejects: Vec::new(),
        in_batch: 0,
        next_index: state.next_index,
        auto_count: state.auto_count,
        max_playlist_id: state.max_playlist_id,
        start: state.start,
        summary,
        scratch: Vec::new(),
        waiting: VecDeque::with_capacity(LOOKAHEAD + 1),
        look_ahead: !options.trace
            && crate::run::fault::look_ahead(store.lookup_tables_bytes()? > LOOK_AHEAD_PAST),
        committed_offset: state.next_offset,
        batch_size: crate::run::fault::batch_size(batch_changes(store.meta_number(Key::Changes)?)),
        end: state.end,
        progress,
    };
    // Say at once which chunk this is and how far it got before.
    (worker.progress)(
        state.next_offset - state.start,
        state.end - state.start,
        &worker.summary,
    );
    std::thread::scope(|scope| {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let location = store.location().clone();
        let lost = &lease_lost;
        let keeper = scope.spawn(move || keep_lease(&location, claim, lease, &stopped, lost));
        let applied = worker.run(&changes_path, state.next_offset, state.end);
        drop(stop);
        let _ = keeper.join();
        applied
    })?;
    Ok(worker.summary)
}

/// Renews the lease of `claim` every third of its length until `stop`
/// speaks or hangs up: a worker keeps its chunk however long one change
/// takes (a value of hundreds of MB, a paused host that comes back in time
/// is another matter: its lease is renewed only while it runs). Runs on its
/// own thread with its own connection. When the lease turns out to be taken
/// over it says so through `lost`, and the worker stops at its next change
/// (its next commit would be refused anyway). A renewal that fails for
/// another reason (a busy server, a broken connection) is tried again at the
/// next tick, on a new connection.
fn keep_lease(
    location: &Location,
    claim: Claim,
    lease: Duration,
    stop: &std::sync::mpsc::Receiver<()>,
    lost: &AtomicBool,
) {
    let mut store = Store::open(location).ok();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(lease / 3) {
        if crate::run::fault::paused() {
            // A testing aid's stalled host: nothing of it runs, this neither.
            continue;
        }
        let renewed = match &store {
            Some(store) => store.renew_lease(claim, lease),
            None => Store::open(location).and_then(|opened| {
                let renewed = opened.renew_lease(claim, lease);
                store = Some(opened);
                renewed
            }),
        };
        match renewed {
            Ok(()) => {}
            Err(e) if e.is::<LeaseLost>() => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(_) => store = None,
        }
    }
}

/// CHANGES as the plan saw it (its decompressed text, when it came
/// compressed): a chunk is byte offsets, never applied to another file.
fn checked_changes_path(store: &Store) -> Result<PathBuf> {
    let Some((path, expected)) = store.input_text(InputKind::Changes)? else {
        bail!("work database has no CHANGES: was it made by an unfinished run?");
    };
    if crate::place::is_object(&path) {
        // Not asked of the bucket here: every read is conditional on the
        // pin, and an object replaced since is refused there.
        crate::place::pin(&path, &expected)?;
        return Ok(path);
    }
    let actual = fingerprint::of_file(&path)
        .with_context(|| format!("reading CHANGES {}", path.display()))?;
    if actual != expected {
        bail!(
            "CHANGES {} changed since the plan was made; run the harness again to start afresh",
            path.display()
        );
    }
    Ok(path)
}

struct Worker<'a> {
    store: &'a Store,
    chunk: u64,
    /// The lease this worker holds on the chunk, and how long a renewal lasts.
    claim: Claim,
    lease: Duration,
    /// Set by [`keep_lease`] when the lease was taken over.
    lease_lost: &'a AtomicBool,
    partitions: Partitions,
    options: &'a WorkerOptions,
    /// Encoded records of the current batch, one block per merge partition.
    blocks: Vec<Vec<u8>>,
    rejects: Vec<Reject>,
    in_batch: u64,
    /// Index of the next change.
    next_index: u64,
    /// `add_playlist` changes without `playlist_id` seen so far in this chunk.
    auto_count: u64,
    /// Largest auto-id-like `playlist_id` seen so far in this chunk.
    max_playlist_id: u64,
    start: u64,
    summary: ChunkSummary,
    /// Where [`change::read`] minifies the rare change it cannot read as it is.
    scratch: Vec<u8>,
    /// Simple changes read, whose lookups wait (see [`Waiting`]).
    waiting: VecDeque<Waiting>,
    /// Whether simple changes wait at all ([`LOOK_AHEAD_PAST`]; never with
    /// `--trace`, which prints each change's text).
    look_ahead: bool,
    /// The chunk position this worker last committed (or started from).
    committed_offset: u64,
    /// Changes per batch (see [`BATCH_CHANGES`]; `MIXTAPE_BATCH` in tests).
    batch_size: u64,
    end: u64,
    progress: &'a mut ProgressFn<'a>,
}
/// How many simple changes wait for their lookups ([`Worker::change`]): a
/// change takes a few hundred nanoseconds, a miss of the cache about one
/// hundred, so a few changes ahead is time enough.
const LOOKAHEAD: usize = 8;

/// The size of the tables an `add_song` looks up past which changes wait for
/// their lookups: tables that fit a core's cache gain nothing from waiting
/// and pay for it, larger ones gain (BENCHMARKS.md, "What was tried":
/// looking ahead in apply).
const LOOK_AHEAD_PAST: usize = 4 << 20;

/// A simple change read, waiting for its lookups, with copies of its ids.
struct Waiting {
    index: u64,
    op: Op,
    playlist: ShortToken,
    /// Empty for `remove_playlist`.
    song: ShortToken,
}

impl Waiting {
    /// `change`, when it is simple and its ids are short.
    fn of(index: u64, change: &Change) -> Option<Waiting> {
        let (op, playlist, song) = match *change {
            Change::AddSong { playlist, song } => (Op::AddSong, playlist, song),
            Change::RemoveSong { playlist, song } => (Op::RemoveSong, playlist, song),
            Change::RemovePlaylist { playlist } => (Op::RemovePlaylist, playlist, &b""[..]),
            Change::AddPlaylist { .. } => return None,
        };
        Some(Waiting {
            index,
            op,
            playlist: ShortToken::of(playlist)?,
            song: ShortToken::of(song)?,
        })
    }
}

/// A copy of an id token of at most [`SHORT_TOKEN`] bytes (nearly all).
#[derive(Clone, Copy)]
struct ShortToken {
    len: u8,
    bytes: [u8; SHORT_TOKEN],
}

const SHORT_TOKEN: usize = 30;

impl ShortToken {
    fn of(token: &[u8]) -> Option<ShortToken> {
        let mut bytes = [0; SHORT_TOKEN];
        bytes.get_mut(..token.len())?.copy_from_slice(token);
        Some(ShortToken {
            len: token.len() as u8,
            bytes,
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Worker<'_> {
    fn run(&mut self, path: &Path, from: u64, end: u64) -> Result<()> {
        let what = format!("CHANGES chunk {}", self.chunk);
        let mut source = crate::place::open_range(path, from, end)
            .with_context(|| format!("reading CHANGES {}", path.display()))?;
        crate::json::values::each_value_read_by(
            &mut source,
            path,
            from,
            end,
            &what,
            &mut |text, whole, at| {
                let Some(len) = self.change(text, whole)? else {
                    return Ok(None);
                };
                // `at`: where the text starts, or (whole) where it ends.
                let after = if whole { at } else { at + len as u64 };
                crate::run::fault::point("worker-change");
                if self.lease_lost.load(Ordering::Relaxed) {
                    // keep_lease learnt that the chunk is another worker's now.
                    return Err(LeaseLost { chunk: self.chunk }.into());
                }
                if crate::run::interrupt::requested() {
                    // Commit what is done, so the next run continues from here.
                    self.flush(after, false)?;
                    return Err(crate::run::interrupt::Interrupted.into());
                }
                if self.in_batch >= self.batch_size {
                    self.flush(after, false)?;
                }
                Ok(Some(len))
            },
        )?;
        self.flush(end, true)
    }

    /// Handles the change at the start of `text` (exactly its text when
    /// `whole`), and says how many bytes it took: `None` when it must be given
    /// whole ([`change::read_prefix`]).
    ///
    /// Where the index tables are large ([`LOOK_AHEAD_PAST`]), a simple
    /// change (`add_song`, `remove_song`, `remove_playlist` with
    /// short ids) waits behind up to [`LOOKAHEAD`] others: its index slots are
    /// prefetched now and looked up when it leaves the queue, by which time
    /// they are in the cache (the lookups' cache misses were the largest
    /// single cost of the stage). Any other change, and every flush, first
    /// settles the waiting ones, so records and rejects keep index order.
    fn change(&mut self, text: &[u8], whole: bool) -> Result<Option<usize>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let (parsed, len) = if whole {
            (change::read(text, &mut scratch), text.len())
        } else {
            match change::read_prefix(text) {
                Some(read) => read,
                None => {
                    self.scratch = scratch;
                    return Ok(None);
                }
            }
        };
        let raw = &text[..len];
        let index = self.next_index;
        self.next_index += 1;
        self.in_batch += 1;
        self.summary.changes += 1;
        if let Some(id) = parsed.named_playlist_id {
            self.max_playlist_id = self.max_playlist_id.max(id);
        }
        let auto_ordinal = if parsed.counts_as_auto {
            self.auto_count += 1;
            Some(self.auto_count)
        } else {
            None
        };
        let waiting = match &parsed.change {
            Ok(change) => {
                self.prefetch_lookups(change);
                self.look_ahead
                    .then(|| Waiting::of(index, change))
                    .flatten()
            }
            Err(_) => None,
        };
        if let Some(waiting) = waiting {
            self.waiting.push_back(waiting);
            if self.waiting.len() > LOOKAHEAD {
                self.settle_oldest_waiting()?;
            }
            self.scratch = scratch;
            return Ok(Some(len));
        }
        self.settle_waiting()?;
        let outcome = match parsed.change {
            Err(detail) => Err(Rejection::new(Reason::InvalidChange, detail)),
            Ok(change) => self.check_and_record(index, change, auto_ordinal)?,
        };
        self.settle(index, raw, parsed.op_json, outcome);
        self.scratch = scratch;
        Ok(Some(len))
    }

    /// Prefetches the index slots `change` will look up, once, when it is
    /// read: an `add_song`'s two (the song and the playlist's partition:
    /// their cache misses overlap), and, when changes wait
    /// ([`Worker::change`]), the one of a removal, which is then looked up
    /// later (looked up at once, it has nothing to overlap with).
    fn prefetch_lookups(&self, change: &Change) {
        let (playlist, song) = match *change {
            Change::AddSong { playlist, song } => (playlist, Some(song)),
            Change::RemoveSong { playlist, .. } | Change::RemovePlaylist { playlist }
                if self.look_ahead =>
            {
                (playlist, None)
            }
            _ => return,
        };
        self.store.prefetch_lookups(Some(playlist), song);
    }

    /// Looks up and records (or rejects) every waiting change, in order.
    fn settle_waiting(&mut self) -> Result<()> {
        while !self.waiting.is_empty() {
            self.settle_oldest_waiting()?;
        }
        Ok(())
    }

    fn settle_oldest_waiting(&mut self) -> Result<()> {
        let Some(waiting) = self.waiting.pop_front() else {
            return Ok(());
        };
        let (playlist, song) = (waiting.playlist.bytes(), waiting.song.bytes());
        let change = match waiting.op {
            Op::AddSong => Change::AddSong { playlist, song },
            Op::RemoveSong => Change::RemoveSong { playlist, song },
            Op::RemovePlaylist => Change::RemovePlaylist { playlist },
            Op::AddPlaylist => unreachable!("an add_playlist never waits"),
        };
        let outcome = self.check_and_record(waiting.index, change, None)?;
        let op_json = std::borrow::Cow::Borrowed(waiting.op.json_name());
        self.settle(waiting.index, b"", op_json, outcome);
        Ok(())
    }

    /// Counts change `index` (text `raw`, for `--trace`) as recorded or
    /// rejected.
    fn settle(
        &mut self,
        index: u64,
        raw: &[u8],
        op_json: std::borrow::Cow<'static, str>,
        outcome: Result<(), Rejection>,
    ) {
        match outcome {
            Ok(_) => {
                self.summary.recorded += 1;
                if self.options.trace {
                    eprintln!("change {index}: {} -> recorded", shorten(raw));
                }
            }
            Err(Rejection { reason, detail }) => {
                self.summary.rejected += 1;
                if self.options.trace {
                    eprintln!(
                        "change {index}: {} -> rejected: {}: {detail}",
                        shorten(raw),
                        reason.name()
                    );
                }
                self.rejects.push(Reject {
                    index,
                    op_json,
                    reason,
                    detail,
                });
            }
        }
    }

    /// The lookups and list checks; records the change when it passes, or
    /// says why it is rejected.
    fn check_and_record(
        &mut self,
        index: u64,
        change: Change,
        auto_ordinal: Option<u64>,
    ) -> Result<Result<(), Rejection>> {
        let body = match change {
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            } => {
                let new_id = match (id, auto_ordinal) {
                    (Some(given), _) => NewId::Given(given.into()),
                    (None, Some(ordinal)) => NewId::Auto {
                        chunk: self.chunk,
                        ordinal,
                    },
                    (None, None) => {
                        unreachable!("an add_playlist without playlist_id counts as auto")
                    }
                };
                return self.check_and_record_new_playlist(index, new_id, owner, &songs, &copied);
            }
            Change::RemovePlaylist { playlist } => Body::RemovePlaylist {
                playlist: playlist.into(),
            },
            Change::AddSong { playlist, song } => {
                let Some(written) = self.store.song_written(song)? else {
                    return Ok(Err(unknown_song(song)));
                };
                self.record(Recorded {
                    index,
                    body: Body::AddSong {
                        playlist: playlist.into(),
                        song: written.as_ref().into(),
                    },
                })?;
                return Ok(Ok(()));
            }
            Change::RemoveSong { playlist, song } => Body::RemoveSong {
                playlist: playlist.into(),
                song: song.into(),
            },
        };
        self.record(Recorded { index, body })?;
        Ok(Ok(()))
    }

    /// An `add_playlist`: its owner and songs must exist, its song list be
    /// non-empty and without duplicates (in this order of precedence).
    fn check_and_record_new_playlist(
        &mut self,
        index: u64,
        id: NewId,
        owner: &[u8],
        songs: &[&[u8]],
        copied: &[(&[u8], &[u8])],
    ) -> Result<Result<(), Rejection>> {
        let Some(owner_written) = self.store.user_written(owner)? else {
            return Ok(Err(Rejection::new(
                Reason::UnknownUser,
                format!("user {} does not exist", text(owner)),
            )));
        };
        let mut songs_written = Vec::with_capacity(songs.len());
        for song in songs {
            match self.store.song_written(song)? {
                Some(w) => songs_written.push(w),
                None => return Ok(Err(unknown_song(song))),
            }
        }
        if songs.is_empty() {
            return Ok(Err(Rejection::new(
                Reason::EmptyPlaylist,
                "song_ids is empty",
            )));
        }
        if let Some(song) = first_repeated(songs) {
            return Ok(Err(Rejection::new(
                Reason::DuplicateSong,
                format!("song {} appears more than once in song_ids", text(song)),
            )));
        }
        let mut rendered = Vec::new();
        for (key, value) in copied {
            rendered.push(b',');
            rendered.extend_from_slice(key);
            rendered.push(b':');
            rendered.extend_from_slice(value);
        }
        let body = Body::AddPlaylist {
            id,
            owner: owner_written.as_ref().into(),
            songs: songs_written.iter().map(|s| s.as_ref().into()).collect(),
            copied: &rendered,
        };
        self.record(Recorded { index, body })?;
        Ok(Ok(()))
    }

    /// Encodes `rec` into its partition's buffer ([`crate::changes::partition`]).
    fn record(&mut self, rec: Recorded) -> Result<()> {
        let partition = match rec.body.playlist() {
            Some(p) => {
                let id = json::id_text(&p).unwrap_or_default();
                let position = self.store.document_playlist_position(&id)?;
                self.partitions.of_playlist(position, &id)
            }
            None => self.partitions.of_automatic(rec.index),
        };
        record::encode(&rec, &mut self.blocks[partition as usize]);
        Ok(())
    }

    /// Writes the batch and the chunk's new position in one transaction.
    fn flush(&mut self, next_offset: u64, done: bool) -> Result<()> {
        // Every change before `next_offset` must be in the batch.
        self.settle_waiting()?;
        let timing = self.store.commit_batch(&Batch {
            claim: self.claim,
            lease: self.lease,
            blocks: &self.blocks,
            rejects: &self.rejects,
            from_offset: self.committed_offset,
            next_offset,
            next_index: self.next_index,
            auto_count: self.auto_count,
            max_playlist_id: self.max_playlist_id,
            done,
        })?;
        self.summary.lock_wait += timing.waited;
        self.summary.lock_held += timing.held;
        self.committed_offset = next_offset;
        for block in &mut self.blocks {
            block.clear();
        }
        self.rejects.clear();
        self.in_batch = 0;
        (self.progress)(
            next_offset - self.start,
            self.end - self.start,
            &self.summary,
        );
        Ok(())
    }
}

/// The first of `songs` whose id (its text: `7` and `"7"` are one id) an
/// earlier one has, if any. By their keys, without a string or a hash set
/// per song (a tenth of the apply's allocations): a new playlist names a
/// few songs, which are compared pairwise; a long list goes through a set.
fn first_repeated<'s>(songs: &[&'s [u8]]) -> Option<&'s [u8]> {
    const COMPARED_PAIRWISE: usize = 32;
    let keys: Vec<IdKey> = songs.iter().map(|s| IdKey::raw(s)).collect();
    if songs.len() <= COMPARED_PAIRWISE {
        (1..keys.len())
            .find(|&i| keys[..i].contains(&keys[i]))
            .map(|i| songs[i])
    } else {
        let mut seen = FxSet::with_capacity_and_hasher(keys.len(), Default::default());
        keys.into_iter()
            .position(|key| !seen.insert(key))
            .map(|i| songs[i])
    }
}

/// An id's text (how ids are compared), for lookups and messages.
fn text(raw: &[u8]) -> String {
    json::id_text(raw).unwrap_or_default().into_owned()
}

fn unknown_song(song: &[u8]) -> Rejection {
    Rejection::new(
        Reason::UnknownSong,
        format!("song {} does not exist", text(song)),
    )
}

/// A change's text for a trace line, minified: at most 120 characters.
fn shorten(raw: &[u8]) -> String {
    let minified = json::minify(raw);
    let text = String::from_utf8_lossy(&minified);
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However many chunks share a run, its workers commit about as many
    /// batches in all as one worker would (one more a chunk at most, for
    /// its last, partial batch), each within the bounds.
    #[test]
    fn batches_are_sized_by_the_run_not_the_chunk() {
        for run in [1_000u64, 300_000, 5_000_000, 17_000_000, 50_000_000] {
            let size = batch_changes(run);
            assert!(
                (BATCH_CHANGES..=MAX_BATCH_CHANGES).contains(&size),
                "{run}: {size}"
            );
            let batches = |chunks: u64| -> u64 {
                (0..chunks)
                    .map(|k| (run * (k + 1) / chunks - run * k / chunks).div_ceil(size))
                    .sum()
            };
            for chunks in [2, 4, 8, 16, 64] {
                assert!(
                    batches(chunks) <= batches(1) + chunks,
                    "{run} changes in {chunks} chunks: {} batches, against {} in one",
                    batches(chunks),
                    batches(1)
                );
            }
        }
        assert_eq!(batch_changes(50_000_000), MAX_BATCH_CHANGES);
        assert_eq!(batch_changes(5_000_000), 5_000_000 / BATCHES_PER_RUN);
    }

    /// `first_repeated` names the song that a set of the songs' texts would
    /// refuse first, short lists and long, ids written every way.
    #[test]
    fn first_repeated_is_the_first_refused_by_a_set_of_texts() {
        fn by_texts<'s>(songs: &[&'s [u8]]) -> Option<&'s [u8]> {
            let mut seen = std::collections::HashSet::new();
            songs.iter().copied().find(|s| !seen.insert(text(s)))
        }
        let spellings: [&[u8]; 8] = [
            b"7",
            b"\"7\"",
            b"\"\\u0037\"",
            b"8",
            b"\"a\"",
            b"\"\\u0061\"",
            b"\"a long id past sixteen bytes\"",
            b"\"a long id past sixteen byteS\"",
        ];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut repeated = 0;
        for len in 0..80 {
            for _ in 0..20 {
                let mut songs: Vec<Vec<u8>> =
                    (0..len).map(|i| format!("\"s{i}\"").into_bytes()).collect();
                // A few of the spellings (two of them the same id, often)
                // at random places.
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for _ in 0..next() % 4 {
                    let r = next();
                    if len > 0 {
                        let at = (r % len as u64) as usize;
                        songs[at] = spellings[(r >> 32) as usize % spellings.len()].to_vec();
                    }
                }
                let songs: Vec<&[u8]> = songs.iter().map(|s| &s[..]).collect();
                let expected = by_texts(&songs);
                repeated += usize::from(expected.is_some());
                assert_eq!(first_repeated(&songs), expected, "{songs:?}");
            }
        }
        // Both ways of finding them saw repeated songs.
        assert!(repeated > 200, "{repeated}");
    }
}
