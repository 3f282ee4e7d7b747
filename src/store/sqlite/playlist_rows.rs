//! The document's playlists stored a row of several at a time.
//!
//! One SQLite row per playlist made inserting them a quarter of the import
//! (BENCHMARKS.md, issue 17): 200k rows of a hundred bytes each cost more in
//! row overhead than in bytes. So the import packs consecutive positions into
//! one row of up to [`PLAYLISTS_PER_ROW`] playlists or [`ROW_BYTES`] of text:
//! the row's `first` is its first playlist's position (its key), and its
//! `data` is each playlist's minified text as `len:varint bytes`, one position
//! after the other. Readers ask for positions; a row is found by the largest
//! `first` at or below the position.

use anyhow::{bail, Result};

use crate::record::{put_bytes, Decoder};

/// Playlists a row holds at most.
pub(super) const PLAYLISTS_PER_ROW: u64 = 64;
/// A row is written once its text reaches this many bytes (a single playlist
/// larger than that is a row of its own).
pub(super) const ROW_BYTES: usize = 16 << 10;

/// Playlists waiting to be written as one row.
#[derive(Default)]
pub(super) struct PendingRow {
    first: u64,
    count: u64,
    data: Vec<u8>,
}

impl PendingRow {
    /// Adds the playlist at `position`. The waiting row goes to `write`
    /// (`first`, `data`) first when `position` does not follow its last
    /// playlist, and once it is full.
    pub(super) fn add(
        &mut self,
        position: u64,
        raw: &[u8],
        write: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if self.count > 0 && position != self.first + self.count {
            self.flush(write)?;
        }
        if self.count == 0 {
            self.first = position;
        }
        put_bytes(&mut self.data, raw);
        self.count += 1;
        if self.count >= PLAYLISTS_PER_ROW || self.data.len() >= ROW_BYTES {
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
        self.data.clear();
        Ok(())
    }
}

/// Calls `each(position, raw)` for the playlists of the row whose first
/// position is `first` and whose data is `data`, in order.
pub(super) fn each_in_row(
    first: u64,
    data: &[u8],
    each: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut input = Decoder::new(data);
    let mut position = first;
    while !input.is_done() {
        let raw = input.bytes()?;
        if std::str::from_utf8(raw).is_err() {
            bail!("work database: a document playlist is not UTF-8; rerun with --fresh");
        }
        each(position, raw)?;
        position += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_every_playlist_at_its_position() {
        let long = "x".repeat(ROW_BYTES + 1);
        let mut playlists: Vec<(u64, String)> =
            (0..300).map(|p| (p, format!("{{\"id\":{p}}}"))).collect();
        playlists[100].1 = long.clone();
        playlists.push((1000, "{}".into())); // not after the one before: a row of its own
        playlists.push((1001, String::new()));
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut pending = PendingRow::default();
        let mut write = |first: u64, data: &[u8]| {
            rows.push((first, data.to_vec()));
            Ok(())
        };
        for (position, raw) in &playlists {
            pending.add(*position, raw.as_bytes(), &mut write).unwrap();
        }
        pending.flush(&mut write).unwrap();
        assert!(rows.len() < playlists.len() / 4, "{} rows", rows.len());
        let mut back = Vec::new();
        for (first, data) in &rows {
            each_in_row(*first, data, &mut |position, raw| {
                back.push((position, String::from_utf8(raw.to_vec()).unwrap()));
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(back, playlists);
        let (first, data) = &rows[0];
        assert!(each_in_row(*first, &data[..data.len() - 1], &mut |_, _| Ok(())).is_err());
    }
}
