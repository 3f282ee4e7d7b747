//! Rejects stored a row of up to [`REJECTS_PER_ROW`] at a time.
//!
//! A run with a million rejected changes (most of them `unknown_playlist`)
//! would be a million SQLite rows, whose overhead costs more than their bytes
//! (BENCHMARKS.md, "What was tried": packed rows). So each batch's or partition's rejects,
//! sorted by index, are encoded into rows of up to [`REJECTS_PER_ROW`]: the
//! row's `idx` is its first reject's index (so that resetting a chunk can
//! still delete its workers' rejects by index range: every row holds one
//! batch's rejects, all of one chunk), and its `data` is the rejects, each
//! `index:varint reason:u8 op detail`, where `op` is a byte naming one of the
//! four ops' JSON names or null, or [`OP_OTHER`] then the JSON as bytes, and
//! `detail` is bytes (`len:varint bytes`, as in [`crate::changes::record`]).

use std::borrow::Cow;
use std::collections::VecDeque;

use anyhow::{bail, Context, Result};

use crate::changes::change::Op;
use crate::changes::record::{put_bytes, put_varint, Decoder};
use crate::changes::reject::{Reason, Reject};

/// Rejects per row: small enough that the export holds a page of every run
/// at once in a few MB, large enough that a row's cost is spread thin.
pub(super) const REJECTS_PER_ROW: usize = 128;

/// The ops a reject names in one byte (the byte is the op's position in
/// [`Op::ALL`] plus one).
const OPS: [Op; 4] = Op::ALL;
/// `op` is `null` (missing, or not a string).
const OP_NULL: u8 = 0;
/// `op` is another string: its JSON follows as bytes.
const OP_OTHER: u8 = 0xFF;

/// Appends `reject` to a row's data.
pub(super) fn encode(reject: &Reject, out: &mut Vec<u8>) {
    put_varint(out, reject.index);
    out.push(reject.reason.ordinal() as u8);
    match OPS.iter().position(|op| op.json_name() == reject.op_json) {
        Some(k) => out.push(k as u8 + 1),
        None if reject.op_json == "null" => out.push(OP_NULL),
        None => {
            out.push(OP_OTHER);
            put_bytes(out, reject.op_json.as_bytes());
        }
    }
    put_bytes(out, reject.detail.as_bytes());
}

/// Appends the rejects of a row's `data` to `out`, with their indexes.
pub(super) fn decode(data: &[u8], out: &mut VecDeque<(u64, Reject)>) -> Result<()> {
    let mut input = Decoder::new(data);
    while !input.is_done() {
        let index = input.varint()?;
        let reason = match input.byte().map(usize::from) {
            Some(k) if k < Reason::ALL.len() => Reason::ALL[k],
            _ => bail!("work database: a rejects row names no reason; rerun with --fresh"),
        };
        let op_json = match input.byte() {
            Some(OP_NULL) => Cow::Borrowed("null"),
            Some(OP_OTHER) => Cow::Owned(text(input.bytes()?)?),
            Some(k) if usize::from(k) <= OPS.len() => {
                Cow::Borrowed(OPS[usize::from(k) - 1].json_name())
            }
            _ => bail!("work database: a rejects row names no op; rerun with --fresh"),
        };
        let detail = text(input.bytes()?)?;
        out.push_back((
            index,
            Reject {
                index,
                op_json,
                reason,
                detail,
            },
        ));
    }
    Ok(())
}

fn text(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).context("work database: a rejects row holds no UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_come_back_as_they_went_in() {
        let rejects: Vec<Reject> = [
            (
                0,
                "\"add_song\"",
                Reason::UnknownPlaylist,
                "playlist 7 does not exist",
            ),
            (1, "null", Reason::InvalidChange, "missing member op"),
            (
                300,
                "\"dance\"",
                Reason::InvalidChange,
                "unknown op \"dance\"",
            ),
            (
                1 << 40,
                "\"remove_playlist\"",
                Reason::SongNotInPlaylist,
                "",
            ),
            (1 << 41, "\"add_playlist\"", Reason::DuplicateSong, "é"),
            (1 << 42, "\"remove_song\"", Reason::UnknownSong, "x"),
        ]
        .into_iter()
        .map(|(index, op, reason, detail)| Reject {
            index,
            op_json: Cow::Borrowed(op),
            reason,
            detail: detail.to_string(),
        })
        .collect();
        let mut data = Vec::new();
        for r in &rejects {
            encode(r, &mut data);
        }
        let mut back = VecDeque::new();
        decode(&data, &mut back).unwrap();
        let back: Vec<Reject> = back.into_iter().map(|(_, r)| r).collect();
        assert_eq!(back, rejects);
        for cut in 1..data.len() {
            // A truncated row is an error or fewer rejects, never a panic.
            let mut some = VecDeque::new();
            if decode(&data[..cut], &mut some).is_ok() {
                assert!(some.len() < rejects.len(), "cut at {cut}");
            }
        }
        assert!(decode(&[5, 42, 1, 0], &mut VecDeque::new()).is_err());
    }
}
