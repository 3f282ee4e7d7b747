//! Rules the same for both backends, written once: the merge-join of the
//! final playlists, who may claim a chunk, when the merge is complete,
//! counting rejects, and how a lost server connection is explained.

use super::postgres;
use super::types::Claimed;
use super::types::Each;
use super::types::Leased;
use super::types::FATE_CHANGED;
use anyhow::{bail, Context, Result};

use crate::changes::reject::Reason;

/// A document playlist as the merge-join reads it: its position and text.
pub(super) type DocRow = (i64, Vec<u8>);

/// A result about a document playlist: its `doc_seq`, state and new text.
pub(super) type FateRow = (i64, i64, Option<Vec<u8>>);

/// `n` as a signed 64-bit SQL integer, as both backends store keys: the open
/// end of a range (`u64::MAX`) becomes the largest.
pub(super) fn signed_bound(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The merge-join both backends feed, for [`Tables::each_final_document_playlist`](super::Tables::each_final_document_playlist):
/// `docs` are the document's playlists in position order, `fates` the merge's
/// results about document playlists in `doc_seq` order (at most one each).
/// Each document playlist is handed to `each` as it ends: as it was when no
/// result is about it, as its new text when it changed, not at all when it was
/// removed (a playlist created anew under its id is among the new ones).
pub(super) fn join_final_document_playlists(
    docs: impl Iterator<Item = Result<DocRow>>,
    mut fates: impl Iterator<Item = Result<FateRow>>,
    each: &mut Each,
) -> Result<()> {
    let mut fate = fates.next().transpose()?;
    for doc in docs {
        let (seq, raw) = doc?;
        while fate.as_ref().is_some_and(|(at, _, _)| *at < seq) {
            fate = fates.next().transpose()?;
        }
        match &fate {
            Some((at, state, json)) if *at == seq => {
                if *state == FATE_CHANGED {
                    each(
                        json.as_deref()
                            .context("work store: a changed playlist without text")?,
                    )?;
                }
            }
            _ => each(&raw)?,
        }
    }
    Ok(())
}

/// The lease rule both backends apply when a chunk is claimed by number, in
/// the claim's transaction: a chunk that is not done and whose lease, held by
/// another owner, has `secs_left` to run is refused ([`Leased`]); an expired
/// lease, a free chunk, a done one (applying it again is up to the caller) and
/// one's own lease are taken.
pub(super) fn refuse_if_leased(
    chunk: u64,
    holder: Option<String>,
    done: bool,
    secs_left: f64,
    owner: &str,
) -> Result<()> {
    match holder {
        Some(holder) if !done && secs_left >= 0.0 && holder != owner => Err(Leased {
            chunk,
            owner: holder,
            secs_left,
        }
        .into()),
        _ => Ok(()),
    }
}

/// What asking for the next chunk gives when no chunk is free: every chunk is
/// done, or some are leased by live workers (wait: one of them may die).
pub(super) fn when_none_is_free(chunks_not_done: u64) -> Claimed {
    if chunks_not_done == 0 {
        Claimed::AllDone
    } else {
        Claimed::Wait
    }
}

/// The rule both backends apply, in the transaction that marks the merge
/// done: every partition is in `merged` (a chunk applied again meanwhile by
/// `worker --redo` clears them, and the merge must then be done again).
pub(super) fn check_merge_complete(merged: u64, partitions: Option<&str>) -> Result<()> {
    let partitions: u64 = partitions
        .and_then(|p| p.parse().ok())
        .context("work database has no partitions: was it made by an unfinished run?")?;
    if merged != partitions {
        bail!(
            "the merge is not complete: {merged} of {partitions} partitions are merged (was a chunk applied again meanwhile?); run the harness again to merge again"
        );
    }
    Ok(())
}

/// `error`, explained when it is a broken connection to a server store
/// (docs/GUIDE.md "When a host dies"): what was committed stays, and the same
/// command resumes.
pub fn explain_lost_connection(error: anyhow::Error) -> anyhow::Error {
    if postgres::is_lost_connection(&error) {
        error.context(
            "lost the connection to the work store (the server restarted or ended the session, or the network to it failed or stayed silent too long); what was committed is kept: run the same command again to resume",
        )
    } else {
        error
    }
}

/// The count of rejects per reason as both backends read it (`reason`,
/// `count(*)` rows in any order): by reason, in the table's order of
/// precedence ([`Reason`]'s order).
pub(super) fn counted_by_reason(
    rows: impl Iterator<Item = (String, u64)>,
) -> Result<Vec<(Reason, u64)>> {
    let mut counted = rows
        .map(|(name, n)| Ok((reason_of(&name)?, n)))
        .collect::<Result<Vec<_>>>()?;
    counted.sort();
    Ok(counted)
}

pub(super) fn reason_of(name: &str) -> Result<Reason> {
    Reason::from_name(name)
        .with_context(|| format!("work database: unknown reject reason {name:?}"))
}
