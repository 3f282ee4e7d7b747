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
//! is cheap to recover from the token. An id token that is a canonical integer
//! (`[1-9][0-9]{0,17}` or `0`), bare or in quotes, nearly every id, is stored as
//! one varint `n << 2 | form` (a few bytes instead of its text, its quotes and
//! its length); any other as `len << 2` and its bytes ([`Token`]). On L that
//! made blocks 2.3 times smaller, and the apply writes them twice (the WAL, then
//! the database) and the merge reads them once.

use std::fmt;
use std::ops::Deref;

use anyhow::{bail, Result};

use crate::ids::key::IdKey;

const ADD_PLAYLIST: u8 = 1;
const ADD_PLAYLIST_AUTO: u8 = 2;
const REMOVE_PLAYLIST: u8 = 3;
const ADD_SONG: u8 = 4;
const REMOVE_SONG: u8 = 5;

/// An id token of a record, as written (a JSON string or integer): borrowed
/// from the change or the block, or rebuilt from the integer a block holds.
#[derive(Clone, Copy)]
pub struct Token<'a>(TokenRepr<'a>);

#[derive(Clone, Copy)]
enum TokenRepr<'a> {
    Borrowed(&'a [u8]),
    /// The text of a canonical integer, quoted or bare: at most 20 bytes.
    Inline {
        len: u8,
        bytes: [u8; INLINE_BYTES],
    },
}

// Records are moved by value as they are decoded: a token stays small.
const _: () = assert!(std::mem::size_of::<Token>() <= 24);

/// The longest canonical integer stored as a number: 18 digits, below 2^62.
const MAX_DIGITS: usize = 18;
const INLINE_BYTES: usize = MAX_DIGITS + 2;

/// The forms of a token in a block: the two low bits of its first varint.
const FORM_BYTES: u64 = 0;
const FORM_QUOTED: u64 = 1;
const FORM_BARE: u64 = 2;

impl<'a> From<&'a [u8]> for Token<'a> {
    fn from(raw: &'a [u8]) -> Token<'a> {
        Token(TokenRepr::Borrowed(raw))
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Token<'a> {
    fn from(raw: &'a [u8; N]) -> Token<'a> {
        Token(TokenRepr::Borrowed(raw))
    }
}

impl Deref for Token<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            TokenRepr::Borrowed(raw) => raw,
            TokenRepr::Inline { len, bytes } => &bytes[..*len as usize],
        }
    }
}

impl PartialEq for Token<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Token<'_> {}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

impl<'a> Token<'a> {
    /// The token's key: [`IdKey::raw`] of its text; for a rebuilt integer,
    /// its digits taken in one load, without a pass over them (the merge
    /// keys two tokens a record).
    pub fn key(&self) -> IdKey<'_> {
        if let TokenRepr::Inline { len, bytes } = &self.0 {
            let quote = usize::from(bytes[0] == b'"');
            let digits = *len as usize - 2 * quote;
            if digits < 16 {
                let mut text = [0u8; 16];
                text.copy_from_slice(&bytes[quote..quote + 16]);
                let text = u128::from_le_bytes(text) & ((1u128 << (8 * digits)) - 1);
                return IdKey::Packed(text | (digits as u128) << 120);
            }
        }
        IdKey::raw(self)
    }

    /// The token of integer `n` of at most [`FAST_DIGITS`] digits: its
    /// characters made eight at a time in a register ([`eight_digits`]) and
    /// stored at once, not a digit at a time: the merge makes two tokens for
    /// every record.
    fn of_short_integer(n: u64, quoted: bool) -> Token<'a> {
        const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;
        let (high, low) = (n / 100_000_000, n % 100_000_000);
        let low = eight_digits(low);
        let (mut text, digits) = if high == 0 {
            // The leading zeros are the low bytes that hold 0 (`n` = 0
            // keeps its one digit).
            let zeros = (low.trailing_zeros() / 8).min(7);
            (u128::from((low | ASCII_ZEROS) >> (8 * zeros)), 8 - zeros)
        } else {
            let high = eight_digits(high);
            let zeros = high.trailing_zeros() / 8;
            let text = u128::from(high | ASCII_ZEROS) | u128::from(low | ASCII_ZEROS) << 64;
            (text >> (8 * zeros), 16 - zeros)
        };
        let mut len = digits;
        if quoted {
            text = text << 8 | u128::from(b'"') | u128::from(b'"') << (8 * (digits + 1));
            len += 2;
        }
        let mut bytes = [0u8; INLINE_BYTES];
        bytes[..16].copy_from_slice(&text.to_le_bytes());
        Token(TokenRepr::Inline {
            len: len as u8,
            bytes,
        })
    }

    /// The token of integer `n` (below 10^18), in quotes or not; one of more
    /// than [`FAST_DIGITS`] digits (rare) written a digit at a time from its
    /// end.
    fn of_integer(mut n: u64, quoted: bool) -> Token<'a> {
        if n < 10u64.pow(FAST_DIGITS) {
            return Token::of_short_integer(n, quoted);
        }
        let mut digits = [0u8; MAX_DIGITS];
        let mut at = MAX_DIGITS;
        while n > 0 {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let digits = &digits[at..];
        let quote = usize::from(quoted);
        let mut bytes = [b'"'; INLINE_BYTES];
        bytes[quote..quote + digits.len()].copy_from_slice(digits);
        Token(TokenRepr::Inline {
            len: (digits.len() + 2 * quote) as u8,
            bytes,
        })
    }
}

/// The digits of `n` (below 10^8), leading zeros included, as eight bytes
/// of digit values (0 to 9, not yet ASCII), the first digit in the lowest
/// byte: split into halves of four digits, then each into two, then each
/// into one, every lane at once (a division by a constant is a multiply and
/// a shift, exact for these ranges: `x * 5243 >> 19` is `x / 100` below
/// 43,699, `x * 103 >> 10` is `x / 10` below 179).
fn eight_digits(n: u64) -> u64 {
    let fours = (n / 10_000) | ((n % 10_000) << 32);
    let hundreds = ((fours * 5243) >> 19) & 0x0000_007F_0000_007F;
    let twos = hundreds | (fours - hundreds * 100) << 16;
    let tens = ((twos * 103) >> 10) & 0x000F_000F_000F_000F;
    tens | (twos - tens * 10) << 8
}

/// The most digits [`Token::of_short_integer`] takes: with two quotes, the
/// 16 bytes of a `u128`.
const FAST_DIGITS: u32 = 14;

/// The number and form of `raw` when it is a canonical integer that a block
/// stores as a number (the text comes back the same bytes).
fn as_integer(raw: &[u8]) -> Option<(u64, u64)> {
    let (digits, form) = match raw {
        [b'"', inner @ .., b'"'] => (inner, FORM_QUOTED),
        _ => (raw, FORM_BARE),
    };
    match digits {
        [] | [b'0', _, ..] => return None,
        _ if digits.len() > MAX_DIGITS => return None,
        _ => {}
    }
    let mut n = 0u64;
    for &d in digits {
        let digit = d.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n * 10 + u64::from(digit);
    }
    Some((n, form))
}

/// Appends id token `raw` (see the module docs).
pub(crate) fn put_token(out: &mut Vec<u8>, raw: &[u8]) {
    match as_integer(raw) {
        Some((n, form)) => put_varint(out, n << 2 | form),
        None => {
            put_varint(out, (raw.len() as u64) << 2 | FORM_BYTES);
            out.extend_from_slice(raw);
        }
    }
}

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
        owner: Token<'a>,
        songs: Vec<Token<'a>>,
        /// The copied members, already rendered as `,"key":value` pairs.
        copied: &'a [u8],
    },
    RemovePlaylist {
        playlist: Token<'a>,
    },
    AddSong {
        playlist: Token<'a>,
        song: Token<'a>,
    },
    RemoveSong {
        playlist: Token<'a>,
        song: Token<'a>,
    },
}

/// The id of a new playlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewId<'a> {
    /// As the change wrote it.
    Given(Token<'a>),
    /// The `ordinal`-th (1-based) `add_playlist` without `playlist_id` in chunk
    /// `chunk`; the merge turns it into `M + k` (docs/GUIDE.md "The changes file").
    Auto { chunk: u64, ordinal: u64 },
}

impl<'a> Body<'a> {
    /// The op of the change this records.
    pub fn op(&self) -> crate::changes::change::Op {
        use crate::changes::change::Op;
        match self {
            Body::AddPlaylist { .. } => Op::AddPlaylist,
            Body::RemovePlaylist { .. } => Op::RemovePlaylist,
            Body::AddSong { .. } => Op::AddSong,
            Body::RemoveSong { .. } => Op::RemoveSong,
        }
    }

    /// The playlist this change is about, as written (`None` for automatic ids).
    pub fn playlist(&self) -> Option<Token<'a>> {
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
    // A push per byte: appending a slice built on the stack cost a call to
    // memcpy per number.
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
                NewId::Given(p) => put_token(out, p),
                NewId::Auto { chunk, ordinal } => {
                    put_varint(out, *chunk);
                    put_varint(out, *ordinal);
                }
            }
            put_token(out, owner);
            put_varint(out, songs.len() as u64);
            for s in songs {
                put_token(out, s);
            }
            put_bytes(out, copied);
        }
        Body::RemovePlaylist { playlist } => put_token(out, playlist),
        Body::AddSong { playlist, song } | Body::RemoveSong { playlist, song } => {
            put_token(out, playlist);
            put_token(out, song);
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

    #[inline]
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

    /// An id token ([`put_token`]).
    #[inline]
    fn token(&mut self) -> Result<Token<'a>> {
        let v = self.varint()?;
        Ok(match v & 3 {
            FORM_BYTES => {
                let len = (v >> 2) as usize;
                let end = self.pos.checked_add(len).filter(|&e| e <= self.data.len());
                let Some(end) = end else {
                    bail!("corrupt block: truncated bytes");
                };
                let raw = &self.data[self.pos..end];
                self.pos = end;
                Token::from(raw)
            }
            FORM_QUOTED | FORM_BARE if v >> 2 < 10u64.pow(MAX_DIGITS as u32) => {
                Token::of_integer(v >> 2, v & 3 == FORM_QUOTED)
            }
            _ => bail!("corrupt block: bad id"),
        })
    }

    fn record(&mut self, tag: u8) -> Result<Recorded<'a>> {
        let index = self.varint()?;
        let body = match tag {
            ADD_PLAYLIST | ADD_PLAYLIST_AUTO => {
                let id = if tag == ADD_PLAYLIST {
                    NewId::Given(self.token()?)
                } else {
                    NewId::Auto {
                        chunk: self.varint()?,
                        ordinal: self.varint()?,
                    }
                };
                let owner = self.token()?;
                let n = self.varint()?;
                let mut songs = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    songs.push(self.token()?);
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
                playlist: self.token()?,
            },
            ADD_SONG => Body::AddSong {
                playlist: self.token()?,
                song: self.token()?,
            },
            REMOVE_SONG => Body::RemoveSong {
                playlist: self.token()?,
                song: self.token()?,
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
                    id: NewId::Given(b"\"7\"".into()),
                    owner: b"1".into(),
                    songs: vec![b"\"1\"".into(), b"2".into()],
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
                    owner: b"1".into(),
                    songs: vec![],
                    copied: b"",
                },
            },
            Recorded {
                index: u64::MAX,
                body: Body::RemovePlaylist {
                    playlist: b"\"\"".into(),
                },
            },
            Recorded {
                index: 5,
                body: Body::AddSong {
                    playlist: b"1".into(),
                    song: b"\"2\"".into(),
                },
            },
            Recorded {
                index: 6,
                body: Body::RemoveSong {
                    playlist: b"1".into(),
                    song: b"\"2\"".into(),
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

    /// The integer tokens made in a register are the digits `format!` writes,
    /// at every length and on both sides of every power of ten.
    #[test]
    fn integers_are_written_as_format_writes_them() {
        let mut numbers = vec![0u64, 1, 9];
        for digits in 1..=MAX_DIGITS as u32 {
            let p = 10u64.pow(digits);
            numbers.extend([p - 1, p, p + 1, p / 2 + 7, p - p / 3]);
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            numbers.push(x % 10u64.pow(1 + (x >> 59) as u32 % MAX_DIGITS as u32));
        }
        for n in numbers
            .into_iter()
            .filter(|&n| n < 10u64.pow(MAX_DIGITS as u32))
        {
            assert_eq!(
                &*Token::of_integer(n, false),
                n.to_string().as_bytes(),
                "{n}"
            );
            let quoted = format!("\"{n}\"");
            let token = Token::of_integer(n, true);
            assert_eq!(&*token, quoted.as_bytes(), "{n}");
            assert_eq!(token.key(), IdKey::raw(quoted.as_bytes()), "{n}");
        }
    }

    /// Every id token comes back as the same bytes, stored as a number or as
    /// text: canonical integers bare and quoted up to the 18-digit limit,
    /// and what only looks like one (leading zeros, signs, 19 digits, escapes).
    #[test]
    fn tokens_come_back_as_written() {
        let mut tokens: Vec<String> = [
            "0",
            "\"0\"",
            "7",
            "\"7\"",
            "00",
            "\"00\"",
            "01",
            "\"01\"",
            "-1",
            "\"-1\"",
            "1.5",
            "1e3",
            "\"\"",
            "\"a\"",
            "\"\\u0037\"",
            "\"7 \"",
            "\" 7\"",
            "\"\\\"\"",
            "999999999999999999",
            "\"999999999999999999\"",
            "1000000000000000000",
            "\"1000000000000000000\"",
            "18446744073709551615",
            "\"18446744073709551616\"",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let mut n = 1u64;
        while n < 10u64.pow(18) {
            tokens.push(n.to_string());
            tokens.push(format!("\"{}\"", n - 1));
            n = n * 7 + 3;
        }
        let mut blob = Vec::new();
        for t in &tokens {
            put_token(&mut blob, t.as_bytes());
        }
        let mut decoder = Decoder::new(&blob);
        for t in &tokens {
            let back = decoder.token().unwrap();
            assert_eq!(&*back, t.as_bytes(), "{t}");
            assert_eq!(back.key(), IdKey::raw(t.as_bytes()), "{t}");
        }
        assert!(decoder.is_done());
        // A canonical integer takes its varint only; other text its length too.
        let mut one = Vec::new();
        put_token(&mut one, b"\"738545\"");
        assert_eq!(one.len(), 4, "{one:?}");
        // A number past the limit, or a form that does not exist, is an error.
        for bad in [10u64.pow(18) << 2 | FORM_BARE, 3] {
            let mut blob = Vec::new();
            put_varint(&mut blob, bad);
            assert!(Decoder::new(&blob).token().is_err(), "{bad}");
        }
    }
}
