//! A streaming JSON validator: the one place where input bytes are checked.
//!
//! [`Scanner`] reads a file front to back in fixed-size buffers and checks that
//! what it passes over is JSON (RFC 8259: structure, strings with their escapes and
//! UTF-8, numbers, literals), while telling its caller where things are. It never
//! builds values: the import stage uses it to cut the mixtape into elements, the
//! plan stage to find where every change starts. Both walk the top-level structure
//! themselves with [`Scanner::peek`], [`Scanner::expect`], [`Scanner::key`] and
//! [`Scanner::value`], and can *capture* the bytes of one value
//! ([`Scanner::begin_capture`]) without the scanner ever holding more than the
//! largest single value in memory.
//!
//! Because everything downstream (workers, merge, export) reads only bytes this
//! scanner accepted, they can use the cheap, non-validating helpers of
//! [`crate::json`].
//!
//! ## Errors
//!
//! A syntax error carries the byte offset where it was found; [`locate`] turns an
//! offset into a line and column (both 1-based, the column counting bytes) by
//! reading the file again up to that point, which costs nothing on the happy path.
//!
//! ## Limits
//!
//! Nesting depth is limited only by memory (one byte per open container), so a
//! value nested 100,000 deep is scanned, not a stack overflow.

use std::io::{self, Read};

/// How many bytes one read asks for.
const READ_SIZE: usize = 1 << 20;

/// Why scanning stopped.
#[derive(Debug)]
pub enum ScanError {
    Io(io::Error),
    Syntax {
        offset: u64,
        message: String,
    },
    /// A stop was requested ([`crate::run::interrupt`]) while scanning.
    Interrupted,
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

pub type ScanResult<T> = Result<T, ScanError>;

/// A buffered, validating reader over one JSON text. See the module docs.
pub struct Scanner<R> {
    source: R,
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    pos: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    /// Start of the value being captured: bytes from here on are kept on refill.
    mark: Option<usize>,
    eof: bool,
    /// Open containers of the value being scanned (`{` or `[`), reused between values.
    stack: Vec<u8>,
}

impl<R: Read> Scanner<R> {
    /// A scanner that starts reading `source` at file offset `base`.
    pub fn new(source: R, base: u64) -> Self {
        Scanner {
            source,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            base,
            mark: None,
            eof: false,
            stack: Vec::new(),
        }
    }

    /// File offset of the next unread byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Reads more bytes; `false` at end of input. Keeps the captured bytes.
    #[cold]
    fn refill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let keep = self.mark.unwrap_or(self.pos);
        if keep > 0 {
            self.buf.copy_within(keep..self.end, 0);
            self.base += keep as u64;
            self.end -= keep;
            self.pos -= keep;
            if let Some(m) = self.mark.as_mut() {
                *m -= keep;
            }
        }
        if self.buf.len() - self.end < READ_SIZE {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        loop {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next byte without consuming it; `None` at end of input.
    #[inline]
    pub fn peek_byte(&mut self) -> ScanResult<Option<u8>> {
        if self.pos < self.end || self.refill()? {
            Ok(Some(self.buf[self.pos]))
        } else {
            Ok(None)
        }
    }

    /// Passes over a value that `known` recognises at the start of the
    /// buffered bytes (it gives the value's length, and must recognise only
    /// whole, valid JSON values); says whether it did. Anything else, or a
    /// value not whole in the buffer, is left for [`Scanner::value`].
    pub fn skip_known(&mut self, known: impl FnOnce(&[u8]) -> Option<usize>) -> bool {
        match known(&self.buf[self.pos..self.end]) {
            Some(len) => {
                self.pos += len;
                true
            }
            None => false,
        }
    }

    /// The next byte that is not white space, without consuming it.
    #[inline]
    pub fn peek(&mut self) -> ScanResult<Option<u8>> {
        loop {
            while self.pos < self.end {
                let b = self.buf[self.pos];
                if !crate::json::is_ws(b) {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if !self.refill()? {
                return Ok(None);
            }
        }
    }

    /// Skips a UTF-8 byte order mark at the very start of the input.
    pub fn skip_bom(&mut self) -> ScanResult<()> {
        if self.peek_byte()? == Some(0xEF) {
            for want in [0xEF, 0xBB, 0xBF] {
                if self.peek_byte()? != Some(want) {
                    return Err(self.error_at(self.offset(), "invalid byte at start of input"));
                }
                self.pos += 1;
            }
        }
        Ok(())
    }

    /// A syntax error at `offset`.
    pub fn error_at(&self, offset: u64, message: impl Into<String>) -> ScanError {
        ScanError::Syntax {
            offset,
            message: message.into(),
        }
    }

    /// A syntax error at the next unread byte: "expected X, found Y".
    pub fn unexpected(&mut self, expected: &str) -> ScanError {
        let found = match self.peek_byte() {
            Ok(Some(b)) => describe_byte(b),
            Ok(None) => "end of input".to_string(),
            Err(e) => return e,
        };
        self.error_at(self.offset(), format!("expected {expected}, found {found}"))
    }

    /// Consumes `byte` (after white space) or fails with "expected `what`".
    pub fn expect(&mut self, byte: u8, what: &str) -> ScanResult<()> {
        if self.peek()? == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(what))
        }
    }

    /// Consumes `byte` if it is next (after white space).
    pub fn eat(&mut self, byte: u8) -> ScanResult<bool> {
        if self.peek()? == Some(byte) {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Starts keeping the bytes read from here on (after white space).
    pub fn begin_capture(&mut self) {
        self.mark = Some(self.pos);
    }

    /// The bytes read since [`Self::begin_capture`].
    pub fn captured(&self) -> &[u8] {
        match self.mark {
            Some(m) => &self.buf[m..self.pos],
            None => &[],
        }
    }

    /// Stops keeping bytes.
    pub fn end_capture(&mut self) {
        self.mark = None;
    }

    /// Scans an object key and its colon; returns the key's decoded text.
    pub fn key(&mut self) -> ScanResult<String> {
        if self.peek()? != Some(b'"') {
            return Err(self.unexpected("a member name (a string)"));
        }
        let start = self.offset();
        // Keep the key's bytes across a refill; an outer capture already does.
        let had_mark = self.mark.is_some();
        if !had_mark {
            self.mark = Some(self.pos);
        }
        self.string()?;
        let from = (start - self.base) as usize;
        let name = crate::json::decode_string(&self.buf[from..self.pos])
            .map(|c| c.into_owned())
            .ok_or_else(|| self.error_at(start, "member name is not valid Unicode"))?;
        if !had_mark {
            self.mark = None;
        }
        self.expect(b':', "':' after a member name")?;
        Ok(name)
    }

    /// Scans one complete value (after white space) and checks it is valid JSON.
    pub fn value(&mut self) -> ScanResult<()> {
        self.stack.clear();
        'value: loop {
            let Some(b) = self.peek()? else {
                return Err(self.unexpected("a value"));
            };
            match b {
                b'{' => {
                    self.pos += 1;
                    if !self.eat(b'}')? {
                        self.stack.push(b'{');
                        self.member_name()?;
                        continue 'value;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    if !self.eat(b']')? {
                        self.stack.push(b'[');
                        continue 'value;
                    }
                }
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(self.unexpected("a value")),
            }
            // A value is complete: close containers or move to the next element.
            loop {
                let Some(&open) = self.stack.last() else {
                    return Ok(());
                };
                let close = if open == b'{' { b'}' } else { b']' };
                match self.peek()? {
                    Some(b',') => {
                        self.pos += 1;
                        if open == b'{' {
                            self.member_name()?;
                        }
                        continue 'value;
                    }
                    Some(c) if c == close => {
                        self.pos += 1;
                        self.stack.pop();
                    }
                    _ => {
                        return Err(self.unexpected(if open == b'{' {
                            "',' or '}' after an object member"
                        } else {
                            "',' or ']' after an array element"
                        }))
                    }
                }
            }
        }
    }

    /// A member name and its colon inside [`Self::value`] (not decoded).
    fn member_name(&mut self) -> ScanResult<()> {
        if self.peek()? != Some(b'"') {
            return Err(self.unexpected("a member name (a string)"));
        }
        self.string()?;
        self.expect(b':', "':' after a member name")
    }

    /// Scans a string starting at its opening quote.
    #[inline]
    fn string(&mut self) -> ScanResult<()> {
        // Nearly every string is plain text that ends in the buffer: that
        // case inline, anything else (an escape, a multi-byte character,
        // the end of the buffer) by the full scan.
        let text = &self.buf[self.pos + 1..self.end];
        if let Some(n) = plain_ascii_run(text) {
            if text[n] == b'"' {
                self.pos += n + 2;
                return Ok(());
            }
        }
        self.string_in_full()
    }

    /// [`Self::string`], any string, from its opening quote.
    #[inline(never)]
    fn string_in_full(&mut self) -> ScanResult<()> {
        let start = self.offset();
        self.pos += 1;
        loop {
            // Fast path: skip the run of plain ASCII bytes.
            let run = plain_ascii_run(&self.buf[self.pos..self.end]);
            match run {
                Some(n) => self.pos += n,
                None => {
                    self.pos = self.end;
                    if !self.refill()? {
                        return Err(self.error_at(start, "string is not terminated"));
                    }
                    continue;
                }
            }
            let b = self.buf[self.pos];
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => {
                    let at = self.offset();
                    self.pos += 1;
                    match self.peek_byte()? {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 1
                        }
                        Some(b'u') => {
                            self.pos += 1;
                            let unit = self.hex4(at)?;
                            // Escapes must spell Unicode text: a high surrogate
                            // needs a low one right after it, a low one alone is
                            // not a character (serde_json agrees).
                            if (0xD800..0xDC00).contains(&unit) {
                                let low = if self.peek_byte()? == Some(b'\\') {
                                    self.pos += 1;
                                    if self.peek_byte()? == Some(b'u') {
                                        self.pos += 1;
                                        Some(self.hex4(at)?)
                                    } else {
                                        None
                                    }
                                } else {
                                    None
                                };
                                if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                                    return Err(
                                        self.error_at(at, "invalid \\u escape: lone surrogate")
                                    );
                                }
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(self.error_at(at, "invalid \\u escape: lone surrogate"));
                            }
                        }
                        Some(_) => return Err(self.error_at(at, "invalid escape in string")),
                        None => return Err(self.error_at(start, "string is not terminated")),
                    }
                }
                0x00..=0x1F => {
                    return Err(self.error_at(
                        self.offset(),
                        "control character in string (must be escaped)",
                    ))
                }
                _ => self.utf8_char(b)?,
            }
        }
    }

    /// Four hex digits of a `\\u` escape (the escape began at `at`).
    fn hex4(&mut self, at: u64) -> ScanResult<u32> {
        let mut unit = 0u32;
        for _ in 0..4 {
            match self.peek_byte()? {
                Some(h) if h.is_ascii_hexdigit() => {
                    unit = unit * 16 + (h as char).to_digit(16).expect("hex digit");
                    self.pos += 1;
                }
                _ => return Err(self.error_at(at, "invalid \\u escape: expected four hex digits")),
            }
        }
        Ok(unit)
    }

    /// Checks one multi-byte UTF-8 character starting with `lead`.
    fn utf8_char(&mut self, lead: u8) -> ScanResult<()> {
        let at = self.offset();
        let width = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(self.error_at(at, "invalid UTF-8")),
        };
        let mut bytes = [0u8; 4];
        for slot in bytes.iter_mut().take(width) {
            match self.peek_byte()? {
                Some(b) => *slot = b,
                None => return Err(self.error_at(at, "invalid UTF-8")),
            }
            self.pos += 1;
        }
        if std::str::from_utf8(&bytes[..width]).is_err() {
            return Err(self.error_at(at, "invalid UTF-8"));
        }
        Ok(())
    }

    /// Scans a number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> ScanResult<()> {
        let start = self.offset();
        let bad = |s: &Self| s.error_at(start, "invalid number");
        if self.peek_byte()? == Some(b'-') {
            self.pos += 1;
        }
        match self.peek_byte()? {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits()?,
            _ => return Err(bad(self)),
        }
        if self.peek_byte()? == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek_byte()?, Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            self.digits()?;
        }
        if matches!(self.peek_byte()?, Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek_byte()?, Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek_byte()?, Some(b'0'..=b'9')) {
                return Err(bad(self));
            }
            self.digits()?;
        }
        self.token_end(start, "invalid number")
    }

    fn digits(&mut self) -> ScanResult<()> {
        while let Some(b'0'..=b'9') = self.peek_byte()? {
            self.pos += 1;
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> ScanResult<()> {
        let start = self.offset();
        for &want in word {
            if self.peek_byte()? != Some(want) {
                return Err(self.error_at(start, "invalid literal (expected true, false or null)"));
            }
            self.pos += 1;
        }
        self.token_end(start, "invalid literal (expected true, false or null)")
    }

    /// A number or literal must be followed by a delimiter, so `01` or `truex` fail.
    fn token_end(&mut self, start: u64, message: &str) -> ScanResult<()> {
        match self.peek_byte()? {
            None => Ok(()),
            Some(b) if crate::json::is_ws(b) || matches!(b, b',' | b']' | b'}') => Ok(()),
            Some(_) => Err(self.error_at(start, message)),
        }
    }
}

/// Where the first byte of `bytes` that ends a run of plain string text is
/// (a quote, a backslash, a control character or a byte of a multi-byte
/// character), if any. Eight bytes at a time: strings were a third of the
/// plan stage, scanned a byte at a time with four tests each.
#[inline]
fn plain_ascii_run(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte's high bit set in `special` when it is zero in `w ^ b'"'`
        // (a quote), in `w ^ b'\\'` (a backslash), below 0x20, or itself
        // has its high bit set. The borrows of the subtractions can mark a
        // byte above a marked one too, never one below it, so the lowest
        // mark is exact.
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let special = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w)
            | w)
            & HIGHS;
        if special != 0 {
            return Some(at + (special.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| ends_plain_run(b))
        .map(|n| at + n)
}

/// Whether byte `b` ends a run of plain string text (see [`plain_ascii_run`]).
fn ends_plain_run(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b)
}

/// How a byte is named in an error message.
pub fn describe_byte(b: u8) -> String {
    match b {
        0x20..=0x7E => format!("'{}'", b as char),
        _ => format!("byte 0x{b:02X}"),
    }
}

/// Line and column (1-based; the column counts bytes) of `offset` in the
/// text `file` reads from its start.
pub fn locate(mut file: impl Read, offset: u64) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut line = 1u64;
    let mut line_start = 0u64;
    let mut pos = 0u64;
    while pos < offset {
        let want = (offset - pos).min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            line += 1;
            line_start = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
    Ok((line, offset - line_start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `text` as one document: a value, then only white space.
    fn scan_document(text: &[u8]) -> Result<(), u64> {
        let mut s = Scanner::new(text, 0);
        let check = |s: &mut Scanner<&[u8]>| -> ScanResult<()> {
            s.value()?;
            match s.peek()? {
                None => Ok(()),
                Some(_) => Err(s.unexpected("end of input")),
            }
        };
        match check(&mut s) {
            Ok(()) => Ok(()),
            Err(ScanError::Syntax { offset, .. }) => Err(offset),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn agrees_with_serde(text: &[u8]) {
        let ours = scan_document(text).is_ok();
        let theirs = serde_json::from_slice::<serde_json::Value>(text).is_ok();
        assert_eq!(
            ours,
            theirs,
            "scanner and serde_json disagree on {:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn accepts_and_rejects_like_serde_json() {
        let cases: &[&[u8]] = &[
            b"{}",
            b"[]",
            b" [1, 2.5, -0, 1e10, 1E-2, 0.5e+3] ",
            br#"{"a":{"b":[true,false,null,"x\"}],"]}}"#,
            br#""\u00e9\n\t\\\/""#,
            "\"caf\u{e9} \u{1F600}\"".as_bytes(),
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{1:2}",
            b"[01]",
            b"[1.]",
            b"[.5]",
            b"[1e]",
            b"[-]",
            b"tru",
            b"truex",
            b"nul",
            b"\"abc",
            b"\"a\x01b\"",
            b"\"\\x\"",
            b"\"\\u12G4\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\ud800x\"",
            b"\"\\ud83d\\ude00\"",
            b"\"\xff\"",
            b"\"\xc3\"",
            b"\"\xed\xa0\x80\"",
            b"[1 2]",
            b"{\"a\":1 \"b\":2}",
            b"[}",
            b"{]",
            b"",
            b"   ",
            b"[[[[[]]]]]",
            b"[[[[[]]]]",
            b"1 2",
            b"{} {}",
        ];
        for case in cases {
            agrees_with_serde(case);
        }
    }

    /// The eight-at-a-time search finds what a byte loop finds, for every
    /// byte at every place of runs of every length up to three words.
    #[test]
    fn plain_runs_end_where_a_byte_loop_says() {
        let by_bytes = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
        };
        for len in 0..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    // Something special after it too: the first one counts.
                    if at + 1 < len {
                        bytes[len - 1] = b'"';
                    }
                    assert_eq!(plain_ascii_run(&bytes), by_bytes(&bytes), "{bytes:?}");
                    bytes
                        .iter_mut()
                        .for_each(|x| *x = x.wrapping_add(0x21) & 0x7f);
                    assert_eq!(plain_ascii_run(&bytes), by_bytes(&bytes), "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_not_a_stack_overflow() {
        let mut text = vec![b'['; 100_000];
        text.extend(vec![b']'; 100_000]);
        assert!(scan_document(&text).is_ok());
        text.pop();
        assert!(scan_document(&text).is_err());
    }

    #[test]
    fn values_across_tiny_reads() {
        /// A reader that hands out one byte per read, to cross every boundary.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let text = "[{\"k\u{e9}y\": \"v\\u0041\u{1F600}\"}, 12.5e3, null]";
        let mut s = Scanner::new(OneByte(text.as_bytes()), 0);
        s.begin_capture();
        s.value().unwrap();
        assert_eq!(s.captured(), text.as_bytes());
        assert_eq!(s.offset(), text.len() as u64);
    }

    #[test]
    fn error_offsets_point_at_the_problem() {
        assert_eq!(scan_document(b"[1, 2,, 3]"), Err(6));
        assert_eq!(scan_document(b"{\"a\": tru }"), Err(6));
        assert_eq!(scan_document(b"[1] x"), Err(4));
    }

    #[test]
    fn locate_counts_lines_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, b"{\n  \"a\": 1,\n  x\n}").unwrap();
        assert_eq!(
            locate(std::fs::File::open(&path).unwrap(), 14).unwrap(),
            (3, 3)
        );
        assert_eq!(
            locate(std::fs::File::open(&path).unwrap(), 0).unwrap(),
            (1, 1)
        );
    }
}
