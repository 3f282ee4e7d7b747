//! The merge's results stored a row of several at a time.
//!
//! A playlist's result a row of its own made writing and reading `results`
//! cost more in row overhead than in bytes (hundreds of thousands of rows of
//! a few hundred bytes; BENCHMARKS.md, "What was tried": packed rows). So a partition's results of one stream
//! ([`super::runs`]), in key order, are packed into rows of up to
//! [`RESULTS_PER_ROW`] results or [`ROW_BYTES`] encoded; the runs are
//! of rows, and each row yields its results in order. [`ROW_BYTES`] is what
//! lets two rows share one 16 KiB page: a row a little over half a page
//! takes a page alone, and those pages are written twice (WAL and database).
//!
//! A row of document fates holds, for each, `doc_seq:varint state:u8` and,
//! when the state byte's high bit says so, the playlist's text
//! (`len:varint bytes`); a row of new playlists holds `created:varint` and
//! the text, for each.

use std::collections::VecDeque;

use anyhow::{bail, Result};

use crate::changes::record::{put_bytes, put_varint, Decoder};

/// Results a row holds at most.
pub(super) const RESULTS_PER_ROW: usize = 64;
/// A row's encoded bytes at most, unless one result alone is larger (then it
/// is a row of its own, in overflow pages): two such rows fit one page
/// (`super::PAGE_SIZE`, less SQLite's page header, two cell pointers and two
/// cells' headers, 15 bytes each at most).
pub(super) const ROW_BYTES: usize = 8128;

/// The most a result's encoding adds to its text: a key varint (9), the state
/// byte and the length varint (3, for text of up to 2 MiB; longer is a row of
/// its own anyway).
const ITEM_OVERHEAD: usize = 13;

/// Set in a fate's state byte when the playlist's text follows.
const HAS_TEXT: u8 = 0x80;

/// A document playlist's fate: its position, the state code and, for a
/// changed one, its text.
pub(super) type FateRow<T> = (i64, i64, Option<T>);

/// Cuts `items` (in key order) into rows: consecutive groups of at most
/// [`RESULTS_PER_ROW`] and, unless one item alone is larger, at most
/// [`ROW_BYTES`] encoded (`text_len` plus [`ITEM_OVERHEAD`] each).
pub(super) fn rows_of<'a, T>(
    items: &'a [&'a T],
    text_len: impl Fn(&T) -> usize,
) -> Vec<&'a [&'a T]> {
    let mut rows = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let item_bytes = text_len(item) + ITEM_OVERHEAD;
        if i > start && (i - start >= RESULTS_PER_ROW || bytes + item_bytes > ROW_BYTES) {
            rows.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        rows.push(&items[start..]);
    }
    rows
}

/// Appends a document playlist's fate to a row's data.
pub(super) fn encode_fate(&(doc_seq, state, json): &FateRow<&str>, out: &mut Vec<u8>) {
    put_varint(out, doc_seq as u64);
    let text = if json.is_some() { HAS_TEXT } else { 0 };
    out.push(state as u8 | text);
    if let Some(json) = json {
        put_bytes(out, json.as_bytes());
    }
}

/// Appends the fates of a row's `data` to `out`, keyed by position.
pub(super) fn decode_fates(data: &[u8], out: &mut VecDeque<(u64, FateRow<Vec<u8>>)>) -> Result<()> {
    let mut input = Decoder::new(data);
    while !input.is_done() {
        let doc_seq = input.varint()?;
        let Some(state) = input.byte() else {
            bail!("{CORRUPT}");
        };
        let json = match state & HAS_TEXT {
            0 => None,
            _ => Some(input.bytes()?.to_vec()),
        };
        out.push_back((
            doc_seq,
            (doc_seq as i64, i64::from(state & !HAS_TEXT), json),
        ));
    }
    Ok(())
}

/// Appends a new playlist (the index of the change that created it, and its
/// text) to a row's data.
pub(super) fn encode_new(&(created, json): &(i64, &str), out: &mut Vec<u8>) {
    put_varint(out, created as u64);
    put_bytes(out, json.as_bytes());
}

/// Appends the new playlists of a row's `data` to `out`, keyed by creation.
pub(super) fn decode_new(data: &[u8], out: &mut VecDeque<(u64, Vec<u8>)>) -> Result<()> {
    let mut input = Decoder::new(data);
    while !input.is_done() {
        let created = input.varint()?;
        out.push_back((created, input.bytes()?.to_vec()));
    }
    Ok(())
}

/// The key of the last fate in a row's `data` ([`decode_fates`]), without
/// copying any text: what finding where a range starts needs.
pub(super) fn last_fate_key(data: &[u8]) -> Result<Option<u64>> {
    let mut input = Decoder::new(data);
    let mut last = None;
    while !input.is_done() {
        last = Some(input.varint()?);
        let Some(state) = input.byte() else {
            bail!("{CORRUPT}");
        };
        if state & HAS_TEXT != 0 {
            input.bytes()?;
        }
    }
    Ok(last)
}

/// The key of the last new playlist in a row's `data` ([`decode_new`]),
/// without copying any text.
pub(super) fn last_new_key(data: &[u8]) -> Result<Option<u64>> {
    let mut input = Decoder::new(data);
    let mut last = None;
    while !input.is_done() {
        last = Some(input.varint()?);
        input.bytes()?;
    }
    Ok(last)
}

const CORRUPT: &str = "work database: a results row is corrupt; rerun with --fresh";

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 playlists' texts, a few of them larger than a row.
    fn texts() -> Vec<String> {
        (0..300)
            .map(|k| match k % 97 {
                5 => "y".repeat(ROW_BYTES + 3),
                _ => format!("{{\"id\":\"{k}\"}}"),
            })
            .collect()
    }

    #[test]
    fn fate_rows_give_back_every_result_in_order() {
        let texts = texts();
        let fates: Vec<FateRow<&str>> = (0..300)
            .map(|k| {
                (
                    k as i64 * 3,
                    k as i64 % 2,
                    (k % 2 == 0).then_some(texts[k].as_str()),
                )
            })
            .collect();
        let order: Vec<&FateRow<&str>> = fates.iter().collect();
        let rows = rows_of(&order, |f| f.2.map_or(0, str::len));
        assert!(rows.len() < fates.len() / 16, "{} rows", rows.len());
        assert!(rows.iter().all(|row| row.len() <= RESULTS_PER_ROW));
        let mut back = VecDeque::new();
        for row in &rows {
            let mut data = Vec::new();
            for fate in row.iter() {
                encode_fate(fate, &mut data);
            }
            // Two rows to a page, unless one result alone is larger.
            assert!(
                data.len() <= ROW_BYTES || row.len() == 1,
                "{} bytes",
                data.len()
            );
            let before = back.len();
            decode_fates(&data, &mut back).unwrap();
            assert_eq!(
                last_fate_key(&data).unwrap(),
                back.range(before..).last().map(|(key, _)| *key)
            );
        }
        let back: Vec<(u64, FateRow<String>)> = back
            .into_iter()
            .map(|(key, (seq, state, json))| {
                (
                    key,
                    (seq, state, json.map(|j| String::from_utf8(j).unwrap())),
                )
            })
            .collect();
        let expected: Vec<(u64, FateRow<String>)> = fates
            .iter()
            .map(|&(seq, state, json)| (seq as u64, (seq, state, json.map(str::to_string))))
            .collect();
        assert_eq!(back, expected);
        let mut data = Vec::new();
        encode_fate(&fates[0], &mut data);
        assert!(decode_fates(&data[..data.len() - 1], &mut VecDeque::new()).is_err());
    }

    #[test]
    fn new_playlist_rows_give_back_every_result_in_order() {
        let texts = texts();
        let created: Vec<(i64, &str)> = (0..300)
            .map(|k| (k as i64 + 7, texts[k].as_str()))
            .collect();
        let order: Vec<&(i64, &str)> = created.iter().collect();
        let mut back = VecDeque::new();
        for row in rows_of(&order, |c| c.1.len()) {
            let mut data = Vec::new();
            for c in row {
                encode_new(c, &mut data);
            }
            let before = back.len();
            decode_new(&data, &mut back).unwrap();
            assert_eq!(
                last_new_key(&data).unwrap(),
                back.range(before..).last().map(|(key, _)| *key)
            );
        }
        let back: Vec<(i64, String)> = back
            .into_iter()
            .map(|(k, j)| (k as i64, String::from_utf8(j).unwrap()))
            .collect();
        let expected: Vec<(i64, String)> =
            created.iter().map(|&(k, j)| (k, j.to_string())).collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn rows_are_full_and_two_share_a_page() {
        // Playlists of M's size: each row but the last takes as many as fit.
        let text = format!(
            "{{\"id\":\"1\",\"song_ids\":[{}]}}",
            "\"123456\",".repeat(15)
        );
        let created: Vec<(i64, &str)> = (0..5000).map(|k| (k << 40, text.as_str())).collect();
        let order: Vec<&(i64, &str)> = created.iter().collect();
        let rows = rows_of(&order, |c| c.1.len());
        let datas: Vec<Vec<u8>> = rows
            .iter()
            .map(|row| {
                let mut data = Vec::new();
                row.iter().for_each(|c| encode_new(c, &mut data));
                data
            })
            .collect();
        for (row, data) in rows.iter().zip(&datas).take(rows.len() - 1) {
            assert!(data.len() <= ROW_BYTES, "{} bytes", data.len());
            assert!(
                row.len() == RESULTS_PER_ROW || data.len() >= ROW_BYTES * 9 / 10,
                "{} bytes in a row of {}",
                data.len(),
                row.len()
            );
        }
        // SQLite stores two such rows (with the largest keys) to a page.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "page_size", super::super::PAGE_SIZE)
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE results(seq INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL)",
        )
        .unwrap();
        let full = vec![7u8; ROW_BYTES];
        for k in 0..200i64 {
            conn.execute(
                "INSERT INTO results(seq, data) VALUES (?1, ?2)",
                rusqlite::params![i64::MAX - 1000 + k, full],
            )
            .unwrap();
        }
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert!(pages <= 200 / 2 + 8, "{pages} pages for 200 rows");
    }
}
