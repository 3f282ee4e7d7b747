//! The replay of one partition: its records, in index order, against the
//! document's playlists of its slice and the playlists its changes create.

use super::context::MergeContext;
use super::song_list::{tag, SongList, SongListBuffers};
use super::warnings::{WarningCount, PROBES_AT_ONCE};
use std::borrow::Cow;

use anyhow::{bail, Result};

use crate::changes::record::{Body, Decoder, NewId, Recorded, Token};
use crate::changes::reject::{Reason, Reject, Rejection};
use crate::ids::key::{FxMap, FxSet, IdKey};
use crate::json;
use crate::json::render;
use crate::store::{Fate, PartitionResults, PlaylistResult, Store};

/// The state of one playlist id while its changes are replayed.
pub(super) struct Playlist {
    /// Song ids as written, in order, and which songs it holds.
    songs: SongList,
    origin: Origin,
}

pub(super) enum Origin {
    /// The document's playlist; `changed` once its songs differ.
    Document { changed: bool },
    /// Created by change `created`.
    New {
        created: u64,
        id: Vec<u8>,
        owner: Vec<u8>,
        copied: Vec<u8>,
    },
}

pub(super) fn text(raw: &[u8]) -> Cow<'_, str> {
    json::id_text(raw).unwrap_or_default()
}

/// Replays every change of partition `partition`, in index order, in one streaming
/// pass.
///
/// Blocks read in (chunk, rowid) order hold the partition's changes in index
/// order: a chunk's changes all come before the next chunk's, a worker appends
/// its batches in order, and a batch's records are in order. So no sort is
/// needed, and memory holds the state of each playlist the partition touches,
/// not its changes: a playlist named by millions of changes costs its song list,
/// nothing more.
///
/// Each [`RECORDS_AT_ONCE`] records of a block take two passes: the first
/// decodes them and finds each one's replay ([`Replays::find`]), the second
/// replays them in order ([`Replays::replay`]). Finding a record's replay is
/// a probe of the map of replays and a read of the replay, both missing the
/// cache on a large partition; found one after the other, the misses overlap
/// (no lookup waits for the one before), where between two replays each
/// would wait on its own.
pub(super) fn merge_partition(
    store: &Store,
    cx: &MergeContext,
    partition: u64,
    out: &mut PartitionResults,
    buffers: &mut SongListBuffers,
) -> Result<()> {
    let documents = documents_of_partition(store, cx, partition, out)?;
    let mut replays = Replays::new(documents, buffers);
    store.each_block(partition, &mut |block| {
        let mut records = Decoder::new(block);
        let mut batch: Vec<(u32, Recorded)> = Vec::with_capacity(RECORDS_AT_ONCE);
        loop {
            batch.clear();
            for rec in records.by_ref().take(RECORDS_AT_ONCE) {
                let rec = rec?;
                let at = replays.find(store, partition, &rec)?;
                batch.push((at, rec));
            }
            replays.replay(&batch, cx, out);
            if batch.len() < RECORDS_AT_ONCE {
                return Ok(());
            }
        }
    })?;
    for replay in replays.replays {
        replay.finish(cx, out, replays.buffers);
    }
    Ok(())
}

/// How many records [`merge_partition`] decodes before it replays them: a
/// bound on the decoded records it holds (about 100 bytes each), whatever the
/// size of a block.
pub(super) const RECORDS_AT_ONCE: usize = 4096;

/// How many records ahead [`Replays::replay`] asks for a replay's state.
pub(super) const REPLAYS_AHEAD: usize = 8;

/// The place in a batch of a record that names no playlist (a new playlist
/// with an automatic id), which has no replay.
pub(super) const NO_REPLAY: u32 = u32::MAX;

/// A partition's replays: one per playlist id its records name.
pub(super) struct Replays<'b> {
    /// The document playlists the partition's records may name, by position,
    /// until a replay takes its own.
    documents: FxMap<u64, Document>,
    /// Each replay's place in `replays`, by its playlist id's key. The map
    /// holds only keys and places (48-byte entries), not the replays (300
    /// bytes each): its probes compare keys, and with the replays in the map
    /// those compares would miss the cache.
    replay_of: FxMap<IdKey<'static>, u32>,
    /// In the order first named.
    replays: Vec<Replay>,
    /// The index of the last record found: they must come in index order.
    last_index: Option<u64>,
    /// The merge thread's buffers for song lists.
    buffers: &'b mut SongListBuffers,
}

impl<'b> Replays<'b> {
    fn new(documents: FxMap<u64, Document>, buffers: &'b mut SongListBuffers) -> Replays<'b> {
        Replays {
            replay_of: FxMap::with_capacity_and_hasher(documents.len() * 2, Default::default()),
            replays: Vec::with_capacity(documents.len()),
            documents,
            last_index: None,
            buffers,
        }
    }

    /// The place of `rec`'s replay in `replays`, loaded when it is the first
    /// record about its playlist; [`NO_REPLAY`] for a new playlist with an
    /// automatic id.
    fn find(&mut self, store: &Store, partition: u64, rec: &Recorded) -> Result<u32> {
        if self.last_index.is_some_and(|last| rec.index <= last) {
            bail!("work database: partition {partition} holds changes out of order; rerun with --fresh");
        }
        self.last_index = Some(rec.index);
        let Some(playlist) = rec.body.playlist() else {
            return Ok(NO_REPLAY);
        };
        let key = playlist.key();
        if let Some(&at) = self.replay_of.get(&key) {
            return Ok(at);
        }
        let loaded = Replay::load(
            store,
            partition,
            &text(&playlist),
            &mut self.documents,
            self.buffers,
        )?;
        self.replays.push(loaded);
        let at = (self.replays.len() - 1) as u32;
        self.replay_of.insert(key.into_owned(), at);
        Ok(at)
    }

    /// Replays `batch`, records and their replays' places ([`Replays::find`])
    /// in index order, asking for the replays a few records ahead.
    fn replay(&mut self, batch: &[(u32, Recorded)], cx: &MergeContext, out: &mut PartitionResults) {
        let replays = &mut self.replays;
        let buffers = &mut *self.buffers;
        for (i, (at, rec)) in batch.iter().enumerate() {
            if let Some(replay) = batch
                .get(i + 2 * REPLAYS_AHEAD)
                .and_then(|&(ahead, _)| replays.get(ahead as usize))
            {
                replay.prefetch_state();
            }
            if let Some(replay) = batch
                .get(i + REPLAYS_AHEAD)
                .and_then(|&(ahead, _)| replays.get(ahead as usize))
            {
                replay.prefetch_songs();
            }
            match &rec.body {
                Body::AddPlaylist {
                    id: NewId::Auto { chunk, ordinal },
                    owner,
                    songs,
                    copied,
                } => {
                    let before = cx.auto_before.get(*chunk as usize).copied().unwrap_or(0);
                    let id = (cx.max_id + before + ordinal).to_string();
                    let mut id_written = Vec::new();
                    json::write_string(&id, &mut id_written);
                    let json = text_of(render::new_playlist(
                        &id_written,
                        &cx.owner_key,
                        owner,
                        songs.iter().map(|s| &**s),
                        copied,
                    ));
                    out.results.push(PlaylistResult {
                        id,
                        fate: Fate::New {
                            doc_seq: None,
                            created: rec.index,
                            json,
                        },
                    });
                }
                _ => replays[*at as usize].apply(rec, out, buffers),
            }
        }
    }
}

/// The document playlists that partition `partition`'s records may name, by
/// position, and (unless the import counted them) the slice's warnings
/// counted into `out`: one range scan of the partition's slice
/// ([`crate::changes::partition`]) keeps every playlist of it, up to
/// [`SLICE_BYTES_KEPT`] of text. Most slices are far smaller (about a
/// thousand playlists, a few hundred KB), and most of their playlists are
/// named anyway, so keeping them all spares a first pass over the
/// partition's records to find which. A larger slice still takes that pass,
/// and a second scan reads only the playlists it found; where the warnings
/// are counted already, the first scan stops as soon as the slice is found
/// larger. Memory: at most that much text, or the playlists the partition
/// touches, which its replay holds anyway.
pub(super) fn documents_of_partition(
    store: &Store,
    cx: &MergeContext,
    partition: u64,
    out: &mut PartitionResults,
) -> Result<FxMap<u64, Document>> {
    let (from, to) = cx.partitions.slice(partition);
    let slice_playlists = if cx.sparse { 0 } else { (to - from) as usize };
    let mut documents = FxMap::with_capacity_and_hasher(slice_playlists, Default::default());
    let mut warnings = (!cx.warnings_counted).then(|| WarningCount::new(store, PROBES_AT_ONCE));
    // Fewer changes than playlists: the first scan would find the slice
    // mostly unnamed (with no changes at all, D's merge read every
    // playlist for nothing).
    let mut kept = (!cx.sparse).then_some(0usize);
    let mut keep_or_count = |position, raw: &[u8]| -> Result<()> {
        let members = json::object_members(raw).unwrap_or_default();
        if let Some(warnings) = warnings.as_mut() {
            warnings.playlist(&members)?;
        }
        if let Some(bytes) = kept.as_mut() {
            *bytes += raw.len();
            if *bytes <= SLICE_BYTES_KEPT {
                documents.insert(position, Document::of(raw, &members));
            } else {
                kept = None;
                documents = FxMap::default();
                if warnings.is_none() {
                    return Err(SliceTooLarge.into());
                }
            }
        }
        Ok(())
    };
    if !cx.sparse {
        match store.each_document_playlist_between(from, to, &mut keep_or_count) {
            Err(e) if e.is::<SliceTooLarge>() => {}
            other => other?,
        }
    }
    if let Some(warnings) = warnings {
        out.warnings += warnings.finish()?;
    }
    if kept.is_some() {
        return Ok(documents);
    }
    let mut touched = FxSet::default();
    store.each_block(partition, &mut |block| {
        for rec in Decoder::new(block) {
            if let Some(playlist) = rec?.body.playlist() {
                if let Some(position) = store.document_playlist_position(&text(&playlist))? {
                    touched.insert(position);
                }
            }
        }
        Ok(())
    })?;
    let mut documents = FxMap::with_capacity_and_hasher(touched.len(), Default::default());
    let wanted = |position| touched.contains(&position);
    store.each_document_playlist_among(from, to, &wanted, &mut |position, raw| {
        let members = json::object_members(raw).unwrap_or_default();
        documents.insert(position, Document::of(raw, &members));
        Ok(())
    })?;
    Ok(documents)
}

/// Stops the first scan of a slice once it holds more than
/// [`SLICE_BYTES_KEPT`] and nothing else is to be read from it.
#[derive(Debug)]
struct SliceTooLarge;

impl std::fmt::Display for SliceTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a slice of the document's playlists larger than the merge keeps")
    }
}

impl std::error::Error for SliceTooLarge {}

/// The most text of a slice's document playlists that the merge keeps
/// without first finding which of them the partition's records name.
pub(super) const SLICE_BYTES_KEPT: usize = 1 << 20;

/// A document playlist as the merge keeps it: its minified text, and where
/// its `song_ids` value is in it, found once (in the scan that counts
/// warnings) for the replay's song list and for rendering the changed
/// playlist, which replaces just that value.
pub(super) struct Document {
    /// As the store gave it (which checked that it is UTF-8).
    text: Vec<u8>,
    song_ids: Option<std::ops::Range<usize>>,
}

impl Document {
    /// The playlist `raw`, whose members are `members`.
    fn of(raw: &[u8], members: &[(&[u8], &[u8])]) -> Document {
        let song_ids = render::song_ids_range(raw, members);
        Document {
            text: raw.to_vec(),
            song_ids,
        }
    }

    /// Its `song_ids` value (empty when it has none).
    fn song_ids(&self) -> &[u8] {
        match &self.song_ids {
            Some(range) => &self.text[range.clone()],
            None => b"",
        }
    }
}

/// One playlist id while its changes are replayed: the document's playlist of
/// that id, if any, and the state after the changes replayed so far.
pub(super) struct Replay {
    /// The playlist id's text.
    id: String,
    /// Its position and playlist in the document.
    document: Option<(i64, Document)>,
    state: Option<Playlist>,
}

impl Replay {
    /// The state before any change: the document's playlist `id`, or none,
    /// taken from `documents` ([`documents_of_partition`]).
    fn load(
        store: &Store,
        partition: u64,
        id: &str,
        documents: &mut FxMap<u64, Document>,
        buffers: &mut SongListBuffers,
    ) -> Result<Replay> {
        let document = match store.document_playlist_position(id)? {
            Some(position) => match documents.remove(&position) {
                Some(raw) => Some((position as i64, raw)),
                None => bail!(
                    "work database: partition {partition} holds playlist {id} of another partition; rerun with --fresh"
                ),
            },
            None => None,
        };
        let state = document.as_ref().map(|(_, playlist)| {
            let song_ids = playlist.song_ids();
            let songs = SongList::of(
                json::array_elements(song_ids)
                    .unwrap_or_default()
                    .into_iter(),
                song_ids.len(),
                buffers,
            );
            Playlist {
                songs,
                origin: Origin::Document { changed: false },
            }
        });
        Ok(Replay {
            id: id.to_string(),
            document,
            state,
        })
    }

    /// Asks the processor to start loading this replay's state (a hint: no
    /// effect on what any read gives). Reads nothing of it.
    fn prefetch_state(&self) {
        let state: *const u8 = std::ptr::addr_of!(self.state).cast();
        crate::ids::index::prefetch_address(state);
        crate::ids::index::prefetch_address(state.wrapping_add(64));
    }

    /// Asks the processor to start loading the tags of this replay's song
    /// list; reads the state, which [`Replay::prefetch_state`] should have
    /// brought in by now.
    fn prefetch_songs(&self) {
        if let Some(tag) = self
            .state
            .as_ref()
            .and_then(|state| state.songs.tags.first())
        {
            crate::ids::index::prefetch_read(tag);
        }
    }

    /// Applies one change about playlist `id`, or rejects it.
    fn apply(&mut self, rec: &Recorded, out: &mut PartitionResults, buffers: &mut SongListBuffers) {
        let id = &self.id;
        let outcome = match (&rec.body, self.state.as_mut()) {
            (Body::AddPlaylist { .. }, Some(_)) => Err(Rejection::new(
                Reason::PlaylistExists,
                format!("playlist {id} already exists"),
            )),
            (body @ Body::AddPlaylist { .. }, None) => {
                self.state = Some(Playlist::created_by(rec.index, body, buffers));
                Ok(())
            }
            (Body::RemovePlaylist { .. }, Some(_)) => {
                if let Some(removed) = self.state.take() {
                    buffers.give(removed.songs);
                }
                Ok(())
            }
            (Body::AddSong { song, .. }, Some(p)) => p.add_song(id, song),
            (Body::RemoveSong { song, .. }, Some(p)) => p.remove_song(id, song),
            (_, None) => Err(Rejection::new(
                Reason::UnknownPlaylist,
                format!("playlist {id} does not exist"),
            )),
        };
        if let Err(Rejection { reason, detail }) = outcome {
            out.rejects.push(Reject {
                index: rec.index,
                op_json: Cow::Borrowed(rec.body.op().json_name()),
                reason,
                detail,
            });
        }
    }

    /// The playlist's fate, when it differs from the document's; its song
    /// list's buffers go back to `buffers`.
    fn finish(self, cx: &MergeContext, out: &mut PartitionResults, buffers: &mut SongListBuffers) {
        let Replay {
            id,
            document,
            state,
        } = self;
        let doc_seq = document.as_ref().map(|(seq, _)| *seq);
        let Some(Playlist { songs, origin }) = state else {
            if let Some(doc_seq) = doc_seq {
                out.results.push(PlaylistResult {
                    id,
                    fate: Fate::Removed { doc_seq },
                });
            }
            return;
        };
        let fate = match (&document, origin) {
            (Some((doc_seq, playlist)), Origin::Document { changed: true }) => {
                Some(Fate::Changed {
                    doc_seq: *doc_seq,
                    json: text_of(render::with_songs(
                        &playlist.text,
                        playlist.song_ids.clone(),
                        songs.iter(),
                    )),
                })
            }
            (
                _,
                Origin::New {
                    created,
                    id: written,
                    owner,
                    copied,
                },
            ) => Some(Fate::New {
                doc_seq,
                created,
                json: text_of(render::new_playlist(
                    &written,
                    &cx.owner_key,
                    &owner,
                    songs.iter(),
                    &copied,
                )),
            }),
            _ => None, // the same as in the document
        };
        buffers.give(songs);
        if let Some(fate) = fate {
            out.results.push(PlaylistResult { id, fate });
        }
    }
}

impl Playlist {
    /// The playlist an `add_playlist` with a given id creates.
    fn created_by(index: u64, body: &Body, buffers: &mut SongListBuffers) -> Playlist {
        let Body::AddPlaylist {
            id: NewId::Given(written),
            owner,
            songs,
            copied,
        } = body
        else {
            unreachable!("only add_playlist with a given id is replayed")
        };
        let bytes = songs.iter().map(|s| s.len()).sum();
        let songs = SongList::of(songs.iter().map(|s| &**s), bytes, buffers);
        Playlist {
            songs,
            origin: Origin::New {
                created: index,
                id: written.to_vec(),
                owner: owner.to_vec(),
                copied: copied.to_vec(),
            },
        }
    }

    fn add_song(&mut self, id: &str, song: &Token) -> Result<(), Rejection> {
        let key = song.key();
        let tag = tag(&key);
        if !self.songs.push_unless_held(song, key, tag) {
            return Err(Rejection::new(
                Reason::SongAlreadyInPlaylist,
                format!("song {} is already in playlist {id}", text(song)),
            ));
        }
        self.mark_changed();
        Ok(())
    }

    fn remove_song(&mut self, id: &str, song: &Token) -> Result<(), Rejection> {
        let key = song.key();
        if !self.songs.holds(&key) {
            return Err(Rejection::new(
                Reason::SongNotInPlaylist,
                format!("song {} is not in playlist {id}", text(song)),
            ));
        }
        self.songs.remove_all(&key);
        self.mark_changed();
        Ok(())
    }

    fn mark_changed(&mut self) {
        if let Origin::Document { changed } = &mut self.origin {
            *changed = true;
        }
    }
}

/// Rendered JSON as text (it is built from validated UTF-8 pieces).
pub(super) fn text_of(json: Vec<u8>) -> String {
    String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
