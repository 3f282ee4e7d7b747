//! The work store: every table, every statement of SQL, and who may open it.
//!
//! One SQLite file in WAL mode holds everything a run knows, so that a run can
//! stop at any point and continue later. The stages never write SQL: they call
//! the typed operations of [`Store`] ("append a batch", "the blocks of partition
//! P in index order", "commit a partition's results"). That is also the seam for
//! a second backend (a server database for runs that span hosts): it has to
//! provide these operations with the same transactional promises, and no stage
//! changes.
//!
//! | table | written by | holds |
//! |---|---|---|
//! | `meta` | every stage | inputs and their fingerprints, stage markers, figures ([`Key`]) |
//! | `playlists`, `extras` | import | the document's playlists and other members, minified, in input order |
//! | `chunks` | plan, workers | byte range of every chunk and how far its worker got |
//! | `blocks` | workers | recorded changes, encoded ([`crate::record`]), one row per batch and partition |
//! | `rejects` | workers, merge | every rejected change, with its index |
//! | `results` | merge | every playlist whose fate differs from the document ([`Fate`]) |
//! | `merged` | merge | the partitions already merged, and the warnings each counted |
//!
//! Users and songs never change, so the store keeps no copy of them: two
//! read-only id indexes beside the file (`DB.users.idx`, `DB.songs.idx`,
//! [`crate::id_index`]) answer "does this user or song exist, and how is it
//! written" for workers and the merge, and `meta` keeps where their arrays are
//! in MIXTAPE ([`ArrayRanges`]), from which the export copies them. The import
//! builds the indexes before it marks itself done; MIXTAPE's fingerprint,
//! checked on every resume, says the ranges still hold. A third index,
//! `DB.playlists.idx`, maps a document playlist's id to its position in
//! `playlists`: the merge asks it about every playlist id it meets, most of
//! them new playlists' ids that the document does not have.
//!
//! A compressed input is decompressed once into a kept text file beside the
//! database (`DB.mixtape`, `DB.changes`, [`crate::decompress`]); `meta` records,
//! for each input, the file the stages read and its fingerprint
//! ([`Store::input_text`]), so workers read the kept text and a resumed run can
//! tell whether the kept file is still whole.
//!
//! `rejects` and `results` are append-only (no key but the rowid): writers add
//! rows in whatever order their work comes, and the export sorts once. Keyed
//! inserts in random order would rewrite pages all over those tables in every
//! transaction, which at 5M changes made the merge ten times slower.
//!
//! ## Transactions
//!
//! Every write goes through a rusqlite [`Transaction`], which rolls back when it
//! is dropped unfinished (an early `?` included). Writers begin them IMMEDIATE:
//! they take the write lock up front, since a DEFERRED transaction that starts
//! writing later can fail with `SQLITE_BUSY_SNAPSHOT`, which no busy timeout
//! cures. What must happen together happens in one of these operations: a batch
//! and its chunk's new position ([`Store::commit_batch`]), a partition's results
//! and its `merged` row ([`Store::commit_partition`]), a stage's last rows and
//! its done-marker.
//!
//! ## Locking
//!
//! SQLite has one write lock per file. The harness creates the file, sets the page
//! size, WAL mode and the schema before any worker starts (two processes doing
//! that at once fail at once with "database is locked", whatever the busy
//! timeout). Writers then wait for the lock up to a long busy timeout instead
//! of failing.
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
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rusqlite::{Transaction, TransactionBehavior};

use crate::id_index::IdIndex;
use crate::plan::Plan;
use crate::reject::{Reason, Reject};
use crate::stage::Stage;

/// Bumped whenever the layout below changes.
pub const SCHEMA_VERSION: i64 = 8;

/// Large pages suit the workload: big blobs and long sequential scans.
const PAGE_SIZE: i64 = 16384;

/// The page cache of an ordinary connection, in KiB.
const DEFAULT_CACHE_KIB: i64 = 16 * 1024;

/// How long a writer waits for the write lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// Elements written per import transaction (keeps the WAL small).
const IMPORT_BATCH: u64 = 50_000;

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE playlists(seq INTEGER PRIMARY KEY, raw TEXT NOT NULL);
CREATE TABLE extras(seq INTEGER PRIMARY KEY, key TEXT NOT NULL, raw TEXT NOT NULL);
CREATE TABLE chunks(
    chunk INTEGER PRIMARY KEY,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    first_index INTEGER NOT NULL,
    changes INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    next_index INTEGER NOT NULL,
    auto_count INTEGER NOT NULL DEFAULT 0,
    max_playlist_id INTEGER NOT NULL DEFAULT 0,
    batches INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL NOT NULL DEFAULT 0
);
CREATE TABLE blocks(id INTEGER PRIMARY KEY, part INTEGER NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX blocks_by_part ON blocks(part, chunk);
CREATE TABLE rejects(
    idx INTEGER NOT NULL,
    op TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    by_merge INTEGER NOT NULL
);
CREATE TABLE merged(part INTEGER PRIMARY KEY, warnings INTEGER NOT NULL);
CREATE TABLE results(
    id TEXT NOT NULL,
    state INTEGER NOT NULL,
    doc_seq INTEGER,
    created INTEGER,
    json TEXT
);
";

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

/// This worker's lease on the chunk was taken over (it expired: the worker was
/// too slow to renew it); nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
#[error("the lease on chunk {chunk} was taken over by another worker; this worker's uncommitted batch was dropped and it cannot commit to that chunk again")]
pub struct LeaseLost {
    pub chunk: u64,
}

/// Seconds since the epoch: lease times. One clock serves every worker of a
/// SQLite store, since they all run on its host.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

/// Receives one top-level member: its raw key and its minified value.
pub type EachMember<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// A work database, open.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The id indexes, opened on first use (they exist once the import is done).
    indexes: std::cell::OnceCell<Indexes>,
}

/// The id indexes of users, songs and the document's playlists.
struct Indexes {
    users: IdIndex,
    songs: IdIndex,
    playlists: IdIndex,
}

/// Which elements an id index holds.
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
    pub fn values(self) -> crate::id_index::Values {
        match self {
            IdKind::Users | IdKind::Songs => crate::id_index::Values::Written,
            IdKind::Playlists => crate::id_index::Values::Positions,
        }
    }
}

impl Store {
    /// Creates a new, empty work database at `path`, replacing any old one.
    pub fn create(path: &Path) -> Result<Store> {
        remove_files(path)?;
        let conn = Connection::open(path)
            .with_context(|| format!("creating work database {}", path.display()))?;
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "work database {}: WAL mode is not available there",
                path.display()
            );
        }
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let mut store = Store::configured(conn, path)?;
        let tx = store
            .conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(store)
    }

    /// Opens an existing work database made by this version of the tool.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.is_file() {
            bail!("no work database at {}", path.display());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening work database {}", path.display()))?;
        let not_ours = || format!("{} is not a work database", path.display());
        let store = Store::configured(conn, path).with_context(not_ours)?;
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .with_context(not_ours)?;
        if version != SCHEMA_VERSION {
            bail!(
                "{} is not a mixtape work database of this version (schema {version}, expected {SCHEMA_VERSION})",
                path.display()
            );
        }
        Ok(store)
    }

    /// Sets the per-connection settings every process uses.
    fn configured(conn: Connection, path: &Path) -> Result<Store> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
            indexes: std::cell::OnceCell::new(),
        };
        store.set_cache_kib(DEFAULT_CACHE_KIB)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets this connection's page cache, in KiB.
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        self.conn.pragma_update(None, "cache_size", -kib)?;
        Ok(())
    }

    /// Gives back what the page cache holds, and what the allocator keeps of
    /// freed memory, between stages: each stage's peak then stays its own
    /// instead of adding up in the harness's resident size.
    pub fn release_memory(&self) -> Result<()> {
        self.set_cache_kib(DEFAULT_CACHE_KIB)?;
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        // SAFETY: malloc_trim only returns free heap pages to the OS.
        unsafe {
            nix::libc::malloc_trim(0);
        }
        Ok(())
    }

    /// Checkpoints only every `pages` pages of WAL: each checkpoint syncs the
    /// database file, and a worker's batches write thousands of pages.
    pub fn checkpoint_every(&self, pages: u32) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// Moves what the WAL holds into the database and truncates it; done between
    /// stages so the WAL does not grow without bound.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A write transaction that holds the write lock from its start.
    fn write(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    // ---- meta ----

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta_text(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
            .execute([key, value])?;
        Ok(())
    }

    /// A value from `meta` that must be there.
    pub fn meta(&self, key: Key) -> Result<String> {
        self.meta_text(key.name())?.with_context(|| {
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

    fn set_meta(&self, key: Key, value: impl ToString) -> Result<()> {
        self.set_meta_text(key.name(), &value.to_string())
    }

    fn mark_done(&self, stage: Stage) -> Result<()> {
        let marker = stage.done_marker().expect("only stages with a marker");
        self.set_meta_text(marker, "1")
    }

    /// Whether `stage` is complete in this database.
    pub fn is_done(&self, stage: Stage) -> Result<bool> {
        match (stage, stage.done_marker()) {
            (_, Some(marker)) => Ok(self.meta_text(marker)?.is_some()),
            (Stage::Apply, None) => {
                Ok(self.is_done(Stage::Plan)? && self.chunks()?.iter().all(|c| c.done))
            }
            (_, None) => Ok(false),
        }
    }

    /// The path and fingerprint recorded for an input, when there are.
    pub fn recorded_input(&self, which: InputKind) -> Result<(Option<String>, Option<String>)> {
        let (path, print) = which.keys();
        Ok((self.meta_text(path)?, self.meta_text(print)?))
    }

    /// Records an input's path and fingerprint.
    pub fn record_input(&self, which: InputKind, path: &str, fingerprint: &str) -> Result<()> {
        let (path_key, print_key) = which.keys();
        let tx = self.write()?;
        self.set_meta_text(path_key, path)?;
        self.set_meta_text(print_key, fingerprint)?;
        Ok(tx.commit()?)
    }

    /// The file the stages read for an input, and its fingerprint when it was
    /// recorded: the input itself, or the kept text of a compressed input
    /// ([`crate::decompress`]). `None` until it is known (a compressed input
    /// not yet wholly decompressed).
    pub fn input_text(&self, which: InputKind) -> Result<Option<(PathBuf, String)>> {
        let (path, print) = which.text_keys();
        Ok(match (self.meta_text(path)?, self.meta_text(print)?) {
            (Some(path), Some(print)) => Some((PathBuf::from(path), print)),
            _ => None,
        })
    }

    /// Records the file the stages read for an input (see [`Store::input_text`]).
    pub fn record_input_text(
        &self,
        which: InputKind,
        path: &Path,
        fingerprint: &str,
    ) -> Result<()> {
        let (path_key, print_key) = which.text_keys();
        let tx = self.write()?;
        self.set_meta_text(path_key, &path.to_string_lossy())?;
        self.set_meta_text(print_key, fingerprint)?;
        Ok(tx.commit()?)
    }

    // ---- import ----

    /// Starts the import: clears what an earlier import left and returns the
    /// writer for the document's elements.
    pub fn document_writer(&self) -> Result<DocumentWriter<'_>> {
        let tx = self.write()?;
        tx.execute_batch("DELETE FROM playlists; DELETE FROM extras;")?;
        Ok(DocumentWriter {
            store: self,
            tx: Some(tx),
            in_transaction: 0,
        })
    }

    fn indexes(&self) -> Result<&Indexes> {
        if let Some(indexes) = self.indexes.get() {
            return Ok(indexes);
        }
        let open = |which: IdKind| IdIndex::open(&self.index_path(which));
        let indexes = Indexes {
            users: open(IdKind::Users)?,
            songs: open(IdKind::Songs)?,
            playlists: open(IdKind::Playlists)?,
        };
        Ok(self.indexes.get_or_init(|| indexes))
    }

    /// Where the import writes the id index of `which` (see [`crate::id_index`]).
    pub fn index_path(&self, which: IdKind) -> PathBuf {
        crate::paths::with_suffix(&self.path, which.suffix())
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
        Ok(self.indexes()?.users.written_as(&id, token))
    }

    /// How the document writes the song whose id a change wrote as `token`,
    /// if the song exists.
    pub fn song_written<'a>(&'a self, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let id = crate::json::id_text(token).unwrap_or_default();
        Ok(self.indexes()?.songs.written_as(&id, token))
    }

    pub fn user_exists(&self, id: &str) -> Result<bool> {
        Ok(self.indexes()?.users.contains(id))
    }

    pub fn song_exists(&self, id: &str) -> Result<bool> {
        Ok(self.indexes()?.songs.contains(id))
    }

    /// The document's playlist `id`: its position and raw text. Most ids the
    /// merge asks about are new playlists': the index answers those without
    /// touching the database.
    pub fn document_playlist(&self, id: &str) -> Result<Option<(i64, String)>> {
        let Some(seq) = self.indexes()?.playlists.position(id) else {
            return Ok(None);
        };
        Ok(self
            .conn
            .prepare_cached("SELECT seq, raw FROM playlists WHERE seq = ?1")?
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The document's playlists at positions `from..to`, raw, in order.
    pub fn each_document_playlist_between(
        &self,
        from: u64,
        to: u64,
        each: &mut Each,
    ) -> Result<()> {
        self.each_first_column(
            "SELECT raw FROM playlists WHERE seq >= ?1 AND seq < ?2",
            [from, to],
            each,
        )
    }

    // ---- plan ----

    /// Stores the plan (replacing any earlier one) with the number of merge
    /// partitions, and marks the stage done.
    pub fn save_plan(&self, plan: &Plan, partitions: u64) -> Result<()> {
        let tx = self.write()?;
        tx.execute("DELETE FROM chunks", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO chunks(chunk, start, end, first_index, changes, next_offset, next_index)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?2, ?4)",
            )?;
            for (k, c) in plan.chunks.iter().enumerate() {
                insert.execute(params![k as u64, c.start, c.end, c.first_index, c.changes])?;
            }
        }
        self.set_meta(Key::Form, plan.form.name())?;
        self.set_meta(Key::Changes, plan.changes)?;
        self.set_meta(Key::Partitions, partitions)?;
        self.mark_done(Stage::Plan)?;
        Ok(tx.commit()?)
    }

    /// Sets how long workers' leases last (the harness, at the start of every
    /// run; workers read it when they start).
    pub fn set_lease(&self, lease: Duration) -> Result<()> {
        let tx = self.write()?;
        self.set_meta(Key::LeaseSecs, lease.as_secs_f64())?;
        Ok(tx.commit()?)
    }

    /// How long a worker's lease lasts.
    pub fn lease(&self) -> Result<Duration> {
        let text = self.meta(Key::LeaseSecs)?;
        let secs: f64 = text
            .parse()
            .with_context(|| format!("work database: lease_secs is not a number: {text}"))?;
        Ok(Duration::from_secs_f64(secs))
    }

    /// Every chunk of the plan, in order.
    pub fn chunks(&self) -> Result<Vec<ChunkRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT chunk, start, end, first_index, changes, next_offset, next_index,
                    auto_count, max_playlist_id, done
             FROM chunks ORDER BY chunk",
        )?;
        let rows = stmt.query_map([], chunk_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Chunk `chunk` of the plan, if there is one.
    pub fn chunk(&self, chunk: u64) -> Result<Option<ChunkRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT chunk, start, end, first_index, changes, next_offset, next_index,
                        auto_count, max_playlist_id, done
                 FROM chunks WHERE chunk = ?1",
            )?
            .query_row([chunk], chunk_row)
            .optional()?)
    }

    /// How many batches all workers committed so far.
    pub fn batches_committed(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(sum(batches), 0) FROM chunks", [], |r| {
                r.get(0)
            })?)
    }

    // ---- apply ----

    /// Claims the first chunk that is not done and not leased by a live
    /// worker, for `lease`, for `owner` (who it is, for messages).
    pub fn claim_next(&self, owner: &str, lease: Duration) -> Result<Claimed> {
        // Asked often by idle workers: look first without the write lock.
        if self.free_chunk(now_secs())?.is_none() {
            let left: u64 =
                (self.conn).query_row("SELECT count(*) FROM chunks WHERE done = 0", [], |r| {
                    r.get(0)
                })?;
            return Ok(if left == 0 {
                Claimed::AllDone
            } else {
                Claimed::Wait
            });
        }
        let tx = self.write()?;
        let now = now_secs();
        let Some(chunk) = self.free_chunk(now)? else {
            return Ok(Claimed::Wait); // another worker was quicker
        };
        let token = take_lease(&tx, chunk, owner, now + lease.as_secs_f64())?;
        tx.commit()?;
        Ok(Claimed::Chunk(Claim { chunk, token }))
    }

    /// The first chunk not done whose lease is free or expired at `now`.
    fn free_chunk(&self, now: f64) -> Result<Option<u64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT chunk FROM chunks WHERE done = 0 AND (lease_owner IS NULL OR lease_expires < ?1)
                 ORDER BY chunk LIMIT 1",
            )?
            .query_row([now], |r| r.get(0))
            .optional()?)
    }

    /// Claims chunk `chunk` (done or not: a worker run by hand may redo it),
    /// unless another worker holds a live lease on it.
    pub fn claim_chunk(&self, chunk: u64, owner: &str, lease: Duration) -> Result<Claim> {
        let tx = self.write()?;
        let now = now_secs();
        let holder: Option<(Option<String>, f64, bool)> = tx
            .prepare_cached("SELECT lease_owner, lease_expires, done FROM chunks WHERE chunk = ?1")?
            .query_row([chunk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        match holder {
            None => bail!("chunk {chunk} does not exist"),
            Some((Some(holder), expires, false)) if expires >= now && holder != owner => {
                return Err(Leased {
                    chunk,
                    owner: holder,
                    secs_left: expires - now,
                }
                .into())
            }
            Some(_) => {}
        }
        let token = take_lease(&tx, chunk, owner, now + lease.as_secs_f64())?;
        tx.commit()?;
        Ok(Claim { chunk, token })
    }

    /// The live leases on chunks not done: each claim, with its owner.
    pub fn leases(&self) -> Result<Vec<(Claim, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT chunk, lease_token, lease_owner FROM chunks
             WHERE done = 0 AND lease_owner IS NOT NULL AND lease_expires >= ?1",
        )?;
        let rows = stmt.query_map([now_secs()], |r| {
            Ok((
                Claim {
                    chunk: r.get(0)?,
                    token: r.get(1)?,
                },
                r.get(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Extends the lease of `claim` by `lease` from now; [`LeaseLost`] when it
    /// was taken over.
    pub fn renew_lease(&self, claim: Claim, lease: Duration) -> Result<()> {
        let tx = self.write()?;
        let renewed = tx
            .prepare_cached(
                "UPDATE chunks SET lease_expires = ?1 WHERE chunk = ?2 AND lease_token = ?3",
            )?
            .execute(params![
                now_secs() + lease.as_secs_f64(),
                claim.chunk,
                claim.token
            ])?;
        if renewed != 1 {
            return Err(LeaseLost { chunk: claim.chunk }.into());
        }
        Ok(tx.commit()?)
    }

    /// Gives the chunk up at once (a worker that stops), if the lease is still
    /// this claim's: another worker may take it without waiting for expiry.
    pub fn release_lease(&self, claim: Claim) -> Result<()> {
        let tx = self.write()?;
        tx.prepare_cached(
            "UPDATE chunks SET lease_owner = NULL, lease_expires = 0 WHERE chunk = ?1 AND lease_token = ?2",
        )?
        .execute(params![claim.chunk, claim.token])?;
        Ok(tx.commit()?)
    }

    /// Undoes everything chunk `chunk` recorded, and the merge (which read it),
    /// in one transaction: the chunk starts again from its beginning.
    pub fn reset_chunk(&self, chunk: u64) -> Result<()> {
        let tx = self.write()?;
        tx.execute("DELETE FROM blocks WHERE chunk = ?1", [chunk])?;
        tx.execute(
            "DELETE FROM rejects WHERE by_merge = 0
               AND idx >= (SELECT first_index FROM chunks WHERE chunk = ?1)
               AND idx < (SELECT first_index + changes FROM chunks WHERE chunk = ?1)",
            [chunk],
        )?;
        tx.execute(
            "UPDATE chunks SET next_offset = start, next_index = first_index, auto_count = 0,
                 max_playlist_id = 0, batches = 0, done = 0 WHERE chunk = ?1",
            [chunk],
        )?;
        clear_merge(&tx)?;
        Ok(tx.commit()?)
    }

    /// Writes a worker's batch and its chunk's new position in one transaction
    /// (see [`Batch`]). Fails, writing nothing, when another worker moved the
    /// chunk meanwhile.
    pub fn commit_batch(&self, batch: &Batch) -> Result<LockTiming> {
        let asked = Instant::now();
        let tx = self.write()?;
        let got = Instant::now();
        {
            let mut insert_block =
                tx.prepare_cached("INSERT INTO blocks(part, chunk, data) VALUES (?1, ?2, ?3)")?;
            for (part, data) in batch.parts.iter().enumerate() {
                if !data.is_empty() {
                    insert_block.execute(params![part as u64, batch.claim.chunk, data])?;
                }
            }
        }
        insert_rejects(&tx, batch.rejects, false)?;
        let moved = tx
            .prepare_cached(
                "UPDATE chunks SET next_offset = ?1, next_index = ?2, auto_count = ?3,
                 max_playlist_id = ?4, batches = batches + 1, done = ?5, lease_expires = ?8
                 WHERE chunk = ?6 AND next_offset = ?7 AND done = 0 AND lease_token = ?9",
            )?
            .execute(params![
                batch.next_offset,
                batch.next_index,
                batch.auto_count,
                batch.max_playlist_id,
                batch.done,
                batch.claim.chunk,
                batch.from_offset,
                now_secs() + batch.lease.as_secs_f64(),
                batch.claim.token
            ])?;
        if moved != 1 {
            // Dropping the transaction rolls back the rows inserted above.
            return Err(LeaseLost {
                chunk: batch.claim.chunk,
            }
            .into());
        }
        crate::fault::point("worker-write");
        tx.commit()?;
        let timing = LockTiming {
            waited: got - asked,
            held: got.elapsed(),
        };
        crate::fault::point("worker-commit");
        Ok(timing)
    }

    // ---- merge ----

    /// The partitions whose results are already committed.
    pub fn merged_partitions(&self) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare_cached("SELECT part FROM merged")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Clears what a merge left (before a merge starts from nothing: a chunk
    /// redone by hand may have changed what it read).
    pub fn clear_merge(&self) -> Result<()> {
        let tx = self.write()?;
        clear_merge(&tx)?;
        Ok(tx.commit()?)
    }

    /// The blocks of partition `part`, in index order: by chunk, then in the
    /// order the chunk's worker appended them.
    pub fn each_block(&self, part: u64, each: &mut Each) -> Result<()> {
        self.each_first_column(
            "SELECT data FROM blocks WHERE part = ?1 ORDER BY chunk, id",
            [part],
            each,
        )
    }

    /// Writes a partition's results with its `merged` row, in one transaction.
    pub fn commit_partition(&self, part: u64, out: &PartitionResults) -> Result<()> {
        let tx = self.write()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO results(id, state, doc_seq, created, json) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in &out.results {
                let (state, doc_seq, created, json) = match &r.fate {
                    Fate::Changed { doc_seq, json } => {
                        (FATE_CHANGED, Some(*doc_seq), None, Some(json))
                    }
                    Fate::Removed { doc_seq } => (FATE_REMOVED, Some(*doc_seq), None, None),
                    Fate::New {
                        doc_seq,
                        created,
                        json,
                    } => (FATE_NEW, *doc_seq, Some(*created), Some(json)),
                };
                insert.execute(params![r.id, state, doc_seq, created, json])?;
            }
        }
        insert_rejects(&tx, &out.rejects, true)?;
        tx.prepare_cached("INSERT INTO merged(part, warnings) VALUES (?1, ?2)")?
            .execute([part, out.warnings])?;
        crate::fault::point("merge-partition");
        Ok(tx.commit()?)
    }

    /// Marks the merge done.
    /// Marks the merge done.
    pub fn finish_merge(&self) -> Result<()> {
        let tx = self.write()?;
        self.mark_done(Stage::Merge)?;
        Ok(tx.commit()?)
    }

    /// Document playlists that name a missing owner or song, as counted by the merge.
    pub fn warnings(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(sum(warnings), 0) FROM merged", [], |r| {
                r.get(0)
            })?)
    }

    // ---- export ----

    /// The final state of the document's playlists: those that survive, in
    /// document order, as the merge left them.
    pub fn each_final_document_playlist(&self, each: &mut Each) -> Result<()> {
        // Two streams in document order, joined as they go: the document's
        // playlists, and the merge's results about them (sorted once here:
        // SQLite's sorter reads the table in order, which beats an index whose
        // every row costs a random lookup).
        let mut docs = self
            .conn
            .prepare("SELECT seq, raw FROM playlists ORDER BY seq")?;
        let mut docs = docs.query([])?;
        let mut fates = self.conn.prepare(
            "SELECT doc_seq, state, json FROM results WHERE doc_seq IS NOT NULL ORDER BY doc_seq",
        )?;
        let mut fates = fates.query([])?;
        let mut fate = fates.next()?;
        while let Some(doc) = docs.next()? {
            let seq: i64 = doc.get(0)?;
            while let Some(f) = fate {
                if f.get::<_, i64>(0)? >= seq {
                    break;
                }
                fate = fates.next()?;
            }
            match fate {
                Some(f) if f.get::<_, i64>(0)? == seq => {
                    if f.get::<_, i64>(1)? == FATE_CHANGED {
                        each(f.get_ref(2)?.as_bytes()?)?;
                    } // else removed, or removed and created anew (among the new ones)
                }
                _ => each(doc.get_ref(1)?.as_bytes()?)?,
            }
        }
        Ok(())
    }

    /// The playlists the changes created, in order of creation.
    pub fn each_new_playlist(&self, each: &mut Each) -> Result<()> {
        self.each_first_column(
            "SELECT json FROM results WHERE state = ?1 ORDER BY created",
            [FATE_NEW],
            each,
        )
    }

    /// The document's other top-level members: (raw key, minified value), in order.
    pub fn each_extra(&self, each: &mut EachMember) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, raw FROM extras ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each(row.get_ref(0)?.as_bytes()?, row.get_ref(1)?.as_bytes()?)?;
        }
        Ok(())
    }

    /// Every rejected change, in index order.
    pub fn each_reject(&self, each: &mut dyn FnMut(Reject) -> Result<()>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, op, reason, detail FROM rejects ORDER BY idx")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each(Reject {
                index: row.get(0)?,
                op_json: row.get(1)?,
                reason: reason_of(row.get_ref(2)?.as_str()?)?,
                detail: row.get(3)?,
            })?;
        }
        Ok(())
    }

    /// How many changes were rejected for each reason, in [`Reason::ALL`] order,
    /// only the reasons present.
    pub fn rejects_by_reason(&self) -> Result<Vec<(Reason, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT reason, count(*) FROM rejects GROUP BY reason")?;
        let mut counted = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?
            .map(|row| {
                let (name, n) = row?;
                Ok((reason_of(&name)?, n))
            })
            .collect::<Result<Vec<_>>>()?;
        counted.sort();
        Ok(counted)
    }

    /// Streams the first column (text or blob) of every row of `sql`.
    fn each_first_column(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        each: &mut Each,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            each(row.get_ref(0)?.as_bytes()?)?;
        }
        Ok(())
    }
}

/// Writes the document's elements during the import, committing every
/// [`IMPORT_BATCH`] elements. Dropped without [`DocumentWriter::finish`], it
/// rolls back its open transaction; a rerun of the import starts over.
pub struct DocumentWriter<'a> {
    store: &'a Store,
    tx: Option<Transaction<'a>>,
    in_transaction: u64,
}

impl DocumentWriter<'_> {
    /// A document playlist, minified (its id goes to the playlists' index).
    pub fn playlist(&mut self, position: u64, raw: &str) -> Result<()> {
        self.store
            .conn
            .prepare_cached("INSERT INTO playlists(seq, raw) VALUES (?1, ?2)")?
            .execute(params![position, raw])?;
        self.element_written()
    }

    /// A top-level member other than the three arrays.
    pub fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()> {
        self.store
            .conn
            .prepare_cached("INSERT INTO extras(seq, key, raw) VALUES (?1, ?2, ?3)")?
            .execute(params![seq, key, raw])?;
        Ok(())
    }

    fn element_written(&mut self) -> Result<()> {
        self.in_transaction += 1;
        if self.in_transaction >= IMPORT_BATCH {
            if let Some(tx) = self.tx.take() {
                tx.commit()?;
            }
            self.tx = Some(self.store.write()?);
            self.in_transaction = 0;
        }
        Ok(())
    }

    /// Stores what the import learnt and marks it done, with the last
    /// elements, and checkpoints. The id indexes must be built by then
    /// ([`Store::index_path`]): a crash before the marker redoes the import,
    /// indexes included.
    pub fn finish(mut self, facts: &DocumentFacts) -> Result<()> {
        let store = self.store;
        store.set_meta(Key::UsersRange, ArrayRange::to_meta(&facts.ranges.users))?;
        store.set_meta(Key::SongsRange, ArrayRange::to_meta(&facts.ranges.songs))?;
        store.set_meta(Key::OwnerKey, &facts.owner_key)?;
        store.set_meta(Key::DocumentMaxPlaylistId, facts.max_playlist_id)?;
        store.set_meta(Key::Users, facts.users)?;
        store.set_meta(Key::Playlists, facts.playlists)?;
        store.set_meta(Key::Songs, facts.songs)?;
        store.mark_done(Stage::Import)?;
        if let Some(tx) = self.tx.take() {
            tx.commit()?;
        }
        store.checkpoint()
    }
}

/// Gives chunk `chunk` to `owner` until `expires`: a new token fences off
/// whoever held it before.
fn take_lease(tx: &Transaction, chunk: u64, owner: &str, expires: f64) -> Result<u64> {
    Ok(tx
        .prepare_cached(
            "UPDATE chunks SET lease_token = lease_token + 1, lease_owner = ?2, lease_expires = ?3
             WHERE chunk = ?1 RETURNING lease_token",
        )?
        .query_row(params![chunk, owner, expires], |r| r.get(0))?)
}

fn chunk_row(r: &rusqlite::Row) -> rusqlite::Result<ChunkRow> {
    Ok(ChunkRow {
        chunk: r.get(0)?,
        start: r.get(1)?,
        end: r.get(2)?,
        first_index: r.get(3)?,
        changes: r.get(4)?,
        next_offset: r.get(5)?,
        next_index: r.get(6)?,
        auto_count: r.get(7)?,
        max_playlist_id: r.get(8)?,
        done: r.get(9)?,
    })
}

fn insert_rejects(tx: &Transaction, rejects: &[Reject], by_merge: bool) -> Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO rejects(idx, op, reason, detail, by_merge) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in rejects {
        insert.execute(params![
            r.index,
            r.op_json,
            r.reason.name(),
            r.detail,
            by_merge
        ])?;
    }
    Ok(())
}

fn clear_merge(tx: &Transaction) -> Result<()> {
    tx.execute_batch(
        "DELETE FROM results; DELETE FROM rejects WHERE by_merge = 1; DELETE FROM merged;",
    )?;
    tx.execute(
        "DELETE FROM meta WHERE key = ?1",
        [Stage::Merge.done_marker().expect("merge has a marker")],
    )?;
    Ok(())
}

fn reason_of(name: &str) -> Result<Reason> {
    Reason::from_name(name)
        .with_context(|| format!("work database: unknown reject reason {name:?}"))
}

/// The database file and its companions.
fn companions(path: &Path) -> [PathBuf; 10] {
    let kept = |kind: InputKind| crate::paths::with_suffix(path, kind.kept_text_suffix());
    [
        kept(InputKind::Mixtape),
        kept(InputKind::Changes),
        crate::paths::with_suffix(&kept(InputKind::Mixtape), ".partial"),
        crate::paths::with_suffix(&kept(InputKind::Changes), ".partial"),
        path.to_path_buf(),
        crate::paths::with_suffix(path, "-wal"),
        crate::paths::with_suffix(path, "-shm"),
        crate::paths::with_suffix(path, IdKind::Users.suffix()),
        crate::paths::with_suffix(path, IdKind::Songs.suffix()),
        crate::paths::with_suffix(path, IdKind::Playlists.suffix()),
    ]
}

/// Removes the database, its WAL and shared-memory files, its id indexes and
/// the kept decompressed inputs.
pub fn remove_files(path: &Path) -> Result<()> {
    for file in companions(path) {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// An exclusive hold on a work database for one harness run (see module docs).
pub struct RunLock {
    _lock: nix::fcntl::Flock<File>,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock beside `db`, or fails at once if another run holds it.
    pub fn acquire(db: &Path) -> Result<RunLock> {
        let path = crate::paths::with_suffix(db, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating lock file {}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(RunLock { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another harness run is using the work database {} (lock {} is held); wait for it to finish",
                db.display(),
                path.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Removes the lock file, then releases the lock (after a finished run).
    /// Removing first means no other run can be holding the removed file.
    pub fn release_and_remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Chunk, Form};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("w.db")).unwrap();
        (dir, store)
    }

    fn plan_two_chunks(store: &Store) {
        let chunks = vec![
            Chunk {
                start: 0,
                end: 10,
                first_index: 0,
                changes: 2,
            },
            Chunk {
                start: 10,
                end: 20,
                first_index: 2,
                changes: 3,
            },
        ];
        let plan = Plan {
            form: Form::Lines,
            changes: 5,
            chunks,
        };
        store.save_plan(&plan, 8).unwrap();
    }

    const LEASE: Duration = Duration::from_secs(30);

    fn batch<'a>(
        claim: Claim,
        parts: &'a [Vec<u8>],
        rejects: &'a [Reject],
        from: u64,
        to: u64,
    ) -> Batch<'a> {
        Batch {
            claim,
            lease: LEASE,
            parts,
            rejects,
            from_offset: from,
            next_offset: to,
            next_index: 3,
            auto_count: 1,
            max_playlist_id: 7,
            done: to == 20,
        }
    }

    #[test]
    fn a_batch_commits_once_and_moves_its_chunk() {
        let (_dir, store) = store();
        plan_two_chunks(&store);
        assert!(!store.is_done(Stage::Apply).unwrap());
        let parts = vec![Vec::new(), b"abc".to_vec()];
        let rejects = [Reject {
            index: 2,
            op_json: "\"add_song\"".into(),
            reason: Reason::UnknownSong,
            detail: "song 9 does not exist".into(),
        }];
        let claim = store.claim_chunk(1, "a", LEASE).unwrap();
        store
            .commit_batch(&batch(claim, &parts, &rejects, 10, 15))
            .unwrap();
        // The same batch again (a worker that lost track) must not commit.
        let stale = store.commit_batch(&batch(claim, &parts, &rejects, 10, 15));
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
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let (_dir, store) = store();
        plan_two_chunks(&store);
        let parts = vec![b"x".to_vec()];
        // Chunk 1 is not at offset 99: the batch fails after inserting its block,
        // and the transaction must roll back that block.
        let claim = store.claim_chunk(1, "a", LEASE).unwrap();
        assert!(store
            .commit_batch(&batch(claim, &parts, &[], 99, 15))
            .is_err());
        let mut blocks = 0;
        store
            .each_block(0, &mut |_| {
                blocks += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(blocks, 0);
        // And the connection is usable afterwards (no transaction left open).
        store
            .commit_batch(&batch(claim, &parts, &[], 10, 20))
            .unwrap();
        assert!(store.chunk(1).unwrap().unwrap().done);
    }

    #[test]
    fn chunks_are_claimed_one_at_a_time_until_all_are_done() {
        let (_dir, store) = store();
        plan_two_chunks(&store);
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
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_old_holder_fenced_off() {
        let (_dir, store) = store();
        plan_two_chunks(&store);
        let short = Duration::from_millis(50);
        let Claimed::Chunk(slow) = store.claim_next("slow", short).unwrap() else {
            panic!("no chunk")
        };
        assert_eq!(slow.chunk, 0);
        std::thread::sleep(Duration::from_millis(120));
        // The lease expired: chunk 0 is free again, and goes to a new worker.
        let Claimed::Chunk(quick) = store.claim_next("quick", LEASE).unwrap() else {
            panic!("no chunk")
        };
        assert_eq!((quick.chunk, quick.token), (0, slow.token + 1));
        let parts = vec![b"late".to_vec()];
        let late = store.commit_batch(&batch(slow, &parts, &[], 0, 5));
        assert!(late.unwrap_err().is::<LeaseLost>());
        assert!(store
            .renew_lease(slow, LEASE)
            .unwrap_err()
            .is::<LeaseLost>());
        // Releasing a lost lease does not free the new holder's chunk.
        store.release_lease(slow).unwrap();
        assert_eq!(
            store
                .claim_chunk(0, "other", LEASE)
                .unwrap_err()
                .downcast_ref::<Leased>()
                .unwrap()
                .owner,
            "quick"
        );
        let mut blocks = 0;
        store
            .each_block(0, &mut |_| {
                blocks += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(blocks, 0, "the fenced batch wrote nothing");
        store
            .commit_batch(&batch(quick, &parts, &[], 0, 5))
            .unwrap();
        assert_eq!(store.chunk(0).unwrap().unwrap().next_offset, 5);
    }

    #[test]
    fn document_playlists_are_found_through_their_index() {
        let (_dir, store) = store();
        let mut w = store.document_writer().unwrap();
        w.playlist(0, "{\"id\":\"p\"}").unwrap();
        w.playlist(1, "{\"id\":\"q\"}").unwrap();
        for kind in IdKind::ALL {
            crate::id_index::build(&store.index_path(kind), kind.values(), &mut |add| {
                if kind == IdKind::Playlists {
                    add("p", "", 0)?;
                    add("q", "", 1)?;
                }
                Ok(())
            })
            .unwrap();
        }
        w.finish(&DocumentFacts::default()).unwrap();
        assert!(store.is_done(Stage::Import).unwrap());
        assert_eq!(
            store.document_playlist("q").unwrap(),
            Some((1, "{\"id\":\"q\"}".into()))
        );
        assert_eq!(store.document_playlist("r").unwrap(), None);
        assert_eq!(store.array_ranges().unwrap(), ArrayRanges::default());
    }

    #[test]
    fn an_unfinished_import_rolls_back() {
        let (_dir, store) = store();
        let mut w = store.document_writer().unwrap();
        w.playlist(0, "{}").unwrap();
        drop(w);
        assert!(!store.is_done(Stage::Import).unwrap());
        let mut rows = 0;
        store
            .each_document_playlist_between(0, 10, &mut |_| {
                rows += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn array_ranges_round_trip() {
        let (_dir, store) = store();
        let ranges = ArrayRanges {
            users: Some(ArrayRange {
                start: 3,
                end: 90,
                splits: vec![40, 70],
            }),
            songs: None,
        };
        let w = store.document_writer().unwrap();
        w.finish(&DocumentFacts {
            ranges: ranges.clone(),
            ..DocumentFacts::default()
        })
        .unwrap();
        assert_eq!(store.array_ranges().unwrap(), ranges);
        let users = ranges.users.unwrap();
        assert_eq!(users.pieces(), [(3, 40), (40, 70), (70, 90)]);
    }
}
