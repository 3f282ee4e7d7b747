//! The work store: every table, every statement of SQL, and who may open it.
//!
//! One work store (a SQLite file in WAL mode, or a schema on a PostgreSQL
//! server) holds everything a run knows, so that a run can
//! stop at any point and continue later. The stages never write SQL: they call
//! the typed operations of [`Store`] ("append a batch", "the blocks of partition
//! P in index order", "commit a partition's results"). Those operations are
//! the [`Tables`] trait, the contract written once where it is implemented
//! against; [`Store`] dereferences to it, and adds the rules that are the same
//! for every backend on top of the private `Backend` trait (`meta` values, the
//! import's sink, lookups by position, id indexes for other hosts, and
//! [`Statement`]s of shared SQL run in one transaction). Two backends make the
//! same transactional promises: `sqlite` (one file, the default, this
//! module's docs below) and `postgres` (a server, for runs that span hosts).
//! What is the same for both lives here: `meta` keys, the id indexes, the
//! types of the operations, and the rules (leases, claims, the merge-join of
//! the final playlists, counting rejects, what resetting a chunk undoes).
//!
//! | table | written by | holds |
//! |---|---|---|
//! | `meta` | every stage | inputs and their fingerprints, stage markers, figures ([`Key`]) |
//! | `playlists`, `extras` | import | the document's playlists by position, in input order (on SQLite, where each is in MIXTAPE: `sqlite/playlist_rows.rs`; on PostgreSQL, minified), and its other members, minified |
//! | `chunks` | plan, workers | byte range of every chunk and how far its worker got |
//! | `blocks` | workers | recorded changes, encoded ([`crate::changes::record`]), one row per batch and partition |
//! | `rejects` | workers, merge | every rejected change, with its index (SQLite: up to 128 a row, encoded) |
//! | `results` | merge | every playlist whose fate differs from the document ([`Fate`]) (SQLite: up to 64 a row, encoded) |
//! | `merged` | merge | the partitions already merged, and the warnings each counted |
//!
//! Users and songs never change, so the store keeps no copy of them: two
//! read-only id indexes beside the file (`DB.users.idx`, `DB.songs.idx`,
//! [`crate::ids::index`]) answer "does this user or song exist, and how is it
//! written" for workers and the merge, and `meta` keeps where their arrays are
//! in MIXTAPE ([`ArrayRanges`]), from which the export copies them. The import
//! builds the indexes before it marks itself done; MIXTAPE's fingerprint,
//! checked on every resume, says the ranges still hold. A third index,
//! `DB.playlists.idx`, maps a document playlist's id to its position in
//! `playlists`: the merge asks it about every playlist id it meets, most of
//! them new playlists' ids that the document does not have.
//!
//! A compressed input is decompressed once into a kept text file beside the
//! database (`DB.mixtape`, `DB.changes`, [`crate::stages::decompress`]); `meta` records,
//! for each input, the file the stages read and its fingerprint
//! ([`Store::input_text`]), so workers read the kept text and a resumed run can
//! tell whether the kept file is still whole.
//!
//! `rejects` and `results` are append-only (no key but the rowid): writers add
//! rows in whatever order their work comes, and the export merges them in
//! order (SQLite: from sorted runs, `sqlite/runs.rs`). Keyed
//! inserts in random order would rewrite pages all over those tables in every
//! transaction, which at 5M changes made the merge ten times slower.
//!
//! ## Transactions
//!
//! Every write goes through the client's transaction guard (a `Transaction`
//! of rusqlite or of postgres), which rolls back when it is dropped unfinished
//! (an early `?` included). On SQLite, writers begin them IMMEDIATE:
//! they take the write lock up front, since a DEFERRED transaction that starts
//! writing later can fail with `SQLITE_BUSY_SNAPSHOT`, which no busy timeout
//! cures. What must happen together happens in one of these operations: a batch
//! and its chunk's new position ([`Tables::commit_batch`]), a partition's results
//! and its `merged` row ([`Tables::commit_partition`]), a stage's last rows and
//! its done-marker.
//!
//! ## Locking
//!
//! SQLite has one write lock per file. The harness creates the file, sets the page
//! size, WAL mode and the schema before any worker starts (two processes doing
//! that at once fail at once with "database is locked", whatever the busy
//! timeout). Writers then wait for the lock up to a long busy timeout instead
//! of failing, trying again every millisecond (`sqlite.rs`, `BUSY_POLL`).
//!
//! Two harness runs on one database would corrupt each other's plan, so the
//! harness also takes an exclusive `flock` on `DB.lock` ([`RunLock`]); a second run
//! refuses to start.
//!
//! ## Versions
//!
//! `PRAGMA user_version` holds [`SCHEMA_VERSION`]; a database of another version
//! (or another program's database) is never resumed.

use std::borrow::Cow;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::changes::reject::{Reason, Reject};
use crate::ids::index::IdIndex;
use crate::stages::plan::Plan;
use crate::stages::Stage;

mod postgres;
mod sqlite;

pub use postgres::target::{bound_silence_by_lease, silence_bound};
pub use postgres::PgTarget;

/// Bumped whenever the layout below changes.
pub const SCHEMA_VERSION: i64 = 18;

/// `meta` keys of the publication record ([`Store::record_publishing`]).
const PUBLISHED_PATH: &str = "published_output_path";
const PUBLISHED_FINGERPRINT: &str = "published_output_fingerprint";

/// A value kept in `meta`. Stage markers are not keys: see [`Store::is_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The owner member name new playlists use (`owner_id` or `user_id`).
    OwnerKey,
    /// Largest automatic-id-like playlist id in the document.
    DocumentMaxPlaylistId,
    Users,
    Playlists,
    Songs,
    /// Where the users and songs arrays are in MIXTAPE (`start end`, or empty).
    UsersRange,
    SongsRange,
    /// The changes file's form (`object`, `array`, `lines`).
    Form,
    /// How many changes CHANGES holds.
    Changes,
    /// How many merge partitions records are spread over.
    Partitions,
    /// How long a worker's claim on a chunk lasts unless renewed, in seconds.
    LeaseSecs,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::OwnerKey => "owner_key",
            Key::DocumentMaxPlaylistId => "document_max_playlist_id",
            Key::Users => "users",
            Key::Playlists => "playlists",
            Key::Songs => "songs",
            Key::UsersRange => "users_range",
            Key::SongsRange => "songs_range",
            Key::Form => "form",
            Key::Changes => "changes",
            Key::Partitions => "partitions",
            Key::LeaseSecs => "lease_secs",
        }
    }
}

/// Which input a record of path and fingerprint is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Mixtape,
    Changes,
}

impl InputKind {
    /// How messages name it.
    pub fn label(self) -> &'static str {
        match self {
            InputKind::Mixtape => "MIXTAPE",
            InputKind::Changes => "CHANGES",
        }
    }

    fn keys(self) -> (&'static str, &'static str) {
        match self {
            InputKind::Mixtape => ("mixtape_path", "mixtape_fingerprint"),
            InputKind::Changes => ("changes_path", "changes_fingerprint"),
        }
    }

    /// The keys of the file the stages read: the input itself, or the text a
    /// compressed input was decompressed into.
    fn text_keys(self) -> (&'static str, &'static str) {
        match self {
            InputKind::Mixtape => ("mixtape_text_path", "mixtape_text_fingerprint"),
            InputKind::Changes => ("changes_text_path", "changes_text_fingerprint"),
        }
    }

    /// What the kept decompressed text of this input is called: the work
    /// database's name with this appended.
    pub fn kept_text_suffix(self) -> &'static str {
        match self {
            InputKind::Mixtape => ".mixtape",
            InputKind::Changes => ".changes",
        }
    }

    /// What names the file an input read from standard input is kept in
    /// ([`crate::run::input::Input::from_stdin`]), beside the store.
    pub fn stdin_suffix(self) -> &'static str {
        match self {
            InputKind::Mixtape => ".stdin-mixtape",
            InputKind::Changes => ".stdin-changes",
        }
    }

    pub const ALL: [InputKind; 2] = [InputKind::Mixtape, InputKind::Changes];
}

/// A chunk's row: its byte range in CHANGES, as planned, and how far its worker got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRow {
    pub chunk: u64,
    /// Byte offset of its first change.
    pub start: u64,
    /// Byte offset just past its range.
    pub end: u64,
    /// Index of its first change in the whole file.
    pub first_index: u64,
    /// How many changes it holds.
    pub changes: u64,
    /// Where the next batch starts (committed position), and its first index.
    pub next_offset: u64,
    pub next_index: u64,
    /// `add_playlist` changes without `playlist_id` committed so far.
    pub auto_count: u64,
    /// Largest automatic-id-like `playlist_id` committed so far.
    pub max_playlist_id: u64,
    pub done: bool,
}

impl ChunkRow {
    /// A chunk's row from the columns of [`SELECT_CHUNKS`] as either backend
    /// reads them: `number(i)` is column `i` as a number, `done` the last.
    fn from_columns(number: impl Fn(usize) -> Result<u64>, done: bool) -> Result<ChunkRow> {
        Ok(ChunkRow {
            chunk: number(0)?,
            start: number(1)?,
            end: number(2)?,
            first_index: number(3)?,
            changes: number(4)?,
            next_offset: number(5)?,
            next_index: number(6)?,
            auto_count: number(7)?,
            max_playlist_id: number(8)?,
            done,
        })
    }
}

/// What the import learnt about the document, stored with its done-marker.
#[derive(Clone, Debug, Default)]
pub struct DocumentFacts {
    pub owner_key: String,
    pub max_playlist_id: u64,
    pub users: u64,
    pub playlists: u64,
    pub songs: u64,
    pub ranges: ArrayRanges,
}

/// The bytes between an array's brackets in MIXTAPE: its elements, commas and
/// white space; and where elements start every few MiB, so that the export can
/// copy the array in pieces, in parallel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayRange {
    pub start: u64,
    pub end: u64,
    /// Offsets of element starts, increasing, strictly inside `start..end`.
    pub splits: Vec<u64>,
}

/// Where the document's users and songs are (`None`: missing or empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArrayRanges {
    pub users: Option<ArrayRange>,
    pub songs: Option<ArrayRange>,
}

impl ArrayRange {
    /// The range cut at its splits: byte ranges that each start at an element.
    pub fn pieces(&self) -> Vec<(u64, u64)> {
        let mut bounds = vec![self.start];
        bounds.extend(&self.splits);
        bounds.push(self.end);
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// `start end split...`, or empty for no range.
    fn to_meta(range: &Option<ArrayRange>) -> String {
        let Some(r) = range else {
            return String::new();
        };
        let mut text = format!("{} {}", r.start, r.end);
        for split in &r.splits {
            text.push_str(&format!(" {split}"));
        }
        text
    }

    fn from_meta(text: &str) -> Result<Option<ArrayRange>> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || format!("work database: bad array range {text:?}");
        let numbers: Vec<u64> = text
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()
            .with_context(bad)?;
        let [start, end, splits @ ..] = numbers.as_slice() else {
            bail!(bad());
        };
        Ok(Some(ArrayRange {
            start: *start,
            end: *end,
            splits: splits.to_vec(),
        }))
    }
}

/// A worker's claim on a chunk: the lease's token, which the claim raised.
/// Every write the worker makes for the chunk checks that the token is still
/// the chunk's, in the same transaction: a worker whose lease expired and was
/// taken over is fenced off, and cannot commit again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub chunk: u64,
    pub token: u64,
}

/// What asking for a chunk gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    Chunk(Claim),
    /// Every chunk not done is leased by a live worker: ask again later (one of
    /// them may die and its lease expire).
    Wait,
    /// Every chunk is done.
    AllDone,
}

/// The chunk is leased by another worker, whose lease has not expired.
#[derive(Debug, thiserror::Error)]
#[error("chunk {chunk} is being applied by {owner} (its lease runs {secs_left:.0} s more)")]
pub struct Leased {
    pub chunk: u64,
    pub owner: String,
    pub secs_left: f64,
}

/// The place holds something another program made: it is never resumed nor
/// replaced, `--fresh` or not.
#[derive(Debug, thiserror::Error)]
#[error("the database of {store} has a schema mixtape that another program made; mixtape will not touch it (use another database)")]
pub struct NotOurs {
    pub store: String,
}

/// The file at `--db` is not a mixtape work database (another program's
/// file, a document): it is never used nor replaced, `--fresh` or not.
#[derive(Debug, thiserror::Error)]
#[error("--db {} is not a work database: mixtape will neither use nor replace it, even with --fresh (give --db another path)", path.display())]
pub struct NotAWorkDatabase {
    pub path: PathBuf,
}

/// Another worker committed this merge partition first (each partition's
/// results commit with its row in `merged`, whose key admits one).
#[derive(Debug, thiserror::Error)]
#[error("merge partition {part} was merged by another worker")]
pub struct AlreadyMerged {
    pub part: u64,
}

/// This worker's lease on the chunk was taken over (it expired: the worker was
/// too slow to renew it); nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
#[error("the lease on chunk {chunk} was taken over by another worker; this worker's uncommitted batch was dropped and it cannot commit to that chunk again")]
pub struct LeaseLost {
    pub chunk: u64,
}

/// One worker batch, written with the chunk's new position in one transaction.
pub struct Batch<'a> {
    pub claim: Claim,
    /// How long the lease lasts from this commit (a commit renews it).
    pub lease: Duration,
    /// Encoded records, one buffer per merge partition (empty ones are skipped).
    pub parts: &'a [Vec<u8>],
    pub rejects: &'a [Reject],
    /// The position this worker last committed; the batch commits only if the
    /// chunk is still there (so two workers on one chunk cannot both record it).
    pub from_offset: u64,
    /// The chunk's position and running figures after this batch.
    pub next_offset: u64,
    pub next_index: u64,
    pub auto_count: u64,
    pub max_playlist_id: u64,
    pub done: bool,
}

/// How long a commit waited for the write lock, and held it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockTiming {
    pub waited: Duration,
    pub held: Duration,
}

/// The fate of a playlist whose final state differs from the document's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A document playlist (at `doc_seq`) whose songs changed; `json` is its new text.
    Changed { doc_seq: i64, json: String },
    /// A document playlist that no longer exists.
    Removed { doc_seq: i64 },
    /// A playlist created by change `created`, written after the document's
    /// playlists in order of `created`. `doc_seq` is set when it replaces a
    /// document playlist of the same id that was removed first.
    New {
        doc_seq: Option<i64>,
        created: u64,
        json: String,
    },
}

impl Fate {
    /// Its `results` columns, as every backend stores them: the state code,
    /// `doc_seq`, `created`, `json`.
    fn columns(&self) -> (i64, Option<i64>, Option<i64>, Option<&str>) {
        match self {
            Fate::Changed { doc_seq, json } => (FATE_CHANGED, Some(*doc_seq), None, Some(json)),
            Fate::Removed { doc_seq } => (FATE_REMOVED, Some(*doc_seq), None, None),
            Fate::New {
                doc_seq,
                created,
                json,
            } => (FATE_NEW, *doc_seq, Some(*created as i64), Some(json)),
        }
    }
}

/// `results.state` of each [`Fate`].
const FATE_CHANGED: i64 = 0;
const FATE_REMOVED: i64 = 1;
const FATE_NEW: i64 = 2;

/// A playlist id's fate, as the merge stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaylistResult {
    pub id: String,
    pub fate: Fate,
}

/// What merging one partition gives, committed with the partition's number.
#[derive(Default)]
pub struct PartitionResults {
    pub results: Vec<PlaylistResult>,
    pub rejects: Vec<Reject>,
    /// Document playlists (of this partition's slice) naming a missing owner or song.
    pub warnings: u64,
}

/// Receives one stored element (raw JSON text) at a time.
pub type Each<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// Receives one document playlist: its position and its raw JSON text.
pub type EachPlaylist<'a> = dyn FnMut(u64, &[u8]) -> Result<()> + 'a;

/// Receives one top-level member: its raw key and its minified value.
pub type EachMember<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Where a work store is: a SQLite file (the default), or a PostgreSQL
/// database (`postgresql://...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Postgres(Box<PgTarget>),
}

impl Location {
    /// What `--db` says: a `postgresql://` or `postgres://` URL, or a file path.
    /// `local_base` is where files that go with a server store are kept on this
    /// host (ignored for a file: they go beside it).
    pub fn from_argument(argument: &std::ffi::OsStr, local_base: &Path) -> Result<Location> {
        match argument.to_str() {
            Some(url) if postgres::target::is_url(url) => Ok(Location::Postgres(Box::new(
                PgTarget::parse(url, local_base.to_path_buf())
                    .context("reading the work store's URL")?,
            ))),
            _ => Ok(Location::File(PathBuf::from(argument))),
        }
    }

    /// The password a server store is reached with, for a process to hand
    /// to its children in their environment (never on a command line).
    pub fn password(&self) -> Option<&str> {
        match self {
            Location::File(_) => None,
            Location::Postgres(target) => target.password(),
        }
    }

    /// How messages name it (a server URL with its password masked).
    pub fn display(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Postgres(target) => target.shown(),
        }
    }

    /// How a worker's command line names it (never with a password).
    pub fn argument(&self) -> std::ffi::OsString {
        match self {
            Location::File(path) => path.clone().into_os_string(),
            Location::Postgres(target) => target.argument().into(),
        }
    }

    /// The file, for a SQLite store.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }

    /// Where this process keeps the files that go with the store: the id
    /// indexes (built by the import, read by everyone) and, for the harness,
    /// the kept decompressed inputs, named by appending to this path. For a
    /// SQLite file: beside it.
    pub fn local_base(&self) -> PathBuf {
        match self {
            Location::File(path) => path.clone(),
            Location::Postgres(target) => target.local_base.clone(),
        }
    }

    /// Every file on this host that goes with the store, with how messages
    /// name it: for a SQLite file the file itself, its WAL, shared memory,
    /// lock, the file being created, and the id indexes; for both kinds the
    /// kept decompressed inputs and their partial files. A server store's id
    /// index cache names carry the run's id and are not known before it opens.
    pub fn companions(&self) -> Vec<(&'static str, PathBuf)> {
        let base = self.local_base();
        let with = |suffix: &str| crate::run::paths::with_suffix(&base, suffix);
        let mut files = Vec::new();
        if let Location::File(path) = self {
            files.push(("work database", path.clone()));
            files.push(("work database's WAL", with("-wal")));
            files.push(("work database's shared memory", with("-shm")));
            files.push(("work database's lock", with(".lock")));
            files.push(("work database being created", with(".creating")));
            files.push(("work database being created (WAL)", with(".creating-wal")));
            files.push(("work database being created (shm)", with(".creating-shm")));
            for kind in IdKind::ALL {
                files.push(("id index", with(kind.suffix())));
            }
        }
        let labels = [
            "kept MIXTAPE text",
            "kept CHANGES text",
            "partial MIXTAPE text",
            "partial CHANGES text",
            "MIXTAPE as read from standard input",
            "CHANGES as read from standard input",
        ];
        files.extend(
            labels
                .into_iter()
                .zip(kept_texts(&base).into_iter().chain(stdin_copies(&base))),
        );
        files
    }

    /// Fails ([`NotAWorkDatabase`]) when a file store's path holds a file
    /// that is not a mixtape work database: checked before the run lock is
    /// taken, so that nothing is made beside someone else's file.
    pub fn refuse_foreign_file(&self) -> Result<()> {
        match self {
            Location::File(path) if std::fs::symlink_metadata(path).is_ok() => {
                sqlite::refuse_unless_work_database(path)
            }
            _ => Ok(()),
        }
    }

    /// Whether a store exists there (to resume from).
    pub fn exists(&self) -> Result<bool> {
        Ok(match self {
            Location::File(path) => path.exists(),
            Location::Postgres(target) => postgres::PgDb::connect(target)?.schema_exists()?,
        })
    }

    /// Removes the store and the files that go with it on this host.
    pub fn remove(&self) -> Result<()> {
        match self {
            Location::File(path) => {
                remove_files(path)?;
                remove_paths(&stdin_copies(path))
            }
            Location::Postgres(target) => {
                let tag = postgres::drop_store(target)?;
                let base = &target.local_base;
                let mut files = kept_texts(base).to_vec();
                files.extend(stdin_copies(base));
                if let Some(tag) = tag {
                    files.extend(IdKind::ALL.map(|k| tagged_index_path(base, &tag, k)));
                }
                remove_paths(&files)
            }
        }
    }
}

/// The store's tables as the stages use them: plan and chunks, claims and
/// leases, the merge, the export's streams, and this connection's resources.
/// This is the contract each backend implements and the stages call directly
/// (through [`Store`], which dereferences to it). Each operation that writes is
/// one transaction: what it writes commits together or not at all, and a typed
/// error ([`LeaseLost`], [`Leased`], [`AlreadyMerged`]) means it wrote nothing.
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

    // ---- plan and chunks ----
    /// Replaces the plan: every chunk's row, the form, the number of changes
    /// and of merge partitions, and the plan's done-marker, in one
    /// transaction.
    fn save_plan(&self, plan: &Plan, partitions: u64) -> Result<()>;
    /// Every chunk's row, by chunk number ([`SELECT_CHUNKS`]).
    fn chunks(&self) -> Result<Vec<ChunkRow>>;
    /// One chunk's row, if the plan has it ([`SELECT_CHUNK`]).
    fn chunk(&self, chunk: u64) -> Result<Option<ChunkRow>>;
    /// How many batches have been committed, over all chunks.
    fn batches_committed(&self) -> Result<u64>;

    // ---- claims and leases (the rules: refuse_if_leased, when_none_is_free) ----
    /// Takes the first chunk that is not done and not leased by a live lease,
    /// for `lease`, for `owner` (who it is, for messages), raising its token,
    /// in one transaction; two claimers at once never get one chunk. When none
    /// is free: [`when_none_is_free`].
    fn claim_next(&self, owner: &str, lease: Duration) -> Result<Claimed>;
    /// Takes chunk `chunk` (done or not: a worker run by hand may redo it),
    /// raising its token, unless [`refuse_if_leased`] refuses ([`Leased`]);
    /// in one transaction.
    fn claim_chunk(&self, chunk: u64, owner: &str, lease: Duration) -> Result<Claim>;
    /// The chunks with a lease owner, with that owner (expired or not).
    fn leases(&self) -> Result<Vec<(Claim, String)>>;
    /// Extends the claim's lease to `lease` from now; [`LeaseLost`] when the
    /// token is no longer the chunk's (taken over).
    fn renew_lease(&self, claim: Claim, lease: Duration) -> Result<()>;
    /// Frees the chunk at once (a worker that stops) if the claim's token is
    /// still the chunk's, so that another worker need not wait for expiry; a
    /// lost lease frees nothing.
    fn release_lease(&self, claim: Claim) -> Result<()>;
    /// Writes a batch (blocks, rejects) with the chunk's new position and
    /// figures, renewing its lease, in one transaction that first checks the
    /// claim's token and the chunk's position ([`LeaseLost`] otherwise:
    /// nothing written). See [`Batch`].
    fn commit_batch(&self, batch: &Batch) -> Result<LockTiming>;

    // ---- merge ----
    /// The partitions in `merged` (their results are committed).
    fn merged_partitions(&self) -> Result<Vec<u64>>;
    /// Whether partition `part` is in `merged`.
    fn is_merged(&self, part: u64) -> Result<bool>;
    /// Streams partition `part`'s blocks in index order: by chunk, then in the
    /// order the chunk's workers committed them.
    fn each_block(&self, part: u64, each: &mut Each) -> Result<()>;
    /// Writes a partition's results and rejects with its row in `merged`, in
    /// one transaction; [`AlreadyMerged`] (nothing written) when another
    /// worker was first.
    fn commit_partition(&self, part: u64, out: &PartitionResults) -> Result<()>;
    /// Sets the merge's done-marker, in a transaction that checks
    /// [`check_merge_complete`] (an error, nothing written, otherwise).
    fn finish_merge(&self) -> Result<()>;
    /// Document playlists that name a missing owner or song, as counted by
    /// the merged partitions.
    fn warnings(&self) -> Result<u64>;

    // ---- export (the rule: join_final_document_playlists) ----
    /// Streams the document's playlists at `positions` as they end: those
    /// that survive, in document order, as the merge left them (see
    /// [`join_final_document_playlists`]). Export threads stream parts of
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
    /// order, only the reasons present ([`counted_by_reason`]).
    fn rejects_by_reason(&self) -> Result<Vec<(Reason, u64)>>;
}

/// What a backend supplies below the rules of [`Store`]: `meta` values, the
/// import's sink, lookups by position, id indexes kept for other hosts, and
/// the shared statements ([`Statement`]) run in one transaction.
trait Backend: Tables {
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

/// One statement of a rule written once for both backends, in the SQL both
/// speak: tables unqualified (a server connection's `search_path` is the
/// run's schema), `$1` for the one parameter, `true`/`false` for flags.
pub(crate) struct Statement {
    sql: &'static str,
    param: Option<Param>,
}

/// The one bind parameter of a [`Statement`].
#[derive(Clone, Copy)]
enum Param {
    Number(i64),
    Text(&'static str),
}

/// Every chunk's row, in the columns [`ChunkRow::from_columns`] reads.
const SELECT_CHUNKS: &str = "SELECT chunk, start_offset, end_offset, first_index, changes,
     next_offset, next_index, auto_count, max_playlist_id, done
     FROM chunks ORDER BY chunk";
/// One chunk's row (`$1`), in the columns [`ChunkRow::from_columns`] reads.
const SELECT_CHUNK: &str = "SELECT chunk, start_offset, end_offset, first_index, changes,
     next_offset, next_index, auto_count, max_playlist_id, done
     FROM chunks WHERE chunk = $1";

/// What the merge leaves: its results, its rejects, `merged` and its marker.
fn clear_merge_statements() -> [Statement; 4] {
    [
        Statement::plain("DELETE FROM results"),
        Statement::plain("DELETE FROM rejects WHERE by_merge = true"),
        Statement::plain("DELETE FROM merged"),
        Statement {
            sql: "DELETE FROM meta WHERE key = $1",
            param: Some(Param::Text(
                Stage::Merge.done_marker().expect("the merge has a marker"),
            )),
        },
    ]
}

/// What chunk `$1` recorded (its blocks, its workers' rejects of its indexes)
/// and its position, put back at its start.
const RESET_CHUNK: [&str; 3] = [
    "DELETE FROM blocks WHERE chunk = $1",
    "DELETE FROM rejects WHERE by_merge = false
       AND idx >= (SELECT first_index FROM chunks WHERE chunk = $1)
       AND idx < (SELECT first_index + changes FROM chunks WHERE chunk = $1)",
    "UPDATE chunks SET next_offset = start_offset, next_index = first_index, auto_count = 0,
         max_playlist_id = 0, batches = 0, done = false WHERE chunk = $1",
];

impl Statement {
    fn plain(sql: &'static str) -> Statement {
        Statement { sql, param: None }
    }
}

/// Takes the document's elements during the import (see [`DocumentWriter`]).
trait DocumentSink {
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

/// A work store, open: one connection, used by one thread.
pub struct Store {
    db: Box<dyn Backend>,
    location: Location,
    /// The id indexes, opened on first use (they exist once the import is done).
    indexes: std::cell::OnceCell<Indexes>,
    /// What names the id index files (see [`Backend::index_tag`]), read once.
    index_tag: std::cell::OnceCell<Option<String>>,
}

/// The id indexes of users, songs and the document's playlists.
struct Indexes {
    users: IdIndex,
    songs: IdIndex,
    playlists: IdIndex,
}

/// The document's three arrays: what the import reads, the export writes,
/// and which elements an id index holds (one enum for all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Users,
    Songs,
    /// The document's playlists, id → position (`playlists.seq`).
    Playlists,
}

impl IdKind {
    pub const ALL: [IdKind; 3] = [IdKind::Users, IdKind::Songs, IdKind::Playlists];

    fn suffix(self) -> &'static str {
        match self {
            IdKind::Users => ".users.idx",
            IdKind::Songs => ".songs.idx",
            IdKind::Playlists => ".playlists.idx",
        }
    }

    /// The document's array of these elements.
    pub fn array_name(self) -> &'static str {
        match self {
            IdKind::Users => "users",
            IdKind::Songs => "songs",
            IdKind::Playlists => "playlists",
        }
    }

    /// What the index maps ids to.
    pub fn values(self) -> crate::ids::index::Values {
        match self {
            IdKind::Users | IdKind::Songs => crate::ids::index::Values::Written,
            IdKind::Playlists => crate::ids::index::Values::Positions,
        }
    }
}

impl Store {
    /// Creates a new, empty work store at `location`, replacing any old one.
    pub fn create(location: &Location) -> Result<Store> {
        let db: Box<dyn Backend> = match location {
            Location::File(path) => Box::new(sqlite::SqliteDb::create(path)?),
            Location::Postgres(target) => Box::new(postgres::PgDb::create(target)?),
        };
        Ok(Store::with(db, location))
    }

    /// Opens an existing work store made by this version of the tool.
    pub fn open(location: &Location) -> Result<Store> {
        let db: Box<dyn Backend> = match location {
            Location::File(path) => Box::new(sqlite::SqliteDb::open(path)?),
            Location::Postgres(target) => Box::new(postgres::PgDb::open(target)?),
        };
        Ok(Store::with(db, location))
    }

    fn with(db: Box<dyn Backend>, location: &Location) -> Store {
        Store {
            db,
            location: location.clone(),
            indexes: std::cell::OnceCell::new(),
            index_tag: std::cell::OnceCell::new(),
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    // ---- meta ----

    /// A value from `meta` that must be there.
    pub fn meta(&self, key: Key) -> Result<String> {
        self.db.meta_text(key.name())?.with_context(|| {
            format!(
                "work database has no {}: was it made by an unfinished run?",
                key.name()
            )
        })
    }

    /// A number from `meta` that must be there.
    pub fn meta_number(&self, key: Key) -> Result<u64> {
        let text = self.meta(key)?;
        text.parse()
            .with_context(|| format!("work database: {} is not a number: {text}", key.name()))
    }

    /// Whether `stage` is complete in this database.
    pub fn is_done(&self, stage: Stage) -> Result<bool> {
        match (stage, stage.done_marker()) {
            (_, Some(marker)) => Ok(self.db.meta_text(marker)?.is_some()),
            (Stage::Apply, None) => {
                Ok(self.is_done(Stage::Plan)? && self.chunks()?.iter().all(|c| c.done))
            }
            (Stage::Decompress, None) => {
                // Done when the text the stages read of each input (itself,
                // or its kept decompressed copy) is recorded and still has the
                // fingerprint recorded once it was whole.
                for kind in InputKind::ALL {
                    match self.input_text(kind)? {
                        Some((path, print))
                            if crate::run::fingerprint::of_file(&path).ok().as_deref()
                                == Some(&print) => {}
                        _ => return Ok(false),
                    }
                }
                Ok(true)
            }
            (_, None) => Ok(false),
        }
    }

    /// The path and fingerprint recorded for an input, when there are.
    pub fn recorded_input(&self, which: InputKind) -> Result<(Option<String>, Option<String>)> {
        let (path, print) = which.keys();
        Ok((self.db.meta_text(path)?, self.db.meta_text(print)?))
    }

    /// Records an input's path and fingerprint and, for a plain input, the
    /// text the stages read (itself), in one transaction: a store never holds
    /// half a record of an input.
    pub fn record_input(
        &self,
        which: InputKind,
        path: &str,
        fingerprint: &str,
        text: Option<(&Path, &str)>,
    ) -> Result<()> {
        let (path_key, print_key) = which.keys();
        let (text_path_key, text_print_key) = which.text_keys();
        let text_path = text.map(|(p, _)| p.to_string_lossy().into_owned());
        let mut pairs = vec![(path_key, path), (print_key, fingerprint)];
        if let (Some(text_path), Some((_, text_print))) = (&text_path, text) {
            pairs.push((text_path_key, text_path.as_str()));
            pairs.push((text_print_key, text_print));
        }
        self.db.set_meta_texts(&pairs)
    }

    /// Records, just before OUTPUT is renamed into place, which file the run
    /// publishes and the fingerprint it will have there (the temporary file's:
    /// a rename keeps size, modification time and contents). A run that finds
    /// this record and OUTPUT with that fingerprint knows the run finished.
    pub fn record_publishing(&self, output: &Path, fingerprint: &str) -> Result<()> {
        self.db.set_meta_texts_durably(&[
            (PUBLISHED_PATH, &output.to_string_lossy()),
            (PUBLISHED_FINGERPRINT, fingerprint),
        ])
    }

    /// What [`Store::record_publishing`] recorded, if anything.
    pub fn published_output(&self) -> Result<Option<(PathBuf, String)>> {
        Ok(
            match (
                self.db.meta_text(PUBLISHED_PATH)?,
                self.db.meta_text(PUBLISHED_FINGERPRINT)?,
            ) {
                (Some(path), Some(print)) => Some((PathBuf::from(path), print)),
                _ => None,
            },
        )
    }

    /// The file the stages read for an input, and its fingerprint when it was
    /// recorded: the input itself, or the kept text of a compressed input
    /// ([`crate::stages::decompress`]). `None` until it is known (a compressed input
    /// not yet wholly decompressed).
    pub fn input_text(&self, which: InputKind) -> Result<Option<(PathBuf, String)>> {
        let (path, print) = which.text_keys();
        Ok(
            match (self.db.meta_text(path)?, self.db.meta_text(print)?) {
                (Some(path), Some(print)) => Some((PathBuf::from(path), print)),
                _ => None,
            },
        )
    }

    /// Records the file the stages read for an input (see [`Store::input_text`]).
    pub fn record_input_text(
        &self,
        which: InputKind,
        path: &Path,
        fingerprint: &str,
    ) -> Result<()> {
        let (path_key, print_key) = which.text_keys();
        self.db.set_meta_texts(&[
            (path_key, &path.to_string_lossy()),
            (print_key, fingerprint),
        ])
    }

    /// Sets how long workers' leases last (the harness, at the start of every
    /// run; workers read it when they start).
    pub fn set_lease(&self, lease: Duration) -> Result<()> {
        let secs = lease.as_secs_f64().to_string();
        self.db.set_meta_texts(&[(Key::LeaseSecs.name(), &secs)])
    }

    /// How long a worker's lease lasts.
    pub fn lease(&self) -> Result<Duration> {
        let text = self.meta(Key::LeaseSecs)?;
        let secs: f64 = text
            .parse()
            .with_context(|| format!("work database: lease_secs is not a number: {text}"))?;
        Ok(Duration::from_secs_f64(secs))
    }

    // ---- import ----

    /// Starts the import: clears what an earlier import left and returns the
    /// writer for the document's elements.
    pub fn document_writer(&self) -> Result<DocumentWriter<'_>> {
        Ok(DocumentWriter {
            store: self,
            sink: self.db.document_writer()?,
        })
    }

    /// The id indexes, opened on first use. Asked once per lookup (tens of
    /// millions of times in D's merge), so the answer once they are open is
    /// inlined, and opening them is a call of its own.
    #[inline]
    fn indexes(&self) -> Result<&Indexes> {
        match self.indexes.get() {
            Some(indexes) => Ok(indexes),
            None => self.open_indexes(),
        }
    }

    #[cold]
    #[inline(never)]
    fn open_indexes(&self) -> Result<&Indexes> {
        let open = |which: IdKind| -> Result<IdIndex> {
            let path = self.index_path(which)?;
            if !path.exists() || !self.db.cached_index_is_current(which, &path)? {
                // Another host's import built it: fetch it once into the
                // cache (again, when the cached copy is not the stored one).
                self.db.fetch_index(which, &path)?;
            }
            IdIndex::open(&path)
        };
        let indexes = Indexes {
            users: open(IdKind::Users)?,
            songs: open(IdKind::Songs)?,
            playlists: open(IdKind::Playlists)?,
        };
        Ok(self.indexes.get_or_init(|| indexes))
    }

    /// Where the import writes the id index of `which`, and where this host
    /// reads it (see [`crate::ids::index`]).
    pub fn index_path(&self, which: IdKind) -> Result<PathBuf> {
        let tag = match self.index_tag.get() {
            Some(tag) => tag,
            None => {
                let tag = self.db.index_tag()?;
                self.index_tag.get_or_init(|| tag)
            }
        };
        let base = self.location.local_base();
        Ok(match tag {
            None => crate::run::paths::with_suffix(&base, which.suffix()),
            Some(tag) => tagged_index_path(&base, tag, which),
        })
    }

    /// Keeps the id indexes the import built in the store, for other hosts.
    pub fn publish_indexes(&self) -> Result<()> {
        for kind in IdKind::ALL {
            self.db.publish_index(kind, &self.index_path(kind)?)?;
        }
        Ok(())
    }

    /// Where the document's users and songs are in MIXTAPE.
    pub fn array_ranges(&self) -> Result<ArrayRanges> {
        Ok(ArrayRanges {
            users: ArrayRange::from_meta(&self.meta(Key::UsersRange)?)?,
            songs: ArrayRange::from_meta(&self.meta(Key::SongsRange)?)?,
        })
    }

    /// How the document writes the user whose id a change wrote as `token`,
    /// if the user exists ([`IdIndex::written_as`]).
    pub fn user_written<'a>(&'a self, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let id = crate::json::id_text(token).unwrap_or_default();
        self.indexes()?.users.written_as(&id, token)
    }

    /// How the document writes the song whose id a change wrote as `token`,
    /// if the song exists.
    pub fn song_written<'a>(&'a self, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let id = crate::json::id_text(token).unwrap_or_default();
        self.indexes()?.songs.written_as(&id, token)
    }

    /// Starts loading what looking up the playlist and the song written as
    /// these tokens will read ([`crate::ids::index::IdIndex::prefetch`]), so
    /// that the two cache misses overlap.
    /// The bytes of the dense tables an `add_song` looks up (the playlists'
    /// and the songs').
    pub fn lookup_tables_bytes(&self) -> Result<usize> {
        let indexes = self.indexes()?;
        Ok(indexes.playlists.dense_bytes() + indexes.songs.dense_bytes())
    }

    pub fn prefetch_lookups(&self, playlist: Option<&[u8]>, song: Option<&[u8]>) {
        if let Ok(indexes) = self.indexes() {
            if let Some(token) = playlist {
                indexes.playlists.prefetch(token);
            }
            if let Some(token) = song {
                indexes.songs.prefetch(token);
            }
        }
    }

    pub fn user_exists(&self, id: &str) -> Result<bool> {
        Ok(self.indexes()?.users.contains(id))
    }

    /// Whether song `id` exists, or which slot of the songs index says
    /// ([`crate::ids::index::IdIndex::presence`]).
    pub fn song_presence(&self, id: &str) -> Result<crate::ids::index::Presence> {
        Ok(self.indexes()?.songs.presence(id))
    }

    /// Starts loading slot `n` of the songs index (a hint; see
    /// [`crate::ids::index::IdIndex::prefetch_slot`]).
    pub fn prefetch_song_slot(&self, n: u64) {
        if let Ok(indexes) = self.indexes() {
            indexes.songs.prefetch_slot(n);
        }
    }

    /// Whether slot `n` of the songs index holds a song.
    pub fn song_in_slot(&self, n: u64) -> Result<bool> {
        Ok(self.indexes()?.songs.slot_holds(n))
    }

    /// The position of the document's playlist `id`, if the document has one
    /// ([`crate::changes::partition`]).
    pub fn document_playlist_position(&self, id: &str) -> Result<Option<u64>> {
        Ok(self.indexes()?.playlists.position(id))
    }

    /// The document's playlist `id`: its position and raw text. Most ids the
    /// merge asks about are new playlists': the index answers those without
    /// touching the database.
    pub fn document_playlist(&self, id: &str) -> Result<Option<(i64, String)>> {
        match self.indexes()?.playlists.position(id) {
            Some(seq) => self.db.playlist_at(seq),
            None => Ok(None),
        }
    }

    // ---- the rules about undoing ----

    /// Undoes everything chunk `chunk` recorded, and the merge (which read it),
    /// in one transaction: the chunk starts again from its beginning.
    pub fn reset_chunk(&self, chunk: u64) -> Result<()> {
        let chunk = Param::Number(chunk as i64);
        let reset = RESET_CHUNK.map(|sql| Statement {
            sql,
            param: Some(chunk),
        });
        let statements: Vec<Statement> =
            reset.into_iter().chain(clear_merge_statements()).collect();
        self.db.run_in_one_transaction(&statements)
    }

    /// Clears what a merge left, in one transaction (before a merge starts
    /// from nothing: a chunk redone by hand may have changed what it read).
    pub fn clear_merge(&self) -> Result<()> {
        self.db.run_in_one_transaction(&clear_merge_statements())
    }
}

/// The stages call the tables' operations on the store itself.
impl std::ops::Deref for Store {
    type Target = dyn Tables;

    fn deref(&self) -> &(dyn Tables + 'static) {
        &*self.db
    }
}

/// Writes the document's elements during the import. Dropped without
/// [`DocumentWriter::finish`], it rolls back what it has not committed; a
/// rerun of the import starts over.
pub struct DocumentWriter<'a> {
    store: &'a Store,
    sink: Box<dyn DocumentSink + 'a>,
}

impl DocumentWriter<'_> {
    /// A document playlist, minified (its id goes to the playlists' index).
    /// `in_mixtape`: the playlist's bytes in MIXTAPE's text (the file
    /// recorded by [`Store::record_input_text`]), which minify to `raw`; a
    /// store may keep that place instead of a copy, and read it again.
    pub fn playlist(
        &mut self,
        position: u64,
        raw: &str,
        in_mixtape: Option<std::ops::Range<u64>>,
    ) -> Result<()> {
        self.sink.playlist(position, raw, in_mixtape)
    }

    /// A top-level member other than the three arrays.
    pub fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()> {
        self.sink.extra(seq, key, raw)
    }

    /// Stores what the import learnt and marks it done, with the last
    /// elements. The id indexes must be built by then ([`Store::index_path`]):
    /// a crash before the marker redoes the import, indexes included.
    pub fn finish(self, facts: &DocumentFacts) -> Result<()> {
        let meta = [
            (
                Key::UsersRange.name(),
                ArrayRange::to_meta(&facts.ranges.users),
            ),
            (
                Key::SongsRange.name(),
                ArrayRange::to_meta(&facts.ranges.songs),
            ),
            (Key::OwnerKey.name(), facts.owner_key.clone()),
            (
                Key::DocumentMaxPlaylistId.name(),
                facts.max_playlist_id.to_string(),
            ),
            (Key::Users.name(), facts.users.to_string()),
            (Key::Playlists.name(), facts.playlists.to_string()),
            (Key::Songs.name(), facts.songs.to_string()),
            (
                Stage::Import.done_marker().expect("import has a marker"),
                "1".to_string(),
            ),
        ];
        self.store.publish_indexes()?;
        self.sink.finish(&meta)
    }
}

/// A server store's id index file on this host: the run's id in its name,
/// so that a cache never serves another run.
fn tagged_index_path(base: &Path, tag: &str, which: IdKind) -> PathBuf {
    crate::run::paths::with_suffix(base, &format!(".{tag}{}", which.suffix()))
}

/// The kept decompressed inputs that go with a store at `base`, and their
/// partial files.
fn kept_texts(base: &Path) -> [PathBuf; 4] {
    let kept = |kind: InputKind| crate::run::paths::with_suffix(base, kind.kept_text_suffix());
    [
        kept(InputKind::Mixtape),
        kept(InputKind::Changes),
        crate::run::paths::with_suffix(&kept(InputKind::Mixtape), ".partial"),
        crate::run::paths::with_suffix(&kept(InputKind::Changes), ".partial"),
    ]
}

/// The inputs read from standard input that go with a store at `base`
/// ([`InputKind::stdin_suffix`]). A new store keeps them (they are read
/// before it is made); a finished run's clean-up removes them.
fn stdin_copies(base: &Path) -> [PathBuf; 2] {
    InputKind::ALL.map(|kind| crate::run::paths::with_suffix(base, kind.stdin_suffix()))
}

/// A document playlist as the merge-join reads it: its position and text.
type DocRow = (i64, Vec<u8>);
/// A result about a document playlist: its `doc_seq`, state and new text.
type FateRow = (i64, i64, Option<Vec<u8>>);

/// `n` as a signed 64-bit SQL integer, as both backends store keys: the open
/// end of a range (`u64::MAX`) becomes the largest.
fn signed_bound(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The merge-join both backends feed, for [`Tables::each_final_document_playlist`]:
/// `docs` are the document's playlists in position order, `fates` the merge's
/// results about document playlists in `doc_seq` order (at most one each).
/// Each document playlist is handed to `each` as it ends: as it was when no
/// result is about it, as its new text when it changed, not at all when it was
/// removed (a playlist created anew under its id is among the new ones).
fn join_final_document_playlists(
    docs: impl Iterator<Item = Result<DocRow>>,
    mut fates: impl Iterator<Item = Result<FateRow>>,
    each: &mut Each,
) -> Result<()> {
    let mut fate = fates.next().transpose()?;
    for doc in docs {
        let (seq, raw) = doc?;
        while fate.as_ref().is_some_and(|(at, _, _)| *at < seq) {
            fate = fates.next().transpose()?;
        }
        match &fate {
            Some((at, state, json)) if *at == seq => {
                if *state == FATE_CHANGED {
                    each(
                        json.as_deref()
                            .context("work store: a changed playlist without text")?,
                    )?;
                }
            }
            _ => each(&raw)?,
        }
    }
    Ok(())
}

/// The lease rule both backends apply when a chunk is claimed by number, in
/// the claim's transaction: a chunk that is not done and whose lease, held by
/// another owner, has `secs_left` to run is refused ([`Leased`]); an expired
/// lease, a free chunk, a done one (applying it again is up to the caller) and
/// one's own lease are taken.
fn refuse_if_leased(
    chunk: u64,
    holder: Option<String>,
    done: bool,
    secs_left: f64,
    owner: &str,
) -> Result<()> {
    match holder {
        Some(holder) if !done && secs_left >= 0.0 && holder != owner => Err(Leased {
            chunk,
            owner: holder,
            secs_left,
        }
        .into()),
        _ => Ok(()),
    }
}

/// What asking for the next chunk gives when no chunk is free: every chunk is
/// done, or some are leased by live workers (wait: one of them may die).
fn when_none_is_free(chunks_not_done: u64) -> Claimed {
    if chunks_not_done == 0 {
        Claimed::AllDone
    } else {
        Claimed::Wait
    }
}

/// The rule both backends apply, in the transaction that marks the merge
/// done: every partition is in `merged` (a chunk applied again meanwhile by
/// `worker --redo` clears them, and the merge must then be done again).
fn check_merge_complete(merged: u64, partitions: Option<&str>) -> Result<()> {
    let partitions: u64 = partitions
        .and_then(|p| p.parse().ok())
        .context("work database has no partitions: was it made by an unfinished run?")?;
    if merged != partitions {
        bail!(
            "the merge is not complete: {merged} of {partitions} partitions are merged (was a chunk applied again meanwhile?); run the harness again to merge again"
        );
    }
    Ok(())
}

/// `error`, explained when it is a broken connection to a server store
/// (README "When a host dies"): what was committed stays, and the same
/// command resumes.
pub fn explain_lost_connection(error: anyhow::Error) -> anyhow::Error {
    if postgres::is_lost_connection(&error) {
        error.context(
            "lost the connection to the work store (the server restarted or ended the session, or the network to it failed or stayed silent too long); what was committed is kept: run the same command again to resume",
        )
    } else {
        error
    }
}

/// Removes files, those already gone included.
fn remove_paths(files: &[PathBuf]) -> Result<()> {
    for file in files {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// The count of rejects per reason as both backends read it (`reason`,
/// `count(*)` rows in any order): by reason, in the table's order of
/// precedence ([`Reason`]'s order).
fn counted_by_reason(rows: impl Iterator<Item = (String, u64)>) -> Result<Vec<(Reason, u64)>> {
    let mut counted = rows
        .map(|(name, n)| Ok((reason_of(&name)?, n)))
        .collect::<Result<Vec<_>>>()?;
    counted.sort();
    Ok(counted)
}

fn reason_of(name: &str) -> Result<Reason> {
    Reason::from_name(name)
        .with_context(|| format!("work database: unknown reject reason {name:?}"))
}

/// The WAL of the SQLite database at `path` (SQLite's name for it).
fn wal_of(path: &Path) -> PathBuf {
    crate::run::paths::with_suffix(path, "-wal")
}

/// Removes the SQLite database, its WAL and shared-memory files, its id
/// indexes and the kept decompressed inputs.
pub fn remove_files(path: &Path) -> Result<()> {
    let mut files = kept_texts(path).to_vec();
    files.extend([
        path.to_path_buf(),
        wal_of(path),
        crate::run::paths::with_suffix(path, "-shm"),
    ]);
    files.extend(IdKind::ALL.map(|k| crate::run::paths::with_suffix(path, k.suffix())));
    remove_paths(&files)
}

/// An exclusive hold on a work store for one harness run (see module docs):
/// a `flock` on `DB.lock` beside a SQLite file, a session advisory lock on
/// a server (held by a connection of its own, released when it closes).
pub struct RunLock(Held);

enum Held {
    File {
        _lock: nix::fcntl::Flock<File>,
        path: PathBuf,
    },
    /// A server's advisory locks (they go when dropped).
    Server { lock: Box<postgres::ServerRunLock> },
}

impl RunLock {
    /// Takes the run lock of the store at `location`, or fails at once if
    /// another run holds it.
    pub fn acquire(location: &Location) -> Result<RunLock> {
        match location {
            Location::File(path) => RunLock::acquire_file(path),
            Location::Postgres(target) => Ok(RunLock(Held::Server {
                lock: Box::new(postgres::take_run_lock(target)?),
            })),
        }
    }

    /// Takes the lock beside the file `db`.
    fn acquire_file(db: &Path) -> Result<RunLock> {
        let path = crate::run::paths::with_suffix(db, ".lock");
        let file = crate::run::private_file::open_or_create(&path)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(RunLock(Held::File { _lock: lock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another harness run is using the work database {} (lock {} is held); wait for it to finish",
                db.display(),
                path.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Checks that the run still holds its lock, before a stage commits
    /// anything: on a server, a session of the lock that ended (README "When
    /// a host dies") is taken again, and `say` tells the user; an error when
    /// the run can no longer be sure of holding it. (A file lock cannot be
    /// lost while the process lives.)
    pub fn keep_held(&mut self, say: &mut dyn FnMut(&str)) -> Result<()> {
        if let Held::Server { lock } = &mut self.0 {
            if lock.keep_held()? > 0 {
                say("the run lock's session on the server ended; took the lock again (no other run could take it meanwhile)");
            }
        }
        Ok(())
    }

    /// Removes the lock file, then releases the lock (after a finished run).
    /// Removing first means no other run can be holding the removed file.
    pub fn release_and_remove(self) {
        if let Held::File { path, .. } = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
