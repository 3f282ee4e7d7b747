//! The warning count: the document's playlists that name an owner or a song
//! that does not exist, counted while the merge reads each partition's slice
//! of the document (docs/GUIDE.md "The mixtape document": such playlists are kept,
//! and counted as warnings), when the import could not count them (some id
//! a playlist names is missing: [`crate::stages::import`]).

use std::borrow::Cow;

use anyhow::Result;

use crate::ids::index::Presence;
use crate::json;
use crate::store::Store;

/// Counts the document's playlists that name an owner or a song that does
/// not exist: kept, but counted as warnings (docs/GUIDE.md "The mixtape document").
///
/// A slice's playlists name songs in no order, so probing the songs index's
/// dense table song by song lands all over a table of megabytes, and nearly
/// every probe missed the cache (BENCHMARKS.md, "What was tried": the
/// warning count). So
/// the probes of dense slots wait, up to [`PROBES_AT_ONCE`] of them, and are
/// made in the order of the table's cache lines ([`by_table_line`]); any
/// other id is looked up at once.
pub(super) struct WarningCount<'s, L: Lookups = Store> {
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
pub(super) const PROBES_AT_ONCE: usize = 1 << 18;

/// A waiting probe of slot `slot` for playlist `playlist`, packed in one word
/// (half the bytes to order of a `(u64, u32)` pair); `None` when the slot does
/// not fit in 32 bits (no dense table is that large: [`crate::ids::index`]).
pub(super) fn probe_of(slot: u64, playlist: u32) -> Option<u64> {
    (slot <= u64::from(u32::MAX)).then_some(slot << 32 | u64::from(playlist))
}

/// How many probes ahead [`WarningCount::probe`] asks for a slot's line: in
/// line order, a table of megabytes was still read a miss at a time, the
/// processor waiting on each new line.
pub(super) const PREFETCH_AHEAD: usize = 32;

/// Slots of a users or songs table in one 64-byte cache line (two bits each).
pub(super) const SLOTS_PER_LINE_SHIFT: u32 = 8;

/// Orders `probes` ([`probe_of`]) by the cache line of the table their slot
/// is in, using `scratch` (sized here, left with any content): a least-significant-digit
/// radix sort on the line number, a byte per pass. Only the line matters to
/// the cache, and a count and a scatter per byte of it cost a fraction of a
/// full comparison sort of the probes.
pub(super) fn by_table_line(probes: &mut Vec<u64>, scratch: &mut Vec<u64>) {
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
pub(super) trait Lookups {
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
    pub(super) fn new(store: &'s L, probes_at_once: usize) -> WarningCount<'s, L> {
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
    pub(super) fn playlist(&mut self, members: &[(&[u8], &[u8])]) -> Result<()> {
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

    pub(super) fn finish(mut self) -> Result<u64> {
        self.probe()?;
        Ok(self.warnings)
    }
}

#[cfg(test)]
pub(super) mod tests {
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
    pub(in crate::stages::merge) fn below(mut state: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
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
