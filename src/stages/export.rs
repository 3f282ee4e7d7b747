//! Stage 5, export: the final document and the rejects report, from the store.
//!
//! Both files are streamed element by element (memory does not grow with their
//! size) and replaced whole or not at all ([`crate::run::output_file`]). Users and
//! songs are copied from MIXTAPE, element by element and minified, from the
//! array ranges the import recorded (the store keeps no copy of them); the
//! playlists, the other members and the rejects come from the store.
//!
//! ## In parallel
//!
//! The work is cut into independent tasks: the rejects report, and the pieces
//! of OUTPUT (the users and songs arrays cut at the element boundaries the
//! import recorded every few MiB, and the playlists: from 4 threads on a
//! SQLite store, when they are many, the document's by ranges of positions
//! and the new ones by ranges of the changes that created them, a few pieces
//! per thread). The harness's own thread
//! writes OUTPUT in order: a piece nobody has taken yet it renders straight
//! into OUTPUT. Up to `threads - 1` helper threads take the rejects report,
//! then pieces from the end of OUTPUT backwards, each rendered into its own
//! anonymous temporary file (every element preceded by `,\n`; the first
//! element of an array loses its comma), which the assembler copies in through
//! the kernel when it gets there ([`Board`]). With one thread nothing is
//! written twice; with more, the helpers' pieces cost temporary disk for the
//! moment of the export.
//!
//! The document's layout (docs/GUIDE.md "Output"): `users`, `playlists`, `songs`, then
//! any other top-level members, one array element per line, every element
//! minified:
//!
//! ```text
//! {
//! "users": [
//! {"id":"1","name":"Albin Jaye"},
//! {"id":"2","name":"Dipika Crescentia"}
//! ],
//! "playlists": [],
//! "songs": [
//! ...
//! ]
//! }
//! ```
//!
//! Playlists: the document's, in input order, minus removed ones and with changed
//! ones rewritten, then new ones in the order they were created.
//!
//! Export is not resumed: it only reads the store, so a rerun writes it again.

pub mod applied;

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex};

use anyhow::{Context, Result};

use crate::json::values;
use crate::place::{self, write_atomically, write_whole, Sink};
use crate::store::{ArrayRange, Each, IdKind, Key, Location, Store};

/// What the export writes, and with how many threads.
pub struct Export<'a> {
    /// The work database.
    pub db: &'a Location,
    pub mixtape: &'a Path,
    /// OUTPUT, or `None` when only the rejects report is written (`--strict`
    /// with rejected changes).
    pub output: Option<&'a Path>,
    /// OUTPUT as an absolute path, recorded in the store just before OUTPUT
    /// is renamed into place ([`Store::record_publishing`]).
    pub output_absolute: &'a Path,
    pub rejects: &'a Path,
    pub threads: usize,
}

/// One task of the export.
#[derive(Clone, Copy)]
enum Task {
    Rejects,
    /// Elements of MIXTAPE's users or songs array in bytes `from..to`.
    Copy {
        from: u64,
        to: u64,
    },
    /// The document's playlists at positions `from..to`, as they end.
    DocumentPlaylists {
        from: u64,
        to: u64,
    },
    /// The new playlists created by changes `from..to`.
    NewPlaylists {
        from: u64,
        to: u64,
    },
}

/// Pieces an export thread's share of a playlist stream is cut into, so that
/// threads that finish early take more ([`Board::help`]).
const PIECES_PER_THREAD: u64 = 4;

/// The fewest export threads for which the playlist streams are cut. With
/// two, one renders the playlists straight into OUTPUT while the other
/// renders the rejects report and the songs: pieces rendered by a helper are
/// written twice (to the helper's file, then into OUTPUT) and each piece's start is searched
/// for, which cost more than they saved at two threads (BENCHMARKS.md,
/// "What was tried": cutting the export's playlists).
const CUT_FROM_THREADS: u64 = 4;

/// The fewest document playlists, and changes, a piece of a stream covers:
/// each piece after the first starts with a search of every sorted run of its
/// stream (`runs`), which is worth it for this much only.
const PLAYLISTS_PER_PIECE: u64 = 64 * 1024;
const CHANGES_PER_PIECE: u64 = 1 << 20;

/// `0..count` cut into `pieces` ranges of about equal length, the last open
/// at the end (nothing is left out whatever the count said).
fn cut(count: u64, pieces: u64) -> impl Iterator<Item = (u64, u64)> {
    let pieces = pieces.max(1);
    (0..pieces).map(move |i| {
        let from = count / pieces * i + (count % pieces).min(i);
        let to = if i + 1 == pieces {
            u64::MAX
        } else {
            count / pieces * (i + 1) + (count % pieces).min(i + 1)
        };
        (from, to)
    })
}

/// Writes the rejects report and (when asked) OUTPUT; see the module docs.
pub fn export(store: &Store, job: &Export) -> Result<()> {
    let tasks = tasks(store, job)?;
    let board = Board::new(tasks.len());
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..job.threads.max(1))
            .map(|_| scope.spawn(|| board.help(job, &tasks)))
            .collect();
        let mut result = match job.output {
            Some(output) => assemble(store, output, job, &tasks, &board),
            None => Ok(()),
        };
        if result.is_ok() {
            // The rejects report, unless a helper took it.
            result = board.run_if_open(REJECTS, job, &tasks);
        }
        if result.is_err() {
            board.fail();
        }
        let mut helped = Ok(());
        for helper in helpers {
            let outcome = helper
                .join()
                .map_err(|_| anyhow::anyhow!("an export thread panicked"))
                .and_then(|r| r);
            if helped.is_ok() {
                helped = outcome;
            }
        }
        match result {
            // A helper's failure is what the assembler stopped for.
            Err(e) if e.is::<HelperFailed>() => helped.and(Err(e)),
            other => other.and(helped),
        }
    })
}

/// Where a task's piece goes: (array, place in that array) of OUTPUT.
type Placed = (Task, Option<(IdKind, usize)>);

/// The rejects report is task 0 ([`tasks`]).
const REJECTS: usize = 0;

/// The tasks of an export: the rejects report first, then the pieces of
/// OUTPUT in output order (users, the document's playlists, new playlists,
/// songs).
fn tasks(store: &Store, job: &Export) -> Result<Vec<Placed>> {
    let mut tasks: Vec<Placed> = vec![(Task::Rejects, None)];
    if job.output.is_some() {
        let ranges = store.array_ranges()?;
        fn copies(range: &Option<ArrayRange>, array: IdKind) -> impl Iterator<Item = Placed> + '_ {
            let pieces = range.iter().flat_map(|r| r.pieces()).enumerate();
            pieces.map(move |(place, (from, to))| (Task::Copy { from, to }, Some((array, place))))
        }
        tasks.extend(copies(&ranges.users, IdKind::Users));
        // Cut only for a SQLite store (a PostgreSQL one would scan its
        // results once for each piece), and only from CUT_FROM_THREADS.
        let threads = job.threads.max(1) as u64;
        let pieces = |count: u64, per_piece: u64| {
            let by_size = match job.db {
                Location::File(_) if threads >= CUT_FROM_THREADS => {
                    (threads * PIECES_PER_THREAD).min(count / per_piece)
                }
                _ => 1,
            };
            crate::run::fault::export_pieces(by_size.max(1))
        };
        let playlists = store.meta_number(Key::Playlists)?;
        let changes = store.meta_number(Key::Changes)?;
        let document = cut(playlists, pieces(playlists, PLAYLISTS_PER_PIECE))
            .map(|(from, to)| Task::DocumentPlaylists { from, to });
        let created = cut(changes, pieces(changes, CHANGES_PER_PIECE))
            .map(|(from, to)| Task::NewPlaylists { from, to });
        let places = document.chain(created).enumerate();
        tasks.extend(places.map(|(place, task)| (task, Some((IdKind::Playlists, place)))));
        tasks.extend(copies(&ranges.songs, IdKind::Songs));
    }
    Ok(tasks)
}

/// How the export's tasks stand, shared by the assembler (this thread, which
/// writes OUTPUT in order) and its helpers.
///
/// The assembler walks OUTPUT's tasks in order: one nobody has taken it renders
/// straight into OUTPUT; one a helper rendered it copies in (through the
/// kernel); one a helper is rendering it waits for. Helpers take the rejects
/// report first, then tasks from the end of OUTPUT backwards, each into an
/// anonymous temporary file, so the two meet in the middle and, with one
/// thread, no byte of OUTPUT is written twice.
struct Board {
    state: Mutex<Slots>,
    changed: Condvar,
}

struct Slots {
    /// One per task.
    slots: Vec<Slot>,
    /// Someone failed: nobody takes another task.
    failed: bool,
}

enum Slot {
    Open,
    Taken,
    Rendered(Option<File>),
    Used,
}

/// The assembler stopped because a helper failed (whose error is the one to
/// report).
#[derive(Debug)]
struct HelperFailed;

impl std::fmt::Display for HelperFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an export thread failed")
    }
}

impl std::error::Error for HelperFailed {}

/// What the assembler does with one task.
enum Turn {
    RenderHere,
    CopyIn(Option<File>),
}

impl Board {
    fn new(count: usize) -> Board {
        Board {
            state: Mutex::new(Slots {
                slots: (0..count).map(|_| Slot::Open).collect(),
                failed: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.changed.notify_all();
    }

    /// The assembler's turn at task `i`: render it here, or the piece a
    /// helper rendered (waiting for it).
    fn turn(&self, i: usize) -> Result<Turn> {
        let mut state = self.lock();
        loop {
            if state.failed {
                return Err(HelperFailed.into());
            }
            match std::mem::replace(&mut state.slots[i], Slot::Used) {
                Slot::Open => return Ok(Turn::RenderHere),
                Slot::Rendered(piece) => return Ok(Turn::CopyIn(piece)),
                taken => state.slots[i] = taken,
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Task `i` (the rejects report), here, unless someone took it.
    fn run_if_open(&self, i: usize, job: &Export, tasks: &[Placed]) -> Result<()> {
        {
            let mut state = self.lock();
            if !matches!(state.slots[i], Slot::Open) {
                return Ok(());
            }
            state.slots[i] = Slot::Used;
        }
        run_task(job, tasks[i].0).map(|_| ())
    }

    /// A helper thread: the rejects report, then tasks from the end.
    fn help(&self, job: &Export, tasks: &[Placed]) -> Result<()> {
        let order = std::iter::once(REJECTS).chain((1..tasks.len()).rev());
        for i in order {
            {
                let mut state = self.lock();
                if state.failed {
                    return Ok(());
                }
                if !matches!(state.slots[i], Slot::Open) {
                    continue;
                }
                state.slots[i] = Slot::Taken;
            }
            match run_task(job, tasks[i].0) {
                Ok(piece) => self.lock().slots[i] = Slot::Rendered(piece),
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
            self.changed.notify_all();
        }
        Ok(())
    }
}

/// Puts OUTPUT together, in order (see [`Board`]).
fn assemble(
    store: &Store,
    output: &Path,
    job: &Export,
    tasks: &[Placed],
    board: &Board,
) -> Result<()> {
    // Just before the rename, the store learns what is being published: a
    // crash after the rename leaves a store that says its run is finished.
    let record = |temp: &Path| {
        let print = place::fingerprint(temp)?;
        store.record_publishing(job.output_absolute, &print)
    };
    write_whole(
        output,
        |out| {
            out.write_all(b"{\n")?;
            for (array, name) in [
                (IdKind::Users, "users"),
                (IdKind::Playlists, "playlists"),
                (IdKind::Songs, "songs"),
            ] {
                if array != IdKind::Users {
                    out.write_all(b",\n")?;
                }
                write!(out, "\"{name}\": [")?;
                let mut any = false;
                for (i, (task, _)) in tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, place))| place.is_some_and(|(a, _)| a == array))
                {
                    any = match board.turn(i)? {
                        Turn::RenderHere => {
                            render_elements(out, any, |each| render_task(job, *task, each))?
                        }
                        Turn::CopyIn(piece) => {
                            let piece = piece.context("an export piece is missing")?;
                            append_piece(out, piece, any)? || any
                        }
                    };
                }
                out.write_all(if any { b"\n]" } else { b"]" })?;
            }
            store.each_extra(&mut |key, raw| {
                out.write_all(b",\n")?;
                out.write_all(key)?;
                out.write_all(b": ")?;
                out.write_all(raw)?;
                Ok(())
            })?;
            out.write_all(b"\n}\n")?;
            Ok(())
        },
        record,
    )
}

/// Does one task; a piece of OUTPUT comes back as its file.
fn run_task(job: &Export, task: Task) -> Result<Option<File>> {
    match task {
        Task::Rejects => {
            write_rejects(&open_for_export(job.db)?, job.rejects)?;
            Ok(None)
        }
        piece => render_piece(|each| render_task(job, piece, each)).map(Some),
    }
}

/// Feeds the elements of a piece of OUTPUT to `each`.
fn render_task(job: &Export, task: Task, each: &mut Each) -> Result<()> {
    match task {
        Task::Rejects => unreachable!("the rejects report is not a piece of OUTPUT"),
        Task::Copy { from, to } => {
            let mut text = place::open_range(job.mixtape, from, to)
                .with_context(|| format!("reading {}", job.mixtape.display()))?;
            values::each_minified_value(
                &mut text,
                job.mixtape,
                from,
                to,
                "an array",
                &mut |minified, _| each(minified),
            )
        }
        Task::DocumentPlaylists { from, to } => {
            open_for_export(job.db)?.each_final_document_playlist(from..to, each)
        }
        Task::NewPlaylists { from, to } => {
            open_for_export(job.db)?.each_new_playlist(from..to, each)
        }
    }
}

/// A connection of an export thread: it reads in order, so a small page cache
/// does (the harness holds one such connection per thread at once).
fn open_for_export(db: &Location) -> Result<Store> {
    let store = Store::open(db)?;
    store.set_cache_kib(EXPORT_CACHE_KIB)?;
    Ok(store)
}

/// Page cache of an export thread's connection, in KiB.
const EXPORT_CACHE_KIB: i64 = 2048;

/// Renders the elements `elements` feeds into an anonymous temporary file,
/// each preceded by `,\n`.
fn render_piece(elements: impl FnOnce(&mut Each) -> Result<()>) -> Result<File> {
    render_piece_into(elements).context("writing a piece of OUTPUT to a temporary file")
}

fn render_piece_into(elements: impl FnOnce(&mut Each) -> Result<()>) -> Result<File> {
    let file = tempfile::tempfile()?;
    // Small: one per export thread.
    let mut out = BufWriter::with_capacity(256 << 10, file);
    render_elements(&mut out, true, elements)?;
    Ok(out.into_inner().map_err(|e| e.into_error())?)
}

/// Writes the elements `elements` feeds to `out`, each on its own line
/// after `,` (the first without one unless `any_before`); returns whether any
/// element is written now or was before.
fn render_elements(
    out: &mut dyn Write,
    any_before: bool,
    elements: impl FnOnce(&mut Each) -> Result<()>,
) -> Result<bool> {
    let mut written = 0u64;
    elements(&mut |element: &[u8]| {
        out.write_all(if any_before || written > 0 {
            b",\n"
        } else {
            b"\n"
        })?;
        out.write_all(element)?;
        crate::run::fault::point("export-row");
        written += 1;
        if written.is_multiple_of(4096) {
            crate::run::interrupt::check()?;
        }
        Ok(())
    })?;
    Ok(any_before || written > 0)
}

/// Appends a rendered piece to `out`; the first element of an array (no
/// element `any_before`) loses its leading comma. Returns whether the piece held any element.
fn append_piece(out: &mut Sink, mut piece: File, any_before: bool) -> Result<bool> {
    if piece.metadata()?.len() == 0 {
        return Ok(false);
    }
    piece.rewind()?;
    if !any_before {
        let mut comma = [0u8; 1];
        piece.read_exact(&mut comma)?;
    }
    out.append_file(&mut piece)?;
    Ok(true)
}

/// Writes the rejects report (JSON Lines, in index order) to `path`.
fn write_rejects(store: &Store, path: &Path) -> Result<()> {
    write_atomically(path, |out| {
        // Each line is put together here and written at once: formatting
        // it piece by piece through `write!` was a third of the report's
        // time.
        let mut line = Vec::new();
        store.each_reject(&mut |reject| {
            line.clear();
            line.extend_from_slice(b"{\"index\": ");
            crate::json::write_u64(reject.index, &mut line);
            line.extend_from_slice(b", \"op\": ");
            line.extend_from_slice(reject.op_json.as_bytes());
            line.extend_from_slice(b", \"reason\": \"");
            line.extend_from_slice(reject.reason.name().as_bytes());
            line.extend_from_slice(b"\", \"detail\": ");
            crate::json::write_string(&reject.detail, &mut line);
            line.extend_from_slice(b"}\n");
            out.write_all(&line)?;
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of a stream follow one another from 0, none empty when
    /// there are at least as many items as pieces, and the last is open.
    #[test]
    fn streams_are_cut_into_ranges_that_cover_them() {
        for count in [0u64, 1, 5, 64, 1000, 65_537] {
            for pieces in [1u64, 2, 3, 8, 64] {
                let ranges: Vec<(u64, u64)> = cut(count, pieces).collect();
                assert_eq!(ranges.len() as u64, pieces);
                assert_eq!(ranges[0].0, 0);
                assert_eq!(ranges.last().unwrap().1, u64::MAX);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].1, pair[1].0, "{count} in {pieces}");
                    if count >= pieces {
                        assert!(pair[0].0 < pair[0].1, "{count} in {pieces}: {ranges:?}");
                    }
                }
                let widths: Vec<u64> = ranges[..ranges.len() - 1]
                    .iter()
                    .map(|r| r.1 - r.0)
                    .collect();
                if let (Some(least), Some(most)) = (widths.iter().min(), widths.iter().max()) {
                    assert!(most - least <= 1, "{count} in {pieces}: {ranges:?}");
                }
            }
        }
    }

    /// The assembler waits for a piece a helper is rendering, takes an open
    /// task itself, and stops with [`HelperFailed`] once someone fails.
    #[test]
    fn the_assembler_waits_takes_and_stops() {
        let board = Board::new(3);
        board.lock().slots[1] = Slot::Taken;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                board.lock().slots[1] = Slot::Rendered(None);
                board.changed.notify_all();
            });
            assert!(matches!(board.turn(1).unwrap(), Turn::CopyIn(None)));
        });
        assert!(matches!(board.turn(2).unwrap(), Turn::RenderHere));
        assert!(matches!(board.lock().slots[2], Slot::Used));
        board.lock().slots[0] = Slot::Taken;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                board.fail();
            });
            assert!(board.turn(0).is_err_and(|e| e.is::<HelperFailed>()));
        });
    }
}
