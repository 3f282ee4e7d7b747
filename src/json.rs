//! Byte-level helpers for JSON text that has already been checked by [`crate::json::scan`].
//!
//! The tool never re-serialises a value it does not have to: users, songs,
//! unchanged playlists and copied members are written back token for token, only
//! without insignificant white space (so that every array element fits on one
//! line). These helpers work on such raw text: minify it, split an object into its
//! members or an array into its elements, and read ids.
//!
//! Every function here is total: on malformed input (which the scanner should
//! have rejected already) it returns `None` or a shorter result, never panics.

pub mod render;
pub mod scan;
pub mod values;

use std::borrow::Cow;

/// JSON's four white-space bytes.
#[inline]
pub fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Appends `raw` to `out` without white space outside strings.
pub fn minify_into(raw: &[u8], out: &mut Vec<u8>) {
    // Bytes are copied in runs between white space, not one at a time.
    let mut i = 0;
    let mut run = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                i = string_end(raw, i).unwrap_or(raw.len());
                continue;
            }
            b if is_ws(b) => {
                out.extend_from_slice(&raw[run..i]);
                run = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.extend_from_slice(&raw[run..]);
}

/// [`value_end`] and [`minify_into`] in one pass: appends the value that
/// starts at `raw[start]`, minified, to `out` and returns the index just past
/// it; `None` (and `out` as it was) when the value does not end inside `raw`.
pub fn minify_value_into(
    raw: &[u8],
    start: usize,
    at_end: bool,
    out: &mut Vec<u8>,
) -> Option<usize> {
    if !matches!(raw.get(start), Some(b'{' | b'[')) {
        let end = value_end(raw, start, at_end)?;
        out.extend_from_slice(&raw[start..end]);
        return Some(end);
    }
    let mark = out.len();
    let mut depth = 0usize;
    let mut i = start;
    let mut run = start;
    while i < raw.len() {
        match raw[i] {
            b'"' => match string_end(raw, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => break,
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    out.extend_from_slice(&raw[run..=i]);
                    return Some(i + 1);
                }
            }
            b if is_ws(b) => {
                out.extend_from_slice(&raw[run..i]);
                run = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.truncate(mark);
    None
}

/// `raw` without white space outside strings.
pub fn minify(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    minify_into(raw, &mut out);
    out
}

/// Given `raw[start] == b'"'`, the index just past the closing quote, or `None`
/// when the string does not end inside `raw`.
#[inline]
pub fn string_end(raw: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    // Most strings are ids and member names of a few bytes: a byte loop
    // finds their end before `memchr2` has set up, and the warning count
    // walks every song id of the document this way.
    let quick_until = raw.len().min(i + SHORT_STRING);
    while i < quick_until {
        match raw[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                i += 2;
                break;
            }
            _ => i += 1,
        }
    }
    while i <= raw.len() {
        let j = i + memchr::memchr2(b'"', b'\\', &raw[i..])?;
        if raw[j] == b'"' {
            return Some(j + 1);
        }
        i = j + 2; // skip the escaped byte; `\uXXXX` has no quote or backslash after it
    }
    None
}

/// The index just past the value that starts at `raw[start]` (no leading white
/// space), or `None` when the value does not end inside `raw`. A number or
/// literal that runs to the end of `raw` is complete only if `at_end` says no
/// more bytes follow.
pub fn value_end(raw: &[u8], start: usize, at_end: bool) -> Option<usize> {
    let first = *raw.get(start)?;
    match first {
        b'"' => string_end(raw, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < raw.len() {
                match raw[i] {
                    b'"' => {
                        i = string_end(raw, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let len = raw[start..]
                .iter()
                .position(|&b| is_ws(b) || matches!(b, b',' | b']' | b'}' | b':'));
            match len {
                Some(n) => Some(start + n),
                None if at_end => Some(raw.len()),
                None => None,
            }
        }
    }
}

/// The members of a minified JSON object, as (raw key with its quotes, raw value),
/// in order. `None` when `raw` is not a minified object.
pub fn object_members(raw: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if raw.first() != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut i = 1;
    if raw.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(raw, i)?;
        if raw.get(key_end) != Some(&b':') {
            return None;
        }
        let value_start = key_end + 1;
        let end = value_end(raw, value_start, true)?;
        members.push((&raw[i..key_end], &raw[value_start..end]));
        match raw.get(end) {
            Some(b',') => i = end + 1,
            Some(b'}') => return Some(members),
            _ => return None,
        }
    }
}

/// The elements of a minified JSON array, raw, in order. `None` when `raw` is not
/// a minified array.
pub fn array_elements(raw: &[u8]) -> Option<Vec<&[u8]>> {
    each_element(raw).collect()
}

/// The elements of a minified JSON array, raw, in order, without collecting
/// them ([`array_elements`] collects them), for loops that run for every song
/// of every playlist. Yields `None` (once, last) where `raw` is not a minified
/// array.
pub fn each_element(raw: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    let mut at = (raw.first() == Some(&b'[')).then_some(1);
    let mut failed = at.is_none();
    if at.is_some() && raw.get(1) == Some(&b']') {
        at = None;
    }
    std::iter::from_fn(move || {
        if failed {
            failed = false;
            return Some(None);
        }
        let i = at?;
        let Some(end) = value_end(raw, i, true).filter(|&end| end > i) else {
            at = None;
            return Some(None);
        };
        at = match raw.get(end) {
            Some(b',') => Some(end + 1),
            Some(b']') => None,
            _ => {
                failed = true;
                None
            }
        };
        Some(Some(&raw[i..end]))
    })
}

/// Decodes a raw JSON string token (with its quotes). `None` when `raw` is not a
/// string, or holds an escape that is no Unicode scalar value (a lone surrogate).
pub fn decode_string(raw: &[u8]) -> Option<Cow<'_, str>> {
    if raw.len() < 2 || raw[0] != b'"' || raw[raw.len() - 1] != b'"' {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    // Nearly every id is short ASCII without an escape: one byte loop says
    // so, where a call to memchr and one to from_utf8 cost more on such
    // short strings.
    if inner.len() <= SHORT_STRING && inner.iter().all(|&b| b.is_ascii() && b != b'\\') {
        // SAFETY: every byte of `inner` was just checked to be ASCII.
        return Some(Cow::Borrowed(unsafe { ascii(inner) }));
    }
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(raw).ok().map(Cow::Owned)
}

/// The longest string [`decode_string`] checks with a byte loop, and how many
/// bytes of a string [`string_end`] reads one by one before it searches the
/// rest with `memchr2`.
const SHORT_STRING: usize = 32;

/// The digits of an id token that is digits, bare or quoted (nearly every
/// song id), as text, without decoding it.
pub fn plain_digits(token: &[u8]) -> Option<&str> {
    let digits = match token {
        [b'"', inner @ .., b'"'] => inner,
        _ => token,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // SAFETY: every byte of `digits` was just checked to be an ASCII digit.
    Some(unsafe { ascii(digits) })
}

/// `bytes`, all ASCII, as text, without checking them again.
///
/// # Safety
///
/// Every byte of `bytes` must be ASCII (below 0x80): a sequence of ASCII
/// bytes is valid UTF-8. The callers have just checked each byte.
unsafe fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: the caller's promise above.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// The text of an id: a JSON string's value, or a JSON integer's digits (any
/// length, an optional leading minus). `None` for anything else (floats,
/// booleans, null, objects, arrays).
pub fn id_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match raw.first()? {
        b'"' => decode_string(raw),
        b'-' | b'0'..=b'9' => {
            let digits = raw.strip_prefix(b"-").unwrap_or(raw);
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                // SAFETY: `raw` is an optional `-` and ASCII digits, just checked.
                Some(Cow::Borrowed(unsafe { ascii(raw) }))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether `raw` is an id: [`id_text`] of it is `Some`, told without
/// building the text (nearly every id is plain ASCII).
pub fn is_id(raw: &[u8]) -> bool {
    match raw {
        [b'"', inner @ .., b'"'] if inner.iter().all(|&b| b.is_ascii() && b != b'\\') => true,
        _ => id_text(raw).is_some(),
    }
}

/// The value of an id text that takes part in automatic playlist ids (docs/GUIDE.md "The changes file":
/// text matching `[1-9][0-9]{0,17}`).
pub fn auto_id_value(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() > 18 || bytes[0] == b'0' {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.parse().ok()
}

/// The decoded name of a raw member key. Keys almost never hold escapes, so the
/// common case borrows.
pub fn key_name(raw_key: &[u8]) -> Option<Cow<'_, str>> {
    decode_string(raw_key)
}

/// The first member named `name`, raw. The tool reads the first occurrence of a
/// repeated member everywhere (documented in docs/GUIDE.md).
pub fn member<'a>(members: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    members
        .iter()
        .find(|(k, _)| key_is(k, name))
        .map(|&(_, v)| v)
}

/// Whether raw key `raw_key` (with its quotes) names `name`. Compares bytes
/// when the key has no escape (nearly always), decodes it otherwise.
#[inline]
pub fn key_is(raw_key: &[u8], name: &str) -> bool {
    let inner = &raw_key[1.min(raw_key.len())..raw_key.len().saturating_sub(1)];
    if memchr::memchr(b'\\', inner).is_none() {
        inner == name.as_bytes()
    } else {
        key_name(raw_key).as_deref() == Some(name)
    }
}

/// The value of the first member named `name` of the object `raw` (white space
/// allowed anywhere, as in a document element not yet minified): `None` when
/// `raw` is not an object, `Some(None)` when it has no such member.
pub fn find_member<'a>(raw: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
    let skip_ws = |mut i: usize| {
        while raw.get(i).is_some_and(|&b| is_ws(b)) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(i + 1);
    if raw.get(i) == Some(&b'}') {
        return Some(None);
    }
    loop {
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(raw, i)?;
        let colon = skip_ws(key_end);
        if raw.get(colon) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(colon + 1);
        let end = value_end(raw, value_start, true)?;
        if key_is(&raw[i..key_end], name) {
            return Some(Some(&raw[value_start..end]));
        }
        let next = skip_ws(end);
        match raw.get(next) {
            Some(b',') => i = skip_ws(next + 1),
            Some(b'}') => return Some(None),
            _ => return None,
        }
    }
}

/// Appends `s` as a JSON string.
/// Appends `n` in decimal, as `write!` would, without the formatting
/// machinery (a call per reject line).
pub fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

pub fn write_string(s: &str, out: &mut Vec<u8>) {
    // Most texts need no escape (a reject's detail, say): copied as they are.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json escapes exactly what JSON requires; writing to a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers and strings are written as `format!` and serde_json write
    /// them, escapes and all.
    #[test]
    fn numbers_and_strings_are_written_as_the_std_and_serde_json_write_them() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX / 3, u64::MAX] {
            let mut out = b"x".to_vec();
            write_u64(n, &mut out);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
        for text in [
            "",
            "plain",
            "q\"",
            "x\\y",
            "tab\t",
            "\u{1}",
            "\u{7f}é",
            "\u{1F600}",
        ] {
            let mut out = Vec::new();
            write_string(text, &mut out);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    /// Decoding a string token agrees with serde_json on short and long,
    /// ASCII and not, escaped and not.
    #[test]
    fn strings_decode_as_serde_json_decodes_them() {
        for text in ["", "7", "abc", "é", "tab\t", "q\"", "x\\y", "\u{1F600}"] {
            for len in [1, 31, 32, 33, 40] {
                let long: String = text
                    .chars()
                    .cycle()
                    .take(len.max(text.chars().count()))
                    .collect();
                for value in [text.to_string(), long, format!("{text}{}", "a".repeat(len))] {
                    let token = serde_json::to_string(&value).unwrap();
                    assert_eq!(
                        decode_string(token.as_bytes()).as_deref(),
                        Some(value.as_str()),
                        "{token}"
                    );
                    assert_eq!(id_text(token.as_bytes()).as_deref(), Some(value.as_str()));
                }
            }
        }
        assert_eq!(id_text(b"-12").as_deref(), Some("-12"));
        assert_eq!(plain_digits(b"\"123\""), Some("123"));
        assert_eq!(plain_digits(b"123"), Some("123"));
        for not_digits in [&b"\"12a\""[..], b"\"\"", b"-1", b"\"\\u0031\"", b"\"1"] {
            assert_eq!(plain_digits(not_digits), None);
        }
        assert_eq!(id_text(b"1.5"), None);
        assert_eq!(decode_string(b"\"unterminated"), None);
    }

    /// The one-pass minifier against finding the end, then minifying: on
    /// every prefix of values with white space, escapes and nesting.
    #[test]
    fn minifying_a_value_in_one_pass_agrees_with_two() {
        let values: [&[u8]; 7] = [
            br#"{ "id" : "1" , "name" :	"A \"b\" , }" ,"x":[ 1, [ ], {} ] }"#,
            b"[ \"a\\\\\" , \n\r 2.5e3 , true,null ]",
            br#"{"already":"minified","n":[1,2,3]}"#,
            b"\"a string\\\" ] with stuff\"",
            b"12345",
            b"{}",
            b"[ [ [ \"]\" ] ] ]",
        ];
        for value in values {
            for cut in 1..=value.len() {
                let raw = &value[..cut];
                for at_end in [false, true] {
                    let mut out = b"kept".to_vec();
                    let fused = minify_value_into(raw, 0, at_end, &mut out);
                    let two = value_end(raw, 0, at_end);
                    assert_eq!(
                        fused,
                        two,
                        "{:?} at_end {at_end}",
                        String::from_utf8_lossy(raw)
                    );
                    let mut expected = b"kept".to_vec();
                    if let Some(end) = two {
                        minify_into(&raw[..end], &mut expected);
                    }
                    assert_eq!(out, expected, "{:?}", String::from_utf8_lossy(raw));
                }
            }
        }
    }

    #[test]
    fn minify_keeps_strings_verbatim() {
        let raw = br#"{ "a" : [ 1 , "x y\" }" ], "\u00e9" : 1.50 }"#;
        assert_eq!(
            minify(raw),
            br#"{"a":[1,"x y\" }"],"\u00e9":1.50}"#.to_vec()
        );
    }

    #[test]
    fn find_member_reads_unminified_objects() {
        let raw = b" { \"a\" : [1, {\"id\": 2}] ,\n \"i\\u0064\":\t\"7\", \"id\": 8 } ";
        assert_eq!(find_member(raw, "id"), Some(Some(&b"\"7\""[..])));
        assert_eq!(find_member(raw, "a"), Some(Some(&b"[1, {\"id\": 2}]"[..])));
        assert_eq!(find_member(raw, "b"), Some(None));
        assert_eq!(find_member(b"{}", "id"), Some(None));
        assert_eq!(find_member(b"[1]", "id"), None);
        assert_eq!(find_member(b"7", "id"), None);
        assert!(key_is(b"\"id\"", "id"));
        assert!(key_is(b"\"\\u0069d\"", "id"));
        assert!(!key_is(b"\"idx\"", "id"));
    }

    #[test]
    fn members_and_elements() {
        let raw = br#"{"a":[1,{"b":"]}"}],"c":"d\\","e":-1.5e3}"#;
        let m = object_members(raw).unwrap();
        let got: Vec<(&str, &str)> = m
            .iter()
            .map(|(k, v)| {
                (
                    std::str::from_utf8(k).unwrap(),
                    std::str::from_utf8(v).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (r#""a""#, r#"[1,{"b":"]}"}]"#),
                (r#""c""#, r#""d\\""#),
                (r#""e""#, "-1.5e3")
            ]
        );
        let e = array_elements(br#"[1,"2",[3],{}]"#).unwrap();
        assert_eq!(e, vec![&b"1"[..], b"\"2\"", b"[3]", b"{}"]);
        for raw in [
            &br#"[1,"2",[3],{}]"#[..],
            b"[]",
            b"[1]",
            b"[1",
            b"[1,",
            b"1",
            b"",
            b"[1}2]",
        ] {
            let each: Vec<Option<&[u8]>> = each_element(raw).collect();
            let whole = array_elements(raw);
            match &whole {
                Some(list) => assert_eq!(each, list.iter().map(|e| Some(*e)).collect::<Vec<_>>()),
                None => assert_eq!(
                    each.last(),
                    Some(&None),
                    "{:?}",
                    String::from_utf8_lossy(raw)
                ),
            }
        }
        assert_eq!(array_elements(b"[]").unwrap().len(), 0);
        assert_eq!(object_members(b"{}").unwrap().len(), 0);
        assert!(object_members(b"[1]").is_none());
        assert!(object_members(br#"{"a":1"#).is_none());
    }

    #[test]
    fn ids() {
        assert_eq!(id_text(b"7").as_deref(), Some("7"));
        assert_eq!(id_text(br#""7""#).as_deref(), Some("7"));
        assert_eq!(id_text(br#""\u0037""#).as_deref(), Some("7"));
        assert_eq!(id_text(b"-12").as_deref(), Some("-12"));
        assert_eq!(plain_digits(b"\"123\""), Some("123"));
        assert_eq!(plain_digits(b"123"), Some("123"));
        for not_digits in [&b"\"12a\""[..], b"\"\"", b"-1", b"\"\\u0031\"", b"\"1"] {
            assert_eq!(plain_digits(not_digits), None);
        }
        assert_eq!(
            id_text(b"123456789012345678901234567890").as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(id_text(b"7.0"), None);
        assert_eq!(id_text(b"1e3"), None);
        assert_eq!(id_text(b"true"), None);
        assert_eq!(id_text(b"null"), None);
        assert_eq!(id_text(br#""\ud800""#), None);
        assert_eq!(auto_id_value("12"), Some(12));
        assert_eq!(auto_id_value("012"), None);
        assert_eq!(
            auto_id_value("999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(auto_id_value("1000000000000000000"), None);
        assert_eq!(auto_id_value("-1"), None);
        assert_eq!(auto_id_value(""), None);
    }

    /// `string_end` against a byte-by-byte reading, on every start of
    /// strings of quotes, backslashes and letters of every length around
    /// [`SHORT_STRING`], some with no end.
    #[test]
    fn string_end_agrees_with_a_byte_loop() {
        fn reference(raw: &[u8], start: usize) -> Option<usize> {
            let mut i = start + 1;
            while i < raw.len() {
                match raw[i] {
                    b'"' => return Some(i + 1),
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            None
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..20_000 {
            let len = 1 + next(2 * SHORT_STRING as u64 + 8) as usize;
            let quiet = next(4) == 0; // mostly letters: long strings
            let mut raw: Vec<u8> = (0..len)
                .map(|_| match next(if quiet { 40 } else { 8 }) {
                    0 => b'"',
                    1 => b'\\',
                    _ => b'a',
                })
                .collect();
            raw[0] = b'"';
            for start in (0..len).filter(|&s| raw[s] == b'"') {
                assert_eq!(
                    string_end(&raw, start),
                    reference(&raw, start),
                    "{round}: {:?} from {start}",
                    String::from_utf8_lossy(&raw)
                );
            }
        }
    }

    #[test]
    fn value_end_needs_more_bytes() {
        assert_eq!(value_end(b"123", 0, false), None);
        assert_eq!(value_end(b"123", 0, true), Some(3));
        assert_eq!(value_end(br#"{"a":"}"#, 0, true), None);
        assert_eq!(value_end(br#"{"a":"}"} x"#, 0, true), Some(9));
        assert_eq!(value_end(b"", 0, true), None);
        assert_eq!(string_end(b"\"\\", 0), None);
    }
}
