//! Sorting the document's user or song ids for their index, in bounded memory.
//!
//! The import sees ids in document order; an [`crate::id_index`] is built from
//! ids in byte order. [`IdSorter`] keeps up to [`RUN_BYTES`] of ids in memory,
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

/// In-memory ids before a run is spilled, in bytes (texts plus [`PER_ID`]).
pub const RUN_BYTES: usize = 16 << 20;

/// What one id costs in memory besides its texts: the record and two heap
/// allocations with the allocator's overhead.
const PER_ID: usize = std::mem::size_of::<FoundId>() + 2 * 32;

/// One id as the import found it.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// See the module docs.
#[derive(Default)]
pub struct IdSorter {
    pending: Vec<FoundId>,
    pending_bytes: usize,
    runs: Vec<File>,
}

impl IdSorter {
    pub fn push(&mut self, found: FoundId) -> Result<()> {
        self.pending_bytes += found.id.len() + found.written.len() + PER_ID;
        self.pending.push(found);
        if self.pending_bytes >= RUN_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        self.pending.sort_unstable();
        let file = tempfile::tempfile().context("creating a temporary file to sort ids")?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        for found in self.pending.drain(..) {
            write_record(&mut out, &found)?;
        }
        let mut file = out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        self.pending_bytes = 0;
        Ok(())
    }

    /// Every id in byte order, each once, to `each` (text, written form); or the
    /// first duplicate in document order, in which case `each` may have seen
    /// some ids already.
    pub fn merge(
        mut self,
        each: &mut dyn FnMut(&str, &str) -> Result<()>,
    ) -> Result<Option<Duplicate>> {
        self.pending.sort_unstable();
        let mut sources: Vec<Source> = self
            .runs
            .drain(..)
            .map(|f| Source::Run(BufReader::with_capacity(1 << 16, f)))
            .collect();
        sources.push(Source::Memory(
            std::mem::take(&mut self.pending).into_iter(),
        ));
        let mut heap = BinaryHeap::new();
        for (i, source) in sources.iter_mut().enumerate() {
            if let Some(found) = source.next()? {
                heap.push(Head(found, i));
            }
        }
        let mut previous: Option<FoundId> = None;
        let mut duplicate: Option<Duplicate> = None;
        while let Some(Head(found, i)) = heap.pop() {
            if let Some(next) = sources[i].next()? {
                heap.push(Head(next, i));
            }
            match &previous {
                Some(p) if p.id == found.id => {
                    if duplicate
                        .as_ref()
                        .is_none_or(|d| found.position < d.position)
                    {
                        duplicate = Some(Duplicate {
                            id: found.id.clone(),
                            position: found.position,
                            offset: found.offset,
                        });
                    }
                    continue;
                }
                _ => {}
            }
            if duplicate.is_none() {
                each(&found.id, &found.written)?;
            }
            previous = Some(found);
        }
        Ok(duplicate)
    }
}

/// A run's next id, ordered for a min-heap (smallest first).
struct Head(FoundId, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Head {}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

enum Source {
    Run(BufReader<File>),
    Memory(std::vec::IntoIter<FoundId>),
}

impl Source {
    fn next(&mut self) -> Result<Option<FoundId>> {
        match self {
            Source::Memory(it) => Ok(it.next()),
            Source::Run(r) => read_record(r),
        }
    }
}

fn write_record(out: &mut impl Write, found: &FoundId) -> Result<()> {
    for text in [&found.id, &found.written] {
        out.write_all(&(text.len() as u32).to_le_bytes())?;
        out.write_all(text.as_bytes())?;
    }
    out.write_all(&found.position.to_le_bytes())?;
    out.write_all(&found.offset.to_le_bytes())?;
    Ok(())
}

fn read_record(r: &mut impl Read) -> Result<Option<FoundId>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let id = read_text(r, len)?;
    r.read_exact(&mut len)?;
    let written = read_text(r, len)?;
    let mut number = [0u8; 8];
    r.read_exact(&mut number)?;
    let position = u64::from_le_bytes(number);
    r.read_exact(&mut number)?;
    let offset = u64::from_le_bytes(number);
    Ok(Some(FoundId {
        id,
        written,
        position,
        offset,
    }))
}

fn read_text(r: &mut impl Read, len: [u8; 4]) -> Result<String> {
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut bytes)?;
    Ok(String::from_utf8(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, position: u64) -> FoundId {
        FoundId {
            id: id.into(),
            written: format!("\"{id}\""),
            position,
            offset: position * 10,
        }
    }

    fn sorted(sorter: IdSorter) -> (Vec<String>, Option<Duplicate>) {
        let mut out = Vec::new();
        let dup = sorter
            .merge(&mut |id, _| {
                out.push(id.to_string());
                Ok(())
            })
            .unwrap();
        (out, dup)
    }

    #[test]
    fn merges_spilled_runs_in_byte_order() {
        let mut sorter = IdSorter::default();
        let mut ids: Vec<String> = (0..5000)
            .map(|i| format!("{}", (i * 7919) % 5000))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            sorter.push(found(id, i as u64)).unwrap();
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
            sorter.push(found(id, i as u64)).unwrap();
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
}
