//! Id indexes: for users and for songs, id text → the id as the document writes
//! it ([`Values::Written`]); for the document's playlists, id text → the
//! playlist's position ([`Values::Positions`]). Built once, at the end of the
//! import; read by every worker (does this user or song exist, and how is it
//! written) and by the merge (the warning check, and which document playlist
//! an id names).
//!
//! ## Why not the database
//!
//! Apply and the merge's warning check are mostly lookups, one to three per
//! change and one per song of every document playlist. A SQLite primary-key
//! lookup costs 2–3 µs even with a large page cache in every process; an
//! [`fst::Map`] lookup costs 0.2–0.6 µs, needs no cache of its own, and compresses
//! ids with common prefixes to almost nothing (a million decimal ids fit in a
//! few hundred bytes; a million random 32-hex ids in about 31 MB).
//!
//! ## Memory
//!
//! The file is memory-mapped, read-only, by every process: its pages live once,
//! in the page cache, shared by all workers, and count towards a process's
//! resident size only as far as it touches them.
//!
//! ## Layout
//!
//! `[fst map][side tokens][fst length: u64 LE]`. The map's value says how the
//! id is written: [`QUOTED`] (`"` id `"`, the usual string id), [`BARE`] (the
//! text itself, an integer id), or `SIDE + offset` of a length-prefixed raw
//! token in the side area (a string with escapes, say). The map is built from
//! keys in byte order, as the import's external sort ([`crate::id_sort`])
//! gives them, streaming: memory does not grow with the ids.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

/// The id is written as a JSON string of its text, without escapes.
const QUOTED: u64 = 0;
/// The id is written as its text (a JSON integer).
const BARE: u64 = 1;
/// Values from here on point into the side area: `SIDE + offset`.
const SIDE: u64 = 2;

/// The bytes of the map, a prefix of the mapped file.
struct MapBytes {
    mmap: Mmap,
    len: usize,
}

impl AsRef<[u8]> for MapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.mmap[..self.len]
    }
}

/// One open index.
pub struct IdIndex {
    map: fst::Map<MapBytes>,
}

impl IdIndex {
    /// Opens the index at `path`, made by [`build`].
    pub fn open(path: &Path) -> Result<IdIndex> {
        let bad = || format!("id index {} is damaged; rerun with --fresh", path.display());
        let file =
            File::open(path).with_context(|| format!("opening id index {}", path.display()))?;
        // SAFETY: the file is written once, to a temporary name, and renamed
        // into place before the import is marked done; nothing writes it after.
        let mmap = unsafe { Mmap::map(&file) }.with_context(bad)?;
        let Some(trailer) = mmap.len().checked_sub(8) else {
            bail!(bad());
        };
        let len = u64::from_le_bytes(mmap[trailer..].try_into().expect("8 bytes"));
        if len > trailer as u64 {
            bail!(bad());
        }
        let len = len as usize;
        let map = fst::Map::new(MapBytes { mmap, len }).with_context(bad)?;
        Ok(IdIndex { map })
    }

    /// The position of the element with id `id` (an index of [`Values::Positions`]).
    pub fn position(&self, id: &str) -> Option<u64> {
        self.map.get(id)
    }

    /// Whether `id` is in the index.
    pub fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    /// How the document writes the id whose text is `id` and which the caller
    /// found written as `token`: `token` itself when the document writes it the
    /// same way (nearly always: no allocation), else the document's form.
    pub fn written_as<'a>(&'a self, id: &str, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let Some(value) = self.map.get(id) else {
            return Ok(None);
        };
        let plain_string = token.first() == Some(&b'"') && !token.contains(&b'\\');
        let integer = token
            .first()
            .is_some_and(|&b| b == b'-' || b.is_ascii_digit());
        Ok(Some(match value {
            QUOTED if plain_string => Cow::Borrowed(token),
            BARE if integer => Cow::Borrowed(token),
            _ => match self.written(id)? {
                None => return Ok(None),
                Some(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
                Some(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
            },
        }))
    }

    /// How the document writes `id`, if it is there. A written form that is
    /// not inside the file, or not UTF-8, is an error: the index is damaged.
    pub fn written<'a>(&'a self, id: &str) -> Result<Option<Cow<'a, str>>> {
        Ok(Some(match self.map.get(id) {
            None => return Ok(None),
            Some(QUOTED) => Cow::Owned(format!("\"{id}\"")),
            Some(BARE) => Cow::Owned(id.to_string()),
            Some(side) => {
                let inner = self.map.as_fst().as_inner();
                let bytes = &inner.mmap[inner.len..inner.mmap.len() - 8];
                let damaged = || {
                    anyhow::anyhow!("an id index is damaged (the written form of id {id:?} is not in it); rerun with --fresh")
                };
                let at = usize::try_from(side - SIDE).map_err(|_| damaged())?;
                let (len, used) = bytes.get(at..).and_then(read_varint).ok_or_else(damaged)?;
                let token = (at.checked_add(used))
                    .and_then(|from| Some(from..from.checked_add(usize::try_from(len).ok()?)?))
                    .and_then(|range| bytes.get(range))
                    .ok_or_else(damaged)?;
                Cow::Borrowed(std::str::from_utf8(token).map_err(|_| damaged())?)
            }
        }))
    }
}

/// Takes one (id text, written form, position in its array) into an index
/// being built.
pub type AddId<'a> = dyn FnMut(&str, &str, u64) -> Result<()> + 'a;

/// What an index maps ids to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// How the document writes the id ([`IdIndex::written`]): users, songs.
    Written,
    /// The element's position in its array ([`IdIndex::position`]): playlists.
    Positions,
}

/// Writes the index of `ids` (id text, written form), which must come in
/// strictly increasing byte order of the text, to `path` (through a temporary
/// file and a rename).
pub fn build(
    path: &Path,
    values: Values,
    ids: &mut dyn FnMut(&mut AddId) -> Result<()>,
) -> Result<()> {
    let dir = crate::paths::directory_of(path);
    let temp = tempfile::Builder::new()
        .prefix(".index.")
        .tempfile_in(dir)
        .with_context(|| format!("creating an id index in {}", dir.display()))?;
    let mut side = Vec::new();
    let mut out = BufWriter::with_capacity(1 << 20, temp);
    let mut builder = fst::MapBuilder::new(&mut out)?;
    ids(&mut |id: &str, written: &str, position: u64| {
        let value = if values == Values::Positions {
            position
        } else if written.len() == id.len() + 2
            && written.starts_with('"')
            && written.ends_with('"')
            && &written[1..written.len() - 1] == id
        {
            QUOTED
        } else if written == id {
            BARE
        } else {
            let at = side.len() as u64;
            write_varint(written.len() as u64, &mut side);
            side.extend_from_slice(written.as_bytes());
            SIDE + at
        };
        builder
            .insert(id, value)
            .with_context(|| format!("id index: ids out of order at {id:?}"))
    })?;
    builder.finish()?;
    let map_len = out.stream_position()?;
    out.write_all(&side)?;
    out.write_all(&map_len.to_le_bytes())?;
    let temp = out.into_inner().map_err(|e| e.into_error())?;
    temp.as_file().sync_all()?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing id index {}", path.display()))?;
    crate::paths::sync_directory_of(path)
}

fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((n, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_written_form_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        let mut ids = vec![
            ("1".to_string(), "\"1\"".to_string()),
            ("10".to_string(), "10".to_string()),
            ("7".to_string(), "\"\\u0037\"".to_string()),
            ("é".to_string(), "\"\\u00e9\"".to_string()),
            ("a\"b".to_string(), "\"a\\\"b\"".to_string()),
        ];
        ids.sort();
        build(&path, Values::Written, &mut |each| {
            for (id, written) in &ids {
                each(id, written, 0)?;
            }
            Ok(())
        })
        .unwrap();
        let index = IdIndex::open(&path).unwrap();
        for (id, written) in &ids {
            assert_eq!(
                index.written(id).unwrap().as_deref(),
                Some(written.as_str()),
                "{id}"
            );
            assert!(index.contains(id));
        }
        assert_eq!(index.written("2").unwrap(), None);
        assert!(!index.contains(""));
    }

    #[test]
    fn keys_out_of_order_are_an_error_and_damage_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        let out_of_order = build(&path, Values::Positions, &mut |each| {
            each("2", "2", 0)?;
            each("1", "1", 1)
        });
        assert!(out_of_order.is_err());
        assert!(!path.exists());
        std::fs::write(&path, b"short").unwrap();
        assert!(IdIndex::open(&path).is_err());
    }
}
