//! The applied report (`--applied PATH`, docs/GUIDE.md "Pipelines"): every change
//! that was applied, in index order, one JSON object per line: its `index`,
//! `op`, the `playlist_id` it acted on (for an `add_playlist` without one,
//! the id it was given) and, for a song change, its `song_id`. Ids are
//! written as the change wrote them (a string or an integer); a given id is
//! a string, as in OUTPUT.
//!
//! Written at the export, once the merge is done, from two things that are
//! the same for every number of workers: CHANGES, read again chunk after
//! chunk in index order, and the rejects (every change not rejected was
//! applied). So it is the same bytes for every N, and with the rejects
//! report it names every change exactly once. The automatic ids are counted
//! as the merge counts them ([`crate::stages::merge`]): `M + k`, `k` counting every
//! `add_playlist` without `playlist_id` so far, rejected ones included.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::changes::change::{self, Change};
use crate::json;
use crate::store::{Key, Store};

/// Writes the applied report for the run in `store` (merged) to `out`;
/// `changes` is the text of CHANGES the plan was made from.
pub fn write(store: &Store, changes: &Path, out: &mut dyn Write) -> Result<()> {
    let chunks = store.chunks()?;
    let mut max_id = store.meta_number(Key::DocumentMaxPlaylistId)?;
    for chunk in &chunks {
        max_id = max_id.max(chunk.max_playlist_id);
    }
    let mut rejected = Vec::new();
    store.each_reject(&mut |reject| {
        rejected.push(reject.index);
        Ok(())
    })?;
    let mut next_rejected = rejected.into_iter().peekable();
    let mut index = 0u64;
    let mut automatic = 0u64;
    let mut scratch = Vec::new();
    let mut line = Vec::new();
    for chunk in &chunks {
        let what = format!("CHANGES chunk {}", chunk.chunk);
        let mut text = crate::place::open_range(changes, chunk.start, chunk.end)
            .with_context(|| format!("reading {}", changes.display()))?;
        crate::json::values::each_value(
            &mut text,
            changes,
            chunk.start,
            chunk.end,
            &what,
            &mut |raw, _| {
                let parsed = change::read(raw, &mut scratch);
                if parsed.counts_as_auto {
                    automatic += 1;
                }
                let was_rejected = next_rejected.next_if_eq(&index).is_some();
                if let (false, Ok(applied)) = (was_rejected, &parsed.change) {
                    let given = (max_id + automatic).to_string();
                    line.clear();
                    applied_line(index, applied, &given, &mut line);
                    out.write_all(&line)?;
                }
                index += 1;
                Ok(())
            },
        )?;
    }
    out.flush().context("writing the applied report")
}

/// One line of the report; `given` is the id an `add_playlist` without one
/// got.
fn applied_line(index: u64, applied: &Change, given: &str, line: &mut Vec<u8>) {
    let (op, playlist, song) = match applied {
        Change::AddPlaylist { id, .. } => ("add_playlist", *id, None),
        Change::RemovePlaylist { playlist } => ("remove_playlist", Some(*playlist), None),
        Change::AddSong { playlist, song } => ("add_song", Some(*playlist), Some(*song)),
        Change::RemoveSong { playlist, song } => ("remove_song", Some(*playlist), Some(*song)),
    };
    line.extend_from_slice(
        format!("{{\"index\":{index},\"op\":\"{op}\",\"playlist_id\":").as_bytes(),
    );
    match playlist {
        Some(raw) => line.extend_from_slice(raw),
        None => json::write_string(given, line),
    }
    if let Some(raw) = song {
        line.extend_from_slice(b",\"song_id\":");
        line.extend_from_slice(raw);
    }
    line.extend_from_slice(b"}\n");
}
