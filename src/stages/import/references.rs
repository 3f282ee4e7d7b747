//! The warning count, known at import when it can be: how many of the
//! document's playlists name an owner or a song that does not exist
//! (docs/GUIDE.md "The mixtape document": such playlists are kept, and counted
//! as warnings).
//!
//! The songs may come after the playlists in the document, so a playlist
//! cannot be judged when it is read. But nearly every document is sound, and
//! that is cheap to know at the end: the import notes every id a playlist
//! names (integers as bits, the few other ids as text), and once the indexes
//! are built it asks them about each id noted, once. If every one exists, the
//! count is the playlists that name no owner at all, and the merge need not
//! read a document playlist its changes do not touch. If some id is missing,
//! which playlists name it is not known here: the merge counts, slice by
//! slice, as it always can ([`crate::stages::merge`]).

use crate::ids::index::{canonical_integer, IdIndex};
use crate::ids::key::FxSet;
use crate::json;

/// Integer ids from here on are noted as text: a bit set of every integer
/// below it is at most 4 MiB.
const BITS_AT_MOST: u64 = 1 << 25;

/// Ids noted as text at most, per kind; past that the count is left to the
/// merge (a document whose ids are not small integers).
const TEXTS_AT_MOST: usize = 1 << 16;

/// The ids of one kind (users or songs) the document's playlists name.
#[derive(Default)]
struct Named {
    /// Bit `n` set: some playlist names the id whose text is the integer `n`.
    integers: Vec<u64>,
    texts: FxSet<Box<str>>,
    /// More texts than [`TEXTS_AT_MOST`]: not every id was noted.
    overflowed: bool,
}

impl Named {
    fn note(&mut self, id: &str) {
        match canonical_integer(id) {
            Some(n) if n < BITS_AT_MOST => {
                let word = (n / 64) as usize;
                if word >= self.integers.len() {
                    self.integers.resize(word + 1, 0);
                }
                self.integers[word] |= 1 << (n % 64);
            }
            _ if self.overflowed => {}
            _ if self.texts.len() >= TEXTS_AT_MOST => {
                self.overflowed = true;
                self.texts = FxSet::default();
            }
            _ => {
                if !self.texts.contains(id) {
                    self.texts.insert(id.into());
                }
            }
        }
    }

    /// Whether every id noted is in `index`; `None` when not every id was
    /// noted.
    fn all_in(&self, index: &IdIndex) -> Option<bool> {
        if self.overflowed {
            return None;
        }
        for (w, &word) in self.integers.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let n = w as u64 * 64 + u64::from(bits.trailing_zeros());
                if !index.holds_integer(n) {
                    return Some(false);
                }
                bits &= bits - 1;
            }
        }
        Some(self.texts.iter().all(|id| index.contains(id)))
    }
}

/// What the document's playlists name, noted as the import reads them.
#[derive(Default)]
pub(super) struct References {
    owners: Named,
    songs: Named,
    /// Playlists that are warnings whatever the document holds: no owner, or
    /// an owner that is not an id.
    ownerless: u64,
}

impl References {
    /// Notes a playlist: its owner's id text (`None`: it has no owner that is
    /// an id), and its songs, the elements of its `song_ids`. Returns
    /// whether every song is an id (else the document is invalid).
    pub(super) fn playlist(&mut self, owner: Option<&str>, songs: &[&[u8]]) -> bool {
        match owner {
            Some(owner) => self.owners.note(owner),
            // A warning already, whatever its songs.
            None => self.ownerless += 1,
        }
        for song in songs {
            let Some(id) = json::id_text(song) else {
                return false;
            };
            if owner.is_some() {
                self.songs.note(&id);
            }
        }
        true
    }

    /// The warning count, when every id noted exists (`users` and `songs`:
    /// the indexes the import built); `None` when the merge must count.
    pub(super) fn warnings(&self, users: &IdIndex, songs: &IdIndex) -> Option<u64> {
        let sound = self.owners.all_in(users)? && self.songs.all_in(songs)?;
        sound.then_some(self.ownerless)
    }
}
