//! Rows in key order without a sort: a merge of sorted runs.
//!
//! The export wants three streams in order: the rejects by change index, the
//! fates of document playlists by position, the new playlists by creation.
//! Each worker batch and each merge partition inserts its rows of a stream in
//! one transaction, sorted by that key, under consecutive `seq` values
//! (`AUTOINCREMENT`: never reused, so rows deleted by a redo leave gaps in a
//! run, never someone else's rows), and records that `seq` range as a run
//! ([`record_run`]). A stream is then its runs merged by key (a heap of each
//! run's next key), each run read a page at a time by `seq` range: memory is
//! a few MB whatever the number of rows.
//!
//! Why not `ORDER BY`: SQLite's sorter writes every row to temporary files and
//! reads it back; with a million rejects and a million new playlists that was
//! most of the export (BENCHMARKS.md, "What was tried": sorted runs).
//!
//! A stream can be read for a range of keys only, so that export threads
//! render its pieces at once: each run starts at the first row that holds a
//! key of the range, found by a binary search over the run's rows (keys
//! increase with `seq` within a run).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;

use anyhow::{bail, Result};
use rusqlite::{params, CachedStatement, Connection, Row, Transaction};

/// Items held in memory at once, over all runs of a stream (at least a row
/// of each run).
const BUFFERED_ROWS: usize = 65_536;

/// The streams, as `runs.stream` numbers them.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Rejects = 0,
    DocumentFates = 1,
    NewPlaylists = 2,
}

/// Records rows `first..=last` (by `seq`) as one sorted run of `stream`.
pub(super) fn record_run(tx: &Transaction, stream: Stream, first: i64, last: i64) -> Result<()> {
    tx.prepare_cached("INSERT INTO runs(stream, first, last) VALUES (?1, ?2, ?3)")?
        .execute(params![stream as i64, first, last])?;
    Ok(())
}

/// Reads one row of a page: appends what the stream yields from it (one item,
/// or several for rows that hold several), each with its key (strictly
/// increasing within a run).
pub(super) type ReadRow<T> = fn(&Row, &mut VecDeque<(u64, T)>) -> Result<()>;

/// The key of a row's last item, as [`ReadRow`] would read it.
pub(super) type LastKey = fn(&Row) -> Result<Option<u64>>;

/// The rows of one stream with keys in a range, merged from its runs, in
/// key order.
pub(super) struct Merged<'c, T> {
    page_select: CachedStatement<'c>,
    page: i64,
    read: ReadRow<T>,
    keys: Range<u64>,
    last_key: LastKey,
    runs: Vec<Run<T>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    started: bool,
}

/// One run being read: the `seq` range still to read, and what was read.
struct Run<T> {
    next: i64,
    last: i64,
    buffered: VecDeque<(u64, T)>,
    last_key: Option<u64>,
}

impl<'c, T> Merged<'c, T> {
    /// The rows of `stream` with keys in `keys`; `page_sql` selects `seq`
    /// then the row's columns with `seq` in `?1..=?2`, `ORDER BY seq LIMIT
    /// ?3`, `read` reads the columns after `seq` (up to `per_row` items a
    /// row) and `last_key` just the last item's key.
    pub(super) fn new(
        conn: &'c Connection,
        stream: Stream,
        keys: Range<u64>,
        page_sql: &str,
        per_row: usize,
        (read, last_key): (ReadRow<T>, LastKey),
    ) -> Result<Merged<'c, T>> {
        let ranges: Vec<(i64, i64)> = conn
            .prepare_cached("SELECT first, last FROM runs WHERE stream = ?1 ORDER BY first")?
            .query_map([stream as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let runs = ranges
            .into_iter()
            .map(|(first, last)| Run {
                next: first,
                last,
                buffered: VecDeque::new(),
                last_key: None,
            })
            .collect::<Vec<_>>();
        Ok(Merged {
            page_select: conn.prepare_cached(page_sql)?,
            page: ((BUFFERED_ROWS / runs.len().max(1)).clamp(16, 4096) / per_row.max(1)).max(1)
                as i64,
            read,
            keys,
            last_key,
            heap: BinaryHeap::with_capacity(runs.len()),
            runs,
            started: false,
        })
    }

    /// Moves run `k` to its first row that may hold a key of the range: the
    /// first whose last key is not below it (a binary search over `seq`,
    /// which may have gaps).
    fn seek(&mut self, k: usize) -> Result<()> {
        let from = self.keys.start;
        if from == 0 {
            return Ok(());
        }
        let (mut low, last) = (self.runs[k].next, self.runs[k].last);
        let mut high = last + 1;
        let mut found = last + 1;
        while low < high {
            let middle = low + (high - low) / 2;
            let mut rows = self.page_select.query(params![middle, last, 1])?;
            let Some(row) = rows.next()? else {
                high = middle;
                continue;
            };
            let seq: i64 = row.get(0)?;
            match (self.last_key)(row)? {
                Some(key) if key >= from => {
                    found = seq;
                    high = middle;
                }
                _ => low = seq + 1,
            }
        }
        self.runs[k].next = found;
        Ok(())
    }

    /// Puts run `k`'s next key on the heap, reading pages if need be; keys
    /// below the range are passed over, and none at or past its end is put
    /// (the run is done with).
    fn queue(&mut self, k: usize) -> Result<()> {
        loop {
            let run = &mut self.runs[k];
            if run.buffered.is_empty() && run.next <= run.last {
                let mut rows = self
                    .page_select
                    .query(params![run.next, run.last, self.page])?;
                let mut read = 0;
                while let Some(row) = rows.next()? {
                    let seq: i64 = row.get(0)?;
                    let before = run.buffered.len();
                    (self.read)(row, &mut run.buffered)?;
                    for &(key, _) in run.buffered.range(before..) {
                        if run.last_key.is_some_and(|last| key <= last) {
                            bail!(
                                "work database: a sorted run is out of order; rerun with --fresh"
                            );
                        }
                        run.last_key = Some(key);
                    }
                    run.next = seq + 1;
                    read += 1;
                }
                if read < self.page {
                    run.next = run.last + 1;
                }
            }
            while run
                .buffered
                .front()
                .is_some_and(|&(key, _)| key < self.keys.start)
            {
                run.buffered.pop_front();
            }
            match run.buffered.front() {
                Some(&(key, _)) if key < self.keys.end => self.heap.push(Reverse((key, k))),
                Some(_) => {}
                None if run.next <= run.last => continue,
                None => {}
            }
            return Ok(());
        }
    }

    fn next_row(&mut self) -> Result<Option<T>> {
        if !self.started {
            self.started = true;
            for k in 0..self.runs.len() {
                self.seek(k)?;
                self.queue(k)?;
            }
        }
        let Some(Reverse((_, k))) = self.heap.pop() else {
            return Ok(None);
        };
        let (_, item) = self.runs[k]
            .buffered
            .pop_front()
            .expect("a run on the heap has a row");
        self.queue(k)?;
        Ok(Some(item))
    }
}

impl<T> Iterator for Merged<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        self.next_row().transpose()
    }
}
