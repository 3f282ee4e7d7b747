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
//! lookup costs about ten times an [`fst::Map`] lookup even with a large page
//! cache in every process (BENCHMARKS.md, "What was tried": id indexes); an
//! fst needs no cache of its own, and compresses
//! ids with common prefixes to almost nothing (a million decimal ids fit in a
//! few hundred bytes; a million random 32-hex ids in about 31 MB).
//!
//! ## Memory
//!
//! The file is memory-mapped, read-only, by every process: its pages live once,
//! in the page cache, shared by all workers, and count towards a process's
//! resident size only as far as it touches them.
//!
//! ## The dense table: integer ids in one probe
//!
//! Most documents number their elements: ids like `"1"` … `"1000000"`. An fst
//! walk costs a node per digit for those, and apply and the
//! merge's warning check do millions of them. So beside the fst, every id whose
//! text is a canonical decimal integer (`0` or `[1-9][0-9]*`) below
//! [`dense_limit`] (about 1.5 × the number of ids) also has a slot in a table
//! indexed by that integer: two bits for users and songs (absent, quoted, bare,
//! or "ask the fst"), a `u32` for playlists (position + 1, 0 for absent). A
//! lookup of such an id reads one slot; every other id goes to the fst. The
//! fst holds every id but those a slot answers for on its own (quoted or
//! bare, a position that fits): building it was a fifth of the import, and a
//! reader never asks it about them. Sparse or non-numeric ids cost nothing extra: the table
//! covers only integers below the limit, whatever the ids are. Its size is
//! bounded by the number of ids (a quarter byte, or four bytes, per id and a
//! half), and it is memory-mapped like the rest.
//!
//! ## Layout
//!
//! `[fst map][side tokens][dense table][dense limit: u64 LE][table offset: u64
//! LE][fst length: u64 LE]`; the top bit of the dense limit's word says that
//! the map holds no canonical integer at or above the limit
//! ([`ALL_INTEGERS_DENSE`]), so that a probe of one (a new playlist's id, in
//! most runs) is answered without the fst. The map's value says how the id is written:
//! [`QUOTED`] (`"` id `"`, the usual string id), [`BARE`] (the text itself, an
//! integer id), or `SIDE + offset` of a length-prefixed raw token in the side
//! area (a string with escapes, say). The map is built from keys in byte order,
//! as the import's external sort ([`crate::ids::sort`]) gives them, streaming:
//! memory does not grow with the ids beyond the dense table.

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

/// The trailer: dense limit, table offset, fst length.
const TRAILER: usize = 24;

/// A dense slot of users and songs (two bits): absent, written `"id"`,
/// written as the bare integer, or written some other way (ask the fst).
const SLOT_ABSENT: u8 = 0;
const SLOT_QUOTED: u8 = 1;
const SLOT_BARE: u8 = 2;
const SLOT_OTHER: u8 = 3;

/// Set in the trailer's dense-limit word when every canonical integer id is
/// below the limit: a larger one is absent, without asking the fst.
const ALL_INTEGERS_DENSE: u64 = 1 << 63;

/// A dense playlist slot whose position is too large for it: ask the fst.
const POSITION_IN_FST: u32 = u32::MAX;

/// The integers below which ids get a dense slot, for an index of `count` ids:
/// room for ids `1..=count` with a margin, and never more than a u32 position
/// can say.
pub fn dense_limit(count: u64) -> u64 {
    (count + count / 2 + 1024).min(u64::from(u32::MAX) - 1)
}

/// The value of `id` when it is a canonical decimal integer (`0`, or a
/// nonzero digit then digits, at most 18 of them).
pub(crate) fn canonical_integer(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    match bytes {
        [] => None,
        [b'0'] => Some(0),
        [b'1'..=b'9', rest @ ..] if rest.len() < 18 && rest.iter().all(u8::is_ascii_digit) => Some(
            bytes
                .iter()
                .fold(0u64, |n, &b| n * 10 + u64::from(b - b'0')),
        ),
        _ => None,
    }
}

/// Starts loading the cache line of `value` (a hint: no effect on what any
/// read gives).
#[inline]
pub(crate) fn prefetch_read<T>(value: &T) {
    prefetch_address((value as *const T).cast());
}

/// Starts loading the cache line at `address`, which need not be valid: a
/// prefetch reads nothing into the program and never faults.
#[inline]
pub(crate) fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it never faults, reads nothing
    // into the program and writes nothing, and SSE is part of x86_64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// See [`IdIndex::presence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Known(bool),
    /// Ask [`IdIndex::slot_holds`] about this slot.
    InSlot(u64),
}

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
    /// Where the dense table starts in the file, and the integers it covers.
    dense_at: usize,
    dense_limit: u64,
    /// No canonical integer at or above `dense_limit` is in the map.
    all_integers_dense: bool,
    values: Values,
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
        let Some(trailer) = mmap.len().checked_sub(TRAILER) else {
            bail!(bad());
        };
        let number = |i: usize| {
            u64::from_le_bytes(
                mmap[trailer + 8 * i..trailer + 8 * i + 8]
                    .try_into()
                    .expect("8"),
            )
        };
        let (limit_word, dense_at, len) = (number(0), number(1), number(2));
        let all_integers_dense = limit_word & ALL_INTEGERS_DENSE != 0;
        let dense_limit = limit_word & !ALL_INTEGERS_DENSE;
        if len > dense_at || dense_at > trailer as u64 {
            bail!(bad());
        }
        let (dense_at, len) = (dense_at as usize, len as usize);
        let table = (trailer - dense_at) as u64;
        let values = match dense_limit {
            0 => Values::Written,
            n if table == n.div_ceil(4) => Values::Written,
            // Checked: a damaged trailer is an error, not an overflow.
            n if n.checked_mul(4) == Some(table) => Values::Positions,
            _ => bail!(bad()),
        };
        let map = fst::Map::new(MapBytes { mmap, len }).with_context(bad)?;
        Ok(IdIndex {
            map,
            dense_at,
            dense_limit,
            all_integers_dense,
            values,
        })
    }

    fn dense(&self) -> &[u8] {
        let inner = self.map.as_fst().as_inner();
        &inner.mmap[self.dense_at..inner.mmap.len() - TRAILER]
    }

    /// The size of the dense table, in bytes.
    pub fn dense_bytes(&self) -> usize {
        self.dense().len()
    }

    /// Slot `n` of a users or songs table.
    fn written_slot(&self, n: u64) -> u8 {
        (self.dense()[(n / 4) as usize] >> (2 * (n % 4))) & 3
    }

    /// The map's value for `id`: from its dense slot when it has one.
    fn value(&self, id: &str) -> Option<u64> {
        let n = match canonical_integer(id) {
            Some(n) if n < self.dense_limit => n,
            Some(_) if self.all_integers_dense => return None,
            _ => return self.map.get(id),
        };
        match self.values {
            Values::Positions => {
                let at = 4 * n as usize;
                match u32::from_le_bytes(self.dense()[at..at + 4].try_into().expect("4")) {
                    0 => None,
                    POSITION_IN_FST => self.map.get(id),
                    slot => Some(u64::from(slot - 1)),
                }
            }
            Values::Written => match self.written_slot(n) {
                SLOT_ABSENT => None,
                SLOT_QUOTED => Some(QUOTED),
                SLOT_BARE => Some(BARE),
                _ => self.map.get(id),
            },
        }
    }

    /// Asks the processor to start loading the dense slot of the id written
    /// as `token` (a JSON token), if it has one, and returns at once. A
    /// lookup in a table of megabytes nearly always
    /// misses the cache; a change that looks up a playlist and a song, each
    /// prefetched before either is looked up, waits for one miss, not two.
    pub fn prefetch(&self, token: &[u8]) {
        let Some(n) = crate::json::plain_digits(token).and_then(canonical_integer) else {
            return;
        };
        if n < self.dense_limit {
            self.prefetch_slot(n);
        }
    }

    /// The position of the element with id `id` (an index of [`Values::Positions`]).
    pub fn position(&self, id: &str) -> Option<u64> {
        self.value(id)
    }

    /// Whether `id` is in the index.
    pub fn contains(&self, id: &str) -> bool {
        self.value(id).is_some()
    }

    /// Whether the id whose text is the canonical integer `n` is in the
    /// index: one slot when `n` is below the dense limit, as
    /// [`IdIndex::contains`] would answer.
    pub fn holds_integer(&self, n: u64) -> bool {
        if n < self.dense_limit {
            self.slot_holds(n)
        } else {
            self.contains(&n.to_string())
        }
    }

    /// Whether `id` is in the index, or which dense slot says: the same
    /// answer as [`IdIndex::contains`] (with [`IdIndex::slot_holds`]), for
    /// callers that probe many slots and gain by probing them in order.
    pub fn presence(&self, id: &str) -> Presence {
        match canonical_integer(id) {
            Some(n) if n < self.dense_limit => Presence::InSlot(n),
            _ => Presence::Known(self.value(id).is_some()),
        }
    }

    /// Asks the processor to start loading dense slot `n` (below the dense
    /// limit), and returns at once: a hint for a caller that will ask
    /// [`IdIndex::slot_holds`] about it soon.
    pub fn prefetch_slot(&self, n: u64) {
        let at = match self.values {
            Values::Positions => 4 * n,
            Values::Written => n / 4,
        };
        if let Some(byte) = usize::try_from(at).ok().and_then(|at| self.dense().get(at)) {
            prefetch_read(byte);
        }
    }

    /// Whether dense slot `n` (below the dense limit) holds an id, in
    /// whatever form (one the fst holds too counts).
    pub fn slot_holds(&self, n: u64) -> bool {
        match self.values {
            Values::Positions => {
                let at = 4 * n as usize;
                self.dense()[at..at + 4] != [0; 4]
            }
            Values::Written => self.written_slot(n) != SLOT_ABSENT,
        }
    }

    /// How the document writes the id whose text is `id` and which the caller
    /// found written as `token`: `token` itself when the document writes it the
    /// same way (nearly always: no allocation), else the document's form.
    pub fn written_as<'a>(&'a self, id: &str, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let Some(value) = self.value(id) else {
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
        Ok(Some(match self.value(id) {
            None => return Ok(None),
            Some(QUOTED) => Cow::Owned(format!("\"{id}\"")),
            Some(BARE) => Cow::Owned(id.to_string()),
            Some(side) => {
                let inner = self.map.as_fst().as_inner();
                let bytes = &inner.mmap[inner.len..self.dense_at];
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

/// The slots of a users or songs index's dense table, filled as the import
/// reads the document ([`crate::ids::sort::IdSorter::with_dense_table`]):
/// an id whose slot answers for it on its own needs no place in the sorted
/// ids at all, and a repeated one is found as it comes.
#[derive(Default)]
pub struct DenseSlots {
    /// Two bits per integer, as in the index.
    bytes: Vec<u8>,
}

impl DenseSlots {
    /// Integers from here on are not given a slot here: the table stays
    /// under 8 MiB whatever the ids.
    pub const LIMIT: u64 = 1 << 25;

    /// Gives the id `n` (its text a canonical integer below
    /// [`DenseSlots::LIMIT`]), written as `written`, its slot. Returns
    /// `None` when the slot is taken (the id repeats), else whether the slot
    /// answers for it on its own (else the id goes to the map too).
    pub fn take(&mut self, n: u64, id: &str, written: &str) -> Option<bool> {
        let slot = match plain_form(id, written) {
            Some(QUOTED) => SLOT_QUOTED,
            Some(_) => SLOT_BARE,
            None => SLOT_OTHER,
        };
        let byte = (n / 4) as usize;
        if byte >= self.bytes.len() {
            self.bytes.resize((byte + 1).next_power_of_two(), 0);
        }
        let shift = 2 * (n % 4);
        if (self.bytes[byte] >> shift) & 3 != SLOT_ABSENT {
            return None;
        }
        self.bytes[byte] |= slot << shift;
        Some(slot != SLOT_OTHER)
    }
}

/// Writes the index of `ids` (id text, written form), which must come in
/// strictly increasing byte order of the text, to `path` (through a temporary
/// file and a rename). `count` is about how many ids there are (at least the
/// number of distinct ones): it sizes the dense table. `slots` are those
/// the ids of a users or songs index took as they were read: `ids` gives
/// only those whose slot does not answer for them.
pub fn build(
    path: &Path,
    values: Values,
    count: u64,
    slots: Option<DenseSlots>,
    ids: &mut dyn FnMut(&mut AddId) -> Result<()>,
) -> Result<()> {
    let slots = slots.map(|s| s.bytes).unwrap_or_default();
    let dense_limit = dense_limit(count).max(4 * slots.len() as u64);
    let mut dense = match values {
        Values::Written => vec![0u8; dense_limit.div_ceil(4) as usize],
        Values::Positions => vec![0u8; 4 * dense_limit as usize],
    };
    if values == Values::Written {
        dense[..slots.len()].copy_from_slice(&slots);
    }
    let dir = crate::run::paths::directory_of(path);
    let temp = tempfile::Builder::new()
        .prefix(".index.")
        .tempfile_in(dir)
        .with_context(|| format!("creating an id index in {}", dir.display()))?;
    let mut side = Vec::new();
    let mut out = BufWriter::with_capacity(1 << 20, temp);
    let mut builder = fst::MapBuilder::new(&mut out)?;
    let mut all_integers_dense = true;
    // The ids a dense slot answers for skip the map, so the map alone no
    // longer sees every id: their order is checked here.
    // (The empty id, the least of all, needs no check: nothing comes before it.)
    let mut previous = String::new();
    ids(&mut |id: &str, written: &str, position: u64| {
        let value = if values == Values::Positions {
            position
        } else if let Some(plain) = plain_form(id, written) {
            plain
        } else {
            let at = side.len() as u64;
            write_varint(written.len() as u64, &mut side);
            side.extend_from_slice(written.as_bytes());
            SIDE + at
        };
        match canonical_integer(id) {
            // Its slot answers for it: the map need not hold it.
            Some(n) if n < dense_limit && set_dense(&mut dense, values, n, value) => {
                return check_order(&mut previous, id);
            }
            Some(n) if n < dense_limit => {}
            Some(_) => all_integers_dense = false,
            None => {}
        }
        check_order(&mut previous, id)?;
        builder
            .insert(id, value)
            .with_context(|| format!("id index: ids out of order at {id:?}"))
    })?;
    builder.finish()?;
    let map_len = out.stream_position()?;
    out.write_all(&side)?;
    let dense_at = map_len + side.len() as u64;
    out.write_all(&dense)?;
    let flag = if all_integers_dense {
        ALL_INTEGERS_DENSE
    } else {
        0
    };
    for number in [dense_limit | flag, dense_at, map_len] {
        out.write_all(&number.to_le_bytes())?;
    }
    let temp = out.into_inner().map_err(|e| e.into_error())?;
    temp.as_file().sync_all()?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing id index {}", path.display()))?;
    crate::run::paths::sync_directory_of(path)
}

/// [`QUOTED`] when `written` is `"` `id` `"`, [`BARE`] when it is `id`
/// itself; `None` for any other form (escapes, say).
fn plain_form(id: &str, written: &str) -> Option<u64> {
    if written.len() == id.len() + 2
        && written.starts_with('"')
        && written.ends_with('"')
        && &written[1..written.len() - 1] == id
    {
        Some(QUOTED)
    } else {
        (written == id).then_some(BARE)
    }
}

/// Sets slot `n` of a dense table for an id whose map value is `value`;
/// says whether the slot answers for the id on its own (else the reader
/// asks the map: a written form of its own, a position too large for a slot).
fn set_dense(dense: &mut [u8], values: Values, n: u64, value: u64) -> bool {
    match values {
        Values::Positions => {
            // u32::MAX itself, like anything larger, is left to the fst.
            let slot = u32::try_from(value + 1).unwrap_or(POSITION_IN_FST);
            let at = 4 * n as usize;
            dense[at..at + 4].copy_from_slice(&slot.to_le_bytes());
            slot != POSITION_IN_FST
        }
        Values::Written => {
            let slot = match value {
                QUOTED => SLOT_QUOTED,
                BARE => SLOT_BARE,
                _ => SLOT_OTHER,
            };
            dense[(n / 4) as usize] |= slot << (2 * (n % 4));
            slot != SLOT_OTHER
        }
    }
}

/// Fails unless `id` comes after `previous` in byte order; keeps it as the
/// new `previous`.
fn check_order(previous: &mut String, id: &str) -> Result<()> {
    if !previous.is_empty() && id.as_bytes() <= previous.as_bytes() {
        bail!("id index: ids out of order at {id:?}");
    }
    previous.clear();
    previous.push_str(id);
    Ok(())
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
        build(
            &path,
            Values::Written,
            ids.len() as u64,
            None,
            &mut |each| {
                for (id, written) in &ids {
                    each(id, written, 0)?;
                }
                Ok(())
            },
        )
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

    /// The dense table against the plain truth: ids of every kind (canonical
    /// integers below and above the table's limit, leading zeros, `0`,
    /// integers written with escapes or bare, text), and probes of ids that
    /// are absent, for both kinds of index; and the same without any integer
    /// above the limit, where probes above it are answered without the fst.
    #[test]
    fn dense_slots_answer_as_the_fst_does() {
        for beyond_limit in [true, false] {
            let truth = dense_test_ids(beyond_limit);
            for values in [Values::Written, Values::Positions] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join(format!("{values:?}"));
                build(&path, values, truth.len() as u64, None, &mut |each| {
                    for (position, (id, written)) in truth.iter().enumerate() {
                        each(id, written, position as u64 * 3)?;
                    }
                    Ok(())
                })
                .unwrap();
                let index = IdIndex::open(&path).unwrap();
                assert!(
                    index.dense_limit > 3000,
                    "the table covers the small integers"
                );
                assert_eq!(index.all_integers_dense, !beyond_limit);
                let present_by_slot = |id: &str| match index.presence(id) {
                    Presence::Known(known) => known,
                    Presence::InSlot(n) => index.slot_holds(n),
                };
                for (position, (id, written)) in truth.iter().enumerate() {
                    assert!(index.contains(id), "{id}");
                    assert!(present_by_slot(id), "{id}");
                    match values {
                        Values::Written => {
                            assert_eq!(index.written(id).unwrap().as_deref(), Some(&written[..]))
                        }
                        Values::Positions => {
                            assert_eq!(index.position(id), Some(position as u64 * 3))
                        }
                    }
                }
                let present: std::collections::HashSet<&str> =
                    truth.iter().map(|(id, _)| &id[..]).collect();
                let edges = [index.dense_limit - 1, index.dense_limit, u64::MAX / 10];
                for n in (0..40_000u64)
                    .chain((0..3000).map(|n| n * 10_007 + n % 2))
                    .chain(edges)
                {
                    let probe = n.to_string();
                    // A hint, of any token: never a panic, never a change.
                    index.prefetch(probe.as_bytes());
                    index.prefetch(format!("\"{probe}\"").as_bytes());
                    index.prefetch(format!("\"0{probe}").as_bytes());
                    assert_eq!(
                        index.contains(&probe),
                        present.contains(&probe[..]),
                        "{probe}"
                    );
                    assert_eq!(
                        present_by_slot(&probe),
                        present.contains(&probe[..]),
                        "{probe}"
                    );
                }
            }
        }
    }

    /// Ids of every kind, sorted, with their written forms; canonical
    /// integers far above the dense limit only if `beyond_limit`.
    fn dense_test_ids(beyond_limit: bool) -> Vec<(String, String)> {
        let mut truth: Vec<(String, String)> = Vec::new();
        for n in 0..3000u64 {
            let id = match n % 7 {
                0 if beyond_limit => format!("{}", n * 10_007), // beyond the limit, mostly
                1 => format!("0{n}"),
                2 => format!("x{n}"),
                _ => format!("{n}"),
            };
            let written = match n % 5 {
                0 => id.clone(),
                1 if id.starts_with(|c: char| c.is_ascii_digit()) => {
                    let first = id.as_bytes()[0];
                    format!("\"\\u00{first:x}{}\"", &id[1..])
                }
                _ => format!("\"{id}\""),
            };
            truth.push((id, written));
        }
        truth.sort();
        truth.dedup_by(|a, b| a.0 == b.0);
        truth
    }

    #[test]
    fn keys_out_of_order_are_an_error_and_damage_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids");
        let out_of_order = build(&path, Values::Positions, 2, None, &mut |each| {
            each("2", "2", 0)?;
            each("1", "1", 1)
        });
        assert!(out_of_order.is_err());
        assert!(!path.exists());
        std::fs::write(&path, b"short").unwrap();
        assert!(IdIndex::open(&path).is_err());
        // A trailer whose dense limit would overflow the table's size.
        let mut trailer = Vec::new();
        for number in [u64::MAX / 2, 0, 0] {
            trailer.extend_from_slice(&number.to_le_bytes());
        }
        std::fs::write(&path, &trailer).unwrap();
        assert!(IdIndex::open(&path).is_err());
    }
}
