//! The work database: its layout, its settings, and who may open it.
//!
//! One SQLite file in WAL mode holds everything a run knows, so that a run can
//! stop at any point and continue later:
//!
//! | table | written by | holds |
//! |---|---|---|
//! | `meta` | every stage | inputs and their fingerprints, stage markers, figures |
//! | `users`, `songs`, `playlists`, `extras` | import | the document's elements, raw and minified, in input order |
//! | `user_ids`, `song_ids` | import | id text → the id as the document writes it, for lookups |
//! | `chunks` | plan, workers | byte range of every chunk and how far its worker got |
//! | `blocks` | workers | recorded changes, encoded ([`crate::record`]), one row per batch and partition |
//! | `rejects` | workers, merge | every rejected change, with its index |
//! | `results` | merge | every playlist whose fate differs from the document |
//! | `merged` | merge | the partitions already merged, and the warnings each counted |
//!
//! `rejects` and `results` are append-only (no key but the rowid): writers add
//! rows in whatever order their work comes, and the export sorts once. Keyed
//! inserts in random order would rewrite pages all over those tables in every
//! transaction, which at 5M changes made the merge ten times slower.
//!
//! ## Locking
//!
//! SQLite has one write lock per file. The harness creates the file, sets the page
//! size, WAL mode and the schema before any worker starts (two processes doing
//! that at once fail at once with "database is locked", whatever the busy
//! timeout). Writers then use `BEGIN IMMEDIATE` and a long busy timeout, so a
//! worker waiting for the lock waits instead of failing.
//!
//! Two harness runs on one database would corrupt each other's plan, so the
//! harness also takes an exclusive `flock` on `DB.lock` ([`RunLock`]); a second run
//! refuses to start.
//!
//! ## Versions
//!
//! `PRAGMA user_version` holds [`SCHEMA_VERSION`]; a database of another version
//! (or another program's database) is never resumed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// Bumped whenever the layout below changes.
pub const SCHEMA_VERSION: i64 = 4;

/// Large pages suit the workload: big blobs and long sequential scans.
const PAGE_SIZE: i64 = 16384;

/// Page cache of a connection that does many random lookups (workers checking
/// users and songs, merge threads counting warnings), in KiB: enough to hold the id
/// tables of a few million users and songs, so lookups stop costing a read
/// each, while every process stays well under 100 MB.
pub const LOOKUP_CACHE_KIB: i64 = 48 * 1024;

/// Gives `conn` the larger page cache for random lookups.
pub fn use_lookup_cache(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "cache_size", -LOOKUP_CACHE_KIB)?;
    Ok(())
}

/// Gives back what `conn`'s page cache holds, and what the allocator keeps of
/// freed memory, between stages: each stage's peak then stays its own instead
/// of adding up in the harness's resident size.
pub fn release_memory(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.execute_batch("PRAGMA shrink_memory")?;
    // SAFETY: malloc_trim only returns free heap pages to the OS.
    unsafe {
        nix::libc::malloc_trim(0);
    }
    Ok(())
}

/// How long a writer waits for the write lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE users(seq INTEGER PRIMARY KEY, raw TEXT NOT NULL);
CREATE TABLE user_ids(id TEXT PRIMARY KEY, written TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE songs(seq INTEGER PRIMARY KEY, raw TEXT NOT NULL);
CREATE TABLE song_ids(id TEXT PRIMARY KEY, written TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE playlists(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, raw TEXT NOT NULL);
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
    done INTEGER NOT NULL DEFAULT 0
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

/// `results.state`: an input playlist (at `doc_seq`) whose songs changed; `json`
/// is its new text.
pub const RESULT_CHANGED: i64 = 0;
/// `results.state`: an input playlist that no longer exists.
pub const RESULT_REMOVED: i64 = 1;
/// `results.state`: a playlist created by the changes, written after the input
/// playlists in order of `created` (the index of the change that created it).
pub const RESULT_NEW: i64 = 2;

/// Sets the per-connection settings every process uses.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -16_384)?; // 16 MiB
    Ok(())
}

/// Creates a new, empty work database at `path`, replacing any old one.
pub fn create(path: &Path) -> Result<Connection> {
    remove_files(path)?;
    let conn = Connection::open(path)
        .with_context(|| format!("creating work database {}", path.display()))?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!(
            "work database {}: WAL mode is not available there",
            path.display()
        );
    }
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    configure(&conn)?;
    conn.execute_batch(&format!(
        "BEGIN EXCLUSIVE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(conn)
}

/// Opens an existing work database made by this version of the tool.
pub fn open_existing(path: &Path) -> Result<Connection> {
    if !path.is_file() {
        bail!("no work database at {}", path.display());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening work database {}", path.display()))?;
    configure(&conn).with_context(|| format!("{} is not a work database", path.display()))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .with_context(|| format!("{} is not a work database", path.display()))?;
    if version != SCHEMA_VERSION {
        bail!(
            "{} is not a mixtape work database of this version (schema {version}, expected {SCHEMA_VERSION})",
            path.display()
        );
    }
    Ok(conn)
}

/// A value from `meta`.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// A value from `meta` that must be there.
pub fn meta_require(conn: &Connection, key: &str) -> Result<String> {
    meta_get(conn, key)?
        .with_context(|| format!("work database has no {key}: was it made by an unfinished run?"))
}

/// A number from `meta` that must be there.
pub fn meta_number(conn: &Connection, key: &str) -> Result<u64> {
    let text = meta_require(conn, key)?;
    text.parse()
        .with_context(|| format!("work database: {key} is not a number: {text}"))
}

/// Sets a value in `meta`.
pub fn meta_set(conn: &Connection, key: &str, value: impl ToString) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
        .execute(params![key, value.to_string()])?;
    Ok(())
}

/// Whether the stage marker `stage` is set (see [`mark_done`]).
pub fn is_done(conn: &Connection, stage: &str) -> Result<bool> {
    Ok(meta_get(conn, &format!("{stage}_done"))?.is_some())
}

/// Marks stage `stage` complete; call inside the stage's last transaction.
pub fn mark_done(conn: &Connection, stage: &str) -> Result<()> {
    meta_set(conn, &format!("{stage}_done"), 1)
}

/// Moves what the WAL holds into the database and truncates it; done between
/// stages so the WAL does not grow without bound.
pub fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// The database file and its companions.
fn companions(path: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Removes the database and its WAL and shared-memory files.
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
        let mut s = db.as_os_str().to_owned();
        s.push(".lock");
        let path = PathBuf::from(s);
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
