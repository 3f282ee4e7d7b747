//! The SQLite work database: one file in WAL mode, shared by the harness and
//! the workers of one host (see the module docs of [`crate::store`] for what
//! each table holds and why the transactions are what they are).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use rusqlite::{Transaction, TransactionBehavior};

use super::{
    remove_files, AlreadyMerged, Backend, Batch, ChunkRow, Claim, Claimed, DocumentSink, Each,
    EachMember, EachPlaylist, Fate, Key, LeaseLost, LockTiming, Param, PartitionResults,
    PlaylistResult, Statement, Tables, WorkFiles, FATE_CHANGED, FATE_REMOVED, SCHEMA_VERSION,
    SELECT_CHUNK, SELECT_CHUNKS,
};
use crate::changes::chunk::Plan;
use crate::changes::reject::{Reason, Reject};
use crate::run::stage::Stage;

mod playlist_rows;
mod reject_rows;
mod result_rows;
mod runs;

use runs::Stream;

/// Large pages suit the workload: big blobs and long sequential scans.
const PAGE_SIZE: i64 = 16384;

/// The page cache of an ordinary connection, in KiB.
const DEFAULT_CACHE_KIB: i64 = 16 * 1024;

/// How long a writer waits for the write lock before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a connection tries again for a lock another one holds (the
/// write lock, as a rule).
///
/// SQLite's own busy handler sleeps 1, 2, 5, 10, ... and then 100 ms between
/// tries, so a worker that had waited a while slept 100 ms at a time: with
/// many workers queueing for the write lock, it sat free after each commit
/// until some sleeper woke, and the workers that had waited longest were the
/// last to try. Trying every millisecond costs a few system calls a
/// millisecond in all, and hands the lock on within about a millisecond.
const BUSY_POLL: Duration = Duration::from_millis(1);

/// Elements written per import transaction (keeps the WAL small).
const IMPORT_BATCH: u64 = 50_000;

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE playlists(first INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE extras(seq INTEGER PRIMARY KEY, key TEXT NOT NULL, raw TEXT NOT NULL);
CREATE TABLE chunks(
    chunk INTEGER PRIMARY KEY,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
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
CREATE INDEX blocks_by_chunk ON blocks(chunk, part);
CREATE TABLE rejects(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    by_merge INTEGER NOT NULL
);
CREATE TABLE runs(
    stream INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY(stream, first)
) WITHOUT ROWID;
CREATE TABLE merged(part INTEGER PRIMARY KEY, warnings INTEGER NOT NULL);
CREATE TABLE results(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
";

/// SQLite's busy handler (called with the number of tries so far for one
/// lock): sleeps `poll` and asks to try again, until `timeout` has passed
/// since the first try, when the statement fails with `SQLITE_BUSY`.
fn busy_waiter(timeout: Duration, poll: Duration) -> impl FnMut(i32) -> bool + Send + 'static {
    let mut since = Instant::now();
    move |tries| {
        if tries == 0 {
            since = Instant::now();
        }
        if since.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(poll);
        true
    }
}

/// Seconds since the epoch: lease times. One clock serves every worker of a
/// SQLite store, since they all run on its host.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The rows of `playlists` that hold positions `?1..?2`: from the row that
/// holds `?1` (a row holds the playlists from its `first` on, playlist_rows).
const PLAYLIST_ROWS_BETWEEN: &str = "SELECT first, data FROM playlists
     WHERE first >= coalesce((SELECT max(first) FROM playlists WHERE first <= ?1), 0)
       AND first < ?2
     ORDER BY first";

/// A SQLite work database, open.
pub(super) struct SqliteDb {
    conn: Connection,
    /// MIXTAPE's text, which most rows of `playlists` point into
    /// ([`playlist_rows`]), opened on first need.
    mixtape: std::cell::OnceCell<std::fs::File>,
}

/// Fails ([`super::NotAWorkDatabase`]) unless `path` is a SQLite file with this
/// program's tables (of any schema version): the one kind of file a run may
/// open as its work database, and `--fresh` may replace. Checked once per
/// process, where the user's `--db` comes in ([`super::Location::refuse_foreign_file`]),
/// and before a creation replaces a file, not on every open.
pub(super) fn refuse_unless_work_database(path: &Path) -> Result<()> {
    let ours = (|| -> Option<bool> {
        let mut head = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
        if &head != b"SQLite format 3\0" {
            return Some(false);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'chunks', 'blocks')",
                [],
                |r| r.get(0),
            )
            .ok()?;
        Some(tables == 3)
    })();
    if ours != Some(true) {
        return Err(super::NotAWorkDatabase {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

impl SqliteDb {
    /// MIXTAPE's text (the file the import read), for the playlists kept
    /// there ([`playlist_rows`]).
    fn mixtape(&self) -> Result<&std::fs::File> {
        if let Some(file) = self.mixtape.get() {
            return Ok(file);
        }
        let (key, _) = super::InputKind::Mixtape.text_keys();
        let Some(path) = self.meta_text(key)? else {
            bail!("work database: MIXTAPE's text is not recorded; rerun with --fresh");
        };
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening MIXTAPE {path} again for its playlists"))?;
        Ok(self.mixtape.get_or_init(|| file))
    }

    fn set_meta_text(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
            .execute([key, value])?;
        Ok(())
    }

    /// Creates a new, empty work database at `path`, replacing any old one.
    /// Makes the database under a temporary name and renames it into place
    /// once its schema is there: a file at `path` is always a whole work
    /// database (a kill during creation leaves only the temporary, which
    /// the next creation removes).
    pub(super) fn create(path: &Path) -> Result<SqliteDb> {
        // Only a work database is ever replaced (--fresh): never a file the
        // user pointed --db at by mistake.
        if std::fs::symlink_metadata(path).is_ok() {
            refuse_unless_work_database(path)?;
        }
        remove_files(path)?;
        let creating = WorkFiles::of(path).creating[0].clone();
        remove_files(&creating)?;
        {
            // Made here, so that it is private (0600) and not through a
            // symlink; SQLite gives its WAL and shared memory the same mode.
            drop(crate::run::private_file::create_new(&creating)?);
            let conn = Connection::open(&creating)
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
            let mut conn = conn;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
            // Closing the only connection checkpoints and removes the WAL.
            conn.close().map_err(|(_, e)| e)?;
        }
        std::fs::rename(&creating, path)
            .with_context(|| format!("creating work database {}", path.display()))?;
        crate::run::paths::sync_directory_of(path)?;
        let conn = Connection::open(path)
            .with_context(|| format!("opening work database {}", path.display()))?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        SqliteDb::configured(conn)
    }

    /// Opens an existing work database made by this version of the tool.
    pub(super) fn open(path: &Path) -> Result<SqliteDb> {
        if !path.is_file() {
            bail!("no work database at {}", path.display());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening work database {}", path.display()))?;
        let not_ours = || format!("{} is not a work database", path.display());
        let store = SqliteDb::configured(conn).with_context(not_ours)?;
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
    fn configured(mut conn: Connection) -> Result<SqliteDb> {
        conn.busy_handler(Some(busy_waiter(BUSY_TIMEOUT, BUSY_POLL)))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = SqliteDb {
            conn,
            mixtape: std::cell::OnceCell::new(),
        };
        store.set_cache_kib(DEFAULT_CACHE_KIB)?;
        Ok(store)
    }

    /// A write transaction that holds the write lock from its start.
    fn write(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    fn set_meta(&self, key: Key, value: impl ToString) -> Result<()> {
        self.set_meta_text(key.name(), &value.to_string())
    }

    fn mark_done(&self, stage: Stage) -> Result<()> {
        let marker = stage.done_marker().expect("only stages with a marker");
        self.set_meta_text(marker, "1")
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

impl Tables for SqliteDb {
    fn set_cache_kib(&self, kib: i64) -> Result<()> {
        self.conn.pragma_update(None, "cache_size", -kib)?;
        Ok(())
    }

    fn release_memory(&self) -> Result<()> {
        self.set_cache_kib(DEFAULT_CACHE_KIB)?;
        self.conn.execute_batch("PRAGMA shrink_memory")?;
        Ok(())
    }

    fn checkpoint_every(&self, pages: u32) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
        Ok(())
    }

    fn each_document_playlist_between(
        &self,
        from: u64,
        to: u64,
        each: &mut EachPlaylist,
    ) -> Result<()> {
        self.each_document_playlist_among(from, to, &|_| true, each)
    }

    fn each_document_playlist_among(
        &self,
        from: u64,
        to: u64,
        wanted: &dyn Fn(u64) -> bool,
        each: &mut EachPlaylist,
    ) -> Result<()> {
        // From the row that holds position `from` (playlist_rows).
        let mut stmt = self.conn.prepare_cached(PLAYLIST_ROWS_BETWEEN)?;
        let mut rows = stmt.query([from, to])?;
        let open = || self.mixtape();
        let mut reader = playlist_rows::RowReader::new(&open);
        let wanted = |position| (from..to).contains(&position) && wanted(position);
        while let Some(row) = rows.next()? {
            let data = row.get_ref(1)?.as_blob()?;
            reader.each_in_row(row.get(0)?, data, &wanted, each)?;
        }
        Ok(())
    }

    fn save_plan(&self, plan: &Plan, partitions: u64) -> Result<()> {
        let tx = self.write()?;
        tx.execute("DELETE FROM chunks", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO chunks(chunk, start_offset, end_offset, first_index, changes, next_offset, next_index)
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

    fn chunks(&self) -> Result<Vec<ChunkRow>> {
        let mut stmt = self.conn.prepare_cached(SELECT_CHUNKS)?;
        let mut rows = stmt.query([])?;
        let mut chunks = Vec::new();
        while let Some(row) = rows.next()? {
            chunks.push(chunk_row(row)?);
        }
        Ok(chunks)
    }

    fn chunk(&self, chunk: u64) -> Result<Option<ChunkRow>> {
        let mut stmt = self.conn.prepare_cached(SELECT_CHUNK)?;
        let mut rows = stmt.query([chunk])?;
        rows.next()?.map(chunk_row).transpose()
    }

    fn batches_committed(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(sum(batches), 0) FROM chunks", [], |r| {
                r.get(0)
            })?)
    }

    fn claim_next(&self, owner: &str, lease: Duration) -> Result<Claimed> {
        // Asked often by idle workers: look first without the write lock.
        if self.free_chunk(now_secs())?.is_none() {
            let left: u64 =
                (self.conn).query_row("SELECT count(*) FROM chunks WHERE done = 0", [], |r| {
                    r.get(0)
                })?;
            return Ok(super::when_none_is_free(left));
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

    fn claim_chunk(&self, chunk: u64, owner: &str, lease: Duration) -> Result<Claim> {
        let tx = self.write()?;
        let now = now_secs();
        let holder: Option<(Option<String>, f64, bool)> = tx
            .prepare_cached("SELECT lease_owner, lease_expires, done FROM chunks WHERE chunk = ?1")?
            .query_row([chunk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((holder, expires, done)) = holder else {
            bail!("chunk {chunk} does not exist");
        };
        super::refuse_if_leased(chunk, holder, done, expires - now, owner)?;
        let token = take_lease(&tx, chunk, owner, now + lease.as_secs_f64())?;
        tx.commit()?;
        Ok(Claim { chunk, token })
    }

    fn leases(&self) -> Result<Vec<(Claim, String)>> {
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

    fn renew_lease(&self, claim: Claim, lease: Duration) -> Result<()> {
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

    fn release_lease(&self, claim: Claim) -> Result<()> {
        let tx = self.write()?;
        tx.prepare_cached(
            "UPDATE chunks SET lease_owner = NULL, lease_expires = 0 WHERE chunk = ?1 AND lease_token = ?2",
        )?
        .execute(params![claim.chunk, claim.token])?;
        Ok(tx.commit()?)
    }

    fn commit_batch(&self, batch: &Batch) -> Result<LockTiming> {
        let asked = Instant::now();
        let tx = self.write()?;
        let got = Instant::now();
        {
            let mut insert_block =
                tx.prepare_cached("INSERT INTO blocks(part, chunk, data) VALUES (?1, ?2, ?3)")?;
            for (partition, data) in batch.blocks.iter().enumerate() {
                if !data.is_empty() {
                    insert_block.execute(params![partition as u64, batch.claim.chunk, data])?;
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
        crate::run::fault::point("worker-write");
        tx.commit()?;
        let timing = LockTiming {
            waited: got - asked,
            held: got.elapsed(),
        };
        crate::run::fault::point("worker-commit");
        Ok(timing)
    }

    fn merged_partitions(&self) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare_cached("SELECT part FROM merged")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn each_block(&self, partition: u64, each: &mut Each) -> Result<()> {
        // `blocks` is indexed by chunk first, so that the rows of one batch
        // (one per partition, thousands on a large run) land in the few
        // neighbouring index pages of their chunk: indexed by partition first,
        // each of them dirtied a page of its own, and writing those pages was
        // most of the write lock's time (BENCHMARKS.md, "Many cores"). A
        // partition's blocks are read chunk by chunk, stepping through the
        // chunk numbers the index holds (a worker count of them).
        let mut after = -1i64;
        loop {
            let next: Option<i64> = self
                .conn
                .prepare_cached("SELECT min(chunk) FROM blocks WHERE chunk > ?1")?
                .query_row([after], |r| r.get(0))?;
            let Some(chunk) = next else {
                return Ok(());
            };
            self.each_first_column(
                "SELECT data FROM blocks WHERE chunk = ?1 AND part = ?2 ORDER BY id",
                params![chunk, partition],
                each,
            )?;
            after = chunk;
        }
    }

    fn is_merged(&self, partition: u64) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM merged WHERE part = ?1")?
            .query_row([partition], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn commit_partition(&self, partition: u64, out: &PartitionResults) -> Result<()> {
        let tx = self.write()?;
        // The write lock is held from here: nobody can merge it meanwhile.
        if self.is_merged(partition)? {
            return Err(AlreadyMerged { partition }.into());
        }
        insert_results(&tx, &out.results)?;
        insert_rejects(&tx, &out.rejects, true)?;
        tx.prepare_cached("INSERT INTO merged(part, warnings) VALUES (?1, ?2)")?
            .execute([partition, out.warnings])?;
        crate::run::fault::point("merge-partition");
        Ok(tx.commit()?)
    }

    fn finish_merge(&self) -> Result<()> {
        let tx = self.write()?;
        let merged: i64 = self
            .conn
            .query_row("SELECT count(*) FROM merged", [], |r| r.get(0))?;
        let partitions: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| {
                r.get(0)
            })
            .optional()?;
        super::check_merge_complete(merged as u64, partitions.as_deref())?;
        self.mark_done(Stage::Merge)?;
        Ok(tx.commit()?)
    }

    fn warnings(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(sum(warnings), 0) FROM merged", [], |r| {
                r.get(0)
            })?)
    }

    fn each_final_document_playlist(
        &self,
        positions: std::ops::Range<u64>,
        each: &mut Each,
    ) -> Result<()> {
        // The two streams of the join (super::join_final_document_playlists):
        // the playlists in table order from the row that holds the range's
        // first, their fates merged from the partitions' runs (each
        // partition's positions are one slice).
        let mut rows = self.conn.prepare(PLAYLIST_ROWS_BETWEEN)?;
        let mut rows = rows.query(params![
            super::signed_bound(positions.start),
            super::signed_bound(positions.end)
        ])?;
        let fates = runs::Merged::new(
            &self.conn,
            Stream::DocumentFates,
            positions.clone(),
            "SELECT seq, data FROM results
             WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            result_rows::RESULTS_PER_ROW,
            (
                |row, out| result_rows::decode_fates(row.get_ref(1)?.as_blob()?, out),
                |row| result_rows::last_fate_key(row.get_ref(1)?.as_blob()?),
            ),
        )?;
        // Each row's playlists in turn (playlist_rows).
        let open = || self.mixtape();
        let mut reader = playlist_rows::RowReader::new(&open);
        let mut row_playlists = std::collections::VecDeque::new();
        let docs = std::iter::from_fn(|| -> Option<Result<super::DocRow>> {
            while row_playlists.is_empty() {
                let read = (|| -> Result<bool> {
                    let Some(row) = rows.next()? else {
                        return Ok(false);
                    };
                    let data = row.get_ref(1)?.as_blob()?;
                    let wanted = |position| positions.contains(&position);
                    reader.each_in_row(row.get(0)?, data, &wanted, &mut |position, raw| {
                        row_playlists.push_back((position as i64, raw.to_vec()));
                        Ok(())
                    })?;
                    Ok(true)
                })();
                // (A row may hold none of the range: then the next.)
                match read {
                    Ok(false) => return None,
                    Ok(true) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            row_playlists.pop_front().map(Ok)
        });
        super::join_final_document_playlists(docs, fates, each)
    }

    fn each_new_playlist(&self, created: std::ops::Range<u64>, each: &mut Each) -> Result<()> {
        let created = runs::Merged::new(
            &self.conn,
            Stream::NewPlaylists,
            created,
            "SELECT seq, data FROM results
             WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            result_rows::RESULTS_PER_ROW,
            (
                |row, out| result_rows::decode_new(row.get_ref(1)?.as_blob()?, out),
                |row| result_rows::last_new_key(row.get_ref(1)?.as_blob()?),
            ),
        )?;
        for json in created {
            each(&json?)?;
        }
        Ok(())
    }

    fn each_extra(&self, each: &mut EachMember) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, raw FROM extras ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each(row.get_ref(0)?.as_bytes()?, row.get_ref(1)?.as_bytes()?)?;
        }
        Ok(())
    }

    fn each_reject(&self, each: &mut dyn FnMut(Reject) -> Result<()>) -> Result<()> {
        let rejects = runs::Merged::new(
            &self.conn,
            Stream::Rejects,
            0..u64::MAX,
            "SELECT seq, data FROM rejects
             WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            reject_rows::REJECTS_PER_ROW,
            (
                |row, out| reject_rows::decode(row.get_ref(1)?.as_blob()?, out),
                // The whole stream is read: no range to find.
                |_| Ok(None),
            ),
        )?;
        for reject in rejects {
            each(reject?)?;
        }
        Ok(())
    }

    fn rejects_by_reason(&self) -> Result<Vec<(Reason, u64)>> {
        // Counted here in one scan: SQLite's GROUP BY sorts every reject by
        // its reason first (a fifth of the export's time with a million of
        // them), for a handful of groups.
        let mut stmt = self.conn.prepare("SELECT data FROM rejects")?;
        let mut rows = stmt.query([])?;
        let mut counts = [0u64; Reason::ALL.len()];
        let mut decoded = std::collections::VecDeque::new();
        while let Some(row) = rows.next()? {
            reject_rows::decode(row.get_ref(0)?.as_blob()?, &mut decoded)?;
            for (_, reject) in decoded.drain(..) {
                counts[reject.reason.ordinal()] += 1;
            }
        }
        let counts = Reason::ALL
            .into_iter()
            .zip(counts)
            .map(|(reason, n)| (reason.name().to_string(), n))
            .filter(|&(_, n)| n > 0);
        super::counted_by_reason(counts)
    }
}

impl Backend for SqliteDb {
    fn run_in_one_transaction(&self, statements: &[Statement]) -> Result<()> {
        let tx = self.write()?;
        for statement in statements {
            match statement.param {
                None => tx.execute(statement.sql, [])?,
                Some(Param::Number(n)) => tx.execute(statement.sql, [n])?,
                Some(Param::Text(text)) => tx.execute(statement.sql, [text])?,
            };
            crate::run::fault::point("clear-statement");
        }
        Ok(tx.commit()?)
    }

    fn set_meta_texts(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let tx = self.write()?;
        for (key, value) in pairs {
            self.set_meta_text(key, value)?;
        }
        Ok(tx.commit()?)
    }

    fn set_meta_texts_durably(&self, pairs: &[(&str, &str)]) -> Result<()> {
        self.set_meta_texts(pairs)?;
        // `synchronous = NORMAL` syncs the WAL only at a checkpoint, so the
        // WAL is synced here, after the commit (the merge's last checkpoint
        // synced the database; what is synced here is the few pages written
        // since). Not by `synchronous = FULL` for this commit: traced, SQLite
        // then synced the WAL's new header but not the commit after it. The
        // WAL holds no lock of SQLite's, so this descriptor's close releases
        // none.
        let wal = match self.conn.path() {
            Some(db) if !db.is_empty() => WorkFiles::of(Path::new(db)).wal,
            _ => bail!("the work database has no file to sync"),
        };
        std::fs::File::open(&wal)
            .and_then(|f| f.sync_data())
            .with_context(|| format!("syncing {}", wal.display()))
    }

    fn playlist_at(&self, seq: u64) -> Result<Option<(i64, String)>> {
        let row: Option<(u64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT first, data FROM playlists WHERE first <= ?1 ORDER BY first DESC LIMIT 1",
            )?
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut found = None;
        if let Some((first, data)) = row {
            let open = || self.mixtape();
            let mut reader = playlist_rows::RowReader::new(&open);
            reader.each_in_row(
                first,
                &data,
                &|position| position == seq,
                &mut |position, raw| {
                    found = Some((position as i64, String::from_utf8_lossy(raw).into_owned()));
                    Ok(())
                },
            )?;
        }
        Ok(found)
    }

    fn meta_text(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn document_writer(&self) -> Result<Box<dyn DocumentSink + '_>> {
        let tx = self.write()?;
        tx.execute_batch("DELETE FROM playlists; DELETE FROM extras;")?;
        Ok(Box::new(DocumentWriter {
            store: self,
            tx: Some(tx),
            in_transaction: 0,
            pending: playlist_rows::PendingRow::default(),
        }))
    }
}

/// Writes the document's elements during the import, committing every
/// [`IMPORT_BATCH`] elements. Dropped unfinished, it rolls back its open
/// transaction; a rerun of the import starts over.
struct DocumentWriter<'a> {
    store: &'a SqliteDb,
    tx: Option<Transaction<'a>>,
    in_transaction: u64,
    /// Playlists waiting to be written as one row ([`playlist_rows`]).
    pending: playlist_rows::PendingRow,
}

impl DocumentWriter<'_> {
    fn write_playlists(conn: &Connection, first: u64, data: &[u8]) -> Result<()> {
        conn.prepare_cached("INSERT INTO playlists(first, data) VALUES (?1, ?2)")?
            .execute(params![first, data])?;
        Ok(())
    }
}

impl DocumentSink for DocumentWriter<'_> {
    fn playlist(
        &mut self,
        position: u64,
        raw: &str,
        in_mixtape: Option<std::ops::Range<u64>>,
    ) -> Result<()> {
        let conn = &self.store.conn;
        self.pending
            .add(position, raw.as_bytes(), in_mixtape, &mut |first, data| {
                Self::write_playlists(conn, first, data)
            })?;
        self.element_written()
    }

    fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()> {
        self.store
            .conn
            .prepare_cached("INSERT INTO extras(seq, key, raw) VALUES (?1, ?2, ?3)")?
            .execute(params![seq, key, raw])?;
        Ok(())
    }

    fn finish(mut self: Box<Self>, meta: &[(&str, String)]) -> Result<()> {
        let conn = &self.store.conn;
        self.pending
            .flush(&mut |first, data| Self::write_playlists(conn, first, data))?;
        for (key, value) in meta {
            self.store.set_meta_text(key, value)?;
        }
        if let Some(tx) = self.tx.take() {
            tx.commit()?;
        }
        self.store.checkpoint()
    }
}

impl DocumentWriter<'_> {
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

fn chunk_row(r: &rusqlite::Row) -> Result<ChunkRow> {
    ChunkRow::from_columns(|i| Ok(r.get(i)?), r.get(9)?)
}

/// Inserts one partition's results as two runs ([`runs`]): the fates of
/// document playlists by position, and the new playlists by creation. A
/// document playlist removed and added again is in both: removed at its
/// position (the document's text is not written there), new at its creation.
fn insert_results(tx: &Transaction, results: &[PlaylistResult]) -> Result<()> {
    let mut fates: Vec<(i64, i64, Option<&str>)> = Vec::new();
    let mut created: Vec<(i64, &str)> = Vec::new();
    for r in results {
        match &r.fate {
            Fate::Changed { doc_seq, json } => fates.push((*doc_seq, FATE_CHANGED, Some(json))),
            Fate::Removed { doc_seq } => fates.push((*doc_seq, FATE_REMOVED, None)),
            Fate::New {
                doc_seq,
                created: index,
                json,
            } => {
                if let Some(doc_seq) = doc_seq {
                    fates.push((*doc_seq, FATE_REMOVED, None));
                }
                created.push((*index as i64, json));
            }
        }
    }
    let mut insert = tx.prepare_cached("INSERT INTO results(data) VALUES (?1)")?;
    insert_result_rows(
        tx,
        &mut insert,
        Stream::DocumentFates,
        &fates,
        |f| f.0 as u64,
        |f| f.2.map_or(0, str::len),
        result_rows::encode_fate,
    )?;
    insert_result_rows(
        tx,
        &mut insert,
        Stream::NewPlaylists,
        &created,
        |c| c.0 as u64,
        |c| c.1.len(),
        result_rows::encode_new,
    )
}

/// Inserts `items` of one results stream, in key order, packed into rows
/// ([`result_rows`]), as one run.
fn insert_result_rows<T>(
    tx: &Transaction,
    insert: &mut rusqlite::CachedStatement,
    stream: Stream,
    items: &[T],
    key: impl Fn(&T) -> u64,
    text_len: impl Fn(&T) -> usize,
    encode: impl Fn(&T, &mut Vec<u8>),
) -> Result<()> {
    let order = in_key_order(items, &key);
    let rows = result_rows::rows_of(&order, text_len);
    let mut data = Vec::new();
    insert_run(
        tx,
        stream,
        &rows,
        |row| key(row[0]),
        |row| {
            data.clear();
            for item in *row {
                encode(item, &mut data);
            }
            insert.execute([&data])?;
            Ok(())
        },
    )
}

/// Inserts one batch's or one partition's rejects, in index order, as one
/// run ([`runs`]).
fn insert_rejects(tx: &Transaction, rejects: &[Reject], by_merge: bool) -> Result<()> {
    let mut insert =
        tx.prepare_cached("INSERT INTO rejects(idx, data, by_merge) VALUES (?1, ?2, ?3)")?;
    let order = in_key_order(rejects, |r| r.index);
    let rows: Vec<&[&Reject]> = order.chunks(reject_rows::REJECTS_PER_ROW).collect();
    let mut data = Vec::new();
    insert_run(
        tx,
        Stream::Rejects,
        &rows,
        |row| row[0].index,
        |row| {
            data.clear();
            for reject in *row {
                reject_rows::encode(reject, &mut data);
            }
            insert.execute(params![row[0].index, data, by_merge])?;
            Ok(())
        },
    )
}

/// `rows` in order of `key` (a sorted copy of the order if they are not).
fn in_key_order<T>(rows: &[T], key: impl Fn(&T) -> u64) -> Vec<&T> {
    let mut order: Vec<&T> = rows.iter().collect();
    if !rows.is_sorted_by_key(&key) {
        order.sort_by_key(|row| key(row));
    }
    order
}

/// Inserts `rows` with `insert`, sorted by `key` (sorting a copy of the
/// order if they are not), and records them as one run of `stream`.
fn insert_run<T>(
    tx: &Transaction,
    stream: Stream,
    rows: &[T],
    key: impl Fn(&T) -> u64,
    mut insert: impl FnMut(&T) -> Result<()>,
) -> Result<()> {
    let mut first = None;
    for row in in_key_order(rows, key) {
        insert(row)?;
        first.get_or_insert(tx.last_insert_rowid());
    }
    match first {
        Some(first) => runs::record_run(tx, stream, first, tx.last_insert_rowid()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The busy handler asks to try again, each time after a short sleep,
    /// until its timeout has passed since the first try of that lock; a new
    /// lock (tries back at 0) gets the whole timeout again.
    #[test]
    fn busy_waiter_retries_until_its_timeout() {
        let timeout = Duration::from_millis(40);
        let mut waiter = busy_waiter(timeout, Duration::from_millis(1));
        for _ in 0..2 {
            let started = Instant::now();
            let mut tries = 0;
            while waiter(tries) {
                tries += 1;
                assert!(tries < 10_000, "never gave up");
            }
            assert!(started.elapsed() >= timeout, "gave up early");
            assert!(tries > 1, "tried again only {tries} time(s)");
        }
    }

    /// A writer that finds the write lock held waits for it (rather than
    /// failing with "database is locked") and gets it once it is released.
    #[test]
    fn a_writer_waits_for_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let open = move || {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
            SqliteDb::configured(conn).unwrap()
        };
        let open_second = open.clone();
        let first = open();
        first.conn.execute_batch("CREATE TABLE t(x)").unwrap();
        let held = first.write().unwrap();
        held.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let second = std::thread::spawn(move || {
            let db = open_second();
            let tx = db.write()?;
            tx.execute("INSERT INTO t VALUES (2)", [])?;
            tx.commit()?;
            anyhow::Ok(())
        });
        std::thread::sleep(Duration::from_millis(150));
        held.commit().unwrap();
        second
            .join()
            .unwrap()
            .expect("the second writer got the lock");
        let rows: i64 = first
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }
}
