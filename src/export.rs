//! Stage 5, export: the final document and the rejects report, from the database.
//!
//! Both files are streamed row by row (memory does not grow with their size) into
//! a temporary file beside the target, flushed to disk, and renamed over it: an
//! existing OUTPUT is replaced whole or not at all, whatever happens meanwhile.
//!
//! The document's layout (SPEC §5): `users`, `playlists`, `songs`, then any other
//! top-level members, one array element per line, every element minified:
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
//! Export is not resumed: it only reads the database, so a rerun writes it again.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::Connection;

use crate::workdb::{RESULT_CHANGED, RESULT_NEW};

/// The reject reasons, in the order of SPEC §4 (which is also the summary's).
pub const REASONS: [&str; 9] = [
    "invalid_change",
    "unknown_user",
    "unknown_song",
    "empty_playlist",
    "duplicate_song",
    "playlist_exists",
    "unknown_playlist",
    "song_already_in_playlist",
    "song_not_in_playlist",
];

/// Writes `path` through a temporary file beside it and a rename.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, temp);
    write(&mut out).with_context(|| format!("writing {}", path.display()))?;
    let temp = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    temp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Receives one array element.
type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// Writes one array member: `"name": [` elements `]`; `rows` feeds the elements.
fn write_array(
    out: &mut dyn Write,
    name: &str,
    rows: &mut dyn FnMut(&mut Sink) -> Result<()>,
) -> Result<()> {
    write!(out, "\"{name}\": [")?;
    let mut first = true;
    let mut written = 0u64;
    rows(&mut |element: &[u8]| {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        first = false;
        out.write_all(element)?;
        crate::fault::point("export-row");
        written += 1;
        if written.is_multiple_of(4096) {
            crate::interrupt::check()?;
        }
        Ok(())
    })?;
    out.write_all(if first { b"]" } else { b"\n]" })?;
    Ok(())
}

/// Streams every row of `sql` (one text column) to `each`.
fn each_row(conn: &Connection, sql: &str, each: &mut Sink) -> Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        each(row.get_ref(0)?.as_bytes()?)?;
    }
    Ok(())
}

/// Writes the final document to `path`.
pub fn write_output(conn: &Connection, path: &Path) -> Result<()> {
    write_atomically(path, |out| {
        out.write_all(b"{\n")?;
        write_array(out, "users", &mut |each| {
            each_row(conn, "SELECT raw FROM users ORDER BY seq", each)
        })?;
        out.write_all(b",\n")?;
        write_array(out, "playlists", &mut |each| {
            // Two streams in document order, joined as they go: the document's
            // playlists, and the merge's results about them (sorted once here).
            let mut docs = conn.prepare("SELECT seq, raw FROM playlists ORDER BY seq")?;
            let mut docs = docs.query([])?;
            let mut fates = conn.prepare(
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
                let this_fate = match fate {
                    Some(f) if f.get::<_, i64>(0)? == seq => Some(f),
                    _ => None,
                };
                match this_fate {
                    None => each(doc.get_ref(1)?.as_bytes()?)?,
                    Some(f) if f.get::<_, i64>(1)? == RESULT_CHANGED => {
                        each(f.get_ref(2)?.as_bytes()?)?
                    }
                    Some(_) => {} // removed, or removed and created anew (written below)
                }
            }
            each_row(
                conn,
                &format!("SELECT json FROM results WHERE state = {RESULT_NEW} ORDER BY created"),
                each,
            )
        })?;
        out.write_all(b",\n")?;
        write_array(out, "songs", &mut |each| {
            each_row(conn, "SELECT raw FROM songs ORDER BY seq", each)
        })?;
        let mut stmt = conn.prepare("SELECT key, raw FROM extras ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            out.write_all(b",\n")?;
            out.write_all(row.get_ref(0)?.as_bytes()?)?;
            out.write_all(b": ")?;
            out.write_all(row.get_ref(1)?.as_bytes()?)?;
        }
        out.write_all(b"\n}\n")?;
        Ok(())
    })
}

/// Writes the rejects report (JSON Lines, in index order) to `path`.
pub fn write_rejects(conn: &Connection, path: &Path) -> Result<()> {
    write_atomically(path, |out| {
        let mut stmt = conn.prepare("SELECT idx, op, reason, detail FROM rejects ORDER BY idx")?;
        let mut rows = stmt.query([])?;
        let mut detail = Vec::new();
        while let Some(row) = rows.next()? {
            detail.clear();
            crate::json::write_string(row.get_ref(3)?.as_str()?, &mut detail);
            write!(
                out,
                "{{\"index\": {}, \"op\": {}, \"reason\": \"{}\", \"detail\": ",
                row.get::<_, u64>(0)?,
                row.get_ref(1)?.as_str()?,
                row.get_ref(2)?.as_str()?,
            )?;
            out.write_all(&detail)?;
            out.write_all(b"}\n")?;
        }
        Ok(())
    })
}

/// Rejected changes per reason, in the order of [`REASONS`], only those present.
pub fn rejects_by_reason(conn: &Connection) -> Result<Vec<(&'static str, u64)>> {
    let mut stmt = conn.prepare("SELECT reason, count(*) FROM rejects GROUP BY reason")?;
    let counted: Vec<(String, u64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(REASONS
        .iter()
        .filter_map(|&reason| {
            counted
                .iter()
                .find(|(r, _)| r == reason)
                .map(|&(_, n)| (reason, n))
        })
        .collect())
}
