//! The document's playlists stored a row of several at a time, most of them
//! as a place in MIXTAPE rather than a copy of their text.
//!
//! One SQLite row per playlist costs more in row overhead than in bytes
//! (BENCHMARKS.md, "What was tried": packed rows). So the import packs consecutive positions into
//! one row of up to [`PLAYLISTS_PER_ROW`] playlists or [`ROW_BYTES`] of text:
//! the row's `first` is its first playlist's position (its key), and its
//! `data` holds each playlist, one position after the other. Readers ask for
//! positions; a row is found by the largest `first` at or below the position.
//!
//! Copying the text into the database would write every playlist twice, to
//! the WAL and then to the database (BENCHMARKS.md, "What was tried":
//! playlists as places in MIXTAPE). But the text is in MIXTAPE already, and the
//! export reads MIXTAPE's users and songs again anyway. So a playlist is kept
//! as where it is in MIXTAPE's text (the file the import read,
//! [`crate::stages::input`]), and read and minified there again when it is needed:
//! minifying is the same function on the same bytes, so it gives the same
//! text. Each playlist is `tag:varint` with `tag = len << 2 | minify << 1 |
//! in_mixtape`, then `offset:varint` (its `len` bytes at `offset` in MIXTAPE,
//! to be minified when `minify`, that is when they hold white space) or its
//! `len` bytes of text (a playlist the import gave without a place, as the
//! store-contract tests do).
//!
//! That MIXTAPE is still the file the import read is what the harness checks
//! before it resumes a run (its fingerprint, [`crate::run::fingerprint`]), as it
//! does for the users and songs the export copies. A read that does not find
//! an object where the row says one is fails the run instead of writing
//! another text.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use anyhow::{bail, Context, Result};

use crate::changes::record::{put_varint, Decoder};
use crate::json;

/// Playlists a row holds at most.
pub(super) const PLAYLISTS_PER_ROW: u64 = 64;
/// A row is written once its playlists reach this many bytes of text (a
/// single playlist larger than that is a row of its own). Text kept in
/// MIXTAPE counts too: it bounds what one read of a row's span brings in.
pub(super) const ROW_BYTES: usize = 16 << 10;

/// Playlists waiting to be written as one row.
#[derive(Default)]
pub(super) struct PendingRow {
    first: u64,
    count: u64,
    text_bytes: usize,
    data: Vec<u8>,
}

impl PendingRow {
    /// Adds the playlist at `position`, whose minified text is `raw`, and
    /// which is MIXTAPE's bytes `in_mixtape` minified, when that is given. The
    /// waiting row goes to `write` (`first`, `data`) first when `position`
    /// does not follow its last playlist, and once it is full.
    pub(super) fn add(
        &mut self,
        position: u64,
        raw: &[u8],
        in_mixtape: Option<Range<u64>>,
        write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if self.count > 0 && position != self.first + self.count {
            self.flush(write)?;
        }
        if self.count == 0 {
            self.first = position;
        }
        match in_mixtape {
            Some(Range { start, end }) => {
                let len = end - start;
                let minify = u64::from(len != raw.len() as u64);
                put_varint(&mut self.data, len << 2 | minify << 1 | 1);
                put_varint(&mut self.data, start);
                self.text_bytes += len as usize;
            }
            None => {
                put_varint(&mut self.data, (raw.len() as u64) << 2);
                self.data.extend_from_slice(raw);
                self.text_bytes += raw.len();
            }
        }
        self.count += 1;
        if self.count >= PLAYLISTS_PER_ROW || self.text_bytes >= ROW_BYTES {
            self.flush(write)?;
        }
        Ok(())
    }

    /// Writes what is waiting, if anything.
    pub(super) fn flush(&mut self, write: &mut dyn FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        if self.count > 0 {
            write(self.first, &self.data)?;
        }
        self.count = 0;
        self.text_bytes = 0;
        self.data.clear();
        Ok(())
    }
}

/// Where a row's playlists are: in the row, or in MIXTAPE.
enum Place {
    /// `data[from..from + len]`.
    Row { from: usize, len: usize },
    /// MIXTAPE's text at `offset`, to be minified when `minify`; `span` is its
    /// place in [`RowReader::span`].
    Mixtape {
        offset: u64,
        len: usize,
        minify: bool,
        span: usize,
    },
    /// `minified[from..from + len]`.
    Minified { from: usize, len: usize },
    /// Not asked for: not read.
    Unwanted,
}

/// Reads rows back; holds the buffers of MIXTAPE's text the rows point into
/// and the file, opened on first need (`open`), so that one reader serves
/// every row of a scan.
pub(super) struct RowReader<'f> {
    open: &'f dyn Fn() -> Result<&'f File>,
    places: Vec<Place>,
    /// The row's playlists as MIXTAPE has them.
    span: Vec<u8>,
    /// Those of them with white space, minified.
    minified: Vec<u8>,
}

impl<'f> RowReader<'f> {
    pub(super) fn new(open: &'f dyn Fn() -> Result<&'f File>) -> RowReader<'f> {
        RowReader {
            open,
            places: Vec::new(),
            span: Vec::new(),
            minified: Vec::new(),
        }
    }

    /// Calls `each(position, raw)` for the playlists of the row whose first
    /// position is `first` and whose data is `data`, in order, those
    /// `wanted` says yes to; the others are not read from MIXTAPE.
    pub(super) fn each_in_row(
        &mut self,
        first: u64,
        data: &[u8],
        wanted: &dyn Fn(u64) -> bool,
        each: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.places.clear();
        let mut input = Decoder::new(data);
        let mut in_mixtape = (u64::MAX, 0u64); // the span of the row's text in MIXTAPE
        let mut position = first;
        while !input.is_done() {
            let tag = input.varint()?;
            let len = usize::try_from(tag >> 2)?;
            let wanted = wanted(position);
            position += 1;
            if tag & 1 == 1 {
                let offset = input.varint()?;
                let end = offset.checked_add(len as u64).context(CORRUPT)?;
                if !wanted {
                    self.places.push(Place::Unwanted);
                    continue;
                }
                in_mixtape = (in_mixtape.0.min(offset), in_mixtape.1.max(end));
                self.places.push(Place::Mixtape {
                    offset,
                    len,
                    minify: tag & 2 == 2,
                    span: 0,
                });
            } else {
                let from = input.skip_bytes(len).context(CORRUPT)?;
                self.places.push(match wanted {
                    true => Place::Row { from, len },
                    false => Place::Unwanted,
                });
            }
        }
        if in_mixtape.0 < in_mixtape.1 {
            self.read_from_mixtape(in_mixtape)?;
        }
        for (position, place) in (first..).zip(&self.places) {
            let raw = match *place {
                Place::Unwanted => continue,
                Place::Row { from, len } => &data[from..from + len],
                Place::Mixtape { len, span, .. } => &self.span[span..span + len],
                Place::Minified { from, len } => &self.minified[from..from + len],
            };
            if std::str::from_utf8(raw).is_err() {
                bail!("work database: a document playlist is not UTF-8; rerun with --fresh");
            }
            each(position, raw)?;
        }
        Ok(())
    }

    /// Brings the row's playlists kept in MIXTAPE into `span`: in one read
    /// of `from..to` when they lie close together (neighbours in the array,
    /// as the import writes them), else one read each.
    fn read_from_mixtape(&mut self, (from, to): (u64, u64)) -> Result<()> {
        let file = (self.open)()?;
        let text: usize = self
            .places
            .iter()
            .map(|p| match p {
                Place::Mixtape { len, .. } => *len,
                _ => 0,
            })
            .sum();
        let whole = usize::try_from(to - from)?;
        let one_read = whole <= 2 * text + (64 << 10);
        self.span.clear();
        self.minified.clear();
        if one_read {
            self.span.resize(whole, 0);
            read_at(file, &mut self.span, from)?;
        }
        for place in &mut self.places {
            let Place::Mixtape {
                offset,
                len,
                minify,
                ..
            } = *place
            else {
                continue;
            };
            let span = if one_read {
                (offset - from) as usize
            } else {
                let at = self.span.len();
                self.span.resize(at + len, 0);
                read_at(file, &mut self.span[at..], offset)?;
                at
            };
            let raw = &self.span[span..span + len];
            if raw.first() != Some(&b'{') || raw.last() != Some(&b'}') {
                bail!("{MOVED} (no playlist at byte offset {offset})");
            }
            *place = if minify {
                let from = self.minified.len();
                json::minify_into(raw, &mut self.minified);
                Place::Minified {
                    from,
                    len: self.minified.len() - from,
                }
            } else {
                Place::Mixtape {
                    offset,
                    len,
                    minify,
                    span,
                }
            };
        }
        Ok(())
    }
}

const CORRUPT: &str = "work database: a row of document playlists is corrupt; rerun with --fresh";
const MOVED: &str =
    "MIXTAPE is no longer the file the work database was made from; rerun with --fresh";

fn read_at(file: &File, into: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(into, offset)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => anyhow::anyhow!("{MOVED} (it is shorter)"),
            _ => anyhow::Error::new(e).context("reading MIXTAPE's playlists"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A MIXTAPE text holding `texts` one per line, every other one with
    /// white space after its `:`, and where each is.
    fn mixtape_of(texts: &[String]) -> (tempfile::NamedTempFile, Vec<Range<u64>>) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut places = Vec::new();
        let mut at = 0u64;
        for (i, text) in texts.iter().enumerate() {
            let written = match i % 2 {
                0 => text.clone(),
                _ => text.replace(':', ": \n\t"),
            };
            places.push(at..at + written.len() as u64);
            writeln!(file, "{written},").unwrap();
            at += written.len() as u64 + 2;
        }
        (file, places)
    }

    #[test]
    fn rows_keep_every_playlist_at_its_position() {
        let long = format!("{{\"x\":\"{}\"}}", "x".repeat(ROW_BYTES));
        let mut playlists: Vec<(u64, String)> =
            (0..300).map(|p| (p, format!("{{\"id\":{p}}}"))).collect();
        playlists[100].1 = long.clone();
        playlists[201].1 = long.clone();
        playlists.push((1000, "{}".into())); // not after the one before: a row of its own
        playlists.push((1001, "{\"id\":1001}".into()));
        let texts: Vec<String> = playlists.iter().map(|(_, t)| t.clone()).collect();
        let (file, places) = mixtape_of(&texts);
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut pending = PendingRow::default();
        let mut write = |first: u64, data: &[u8]| {
            rows.push((first, data.to_vec()));
            Ok(())
        };
        for (i, (position, raw)) in playlists.iter().enumerate() {
            // Some kept in MIXTAPE, some copied, in runs and alone.
            let in_mixtape = (i % 3 != 1 && i % 50 > 10).then(|| places[i].clone());
            pending
                .add(*position, raw.as_bytes(), in_mixtape, &mut write)
                .unwrap();
        }
        pending.flush(&mut write).unwrap();
        assert!(rows.len() < playlists.len() / 4, "{} rows", rows.len());
        let opened = file.reopen().unwrap();
        let open = || Ok(&opened);
        let mut reader = RowReader::new(&open);
        let mut back = Vec::new();
        for (first, data) in &rows {
            reader
                .each_in_row(*first, data, &|_| true, &mut |position, raw| {
                    back.push((position, String::from_utf8(raw.to_vec()).unwrap()));
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(back, playlists);
        let (first, data) = &rows[0];
        let cut = &data[..data.len() - 1];
        assert!(reader
            .each_in_row(*first, cut, &|_| true, &mut |_, _| Ok(()))
            .is_err());
    }

    #[test]
    fn a_playlist_no_longer_in_mixtape_is_an_error_not_another_text() {
        let texts: Vec<String> = (0..4).map(|p| format!("{{\"id\":{p}}}")).collect();
        let (file, places) = mixtape_of(&texts);
        let mut data = Vec::new();
        let mut pending = PendingRow::default();
        for (p, text) in texts.iter().enumerate() {
            let mut write = |_: u64, d: &[u8]| {
                data = d.to_vec();
                Ok(())
            };
            pending
                .add(
                    p as u64,
                    text.as_bytes(),
                    Some(places[p].clone()),
                    &mut write,
                )
                .unwrap();
        }
        pending
            .flush(&mut |_, d| {
                data = d.to_vec();
                Ok(())
            })
            .unwrap();
        // The file edited since: shifted by a byte, then cut short.
        for edited in [
            "x{\"id\":0},\n{\"id\":1},\n{\"id\":2},\n{\"id\":3},\n",
            "{\"id\":0},\n",
        ] {
            std::fs::write(file.path(), edited).unwrap();
            let opened = file.reopen().unwrap();
            let open = || Ok(&opened);
            let error = RowReader::new(&open)
                .each_in_row(0, &data, &|_| true, &mut |_, _| Ok(()))
                .unwrap_err();
            assert!(format!("{error}").contains("no longer the file"), "{error}");
        }
    }
}
