//! Stage 4, merge: settle everything that depends on the order of changes.
//!
//! Workers ran in any order and at any speed, so they could not decide whether a
//! playlist exists "at that moment" or already holds a song (README "Semantics and rejects",
//! the last four reasons). Every change that passed the workers' checks is about exactly
//! one playlist id, and changes about different playlists never affect each other.
//! So the merge replays, for each playlist id on its own, the recorded changes
//! about it in index order, starting from the document's playlist of that id (if
//! any). That gives exactly what applying all changes one by one would give.
//!
//! New playlists without a `playlist_id` cannot be named by any other change
//! (their id `M + k` is larger than every id the changes name), so they need no
//! replay: they are created, with `k` counted across chunks from each chunk's
//! count of such changes.
//!
//! ## Memory
//!
//! Records are spread over partitions by playlist id ([`crate::changes::partition`]:
//! a document playlist's by its position, any other by a hash), and the plan
//! chose the number of partitions so that one holds a few MiB of records
//! whatever the input size. A merge thread reads its slice of the document's
//! playlists in one range scan (keeping them, up to 1 MiB of text, else those
//! its records name, and counting the slice's warnings), then streams the
//! partition's records in index order (`merge_partition`) and holds the state
//! of the playlists they touch (their song lists), never the records
//! themselves.
//!
//! ## Parallelism
//!
//! Partitions are independent, so the harness merges them on up to `--workers`
//! threads, each with its own connection. Reading blocks and replaying run in
//! parallel (WAL readers do not wait); a thread holds the write lock only to
//! write one partition's rows.
//!
//! Joined workers (`worker --join`, on any host) help once every chunk is
//! applied ([`help`]): they take partitions from the last one down while the
//! harness goes up from the first, so they meet in the middle. Nobody needs a
//! lease for that: a partition commits with its row in `merged`, whose key
//! admits one ([`AlreadyMerged`]), so two workers that merge the same
//! partition at once cost some work, never a wrong byte, and one who dies
//! leaves its partition to the harness, which merges every partition not yet
//! merged.
//!
//! ## Output and resuming
//!
//! For every playlist whose fate differs from the document the merge writes one
//! `results` row (changed songs, removed, or new), and every rejected change a
//! `rejects` row. Each partition's rows are written, together with the
//! partition's number in `merged`, in one transaction: an interrupted merge
//! continues with the partitions not yet written.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};

use crate::changes::partition::Partitions;
use crate::changes::record::{Body, Decoder, NewId, Recorded, Token};
use crate::changes::reject::{Reason, Reject, Rejection};
use crate::ids::index::Presence;
use crate::ids::key::{FxMap, FxSet, IdKey};
use crate::json;
use crate::json::render;
use crate::stages::Stage;
use crate::store::{AlreadyMerged, Fate, Key, PartitionResults, PlaylistResult, Store};

/// Page cache shared by the merge threads, in KiB (each gets its share): for
/// the blocks they read and the document playlists they look up by id. The
/// harness also holds each thread's playlist states and its own connection's
/// cache, so the threads share one budget however many run.
///
/// Small, because the merge reads each block and each slice of the document
/// once: a cache keeps little more than the b-trees' inner pages warm. On XL
/// 32 MB filled, and showed in the harness's peak: XL's merge alone peaked at
/// 57–64 MB with 2 threads against 45 MB with 8 MB, and at 159 MB against
/// 131 MB with 16 threads, at the same speed (XL's merge alone at `-w 2`, 6
/// runs each: medians 9.19 and 9.25 s).
const MERGE_CACHE_KIB: i64 = 8 * 1024;

/// The least page cache a merge thread gets, in KiB.
const MIN_THREAD_CACHE_KIB: i64 = 512;

/// Runs the merge (or continues it) on `store`, with up to `threads` threads;
/// `progress` gets (partitions done, total).
pub fn merge(store: &Store, threads: usize, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    if store.is_done(Stage::Merge)? {
        return Ok(());
    }
    let partitions = store.meta_number(Key::Partitions)?;
    let context = MergeContext::read(store)?;
    let merged = store.merged_partitions()?;
    if merged.is_empty() {
        // Nothing of a merge is committed: clear what a merge of an older
        // state of the apply stage (a chunk redone by hand) may have left.
        store.clear_merge()?;
    }
    let pending: Vec<u64> = (0..partitions).filter(|p| !merged.contains(p)).collect();
    let done = AtomicU64::new(merged.len() as u64);
    let threads = threads.clamp(1, pending.len().max(1));
    let db = store.location();
    // Each thread has its own connection; reading and replaying run in
    // parallel, only the short write of each partition's rows holds the lock.
    crate::run::parallel::run_tasks(
        pending.len(),
        threads,
        || {
            let store = Store::open(db)?;
            store.set_cache_kib((MERGE_CACHE_KIB / threads as i64).max(MIN_THREAD_CACHE_KIB))?;
            store.checkpoint_every(crate::stages::apply::BULK_CHECKPOINT_PAGES)?;
            Ok((store, SongListBuffers::default()))
        },
        |(thread_store, buffers), i| {
            merge_one(thread_store, &context, pending[i], buffers)?;
            done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
        &mut || progress(done.load(Ordering::Relaxed), partitions),
    )?;
    progress(partitions, partitions);
    store.release_memory()?;
    store.finish_merge()?;
    store.checkpoint()
}

/// Merges partition `part` and commits its results, unless another worker
/// has (or does meanwhile); says whether this call merged it.
fn merge_one(
    store: &Store,
    cx: &MergeContext,
    part: u64,
    buffers: &mut SongListBuffers,
) -> Result<bool> {
    crate::run::interrupt::check()?;
    if store.is_merged(part)? {
        return Ok(false);
    }
    let mut out = PartitionResults::default();
    merge_partition(store, cx, part, &mut out, buffers)?;
    match store.commit_partition(part, &out) {
        Ok(()) => Ok(true),
        Err(e) if e.is::<AlreadyMerged>() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A joined worker's share of the merge, once every chunk is applied: the
/// partitions not yet merged, from the last one down (the harness goes up),
/// until none is left. Returns how many this worker merged.
pub fn help(store: &Store) -> Result<u64> {
    if store.is_done(Stage::Merge)? || !store.is_done(Stage::Apply)? {
        return Ok(0);
    }
    let context = MergeContext::read(store)?;
    let mut buffers = SongListBuffers::default();
    let mut merged = 0;
    for part in (0..context.partitions.count).rev() {
        if merge_one(store, &context, part, &mut buffers)? {
            merged += 1;
        }
    }
    Ok(merged)
}

/// Counts the document's playlists that name an owner or a song that does
/// not exist: kept, but counted as warnings (README "The mixtape document").
///
/// A slice's playlists name songs in no order, so probing the songs index's
/// dense table song by song lands all over a table of megabytes, and nearly
/// every probe missed the cache (a third of D's merge, BENCHMARKS.md). So
/// the probes of dense slots wait, up to [`PROBES_AT_ONCE`] of them, and are
/// made in the order of the table's cache lines ([`by_table_line`]); any
/// other id is looked up at once.
struct WarningCount<'s, L: Lookups = Store> {
    store: &'s L,
    probes_at_once: usize,
    /// The probes waiting, each `slot << 32 | playlist` ([`probe_of`]);
    /// `playlist` indexes `unsound`.
    probes: Vec<u64>,
    /// Room for [`by_table_line`] to order `probes`.
    scratch: Vec<u64>,
    /// For each playlist since the last probes were made: unsound so far.
    unsound: Vec<bool>,
    warnings: u64,
}

/// Probes of the songs index that wait to be made in the order of its lines.
const PROBES_AT_ONCE: usize = 1 << 18;

/// A waiting probe of slot `slot` for playlist `playlist`, packed in one word
/// (half the bytes to order of a `(u64, u32)` pair); `None` when the slot does
/// not fit in 32 bits (no dense table is that large: [`crate::ids::index`]).
fn probe_of(slot: u64, playlist: u32) -> Option<u64> {
    (slot <= u64::from(u32::MAX)).then_some(slot << 32 | u64::from(playlist))
}

/// How many probes ahead [`WarningCount::probe`] asks for a slot's line: in
/// line order, even D's table (3.75 MB) was read a miss at a time, the
/// processor waiting on each new line (`slot_holds` 12 % of D's merge).
const PREFETCH_AHEAD: usize = 32;

/// Slots of a users or songs table in one 64-byte cache line (two bits each).
const SLOTS_PER_LINE_SHIFT: u32 = 8;

/// Orders `probes` ([`probe_of`]) by the cache line of the table their slot
/// is in, using `scratch` (sized here, left with any content): a least-significant-digit
/// radix sort on the line number, a byte per pass. Only the line matters to
/// the cache, and a count and a scatter per byte of it cost a fraction of a
/// full comparison sort of the probes (which was 9 % of D's merge).
fn by_table_line(probes: &mut Vec<u64>, scratch: &mut Vec<u64>) {
    let line = |probe: u64| (probe >> 32) >> SLOTS_PER_LINE_SHIFT;
    let last_line = probes.iter().map(|&p| line(p)).max().unwrap_or(0);
    scratch.clear();
    scratch.resize(probes.len(), 0);
    let mut shift = 0;
    while shift < 64 && last_line >> shift != 0 {
        let mut starts = [0usize; 256];
        for &probe in probes.iter() {
            starts[((line(probe) >> shift) & 0xFF) as usize] += 1;
        }
        let mut at = 0;
        for start in starts.iter_mut() {
            let count = *start;
            *start = at;
            at += count;
        }
        for &probe in probes.iter() {
            let digit = ((line(probe) >> shift) & 0xFF) as usize;
            scratch[starts[digit]] = probe;
            starts[digit] += 1;
        }
        std::mem::swap(probes, scratch);
        shift += 8;
    }
}

/// What [`WarningCount`] asks of the id indexes (a trait so that a test can
/// answer instead of a store).
trait Lookups {
    fn user_exists(&self, id: &str) -> Result<bool>;
    fn song_presence(&self, id: &str) -> Result<Presence>;
    fn song_in_slot(&self, slot: u64) -> Result<bool>;
    /// A hint that `song_in_slot(slot)` comes soon.
    fn prefetch_song_slot(&self, _slot: u64) {}
}

impl Lookups for Store {
    fn user_exists(&self, id: &str) -> Result<bool> {
        Store::user_exists(self, id)
    }
    fn song_presence(&self, id: &str) -> Result<Presence> {
        Store::song_presence(self, id)
    }
    fn song_in_slot(&self, slot: u64) -> Result<bool> {
        Store::song_in_slot(self, slot)
    }
    fn prefetch_song_slot(&self, slot: u64) {
        Store::prefetch_song_slot(self, slot)
    }
}

impl<'s, L: Lookups> WarningCount<'s, L> {
    fn new(store: &'s L, probes_at_once: usize) -> WarningCount<'s, L> {
        WarningCount {
            store,
            probes_at_once,
            probes: Vec::new(),
            scratch: Vec::new(),
            unsound: Vec::new(),
            warnings: 0,
        }
    }

    /// Checks the document playlist `members`.
    fn playlist(&mut self, members: &[(&[u8], &[u8])]) -> Result<()> {
        let playlist = self.unsound.len() as u32;
        let waiting = self.probes.len();
        let sound = self.owner_exists(members)? && self.songs_may_exist(members, playlist)?;
        if !sound {
            // Known now: its waiting probes can go.
            self.probes.truncate(waiting);
        }
        self.unsound.push(!sound);
        if self.probes.len() >= self.probes_at_once {
            self.probe()?;
        }
        Ok(())
    }

    fn owner_exists(&self, members: &[(&[u8], &[u8])]) -> Result<bool> {
        let owner = json::member(members, "owner_id").or_else(|| json::member(members, "user_id"));
        match owner.and_then(json::id_text) {
            Some(id) => self.store.user_exists(&id),
            None => Ok(false),
        }
    }

    /// `false` when a song is known not to exist; the songs that need a
    /// slot probed join the waiting probes.
    fn songs_may_exist(&mut self, members: &[(&[u8], &[u8])], playlist: u32) -> Result<bool> {
        let Some(songs) = json::member(members, "song_ids") else {
            return Ok(true);
        };
        let mut elements = json::each_element(songs).peekable();
        if elements.peek() == Some(&None) {
            return Ok(true); // not an array: no songs, as the import left it
        }
        for song in elements {
            // (A `None` after some elements: malformed, which the import
            // never stores; the elements before it were checked.)
            let Some(song) = song else { break };
            let Some(id) = json::plain_digits(song)
                .map(Cow::Borrowed)
                .or_else(|| json::id_text(song))
            else {
                return Ok(false);
            };
            match self.store.song_presence(&id)? {
                Presence::Known(true) => {}
                Presence::Known(false) => return Ok(false),
                Presence::InSlot(slot) => match probe_of(slot, playlist) {
                    Some(probe) => self.probes.push(probe),
                    None if self.store.song_in_slot(slot)? => {}
                    None => return Ok(false),
                },
            }
        }
        Ok(true)
    }

    /// Makes the waiting probes, in the order of the table's lines, and
    /// counts the playlists checked since the last time.
    fn probe(&mut self) -> Result<()> {
        by_table_line(&mut self.probes, &mut self.scratch);
        for (i, &probe) in self.probes.iter().enumerate() {
            if let Some(&ahead) = self.probes.get(i + PREFETCH_AHEAD) {
                self.store.prefetch_song_slot(ahead >> 32);
            }
            let (slot, playlist) = (probe >> 32, probe as u32);
            if !self.unsound[playlist as usize] && !self.store.song_in_slot(slot)? {
                self.unsound[playlist as usize] = true;
            }
        }
        self.warnings += self.unsound.iter().filter(|&&u| u).count() as u64;
        self.probes.clear();
        self.unsound.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.probe()?;
        Ok(self.warnings)
    }
}

/// What every partition needs to know.
struct MergeContext {
    owner_key: String,
    /// `M` of the automatic ids (README "The changes file").
    max_id: u64,
    /// For each chunk, the automatic ids of all earlier chunks: `k` of a
    /// chunk's first automatic id, less one.
    auto_before: Vec<u64>,
    partitions: Partitions,
}

impl MergeContext {
    fn read(store: &Store) -> Result<MergeContext> {
        let mut max_id = store.meta_number(Key::DocumentMaxPlaylistId)?;
        let mut auto_before = Vec::new();
        let mut total = 0u64;
        for chunk in store.chunks()? {
            auto_before.push(total);
            total += chunk.auto_count;
            max_id = max_id.max(chunk.max_playlist_id);
        }
        Ok(MergeContext {
            owner_key: store.meta(Key::OwnerKey)?,
            max_id,
            auto_before,
            partitions: Partitions::read(store)?,
        })
    }
}

/// The state of one playlist id while its changes are replayed.
struct Playlist {
    /// Song ids as written, in order, and which songs it holds.
    songs: SongList,
    origin: Origin,
}

/// A playlist's song ids as written, in order, in one buffer: a song costs its
/// bytes, a span and a tag of its key (16 bytes), not an allocation of its own.
///
/// Most playlists hold a few songs, so "does it hold this song" scans the
/// tags, which beats a hash map (built, probed and freed for every playlist
/// the merge touches), and compares keys only where a tag matches; a list
/// that grows past [`SCAN_AT_MOST`] songs gets a map of how often each key
/// occurs, kept from then on. Spans and tags are kept apart from the keys
/// (a key is 32 bytes) because growing the lists was a tenth of L's merge
/// when a song took 48 bytes (BENCHMARKS.md).
#[derive(Default)]
struct SongList {
    bytes: Vec<u8>,
    /// Each song's bytes in `bytes`, in order.
    spans: Vec<(u32, u32)>,
    /// Each song's [`tag`], beside `spans`.
    tags: Vec<u64>,
    counts: Option<FxMap<IdKey<'static>, u32>>,
}

/// The longest song list whose membership is answered by a scan.
const SCAN_AT_MOST: usize = 64;

/// A key's tag: equal keys have equal tags, and unequal ones rarely do. A
/// packed key's two halves folded (an id of up to 8 bytes, nearly all of
/// them, is told apart by its tag alone); a long one's hash.
fn tag(key: &IdKey) -> u64 {
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
    fn of<'s>(
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
    /// once for both (an `add_song`, most of XL's records, looked it up
    /// twice: to check, then to count).
    fn push_unless_held(&mut self, song: &[u8], key: IdKey, tag: u64) -> bool {
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

    fn holds(&self, key: &IdKey) -> bool {
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

    fn iter(&self) -> impl Iterator<Item = &[u8]> + Clone + '_ {
        self.spans.iter().map(|&span| self.song(span))
    }

    /// Drops every song whose key is `key` (their bytes stay in the buffer
    /// until the playlist is done, or the buffer is compacted: removals are
    /// rare next to additions).
    fn remove_all(&mut self, key: &IdKey) {
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
/// three allocations and three frees, and malloc and free were 15 % of the
/// merge on MU and on XL (BENCHMARKS.md). It keeps at most [`KEPT_LISTS`]
/// short lists' buffers (about 2 MB at most; MU's merge kept 0.4 MB).
#[derive(Default)]
struct SongListBuffers {
    /// Emptied lists, their buffers' room kept ([`SongList::of`] takes them).
    kept: Vec<SongList>,
}

impl SongListBuffers {
    /// Keeps `list`, emptied, for the next lists, unless [`KEPT_LISTS`] are
    /// kept already or the list is long (a long list's buffers would stay
    /// long in the next lists, most of which are short).
    fn give(&mut self, mut list: SongList) {
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
/// partition's worth of document playlists (MU's slices hold 780).
const KEPT_LISTS: usize = 1024;

/// The longest song list whose buffers are kept: its room in songs, and in
/// bytes of their ids. The document playlists of every generated case hold
/// about ten songs.
const KEPT_SONGS_AT_MOST: usize = 64;
const KEPT_BYTES_AT_MOST: usize = 1024;

enum Origin {
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

fn text(raw: &[u8]) -> Cow<'_, str> {
    json::id_text(raw).unwrap_or_default()
}

/// Replays every change of partition `part`, in index order, in one streaming
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
/// waited on its own (a fifth of the replay loop's time on XL).
fn merge_partition(
    store: &Store,
    cx: &MergeContext,
    part: u64,
    out: &mut PartitionResults,
    buffers: &mut SongListBuffers,
) -> Result<()> {
    let documents = documents_of_partition(store, cx, part, out)?;
    let mut replays = Replays::new(documents, buffers);
    store.each_block(part, &mut |block| {
        let mut records = Decoder::new(block);
        let mut batch: Vec<(u32, Recorded)> = Vec::with_capacity(RECORDS_AT_ONCE);
        loop {
            batch.clear();
            for rec in records.by_ref().take(RECORDS_AT_ONCE) {
                let rec = rec?;
                let at = replays.find(store, part, &rec)?;
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
const RECORDS_AT_ONCE: usize = 4096;

/// How many records ahead [`Replays::replay`] asks for a replay's state.
const REPLAYS_AHEAD: usize = 8;

/// The place in a batch of a record that names no playlist (a new playlist
/// with an automatic id), which has no replay.
const NO_REPLAY: u32 = u32::MAX;

/// A partition's replays: one per playlist id its records name.
struct Replays<'b> {
    /// The document playlists the partition's records may name, by position,
    /// until a replay takes its own.
    documents: FxMap<u64, Document>,
    /// Each replay's place in `replays`, by its playlist id's key. The map
    /// holds only keys and places (48-byte entries), not the replays (300
    /// bytes each): its probes compare keys, and with the replays in the map
    /// those compares missed the cache (3 % of XL's merge).
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
    fn find(&mut self, store: &Store, part: u64, rec: &Recorded) -> Result<u32> {
        if self.last_index.is_some_and(|last| rec.index <= last) {
            bail!("work database: partition {part} holds changes out of order; rerun with --fresh");
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
            part,
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

/// The document playlists that partition `part`'s records may name, by
/// position, and the slice's warnings counted into `out`: one range scan of
/// the partition's slice ([`crate::changes::partition`]) keeps every playlist of it,
/// up to [`SLICE_BYTES_KEPT`] of text. Most slices are far smaller (about a
/// thousand playlists: M's hold 190 KB, D's 260 KB), and most of their
/// playlists are named anyway; before, a first pass over the partition's
/// records found which (5–10 % of M's merge). A larger slice still takes
/// that pass, and a second scan keeps only the playlists it found. Memory: at
/// most that much text, or the playlists the partition touches, which its
/// replay holds anyway.
fn documents_of_partition(
    store: &Store,
    cx: &MergeContext,
    part: u64,
    out: &mut PartitionResults,
) -> Result<FxMap<u64, Document>> {
    let (from, to) = cx.partitions.slice(part);
    let mut documents = FxMap::with_capacity_and_hasher((to - from) as usize, Default::default());
    let mut warnings = WarningCount::new(store, PROBES_AT_ONCE);
    let mut kept = Some(0usize);
    store.each_document_playlist_between(from, to, &mut |position, raw| {
        let members = json::object_members(raw).unwrap_or_default();
        warnings.playlist(&members)?;
        if let Some(bytes) = kept.as_mut() {
            *bytes += raw.len();
            if *bytes <= SLICE_BYTES_KEPT {
                documents.insert(position, Document::of(raw, &members));
            } else {
                kept = None;
                documents = FxMap::default();
            }
        }
        Ok(())
    })?;
    out.warnings += warnings.finish()?;
    if kept.is_some() {
        return Ok(documents);
    }
    let mut touched = FxSet::default();
    store.each_block(part, &mut |block| {
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
    store.each_document_playlist_between(from, to, &mut |position, raw| {
        if touched.contains(&position) {
            let members = json::object_members(raw).unwrap_or_default();
            documents.insert(position, Document::of(raw, &members));
        }
        Ok(())
    })?;
    Ok(documents)
}

/// The most text of a slice's document playlists that the merge keeps
/// without first finding which of them the partition's records name.
const SLICE_BYTES_KEPT: usize = 1 << 20;

/// A document playlist as the merge keeps it: its minified text, and where
/// its `song_ids` value is in it, found once (in the scan that counts
/// warnings) for the replay's song list and for rendering the changed
/// playlist, which replaces just that value.
struct Document {
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
struct Replay {
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
        part: u64,
        id: &str,
        documents: &mut FxMap<u64, Document>,
        buffers: &mut SongListBuffers,
    ) -> Result<Replay> {
        let document = match store.document_playlist_position(id)? {
            Some(position) => match documents.remove(&position) {
                Some(raw) => Some((position as i64, raw)),
                None => bail!(
                    "work database: partition {part} holds playlist {id} of another partition; rerun with --fresh"
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
fn text_of(json: Vec<u8>) -> String {
    String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Users and songs by id; a song id of the form `N` is answered by
    /// slot `N * SPREAD`, as an index's dense table would (spread over many
    /// of its lines, so that ordering the probes takes several passes).
    struct Known {
        users: HashSet<String>,
        songs: HashSet<String>,
    }

    impl Lookups for Known {
        fn user_exists(&self, id: &str) -> Result<bool> {
            Ok(self.users.contains(id))
        }
        fn song_presence(&self, id: &str) -> Result<Presence> {
            Ok(match id.parse::<u64>() {
                Ok(n) if n.to_string() == id => Presence::InSlot(n * SPREAD),
                _ => Presence::Known(self.songs.contains(id)),
            })
        }
        fn song_in_slot(&self, slot: u64) -> Result<bool> {
            Ok(slot.is_multiple_of(SPREAD) && self.songs.contains(&(slot / SPREAD).to_string()))
        }
    }

    /// See [`Known`]: 230 songs' slots spread over about 3,500 lines, two
    /// bytes of line number.
    const SPREAD: u64 = 3_989;

    /// Ordering probes by table line gives the same probes, each line's
    /// together and the lines in order, whatever the lines' range.
    #[test]
    fn probes_ordered_by_table_line_are_the_same_probes_in_line_order() {
        let mut next = below(0x0DDB_1A5E_5BAD_5EEDu64);
        let mut scratch = vec![7; 3];
        for round in 0..200 {
            let lines_bits = [0, 1, 8, 9, 16, 17, 24, 31][round % 8];
            let slot_below = (1u64 << (lines_bits + SLOTS_PER_LINE_SHIFT)).min(1 << 32);
            let len = next(2000) as usize;
            let mut probes: Vec<u64> = (0..len)
                .map(|_| probe_of(next(slot_below), next(1 << 20) as u32).unwrap())
                .collect();
            let mut expected = probes.clone();
            by_table_line(&mut probes, &mut scratch);
            let lines: Vec<u64> = probes
                .iter()
                .map(|p| (p >> 32) >> SLOTS_PER_LINE_SHIFT)
                .collect();
            assert!(
                lines.windows(2).all(|w| w[0] <= w[1]),
                "{round}: lines out of order"
            );
            let mut got = probes.clone();
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "{round}: not the same probes");
        }
        assert_eq!(probe_of(u64::from(u32::MAX) + 1, 0), None);
        assert_eq!(probe_of(5, 9), Some(5 << 32 | 9));
    }

    /// A seeded xorshift: each call gives a number below its argument.
    fn below(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        }
    }

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

    /// Batched and sorted probes count the same playlists as checking each
    /// playlist's owner and songs one by one, whatever the batch size.
    #[test]
    fn probes_made_in_slot_order_count_the_same_warnings() {
        let mut next = below(0x2545_F491_4F6C_DD1Du64);
        let known = Known {
            users: (0..20).map(|u| u.to_string()).collect(),
            songs: (0..200)
                .filter(|s| s % 7 != 0)
                .map(|s| s.to_string())
                .chain(["x".to_string(), "007".to_string()])
                .collect(),
        };
        let playlists: Vec<String> = (0..400)
            .map(|_| {
                let songs: Vec<String> = (0..next(6))
                    .map(|_| match next(20) {
                        0 => "\"x\"".to_string(),
                        1 => "\"y\"".to_string(),
                        2 => "\"007\"".to_string(),
                        3 => "null".to_string(),
                        _ => format!("\"{}\"", next(230)),
                    })
                    .collect();
                let owner = match next(10) {
                    0 => String::new(),
                    1 => ",\"owner_id\":\"99\"".to_string(),
                    2 => format!(",\"user_id\":{}", next(20)),
                    _ => format!(",\"owner_id\":\"{}\"", next(20)),
                };
                format!("{{\"id\":\"p\"{owner},\"song_ids\":[{}]}}", songs.join(","))
            })
            .collect();
        let one_by_one = playlists
            .iter()
            .filter(|raw| {
                let members = json::object_members(raw.as_bytes()).unwrap();
                let owner = json::member(&members, "owner_id")
                    .or_else(|| json::member(&members, "user_id"))
                    .and_then(json::id_text);
                let owner_ok = owner.is_some_and(|id| known.users.contains(id.as_ref()));
                let songs = json::member(&members, "song_ids")
                    .and_then(json::array_elements)
                    .unwrap_or_default();
                let songs_ok = songs
                    .iter()
                    .all(|s| json::id_text(s).is_some_and(|id| known.songs.contains(id.as_ref())));
                !(owner_ok && songs_ok)
            })
            .count() as u64;
        assert!(one_by_one > 50 && one_by_one < 350, "{one_by_one}");
        for probes_at_once in [1, 2, 7, 64, PROBES_AT_ONCE] {
            let mut count = WarningCount::new(&known, probes_at_once);
            for raw in &playlists {
                count
                    .playlist(&json::object_members(raw.as_bytes()).unwrap())
                    .unwrap();
            }
            assert_eq!(
                count.finish().unwrap(),
                one_by_one,
                "{probes_at_once} at once"
            );
        }
    }
}
