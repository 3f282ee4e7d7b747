//! Sorting the document's user or song ids for their index, in bounded memory.
//!
//! The import sees ids in document order; an [`crate::ids::index`] is built from
//! ids in byte order. [`IdSorter`] keeps up to [`RUN_BYTES`] of ids (records and
//! their sort keys together) in memory,
//! sorts them and spills them to a temporary file as one sorted run, then
//! merges the runs ([`IdSorter::merge`]). Memory stays bounded whatever the
//! number of ids (ten million ids are about ten runs); disk holds the ids once.
//!
//! Equal ids meet in the merge, which is where a duplicate id in the document
//! is found: [`IdSorter::merge`] reports, of all duplicated ids, the element
//! that repeats an id earliest in the document (the one a one-pass reader
//! would stop at).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

use anyhow::{Context, Result};

use crate::ids::index::{canonical_integer, AddId, DenseSlots};

/// In-memory ids before a run is spilled, in bytes of the arena and its index.
pub const RUN_BYTES: usize = 16 << 20;

/// One id as the import found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FoundId {
    /// Its text (how ids are compared).
    pub id: String,
    /// How the document writes it.
    pub written: String,
    /// The element's position in its array, and its byte offset in MIXTAPE.
    pub position: u64,
    pub offset: u64,
}

impl Ord for FoundId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.id.as_bytes(), self.position).cmp(&(other.id.as_bytes(), other.position))
    }
}

impl PartialOrd for FoundId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The first element (in document order) whose id an earlier element has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub id: String,
    pub position: u64,
    pub offset: u64,
}

/// See the module docs. Ids wait in one arena (no allocation per id) in the
/// record format of the runs.
#[derive(Default)]
pub struct IdSorter {
    /// With [`IdSorter::with_dense_table`]: the slots of the index's dense
    /// table, taken as ids come, and the first id found to repeat there.
    dense: Option<(DenseSlots, Option<Duplicate>)>,
    arena: Vec<u8>,
    /// Each record's id [`prefix`] and where it starts in `arena`.
    records: Vec<(u64, u32)>,
    runs: Vec<File>,
    /// How many ids were pushed, in all.
    pushed: u64,
}

/// A record in the arena: `id_len:u32 written_len:u32 position:u64 offset:u64
/// id written` (little endian), the same as in a run file.
const HEADER: usize = 24;

/// A record's fields, borrowed from the arena.
struct Record<'a> {
    id: &'a [u8],
    written: &'a [u8],
    position: u64,
    offset: u64,
}

/// An id's first 8 bytes (zeros after a shorter one) as a big-endian
/// integer: ids in byte order have prefixes in order, so only equal prefixes
/// need the ids themselves compared.
fn prefix(id: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = id.len().min(8);
    bytes[..n].copy_from_slice(&id[..n]);
    u64::from_be_bytes(bytes)
}

/// Bytes of `records` per record, counted against [`RUN_BYTES`].
const RECORD_ENTRY: usize = std::mem::size_of::<(u64, u32)>();

fn record_at(arena: &[u8], at: usize) -> Record<'_> {
    let number = |i: usize, n: usize| {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&arena[at + i..at + i + n]);
        u64::from_le_bytes(bytes)
    };
    let id_len = number(0, 4) as usize;
    let written_len = number(4, 4) as usize;
    let id_at = at + HEADER;
    Record {
        id: &arena[id_at..id_at + id_len],
        written: &arena[id_at + id_len..id_at + id_len + written_len],
        position: number(8, 8),
        offset: number(16, 8),
    }
}

impl IdSorter {
    /// How many ids were pushed (repeats included).
    pub fn len(&self) -> u64 {
        self.pushed
    }

    pub fn is_empty(&self) -> bool {
        self.pushed == 0
    }

    /// A sorter for a users or songs index: an id that is a small integer
    /// takes its slot in the index's dense table at once
    /// ([`DenseSlots`]), and is sorted only if the slot cannot answer for
    /// it. Most documents number their elements: sorting their ids by
    /// bytes was a quarter of the import, for an index that holds none of
    /// them in its map.
    pub fn with_dense_table() -> IdSorter {
        IdSorter {
            dense: Some((DenseSlots::default(), None)),
            ..IdSorter::default()
        }
    }

    pub fn push(&mut self, id: &str, written: &str, position: u64, offset: u64) -> Result<()> {
        self.pushed += 1;
        if let Some((slots, repeat)) = &mut self.dense {
            let small = canonical_integer(id).filter(|&n| n < DenseSlots::LIMIT);
            match small.map(|n| slots.take(n, id, written)) {
                None | Some(Some(false)) => {} // sorted, too
                Some(Some(true)) => return Ok(()),
                Some(None) => {
                    // Ids come in document order: the first repeat found here
                    // is the earliest of those the slots find.
                    repeat.get_or_insert_with(|| Duplicate {
                        id: id.to_string(),
                        position,
                        offset,
                    });
                    return Ok(());
                }
            }
        }
        // The arena stays under RUN_BYTES (a spill empties it), so an
        // offset fits in a u32.
        self.records
            .push((prefix(id.as_bytes()), self.arena.len() as u32));
        self.arena
            .extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.arena
            .extend_from_slice(&(written.len() as u32).to_le_bytes());
        self.arena.extend_from_slice(&position.to_le_bytes());
        self.arena.extend_from_slice(&offset.to_le_bytes());
        self.arena.extend_from_slice(id.as_bytes());
        self.arena.extend_from_slice(written.as_bytes());
        if self.arena.len() + RECORD_ENTRY * self.records.len() >= RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts the arena's records by id, then position. Each record is
    /// sorted with its id's [`prefix`], so that nearly every comparison is
    /// one of two integers in the sort's own array rather than two slices
    /// found through the arena (the sort was a tenth of the import).
    fn sort(&mut self) {
        let arena = &self.arena;
        self.records
            .sort_unstable_by(|&(prefix_a, a), &(prefix_b, b)| {
                prefix_a.cmp(&prefix_b).then_with(|| {
                    let (a, b) = (record_at(arena, a as usize), record_at(arena, b as usize));
                    (a.id, a.position).cmp(&(b.id, b.position))
                })
            });
    }

    fn spill(&mut self) -> Result<()> {
        self.sort();
        let file = tempfile::tempfile().context("creating a temporary file to sort ids")?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        for &(_, at) in &self.records {
            let at = at as usize;
            let r = record_at(&self.arena, at);
            out.write_all(&self.arena[at..at + HEADER + r.id.len() + r.written.len()])?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        self.arena.clear();
        self.records.clear();
        Ok(())
    }

    /// The dense table's slots the ids took ([`IdSorter::with_dense_table`]),
    /// for the index; the ids [`IdSorter::merge`] gives then are only those
    /// the slots do not answer for.
    pub fn take_dense_slots(&mut self) -> Option<DenseSlots> {
        let (slots, _) = self.dense.as_mut()?;
        Some(std::mem::take(slots))
    }

    /// Every id in byte order, each once, to `each` (text, written form); or the
    /// first duplicate in document order, in which case `each` may have seen
    /// some ids already.
    pub fn merge(mut self, each: &mut AddId) -> Result<Option<Duplicate>> {
        let repeat = self.dense.take().and_then(|(_, repeat)| repeat);
        let sorted = self.merge_sorted(each)?;
        // The earlier of the slots' repeat and the sorted ids' one.
        Ok(match (repeat, sorted) {
            (Some(a), Some(b)) => Some(if a.position <= b.position { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    fn merge_sorted(mut self, each: &mut AddId) -> Result<Option<Duplicate>> {
        let mut dups = Duplicates::default();
        if self.runs.is_empty() {
            // Everything fits in memory (the usual case): no files, no heap.
            self.sort();
            for &(_, at) in &self.records {
                let r = record_at(&self.arena, at as usize);
                let (id, written) = (utf8(r.id)?, utf8(r.written)?);
                if !dups.repeats(id, r.position, r.offset) {
                    each(id, written, r.position)?;
                }
            }
            return Ok(dups.first);
        }
        self.spill()?;
        let mut sources: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(1 << 16, f))
            .collect();
        let mut heap = BinaryHeap::new();
        for (i, source) in sources.iter_mut().enumerate() {
            let mut head = Head(0, FoundId::default(), i);
            if read_record(source, &mut head.1)? {
                head.0 = prefix(head.1.id.as_bytes());
                heap.push(head);
            }
        }
        // The least head is passed on, then its run's next record is read
        // into it in place (its buffers reused) and it sinks to its place.
        while let Some(mut head) = heap.peek_mut() {
            let found = &head.1;
            if !dups.repeats(&found.id, found.position, found.offset) {
                each(&found.id, &found.written, found.position)?;
            }
            let run = head.2;
            if read_record(&mut sources[run], &mut head.1)? {
                head.0 = prefix(head.1.id.as_bytes());
            } else {
                std::collections::binary_heap::PeekMut::pop(head);
            }
        }
        Ok(dups.first)
    }
}

/// Watches the sorted stream for repeated ids.
#[derive(Default)]
struct Duplicates {
    previous: Option<String>,
    /// The repeat earliest in document order so far.
    first: Option<Duplicate>,
}

impl Duplicates {
    /// Whether `id` repeats the id before it; once any repeat is found,
    /// every later id counts as one (nothing more is passed on).
    fn repeats(&mut self, id: &str, position: u64, offset: u64) -> bool {
        if self.previous.as_deref() == Some(id) {
            if self.first.as_ref().is_none_or(|d| position < d.position) {
                self.first = Some(Duplicate {
                    id: id.to_string(),
                    position,
                    offset,
                });
            }
            return true;
        }
        match &mut self.previous {
            Some(p) => {
                p.clear();
                p.push_str(id);
            }
            None => self.previous = Some(id.to_string()),
        }
        self.first.is_some()
    }
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    Ok(std::str::from_utf8(bytes)?)
}

/// A run's next id with its [`prefix`], ordered for a min-heap (smallest
/// first).
struct Head(u64, FoundId, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}
impl Eq for Head {}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.0.cmp(&self.0)).then_with(|| other.1.cmp(&self.1))
    }
}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Reads a run's next record into `into` (reusing its buffers); `false` at
/// the end of the run.
fn read_record(r: &mut impl Read, into: &mut FoundId) -> Result<bool> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let number = |i: usize, n: usize| {
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&header[i..i + n]);
        u64::from_le_bytes(bytes)
    };
    read_text(r, number(0, 4), &mut into.id)?;
    read_text(r, number(4, 4), &mut into.written)?;
    into.position = number(8, 8);
    into.offset = number(16, 8);
    Ok(true)
}

/// Reads `len` bytes of UTF-8 into `text`, replacing what it held.
fn read_text(r: &mut impl Read, len: u64, text: &mut String) -> Result<()> {
    let mut bytes = std::mem::take(text).into_bytes();
    bytes.clear();
    bytes.resize(len as usize, 0);
    r.read_exact(&mut bytes)?;
    *text = String::from_utf8(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(sorter: &mut IdSorter, id: &str, position: u64) {
        sorter
            .push(id, &format!("\"{id}\""), position, position * 10)
            .unwrap();
    }

    fn sorted(sorter: IdSorter) -> (Vec<String>, Option<Duplicate>) {
        let mut out = Vec::new();
        let dup = sorter
            .merge(&mut |id, _, _| {
                out.push(id.to_string());
                Ok(())
            })
            .unwrap();
        (out, dup)
    }

    /// Ids of every form, small integers among them, some repeated, in
    /// document order: (id, written).
    fn ids_of_every_form(seed: u64, repeats: bool) -> Vec<(String, String)> {
        let mut state = seed | 1;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let count = 1 + next(3000);
        (0..count)
            .map(|_| {
                let n = match next(4) {
                    0 => next(50),
                    1 => next(count * 2),
                    2 => DenseSlots::LIMIT - 2 + next(4),
                    _ => next(1 << 40),
                };
                let id = match next(8) {
                    0 => format!("0{n}"),
                    1 => format!("x{n}"),
                    _ => n.to_string(),
                };
                let written = match next(6) {
                    0 => id.clone(),
                    1 => format!("\"\\u00{:x}{}\"", id.as_bytes()[0], &id[1..]),
                    _ => format!("\"{id}\""),
                };
                (id, written)
            })
            .fold(Vec::new(), |mut ids, found| {
                if repeats || !ids.iter().any(|(id, _)| id == &found.0) {
                    ids.push(found);
                }
                ids
            })
    }

    /// An index built through the dense table's slots answers every id as
    /// one built from all the ids sorted, and the same repeat is reported.
    #[test]
    fn ids_in_dense_slots_give_the_same_index_and_the_same_repeat() {
        use crate::ids::index::{build, IdIndex, Values};
        let dir = tempfile::tempdir().unwrap();
        for seed in 0..40u64 {
            let ids = ids_of_every_form(seed, seed % 2 == 0);
            let mut indexes = Vec::new();
            let mut repeats = Vec::new();
            for (k, mut sorter) in [IdSorter::default(), IdSorter::with_dense_table()]
                .into_iter()
                .enumerate()
            {
                for (position, (id, written)) in ids.iter().enumerate() {
                    let position = position as u64;
                    sorter.push(id, written, position, position * 7).unwrap();
                }
                let path = dir.path().join(format!("{seed}-{k}"));
                let (count, slots) = (sorter.len(), sorter.take_dense_slots());
                let mut sorter = Some(sorter);
                let mut repeat = None;
                build(&path, Values::Written, count, slots, &mut |add| {
                    repeat = sorter.take().unwrap().merge(add)?;
                    Ok(())
                })
                .unwrap();
                repeats.push(repeat);
                indexes.push(IdIndex::open(&path).unwrap());
            }
            assert_eq!(repeats[0], repeats[1], "seed {seed}");
            assert_eq!(
                repeats[0].is_some(),
                ids.len() > ids_of_every_form(seed, false).len()
            );
            if repeats[0].is_some() {
                continue;
            }
            let probes = ids
                .iter()
                .map(|(id, _)| id.clone())
                .chain((0..200).map(|n| n.to_string()));
            for id in probes {
                let [plain, slotted] = [&indexes[0], &indexes[1]].map(|index| {
                    (
                        index.contains(&id),
                        index.written(&id).unwrap().map(|w| w.into_owned()),
                    )
                });
                assert_eq!(plain, slotted, "seed {seed}: {id}");
            }
        }
    }

    #[test]
    fn merges_spilled_runs_in_byte_order() {
        let mut sorter = IdSorter::default();
        let mut ids: Vec<String> = (0..5000)
            .map(|i| format!("{}", (i * 7919) % 5000))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            push(&mut sorter, id, i as u64);
            if i % 1000 == 999 {
                sorter.spill().unwrap();
            }
        }
        assert_eq!(sorter.runs.len(), 5);
        let (out, dup) = sorted(sorter);
        ids.sort();
        assert_eq!(out, ids);
        assert_eq!(dup, None);
    }

    #[test]
    fn reports_the_earliest_repeat_in_document_order() {
        let mut sorter = IdSorter::default();
        for (i, id) in ["b", "a", "x", "b", "a", "a"].iter().enumerate() {
            push(&mut sorter, id, i as u64);
            if i == 2 {
                sorter.spill().unwrap();
            }
        }
        let (_, dup) = sorted(sorter);
        assert_eq!(
            dup,
            Some(Duplicate {
                id: "b".into(),
                position: 3,
                offset: 30
            })
        );
    }

    #[test]
    fn in_memory_sort_finds_the_same_repeat_and_order() {
        let mut sorter = IdSorter::default();
        for (i, id) in ["b", "a", "x", "b", "a", "a"].iter().enumerate() {
            push(&mut sorter, id, i as u64);
        }
        assert!(sorter.runs.is_empty());
        let (_, dup) = sorted(sorter);
        assert_eq!(dup.map(|d| (d.id, d.position)), Some(("b".to_string(), 3)));
        let mut sorter = IdSorter::default();
        for (i, id) in ["10", "9", "1"].iter().enumerate() {
            push(&mut sorter, id, i as u64);
        }
        assert_eq!(
            sorted(sorter),
            (vec!["1".into(), "10".into(), "9".into()], None)
        );
    }

    /// Ids whose first 16 bytes tie (long ids, NUL bytes, a shorter id that
    /// another extends) still come out in byte order, in memory and from
    /// spilled runs.
    #[test]
    fn ids_that_share_a_prefix_sort_by_every_byte() {
        let stems = [
            "",
            "a",
            "a\u{0}",
            "a\u{0}\u{0}",
            "é",
            "0123456789abcdef",
            "0123456789abcde",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ids: Vec<String> = (0..3000)
            .map(|_| {
                let stem = stems[(next() % stems.len() as u64) as usize];
                let tail = match next() % 4 {
                    0 => String::new(),
                    1 => "\u{0}".to_string(),
                    _ => format!("{}", next() % 1000),
                };
                format!("{stem}{tail}")
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .rev()
            .collect();
        for spill_every in [usize::MAX, 97] {
            let mut sorter = IdSorter::default();
            for (i, id) in ids.iter().enumerate() {
                push(&mut sorter, id, i as u64);
                if i % spill_every == spill_every - 1 {
                    sorter.spill().unwrap();
                }
            }
            let (out, dup) = sorted(sorter);
            let mut expected = ids.clone();
            expected.sort();
            assert_eq!(out, expected, "spilling every {spill_every}");
            assert_eq!(dup, None);
        }
    }
}
