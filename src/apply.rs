//! Stage 3, apply: what one `worker` process does with one chunk.
//!
//! A worker reads its chunk's byte range of CHANGES (streaming, a few MiB at a
//! time), and for every change decides what can be decided without knowing the
//! order of changes (SPEC §4, the first five reasons):
//!
//! 1. the shape ([`crate::change`]): `invalid_change`;
//! 2. lookups in the imported document: `unknown_user`, `unknown_song`;
//! 3. the song list of a new playlist: `empty_playlist`, `duplicate_song`.
//!
//! A change that passes is *recorded*, with its global index, for the merge to
//! settle in order; a change that does not goes to `rejects` with the batch.
//!
//! ## Batches and the write lock
//!
//! Work goes in batches (sized by [`BATCH_CHANGES`] and its neighbours). Parsing and lookups happen
//! inside a read transaction (WAL readers never wait for writers); the recorded
//! changes are encoded into one blob per merge partition ([`crate::record`]).
//! Only then does the worker take the write lock (`BEGIN IMMEDIATE`), write those
//! few rows, its rejects and its new position in the chunk, and commit. So the
//! serial part of the stage is a few row inserts per batch, not one per change.
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

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::change::{self, Change, Op};
use crate::fingerprint;
use crate::json;
use crate::record::{self, Body, NewId, Recorded};
use crate::workdb;

/// Changes per batch, at least (one read transaction and one write transaction
/// each). A chunk is cut into about [`BATCHES_PER_CHUNK`] batches, within
/// [`BATCH_CHANGES`]..=[`MAX_BATCH_CHANGES`].
///
/// ## Why batches grow with the chunk
///
/// Every batch writes one row per merge partition, and each of those rows adds
/// an entry at its own place in the `blocks` index, so a batch dirties about one
/// index page per partition whatever its size. With thousands of partitions
/// (50M changes) and small batches, those pages (and the checkpoints that copy
/// them back) were most of the write lock's time. Fewer, larger batches write the
/// same records with far fewer dirty pages; memory stays bounded by the maximum.
pub const BATCH_CHANGES: u64 = 32_768;

/// Changes per batch, at most: about 10 MB of encoded records.
pub const MAX_BATCH_CHANGES: u64 = 262_144;

/// How many batches a chunk is cut into, roughly.
pub const BATCHES_PER_CHUNK: u64 = 64;

/// Bytes read from CHANGES at a time.
const READ_SIZE: usize = 4 << 20;

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
    pub lock_held: std::time::Duration,
    /// Time spent waiting for the write lock.
    pub lock_wait: std::time::Duration,
}

/// A chunk's row in the `chunks` table.
struct ChunkState {
    /// Changes in the whole chunk.
    changes: u64,
    start: u64,
    end: u64,
    next_offset: u64,
    next_index: u64,
    auto_count: u64,
    max_playlist_id: u64,
    done: bool,
}

/// Progress after a batch: bytes of the chunk done, bytes in the chunk, and
/// what this run did so far.
pub type ProgressFn<'a> = dyn FnMut(u64, u64, &ChunkSummary) + 'a;

/// Applies chunk `chunk` of the plan in the work database at `db`; `progress` is
/// called after every committed batch.
pub fn run_chunk(
    db: &Path,
    chunk: u64,
    options: &WorkerOptions,
    progress: &mut ProgressFn,
) -> Result<ChunkSummary> {
    let conn = workdb::open_existing(db)?;
    workdb::use_lookup_cache(&conn)?;
    // Checkpoint less often than every 1000 pages: each checkpoint syncs the
    // database file, and batches write thousands of pages in all. The harness
    // checkpoints (and truncates the WAL) after the stage.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    if !workdb::is_done(&conn, "plan")? {
        bail!(
            "the work database {} has no plan yet: run the harness with --stop-after plan first",
            db.display()
        );
    }
    let Some(state) = load_chunk(&conn, chunk)? else {
        let count: u64 = conn.query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))?;
        bail!(
            "chunk {chunk} does not exist: the plan has {count} chunk(s){}",
            if count > 0 {
                format!(", numbered 0 to {}", count - 1)
            } else {
                String::new()
            }
        );
    };
    let mut summary = ChunkSummary {
        chunk,
        ..Default::default()
    };
    let state = if options.redo {
        reset_chunk(&conn, chunk)?;
        load_chunk(&conn, chunk)?.context("chunk vanished")?
    } else {
        state
    };
    if state.done {
        summary.already_done = true;
        return Ok(summary);
    }
    let changes_path = PathBuf::from(workdb::meta_require(&conn, "changes_path")?);
    let expected = workdb::meta_require(&conn, "changes_fingerprint")?;
    let actual = fingerprint::of_file(&changes_path)
        .with_context(|| format!("reading CHANGES {}", changes_path.display()))?;
    if actual != expected {
        bail!(
            "CHANGES {} changed since the plan was made; run the harness again to start afresh",
            changes_path.display()
        );
    }
    let partitions = workdb::meta_number(&conn, "partitions")?.max(1);
    let mut worker = Worker {
        conn: &conn,
        chunk,
        partitions,
        options,
        parts: vec![Vec::new(); partitions as usize],
        rejects: Vec::new(),
        in_batch: 0,
        next_index: state.next_index,
        auto_count: state.auto_count,
        max_playlist_id: state.max_playlist_id,
        start: state.start,
        summary,
        minified: Vec::new(),
        reading: false,
        committed_offset: state.next_offset,
        batch_size: crate::fault::batch_size(
            (state.changes / BATCHES_PER_CHUNK).clamp(BATCH_CHANGES, MAX_BATCH_CHANGES),
        ),
        end: state.end,
        progress,
    };
    worker.run(&changes_path, state.next_offset, state.end)?;
    Ok(worker.summary)
}

/// Undoes everything chunk `chunk` recorded, and the merge (which read it), in
/// one transaction.
fn reset_chunk(conn: &Connection, chunk: u64) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = conn.execute_batch(&format!(
        "DELETE FROM blocks WHERE chunk = {chunk};
         DELETE FROM rejects WHERE by_merge = 0 AND idx >= (SELECT first_index FROM chunks WHERE chunk = {chunk})
             AND idx < (SELECT first_index + changes FROM chunks WHERE chunk = {chunk});
         UPDATE chunks SET next_offset = start, next_index = first_index, auto_count = 0,
             max_playlist_id = 0, batches = 0, done = 0 WHERE chunk = {chunk};
         DELETE FROM results; DELETE FROM rejects WHERE by_merge = 1; DELETE FROM merged;
         DELETE FROM meta WHERE key = 'merge_done';"
    ));
    match result {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e.into())
        }
    }
}

fn load_chunk(conn: &Connection, chunk: u64) -> Result<Option<ChunkState>> {
    Ok(conn
        .query_row(
            "SELECT start, end, next_offset, next_index, auto_count, max_playlist_id, done, changes
             FROM chunks WHERE chunk = ?1",
            [chunk],
            |r| {
                Ok(ChunkState {
                    start: r.get(0)?,
                    end: r.get(1)?,
                    next_offset: r.get(2)?,
                    next_index: r.get(3)?,
                    auto_count: r.get(4)?,
                    max_playlist_id: r.get(5)?,
                    done: r.get(6)?,
                    changes: r.get(7)?,
                })
            },
        )
        .optional()?)
}

/// A change rejected by a worker.
struct Reject {
    index: u64,
    op_json: String,
    reason: &'static str,
    detail: String,
}

struct Worker<'a> {
    conn: &'a Connection,
    chunk: u64,
    partitions: u64,
    options: &'a WorkerOptions,
    /// Encoded records of the current batch, one buffer per merge partition.
    parts: Vec<Vec<u8>>,
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
    minified: Vec<u8>,
    /// Whether the batch's read transaction is open.
    reading: bool,
    /// The chunk position this worker last committed (or started from).
    committed_offset: u64,
    /// Changes per batch ([`BATCH_CHANGES`] unless a test says otherwise).
    batch_size: u64,
    end: u64,
    progress: &'a mut ProgressFn<'a>,
}

impl Worker<'_> {
    fn run(&mut self, path: &Path, from: u64, end: u64) -> Result<()> {
        let mut file =
            File::open(path).with_context(|| format!("opening CHANGES {}", path.display()))?;
        file.seek(SeekFrom::Start(from))?;
        let mut source = file.take(end.saturating_sub(from));
        let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
        let mut buf_offset = from; // file offset of buf[0]
        let mut at_end = false;
        while !at_end {
            let have = buf.len();
            buf.resize(have + READ_SIZE, 0);
            let n = read_full(&mut source, &mut buf[have..])?;
            buf.truncate(have + n);
            at_end = n == 0 || buf_offset + buf.len() as u64 >= end;
            let mut i = 0;
            loop {
                while i < buf.len() && (json::is_ws(buf[i]) || buf[i] == b',') {
                    i += 1;
                }
                if i == buf.len() {
                    break;
                }
                let Some(value_end) = json::value_end(&buf, i, at_end) else {
                    if at_end {
                        bail!(
                            "CHANGES {}: chunk {} ends inside a change at byte {}; the file changed since the plan was made",
                            path.display(),
                            self.chunk,
                            buf_offset + i as u64
                        );
                    }
                    break;
                };
                self.change(&buf[i..value_end])?;
                i = value_end;
                crate::fault::point("worker-change");
                if crate::interrupt::requested() {
                    // Commit what is done, so the next run continues from here.
                    self.flush(buf_offset + i as u64, false)?;
                    return Err(crate::interrupt::Interrupted.into());
                }
                if self.in_batch >= self.batch_size {
                    self.flush(buf_offset + i as u64, false)?;
                }
            }
            buf.drain(..i);
            buf_offset += i as u64;
        }
        self.flush(end, true)
    }

    /// Handles one change (its raw text).
    fn change(&mut self, raw: &[u8]) -> Result<()> {
        if !self.reading {
            self.conn.execute_batch("BEGIN DEFERRED")?;
            self.reading = true;
        }
        let index = self.next_index;
        self.next_index += 1;
        self.in_batch += 1;
        self.summary.changes += 1;
        let mut minified = std::mem::take(&mut self.minified);
        minified.clear();
        json::minify_into(raw, &mut minified);
        let parsed = change::parse(&minified);
        if let Some(id) = parsed.named_playlist_id {
            self.max_playlist_id = self.max_playlist_id.max(id);
        }
        let auto_ordinal = if parsed.counts_as_auto {
            self.auto_count += 1;
            Some(self.auto_count)
        } else {
            None
        };
        let outcome = match parsed.change {
            Err(detail) => Err(("invalid_change", detail)),
            Ok(change) => self.check_and_record(index, change, auto_ordinal)?,
        };
        match outcome {
            Ok(_) => {
                self.summary.recorded += 1;
                if self.options.trace {
                    eprintln!("change {index}: {} -> recorded", shorten(&minified));
                }
            }
            Err((reason, detail)) => {
                self.summary.rejected += 1;
                if self.options.trace {
                    eprintln!(
                        "change {index}: {} -> rejected: {reason}: {detail}",
                        shorten(&minified)
                    );
                }
                self.rejects.push(Reject {
                    index,
                    op_json: parsed.op_json.into_owned(),
                    reason,
                    detail,
                });
            }
        }
        self.minified = minified;
        Ok(())
    }

    fn lookup(&self, table: &str, raw_id: &[u8]) -> Result<Option<String>> {
        let id = json::id_text(raw_id).unwrap_or_default();
        let sql = if table == "users" {
            "SELECT written FROM user_ids WHERE id = ?1"
        } else {
            "SELECT written FROM song_ids WHERE id = ?1"
        };
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([id.as_ref()], |r| r.get(0))
            .optional()?)
    }

    /// The lookups and list checks; records the change when it passes. Returns
    /// the op, or the reject reason and detail.
    #[allow(clippy::type_complexity)]
    fn check_and_record(
        &mut self,
        index: u64,
        change: Change,
        auto_ordinal: Option<u64>,
    ) -> Result<Result<Op, (&'static str, String)>> {
        let text = |raw: &[u8]| json::id_text(raw).unwrap_or_default().into_owned();
        let op;
        match change {
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            } => {
                op = Op::AddPlaylist;
                let Some(owner_written) = self.lookup("users", owner)? else {
                    return Ok(Err((
                        "unknown_user",
                        format!("user {} does not exist", text(owner)),
                    )));
                };
                let mut songs_written = Vec::with_capacity(songs.len());
                for song in &songs {
                    match self.lookup("songs", song)? {
                        Some(w) => songs_written.push(w),
                        None => {
                            return Ok(Err((
                                "unknown_song",
                                format!("song {} does not exist", text(song)),
                            )))
                        }
                    }
                }
                if songs.is_empty() {
                    return Ok(Err(("empty_playlist", "song_ids is empty".into())));
                }
                let mut seen = HashSet::with_capacity(songs.len());
                for song in &songs {
                    let t = text(song);
                    if !seen.insert(t.clone()) {
                        return Ok(Err((
                            "duplicate_song",
                            format!("song {t} appears more than once in song_ids"),
                        )));
                    }
                }
                let mut rendered = Vec::new();
                for (key, value) in copied {
                    rendered.push(b',');
                    rendered.extend_from_slice(key);
                    rendered.push(b':');
                    rendered.extend_from_slice(value);
                }
                let new_id = match (id, auto_ordinal) {
                    (Some(given), _) => NewId::Given(given),
                    (None, Some(ordinal)) => NewId::Auto {
                        chunk: self.chunk,
                        ordinal,
                    },
                    (None, None) => {
                        unreachable!("an add_playlist without playlist_id counts as auto")
                    }
                };
                let body = Body::AddPlaylist {
                    id: new_id,
                    owner: owner_written.as_bytes(),
                    songs: songs_written.iter().map(|s| s.as_bytes()).collect(),
                    copied: &rendered,
                };
                self.record(Recorded { index, body });
            }
            Change::RemovePlaylist { playlist } => {
                op = Op::RemovePlaylist;
                self.record(Recorded {
                    index,
                    body: Body::RemovePlaylist { playlist },
                });
            }
            Change::AddSong { playlist, song } => {
                op = Op::AddSong;
                let Some(written) = self.lookup("songs", song)? else {
                    return Ok(Err((
                        "unknown_song",
                        format!("song {} does not exist", text(song)),
                    )));
                };
                self.record(Recorded {
                    index,
                    body: Body::AddSong {
                        playlist,
                        song: written.as_bytes(),
                    },
                });
            }
            Change::RemoveSong { playlist, song } => {
                op = Op::RemoveSong;
                self.record(Recorded {
                    index,
                    body: Body::RemoveSong { playlist, song },
                });
            }
        }
        Ok(Ok(op))
    }

    /// Encodes `rec` into its partition's buffer.
    fn record(&mut self, rec: Recorded) {
        let part = match rec.body.playlist() {
            Some(p) => partition_of(&json::id_text(p).unwrap_or_default(), self.partitions),
            None => rec.index % self.partitions,
        };
        record::encode(&rec, &mut self.parts[part as usize]);
    }

    /// Writes the batch and the chunk's new position in one transaction.
    fn flush(&mut self, next_offset: u64, done: bool) -> Result<()> {
        if self.reading {
            self.conn.execute_batch("COMMIT")?;
            self.reading = false;
        }
        // IMMEDIATE: take the write lock up front. A deferred transaction that
        // starts writing later can fail with SQLITE_BUSY_SNAPSHOT, which no busy
        // timeout cures.
        let asked = std::time::Instant::now();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let got = std::time::Instant::now();
        self.summary.lock_wait += got - asked;
        let result = self.write_batch(next_offset, done);
        match result {
            Ok(()) => {
                crate::fault::point("worker-write");
                self.conn.execute_batch("COMMIT")?;
                self.summary.lock_held += got.elapsed();
                crate::fault::point("worker-commit");
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        self.committed_offset = next_offset;
        for part in &mut self.parts {
            part.clear();
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

    fn write_batch(&self, next_offset: u64, done: bool) -> Result<()> {
        let mut insert_block = self
            .conn
            .prepare_cached("INSERT INTO blocks(part, chunk, data) VALUES (?1, ?2, ?3)")?;
        for (part, data) in self.parts.iter().enumerate() {
            if !data.is_empty() {
                insert_block.execute(params![part as u64, self.chunk, data])?;
            }
        }
        let mut insert_reject = self.conn.prepare_cached(
            "INSERT INTO rejects(idx, op, reason, detail, by_merge) VALUES (?1, ?2, ?3, ?4, 0)",
        )?;
        for r in &self.rejects {
            insert_reject.execute(params![r.index, r.op_json, r.reason, r.detail])?;
        }
        // Only if nobody else moved the chunk meanwhile: two workers on one chunk
        // (a hand-run worker beside the harness's, say) must not both record it.
        let moved = self
            .conn
            .prepare_cached(
                "UPDATE chunks SET next_offset = ?1, next_index = ?2, auto_count = ?3,
                 max_playlist_id = ?4, batches = batches + 1, done = ?5
                 WHERE chunk = ?6 AND next_offset = ?7 AND done = 0",
            )?
            .execute(params![
                next_offset,
                self.next_index,
                self.auto_count,
                self.max_playlist_id,
                done,
                self.chunk,
                self.committed_offset
            ])?;
        if moved != 1 {
            bail!(
                "chunk {} was applied by another worker meanwhile; nothing of this run was recorded",
                self.chunk
            );
        }
        Ok(())
    }
}

/// A change's text for a trace line: at most 120 characters.
fn shorten(minified: &[u8]) -> String {
    let text = String::from_utf8_lossy(minified);
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

/// The merge partition of playlist id `text`.
pub fn partition_of(text: &str, partitions: u64) -> u64 {
    fingerprint::fnv1a(text.as_bytes()) % partitions
}

/// Reads until `buf` is full or the source ends.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
