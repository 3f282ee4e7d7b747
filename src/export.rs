//! Stage 5, export: the final document and the rejects report, from the store.
//!
//! Both files are streamed element by element (memory does not grow with their
//! size) and replaced whole or not at all ([`crate::output_file`]). Users and
//! songs are copied from MIXTAPE, element by element and minified, from the
//! array ranges the import recorded (the store keeps no copy of them); the
//! playlists, the other members and the rejects come from the store.
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

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::json;
use crate::output_file::write_atomically;
use crate::store::{ArrayRange, Each, Store};
use crate::values;

/// Writes one array member: `"name": [` elements `]`; `rows` feeds the elements.
fn write_array(
    out: &mut dyn Write,
    name: &str,
    rows: impl FnOnce(&mut Each) -> Result<()>,
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

/// The elements of `range` of MIXTAPE, minified, to `each`.
fn copy_elements(mixtape: &Path, range: Option<ArrayRange>, each: &mut Each) -> Result<()> {
    let Some(range) = range else { return Ok(()) };
    let mut minified = Vec::new();
    values::each_value(
        mixtape,
        range.start,
        range.end,
        "an array",
        &mut |raw, _| {
            minified.clear();
            json::minify_into(raw, &mut minified);
            each(&minified)
        },
    )
}

/// Writes the final document to `path`; users and songs come from `mixtape`.
pub fn write_output(store: &Store, mixtape: &Path, path: &Path) -> Result<()> {
    let ranges = store.array_ranges()?;
    write_atomically(path, |out| {
        out.write_all(b"{\n")?;
        write_array(out, "users", |each| {
            copy_elements(mixtape, ranges.users, each)
        })?;
        out.write_all(b",\n")?;
        write_array(out, "playlists", |each| store.each_final_playlist(each))?;
        out.write_all(b",\n")?;
        write_array(out, "songs", |each| {
            copy_elements(mixtape, ranges.songs, each)
        })?;
        store.each_extra(&mut |key, raw| {
            out.write_all(b",\n")?;
            out.write_all(key)?;
            out.write_all(b": ")?;
            out.write_all(raw)?;
            Ok(())
        })?;
        out.write_all(b"\n}\n")?;
        Ok(())
    })
}

/// Writes the rejects report (JSON Lines, in index order) to `path`.
pub fn write_rejects(store: &Store, path: &Path) -> Result<()> {
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
