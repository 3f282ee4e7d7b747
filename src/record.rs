//! The compact encoding of recorded changes, as workers store them in `blocks`.
//!
//! SQLite has one write lock, so what a worker does while holding it is serial.
//! One row per change would make that serial part as large as the work itself
//! (DESIGN-NOTES: scaling stops at 2 workers). Instead a worker encodes each
//! batch of changes into one blob per merge partition, and writes a handful of
//! rows per batch. The merge reads back one partition at a time.
//!
//! Format: a sequence of records, each
//! `op:u8 index:varint` followed by the op's fields; a byte string is
//! `len:varint bytes`; varints are LEB128. Ids are stored as written (raw JSON
//! tokens): the merge needs both their text and their written form, and the text
//! is cheap to recover from the token.

use anyhow::{bail, Result};

const ADD_PLAYLIST: u8 = 1;
const ADD_PLAYLIST_AUTO: u8 = 2;
const REMOVE_PLAYLIST: u8 = 3;
const ADD_SONG: u8 = 4;
const REMOVE_SONG: u8 = 5;

/// A change that passed every check a worker can make, with its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<'a> {
    pub index: u64,
    pub body: Body<'a>,
}

/// What a recorded change does. Owners and songs of new playlists, and songs
/// added, are written the way the document writes their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    AddPlaylist {
        /// How its id is given: explicitly, or automatically.
        id: NewId<'a>,
        owner: &'a [u8],
        songs: Vec<&'a [u8]>,
        /// The copied members, already rendered as `,"key":value` pairs.
        copied: &'a [u8],
    },
    RemovePlaylist {
        playlist: &'a [u8],
    },
    AddSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
    RemoveSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
}

/// The id of a new playlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewId<'a> {
    /// As the change wrote it.
    Given(&'a [u8]),
    /// The `ordinal`-th (1-based) `add_playlist` without `playlist_id` in chunk
    /// `chunk`; the merge turns it into `M + k` (README "The changes file").
    Auto { chunk: u64, ordinal: u64 },
}

impl<'a> Body<'a> {
    /// The op of the change this records.
    pub fn op(&self) -> crate::change::Op {
        use crate::change::Op;
        match self {
            Body::AddPlaylist { .. } => Op::AddPlaylist,
            Body::RemovePlaylist { .. } => Op::RemovePlaylist,
            Body::AddSong { .. } => Op::AddSong,
            Body::RemoveSong { .. } => Op::RemoveSong,
        }
    }

    /// The playlist this change is about, as written (`None` for automatic ids).
    pub fn playlist(&self) -> Option<&'a [u8]> {
        match self {
            Body::AddPlaylist {
                id: NewId::Given(p),
                ..
            }
            | Body::RemovePlaylist { playlist: p }
            | Body::AddSong { playlist: p, .. }
            | Body::RemoveSong { playlist: p, .. } => Some(*p),
            Body::AddPlaylist {
                id: NewId::Auto { .. },
                ..
            } => None,
        }
    }
}

/// Appends `v` as a LEB128 varint (also the rejects' rows, `store::sqlite`).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `b` with its length before it.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends `rec` to `out`.
pub fn encode(rec: &Recorded, out: &mut Vec<u8>) {
    let tag = match &rec.body {
        Body::AddPlaylist {
            id: NewId::Given(_),
            ..
        } => ADD_PLAYLIST,
        Body::AddPlaylist {
            id: NewId::Auto { .. },
            ..
        } => ADD_PLAYLIST_AUTO,
        Body::RemovePlaylist { .. } => REMOVE_PLAYLIST,
        Body::AddSong { .. } => ADD_SONG,
        Body::RemoveSong { .. } => REMOVE_SONG,
    };
    out.push(tag);
    put_varint(out, rec.index);
    match &rec.body {
        Body::AddPlaylist {
            id,
            owner,
            songs,
            copied,
        } => {
            match id {
                NewId::Given(p) => put_bytes(out, p),
                NewId::Auto { chunk, ordinal } => {
                    put_varint(out, *chunk);
                    put_varint(out, *ordinal);
                }
            }
            put_bytes(out, owner);
            put_varint(out, songs.len() as u64);
            for s in songs {
                put_bytes(out, s);
            }
            put_bytes(out, copied);
        }
        Body::RemovePlaylist { playlist } => put_bytes(out, playlist),
        Body::AddSong { playlist, song } | Body::RemoveSong { playlist, song } => {
            put_bytes(out, playlist);
            put_bytes(out, song);
        }
    }
}

/// Reads records back from a blob made by [`encode`].
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Decoder { data, pos: 0 }
    }

    pub(crate) fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let Some(&b) = self.data.get(self.pos) else {
                bail!("corrupt block: truncated number");
            };
            self.pos += 1;
            if shift > 63 {
                bail!("corrupt block: number too long");
            }
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// Whether every byte has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next byte, or `None` at the end of the data.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let &b = self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// Skips `len` bytes, returning where they start; `None` when fewer are left.
    pub(crate) fn skip_bytes(&mut self, len: usize) -> Option<usize> {
        let from = self.pos;
        self.pos = from.checked_add(len).filter(|&e| e <= self.data.len())?;
        Some(from)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()? as usize;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("corrupt block: truncated bytes");
        };
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn record(&mut self, tag: u8) -> Result<Recorded<'a>> {
        let index = self.varint()?;
        let body = match tag {
            ADD_PLAYLIST | ADD_PLAYLIST_AUTO => {
                let id = if tag == ADD_PLAYLIST {
                    NewId::Given(self.bytes()?)
                } else {
                    NewId::Auto {
                        chunk: self.varint()?,
                        ordinal: self.varint()?,
                    }
                };
                let owner = self.bytes()?;
                let n = self.varint()?;
                let mut songs = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    songs.push(self.bytes()?);
                }
                let copied = self.bytes()?;
                Body::AddPlaylist {
                    id,
                    owner,
                    songs,
                    copied,
                }
            }
            REMOVE_PLAYLIST => Body::RemovePlaylist {
                playlist: self.bytes()?,
            },
            ADD_SONG => Body::AddSong {
                playlist: self.bytes()?,
                song: self.bytes()?,
            },
            REMOVE_SONG => Body::RemoveSong {
                playlist: self.bytes()?,
                song: self.bytes()?,
            },
            other => bail!("corrupt block: unknown record type {other}"),
        };
        Ok(Recorded { index, body })
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Recorded<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let tag = self.byte()?;
        Some(self.record(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let recs = vec![
            Recorded {
                index: 0,
                body: Body::AddPlaylist {
                    id: NewId::Given(b"\"7\""),
                    owner: b"1",
                    songs: vec![b"\"1\"", b"2"],
                    copied: b",\"name\":\"x\"",
                },
            },
            Recorded {
                index: 300,
                body: Body::AddPlaylist {
                    id: NewId::Auto {
                        chunk: 3,
                        ordinal: 1 << 40,
                    },
                    owner: b"1",
                    songs: vec![],
                    copied: b"",
                },
            },
            Recorded {
                index: u64::MAX,
                body: Body::RemovePlaylist { playlist: b"\"\"" },
            },
            Recorded {
                index: 5,
                body: Body::AddSong {
                    playlist: b"1",
                    song: b"\"2\"",
                },
            },
            Recorded {
                index: 6,
                body: Body::RemoveSong {
                    playlist: b"1",
                    song: b"\"2\"",
                },
            },
        ];
        let mut blob = Vec::new();
        for r in &recs {
            encode(r, &mut blob);
        }
        let back: Vec<Recorded> = Decoder::new(&blob).collect::<Result<_>>().unwrap();
        assert_eq!(back, recs);
        // Every truncation is an error, never a panic.
        for cut in 0..blob.len() {
            let _ = Decoder::new(&blob[..cut]).collect::<Result<Vec<_>>>();
        }
        assert!(Decoder::new(&blob[..blob.len() - 1])
            .collect::<Result<Vec<_>>>()
            .is_err());
    }
}
