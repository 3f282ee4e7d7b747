//! The types of the store's operations: `meta` keys, chunk rows, claims and
//! leases, a batch, a partition's results, the callbacks of streams, and the
//! errors a caller must tell apart. The same for both backends.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::changes::reject::Reject;

/// A value kept in `meta`. Stage markers are not keys: see [`Store::is_done`](super::Store::is_done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The owner member name new playlists use (`owner_id` or `user_id`).
    OwnerKey,
    /// Largest automatic-id-like playlist id in the document.
    DocumentMaxPlaylistId,
    Users,
    Playlists,
    Songs,
    /// Where the users and songs arrays are in MIXTAPE (`start end`, or empty).
    UsersRange,
    SongsRange,
    /// The changes file's form (`object`, `array`, `lines`).
    Form,
    /// How many changes CHANGES holds.
    Changes,
    /// How many merge partitions records are spread over.
    Partitions,
    /// How long a worker's claim on a chunk lasts unless renewed, in seconds.
    LeaseSecs,
    /// The document's warning count, when the import knew it (absent: the
    /// merge counts).
    DocumentWarnings,
}

impl Key {
    pub(super) fn name(self) -> &'static str {
        match self {
            Key::OwnerKey => "owner_key",
            Key::DocumentMaxPlaylistId => "document_max_playlist_id",
            Key::Users => "users",
            Key::Playlists => "playlists",
            Key::Songs => "songs",
            Key::UsersRange => "users_range",
            Key::SongsRange => "songs_range",
            Key::Form => "form",
            Key::Changes => "changes",
            Key::Partitions => "partitions",
            Key::LeaseSecs => "lease_secs",
            Key::DocumentWarnings => "document_warnings",
        }
    }
}

/// Which input a record of path and fingerprint is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Mixtape,
    Changes,
}

impl InputKind {
    /// How messages name it.
    pub fn label(self) -> &'static str {
        match self {
            InputKind::Mixtape => "MIXTAPE",
            InputKind::Changes => "CHANGES",
        }
    }

    pub(super) fn keys(self) -> (&'static str, &'static str) {
        match self {
            InputKind::Mixtape => ("mixtape_path", "mixtape_fingerprint"),
            InputKind::Changes => ("changes_path", "changes_fingerprint"),
        }
    }

    /// The keys of the file the stages read: the input itself, or the text a
    /// compressed input was decompressed into.
    pub(super) fn text_keys(self) -> (&'static str, &'static str) {
        match self {
            InputKind::Mixtape => ("mixtape_text_path", "mixtape_text_fingerprint"),
            InputKind::Changes => ("changes_text_path", "changes_text_fingerprint"),
        }
    }

    /// What the kept decompressed text of this input is called: the work
    /// database's name with this appended.
    pub fn kept_text_suffix(self) -> &'static str {
        match self {
            InputKind::Mixtape => ".mixtape",
            InputKind::Changes => ".changes",
        }
    }

    /// What names the file an input read from standard input is kept in
    /// ([`crate::stages::input::Input::from_stdin`]), beside the store.
    pub fn stdin_suffix(self) -> &'static str {
        match self {
            InputKind::Mixtape => ".stdin-mixtape",
            InputKind::Changes => ".stdin-changes",
        }
    }

    pub const ALL: [InputKind; 2] = [InputKind::Mixtape, InputKind::Changes];
}

/// A chunk's row: its byte range in CHANGES, as planned, and how far its worker got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRow {
    pub chunk: u64,
    /// Byte offset of its first change.
    pub start: u64,
    /// Byte offset just past its range.
    pub end: u64,
    /// Index of its first change in the whole file.
    pub first_index: u64,
    /// How many changes it holds.
    pub changes: u64,
    /// Where the next batch starts (committed position), and its first index.
    pub next_offset: u64,
    pub next_index: u64,
    /// `add_playlist` changes without `playlist_id` committed so far.
    pub auto_count: u64,
    /// Largest automatic-id-like `playlist_id` committed so far.
    pub max_playlist_id: u64,
    pub done: bool,
}

impl ChunkRow {
    /// A chunk's row from the columns of [`SELECT_CHUNKS`](super::statements::SELECT_CHUNKS) as either backend
    /// reads them: `number(i)` is column `i` as a number, `done` the last.
    pub(super) fn from_columns(
        number: impl Fn(usize) -> Result<u64>,
        done: bool,
    ) -> Result<ChunkRow> {
        Ok(ChunkRow {
            chunk: number(0)?,
            start: number(1)?,
            end: number(2)?,
            first_index: number(3)?,
            changes: number(4)?,
            next_offset: number(5)?,
            next_index: number(6)?,
            auto_count: number(7)?,
            max_playlist_id: number(8)?,
            done,
        })
    }
}

/// What the import learnt about the document, stored with its done-marker.
#[derive(Clone, Debug, Default)]
pub struct DocumentFacts {
    pub owner_key: String,
    pub max_playlist_id: u64,
    pub users: u64,
    pub playlists: u64,
    pub songs: u64,
    pub ranges: ArrayRanges,
    /// MIXTAPE's text when the import made it (a local copy of an object):
    /// its path and fingerprint, recorded with the import.
    pub text: Option<(std::path::PathBuf, String)>,
    /// The warning count, when the import could tell it
    /// ([`crate::stages::import`]); `None` leaves it to the merge.
    pub warnings: Option<u64>,
}

/// The bytes between an array's brackets in MIXTAPE: its elements, commas and
/// white space; and where elements start every few MiB, so that the export can
/// copy the array in pieces, in parallel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayRange {
    pub start: u64,
    pub end: u64,
    /// Offsets of element starts, increasing, strictly inside `start..end`.
    pub splits: Vec<u64>,
}

/// Where the document's users and songs are (`None`: missing or empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArrayRanges {
    pub users: Option<ArrayRange>,
    pub songs: Option<ArrayRange>,
}

impl ArrayRange {
    /// The range cut at its splits: byte ranges that each start at an element.
    pub fn pieces(&self) -> Vec<(u64, u64)> {
        let mut bounds = vec![self.start];
        bounds.extend(&self.splits);
        bounds.push(self.end);
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// `start end split...`, or empty for no range.
    pub(super) fn to_meta(range: &Option<ArrayRange>) -> String {
        let Some(r) = range else {
            return String::new();
        };
        let mut text = format!("{} {}", r.start, r.end);
        for split in &r.splits {
            text.push_str(&format!(" {split}"));
        }
        text
    }

    pub(super) fn from_meta(text: &str) -> Result<Option<ArrayRange>> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || format!("work database: bad array range {text:?}");
        let numbers: Vec<u64> = text
            .split(' ')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()
            .with_context(bad)?;
        let [start, end, splits @ ..] = numbers.as_slice() else {
            bail!(bad());
        };
        Ok(Some(ArrayRange {
            start: *start,
            end: *end,
            splits: splits.to_vec(),
        }))
    }
}

/// A worker's claim on a chunk: the lease's token, which the claim raised.
/// Every write the worker makes for the chunk checks that the token is still
/// the chunk's, in the same transaction: a worker whose lease expired and was
/// taken over is fenced off, and cannot commit again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub chunk: u64,
    pub token: u64,
}

/// What asking for a chunk gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    Chunk(Claim),
    /// Every chunk not done is leased by a live worker: ask again later (one of
    /// them may die and its lease expire).
    Wait,
    /// Every chunk is done.
    AllDone,
}

/// The chunk is leased by another worker, whose lease has not expired.
#[derive(Debug, thiserror::Error)]
#[error("chunk {chunk} is being applied by {owner} (its lease runs {secs_left:.0} s more)")]
pub struct Leased {
    pub chunk: u64,
    pub owner: String,
    pub secs_left: f64,
}

/// The place holds something another program made: it is never resumed nor
/// replaced, `--fresh` or not.
#[derive(Debug, thiserror::Error)]
#[error("the database of {store} has a schema mixtape that another program made; mixtape will not touch it (use another database)")]
pub struct NotOurs {
    pub store: String,
}

/// The file at `--db` is not a mixtape work database (another program's
/// file, a document): it is never used nor replaced, `--fresh` or not.
#[derive(Debug, thiserror::Error)]
#[error("--db {} is not a work database: mixtape will neither use nor replace it, even with --fresh (give --db another path)", path.display())]
pub struct NotAWorkDatabase {
    pub path: PathBuf,
}

/// Another worker committed this merge partition first (each partition's
/// results commit with its row in `merged`, whose key admits one).
#[derive(Debug, thiserror::Error)]
#[error("merge partition {partition} was merged by another worker")]
pub struct AlreadyMerged {
    pub partition: u64,
}

/// This worker's lease on the chunk was taken over (it expired: the worker was
/// too slow to renew it); nothing of the batch was written.
#[derive(Debug, thiserror::Error)]
#[error("the lease on chunk {chunk} was taken over by another worker; this worker's uncommitted batch was dropped and it cannot commit to that chunk again")]
pub struct LeaseLost {
    pub chunk: u64,
}

/// One worker batch, written with the chunk's new position in one transaction.
pub struct Batch<'a> {
    pub claim: Claim,
    /// How long the lease lasts from this commit (a commit renews it).
    pub lease: Duration,
    /// Encoded records, one buffer per merge partition (empty ones are skipped).
    pub blocks: &'a [Vec<u8>],
    pub rejects: &'a [Reject],
    /// The position this worker last committed; the batch commits only if the
    /// chunk is still there (so two workers on one chunk cannot both record it).
    pub from_offset: u64,
    /// The chunk's position and running figures after this batch.
    pub next_offset: u64,
    pub next_index: u64,
    pub auto_count: u64,
    pub max_playlist_id: u64,
    pub done: bool,
}

/// How long a commit waited for the write lock, and held it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockTiming {
    pub waited: Duration,
    pub held: Duration,
}

/// The fate of a playlist whose final state differs from the document's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// A document playlist (at `doc_seq`) whose songs changed; `json` is its new text.
    Changed { doc_seq: i64, json: String },
    /// A document playlist that no longer exists.
    Removed { doc_seq: i64 },
    /// A playlist created by change `created`, written after the document's
    /// playlists in order of `created`. `doc_seq` is set when it replaces a
    /// document playlist of the same id that was removed first.
    New {
        doc_seq: Option<i64>,
        created: u64,
        json: String,
    },
}

impl Fate {
    /// Its `results` columns, as every backend stores them: the state code,
    /// `doc_seq`, `created`, `json`.
    pub(super) fn columns(&self) -> (i64, Option<i64>, Option<i64>, Option<&str>) {
        match self {
            Fate::Changed { doc_seq, json } => (FATE_CHANGED, Some(*doc_seq), None, Some(json)),
            Fate::Removed { doc_seq } => (FATE_REMOVED, Some(*doc_seq), None, None),
            Fate::New {
                doc_seq,
                created,
                json,
            } => (FATE_NEW, *doc_seq, Some(*created as i64), Some(json)),
        }
    }
}

/// `results.state` of each [`Fate`].
pub(super) const FATE_CHANGED: i64 = 0;

pub(super) const FATE_REMOVED: i64 = 1;

pub(super) const FATE_NEW: i64 = 2;

/// A playlist id's fate, as the merge stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaylistResult {
    pub id: String,
    pub fate: Fate,
}

/// What merging one partition gives, committed with the partition's number.
#[derive(Default)]
pub struct PartitionResults {
    pub results: Vec<PlaylistResult>,
    pub rejects: Vec<Reject>,
    /// Document playlists (of this partition's slice) naming a missing owner or song.
    pub warnings: u64,
}

/// Receives one stored element (raw JSON text) at a time.
pub type Each<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// Receives one document playlist: its position and its raw JSON text.
pub type EachPlaylist<'a> = dyn FnMut(u64, &[u8]) -> Result<()> + 'a;

/// Receives one top-level member: its raw key and its minified value.
pub type EachMember<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The document's three arrays: what the import reads, the export writes,
/// and which elements an id index holds (one enum for all three).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Users,
    Songs,
    /// The document's playlists, id → position (`playlists.seq`).
    Playlists,
}

impl IdKind {
    pub const ALL: [IdKind; 3] = [IdKind::Users, IdKind::Songs, IdKind::Playlists];

    pub(super) fn suffix(self) -> &'static str {
        match self {
            IdKind::Users => ".users.idx",
            IdKind::Songs => ".songs.idx",
            IdKind::Playlists => ".playlists.idx",
        }
    }

    /// The document's array of these elements.
    pub fn array_name(self) -> &'static str {
        match self {
            IdKind::Users => "users",
            IdKind::Songs => "songs",
            IdKind::Playlists => "playlists",
        }
    }

    /// What the index maps ids to.
    pub fn values(self) -> crate::ids::index::Values {
        match self {
            IdKind::Users | IdKind::Songs => crate::ids::index::Values::Written,
            IdKind::Playlists => crate::ids::index::Values::Positions,
        }
    }
}
