//! A playlist's song list while its changes are replayed, and the buffers a
//! merge thread keeps for the next lists.

use crate::ids::key::{FxMap, IdKey};

/// A playlist's song ids as written, in order, in one buffer: a song costs its
/// bytes, a span and a tag of its key (16 bytes), not an allocation of its own.
///
/// Most playlists hold a few songs, so "does it hold this song" scans the
/// tags, which beats a hash map (built, probed and freed for every playlist
/// the merge touches), and compares keys only where a tag matches; a list
/// that grows past [`SCAN_AT_MOST`] songs gets a map of how often each key
/// occurs, kept from then on. Spans and tags are kept apart from the keys
/// (a key is 32 bytes), so that growing a list copies 16 bytes a song, not 48
/// (BENCHMARKS.md, "What was tried": the merge's song lists).
#[derive(Default)]
pub(super) struct SongList {
    bytes: Vec<u8>,
    /// Each song's bytes in `bytes`, in order.
    spans: Vec<(u32, u32)>,
    /// Each song's [`tag`], beside `spans`.
    pub(super) tags: Vec<u64>,
    counts: Option<FxMap<IdKey<'static>, u32>>,
}

/// The longest song list whose membership is answered by a scan.
pub(super) const SCAN_AT_MOST: usize = 64;

/// A key's tag: equal keys have equal tags, and unequal ones rarely do. A
/// packed key's two halves folded (an id of up to 8 bytes, nearly all of
/// them, is told apart by its tag alone); a long one's hash.
pub(super) fn tag(key: &IdKey) -> u64 {
    match key {
        IdKey::Packed(packed) => (*packed as u64) ^ ((*packed >> 64) as u64),
        IdKey::Long(_) => {
            use std::hash::BuildHasher;
            std::hash::BuildHasherDefault::<crate::ids::key::FxHasher>::default().hash_one(key)
        }
    }
}

impl SongList {
    /// The list of `songs`, with room for `bytes` bytes of them and a few
    /// more songs: growing a buffer (a copy each time) was a tenth of the
    /// merge.
    pub(super) fn of<'s>(
        songs: impl ExactSizeIterator<Item = &'s [u8]>,
        bytes: usize,
        buffers: &mut SongListBuffers,
    ) -> SongList {
        const ROOM: usize = 8;
        let mut list = buffers.kept.pop().unwrap_or_default();
        list.spans.reserve(songs.len() + ROOM);
        list.tags.reserve(songs.len() + ROOM);
        list.bytes.reserve(bytes + ROOM * 8);
        for song in songs {
            list.push(song);
        }
        list
    }

    fn song(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.bytes[start as usize..end as usize]
    }

    fn push(&mut self, song: &[u8]) {
        let key = IdKey::raw(song);
        let tag = tag(&key);
        self.push_keyed(song, key, tag);
    }

    /// Appends `song`, whose key and tag are known, unless the list holds
    /// it; says whether it did. A list with a map of counts looks the key up
    /// once for both, where checking and then counting would look it up
    /// twice for every `add_song`, the most common record.
    pub(super) fn push_unless_held(&mut self, song: &[u8], key: IdKey, tag: u64) -> bool {
        use std::collections::hash_map::Entry;
        let Some(counts) = &mut self.counts else {
            if self.holds_keyed(&key, tag) {
                return false;
            }
            self.push_keyed(song, key, tag);
            return true;
        };
        match counts.entry(key.into_owned()) {
            Entry::Occupied(count) if *count.get() > 0 => return false,
            Entry::Occupied(mut count) => *count.get_mut() = 1,
            Entry::Vacant(count) => {
                count.insert(1);
            }
        }
        self.append(song, tag);
        true
    }

    /// [`SongList::push`] of a song whose key and tag are known.
    fn push_keyed(&mut self, song: &[u8], key: IdKey, tag: u64) {
        match &mut self.counts {
            Some(counts) => *counts.entry(key.into_owned()).or_insert(0) += 1,
            None if self.spans.len() == SCAN_AT_MOST => {
                let mut counts = FxMap::default();
                for &span in &self.spans {
                    *counts.entry(IdKey::owned(self.song(span))).or_insert(0) += 1;
                }
                *counts.entry(key.into_owned()).or_insert(0) += 1;
                self.counts = Some(counts);
            }
            None => {}
        }
        self.append(song, tag);
    }

    /// Appends `song`'s bytes, span and tag (its count is the caller's).
    fn append(&mut self, song: &[u8], tag: u64) {
        if self.bytes.len() + song.len() > u32::MAX as usize {
            self.compact();
        }
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(song);
        self.spans.push((start, self.bytes.len() as u32));
        self.tags.push(tag);
    }

    /// Whether song `i` has key `key`, whose tag is `tag`.
    fn is(&self, i: usize, key: &IdKey, tag: u64) -> bool {
        self.tags[i] == tag && IdKey::raw(self.song(self.spans[i])) == *key
    }

    pub(super) fn holds(&self, key: &IdKey) -> bool {
        self.holds_keyed(key, tag(key))
    }

    /// [`SongList::holds`] of a key whose tag is known.
    fn holds_keyed(&self, key: &IdKey, tag: u64) -> bool {
        match &self.counts {
            Some(counts) => counts.get(key).is_some_and(|&n| n > 0),
            None => self
                .tags
                .iter()
                .zip(&self.spans)
                .any(|(&t, &span)| t == tag && IdKey::raw(self.song(span)) == *key),
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        self.spans.iter().map(|&span| self.song(span))
    }

    /// Drops every song whose key is `key` (their bytes stay in the buffer
    /// until the playlist is done, or the buffer is compacted: removals are
    /// rare next to additions).
    pub(super) fn remove_all(&mut self, key: &IdKey) {
        let tag = tag(key);
        let mut kept = 0;
        for i in 0..self.tags.len() {
            if !self.is(i, key, tag) {
                self.tags[kept] = self.tags[i];
                self.spans[kept] = self.spans[i];
                kept += 1;
            }
        }
        self.tags.truncate(kept);
        self.spans.truncate(kept);
        if let Some(counts) = &mut self.counts {
            counts.remove(&key.clone().into_owned());
        }
    }

    /// Drops the bytes of removed songs, so that spans fit in a `u32` however
    /// many songs come and go.
    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() / 2);
        for span in &mut self.spans {
            let start = bytes.len() as u32;
            bytes.extend_from_slice(&self.bytes[span.0 as usize..span.1 as usize]);
            *span = (start, bytes.len() as u32);
        }
        self.bytes = bytes;
    }
}

/// The buffers of song lists that are done with (their playlist rendered,
/// or removed), for the next lists of the same merge thread: a list took
/// three allocations and three frees, a large share of the merge on many
/// small playlists (BENCHMARKS.md, "What was tried": the merge's song lists).
/// It keeps at most [`KEPT_LISTS`] short lists' buffers (about 2 MB at most).
#[derive(Default)]
pub(super) struct SongListBuffers {
    /// Emptied lists, their buffers' room kept ([`SongList::of`] takes them).
    kept: Vec<SongList>,
}

impl SongListBuffers {
    /// Keeps `list`, emptied, for the next lists, unless [`KEPT_LISTS`] are
    /// kept already or the list is long (a long list's buffers would stay
    /// long in the next lists, most of which are short).
    pub(super) fn give(&mut self, mut list: SongList) {
        if self.kept.len() >= KEPT_LISTS
            || list.spans.capacity() > KEPT_SONGS_AT_MOST
            || list.bytes.capacity() > KEPT_BYTES_AT_MOST
        {
            return;
        }
        list.bytes.clear();
        list.spans.clear();
        list.tags.clear();
        list.counts = None;
        self.kept.push(list);
    }
}

/// How many song lists' buffers a merge thread keeps at most: about a
/// partition's worth of document playlists (the generated cases' slices
/// hold under a thousand).
pub(super) const KEPT_LISTS: usize = 1024;

/// The longest song list whose buffers are kept: its room in songs, and in
/// bytes of their ids. The document playlists of every generated case hold
/// about ten songs.
pub(super) const KEPT_SONGS_AT_MOST: usize = 64;
pub(super) const KEPT_BYTES_AT_MOST: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;
    use crate::stages::merge::warnings::tests::below;
    /// A song list answers and lists as a plain list of decoded ids does,
    /// through adds (unconditional, and only when not held) and removals,
    /// across the switch to a map of counts, with
    /// ids written several ways (`7`, `"7"`, `"\u0037"`) and ids too long to
    /// pack, before and after its buffer is compacted.
    #[test]
    fn song_list_agrees_with_a_plain_list() {
        let mut next = below(0x9E37_79B9_7F4A_7C15u64);
        let written = |n: u64, how: u64| match how {
            0 => n.to_string(),
            1 => format!("\"{n}\""),
            2 if n < 10 => format!("\"\\u003{n}\""),
            // Two ids of nine bytes whose tags are the same (the first and
            // the ninth byte swapped), whatever `n`.
            4 => format!("\"a{n:07}b\""),
            5 => format!("\"b{n:07}a\""),
            _ => format!("\"a-rather-long-song-id-{n}\""),
        };
        let (one, other) = (written(12, 4), written(12, 5));
        let tag_of = |raw: &str| tag(&IdKey::raw(raw.as_bytes()));
        assert_eq!(
            tag_of(&one),
            tag_of(&other),
            "{one} and {other} must share a tag"
        );
        for round in 0..40 {
            let range = [3, 20, 80, 300][round % 4];
            let mut list = SongList::default();
            let mut plain: Vec<String> = Vec::new();
            for step in 0..400 {
                let n = next(range);
                let raw = written(n, next(6));
                let decoded = json::id_text(raw.as_bytes()).unwrap().into_owned();
                let key = IdKey::raw(raw.as_bytes());
                assert_eq!(
                    list.holds(&key),
                    plain.contains(&decoded),
                    "{round}/{step}: {raw}"
                );
                if next(4) == 0 {
                    list.remove_all(&key);
                    plain.retain(|s| *s != decoded);
                } else if next(2) == 0 {
                    // As a document's list is loaded: duplicates kept.
                    list.push(raw.as_bytes());
                    plain.push(decoded);
                } else {
                    // As an `add_song` is replayed.
                    let held = plain.contains(&decoded);
                    let tag = tag(&key);
                    let pushed = list.push_unless_held(raw.as_bytes(), key, tag);
                    assert_eq!(pushed, !held, "{round}/{step}: {raw}");
                    if pushed {
                        plain.push(decoded);
                    }
                }
                if step % 97 == 0 {
                    list.compact();
                }
                let listed: Vec<String> = list
                    .iter()
                    .map(|s| json::id_text(s).unwrap().into_owned())
                    .collect();
                assert_eq!(listed, plain, "{round}/{step}");
            }
        }
    }
}
