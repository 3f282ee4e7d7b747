//! Stage 5, export: the final document and the rejects report, from the store.
//!
//! Both files are streamed element by element (memory does not grow with their
//! size) and replaced whole or not at all ([`crate::output_file`]). Users and
//! songs are copied from MIXTAPE, element by element and minified, from the
//! array ranges the import recorded (the store keeps no copy of them); the
//! playlists, the other members and the rejects come from the store.
//!
//! ## In parallel
//!
//! The work is cut into independent tasks: the rejects report, and the pieces
//! of OUTPUT (the users and songs arrays cut at the element boundaries the
//! import recorded every few MiB, and the playlists). Up to `threads` threads
//! take tasks in turn; each piece is rendered into its own anonymous
//! temporary file, every element preceded by `,\n`. Then OUTPUT is assembled in
//! order from the pieces (the first element of an array loses its comma). The
//! pieces cost as much temporary disk as OUTPUT, for the moment of the export.
//!
//! The document's layout (README "Output"): `users`, `playlists`, `songs`, then
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

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::json;
use crate::output_file::{write_atomically, write_atomically_then};
use crate::store::{Each, IdKind, Location, Store};
use crate::values;

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
    /// The document's playlists, as they end.
    DocumentPlaylists,
    NewPlaylists,
}

/// Writes the rejects report and (when asked) OUTPUT; see the module docs.
pub fn export(store: &Store, job: &Export) -> Result<()> {
    let tasks = tasks(store, job)?;
    let pieces: Vec<Mutex<Option<File>>> = tasks.iter().map(|_| Mutex::new(None)).collect();
    crate::parallel::run_tasks(
        tasks.len(),
        job.threads,
        || Ok(()),
        |_, i| {
            let piece = run_task(job, tasks[i].0)?;
            *pieces[i].lock().expect("no thread panicked") = piece;
            Ok(())
        },
        &mut || {},
    )?;
    match job.output {
        Some(output) => assemble(store, output, job.output_absolute, &tasks, &pieces),
        None => Ok(()),
    }
}

/// Where a task's piece goes: (array, place in that array) of OUTPUT.
type Placed = (Task, Option<(IdKind, usize)>);

/// The tasks of an export. The two playlist tasks are the longest (each sorts
/// the merge's results): they go first, so the copies fill the other threads
/// meanwhile.
fn tasks(store: &Store, job: &Export) -> Result<Vec<Placed>> {
    let mut tasks: Vec<Placed> = Vec::new();
    if job.output.is_some() {
        tasks.push((Task::NewPlaylists, Some((IdKind::Playlists, 1))));
        tasks.push((Task::DocumentPlaylists, Some((IdKind::Playlists, 0))));
    }
    tasks.push((Task::Rejects, None));
    if job.output.is_some() {
        let ranges = store.array_ranges()?;
        for (array, range) in [
            (IdKind::Users, &ranges.users),
            (IdKind::Songs, &ranges.songs),
        ] {
            for (place, (from, to)) in range.iter().flat_map(|r| r.pieces()).enumerate() {
                tasks.push((Task::Copy { from, to }, Some((array, place))));
            }
        }
    }
    Ok(tasks)
}

/// Puts OUTPUT together from the rendered pieces, in order.
fn assemble(
    store: &Store,
    output: &Path,
    output_absolute: &Path,
    tasks: &[Placed],
    pieces: &[Mutex<Option<File>>],
) -> Result<()> {
    // Just before the rename, the store learns what is being published: a
    // crash after the rename leaves a store that says its run is finished.
    let record = |temp: &Path| {
        let print = crate::fingerprint::of_file(temp)
            .with_context(|| format!("reading {}", temp.display()))?;
        store.record_publishing(output_absolute, &print)
    };
    write_atomically_then(
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
                let mut in_array: Vec<(usize, usize)> = tasks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, to))| match to {
                        Some((a, place)) if *a == array => Some((*place, i)),
                        _ => None,
                    })
                    .collect();
                in_array.sort_unstable();
                let mut any = false;
                for (_, i) in in_array {
                    let file = pieces[i].lock().expect("no thread panicked").take();
                    any |= append_piece(out, file.context("an export piece is missing")?, any)?;
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
        Task::Copy { from, to } => {
            let mut minified = Vec::new();
            render_piece(|each| {
                values::each_value(job.mixtape, from, to, "an array", &mut |raw, _| {
                    minified.clear();
                    json::minify_into(raw, &mut minified);
                    each(&minified)
                })
            })
            .map(Some)
        }
        Task::DocumentPlaylists => {
            let store = open_for_export(job.db)?;
            render_piece(|each| store.each_final_document_playlist(each)).map(Some)
        }
        Task::NewPlaylists => {
            let store = open_for_export(job.db)?;
            render_piece(|each| store.each_new_playlist(each)).map(Some)
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
    let mut written = 0u64;
    elements(&mut |element: &[u8]| {
        out.write_all(b",\n")?;
        out.write_all(element)?;
        crate::fault::point("export-row");
        written += 1;
        if written.is_multiple_of(4096) {
            crate::interrupt::check()?;
        }
        Ok(())
    })?;
    Ok(out.into_inner().map_err(|e| e.into_error())?)
}

/// Appends a rendered piece to `out`; the first element of an array (no
/// element `any_before`) loses its leading comma. Returns whether the piece held any element.
fn append_piece(out: &mut dyn Write, mut piece: File, any_before: bool) -> Result<bool> {
    if piece.metadata()?.len() == 0 {
        return Ok(false);
    }
    piece.rewind()?;
    if !any_before {
        let mut comma = [0u8; 1];
        piece.read_exact(&mut comma)?;
    }
    std::io::copy(&mut piece, out)?;
    Ok(true)
}

/// Writes the rejects report (JSON Lines, in index order) to `path`.
fn write_rejects(store: &Store, path: &Path) -> Result<()> {
    write_atomically(path, |out| {
        let mut detail = Vec::new();
        store.each_reject(&mut |reject| {
            detail.clear();
            crate::json::write_string(&reject.detail, &mut detail);
            write!(
                out,
                "{{\"index\": {}, \"op\": {}, \"reason\": \"{}\", \"detail\": ",
                reject.index,
                reject.op_json,
                reject.reason.name(),
            )?;
            out.write_all(&detail)?;
            out.write_all(b"}\n")?;
            Ok(())
        })
    })
}
