//! Why a change is rejected (docs/GUIDE.md "Semantics and rejects").
//!
//! [`Reason`] owns each reason's name, as the rejects report and the summary
//! write it, and its precedence: when several reasons apply, the first in
//! [`Reason::ALL`] is reported. Workers decide the first five, the merge the
//! last four.

/// A reject reason. The declaration order is the precedence order (`Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    InvalidChange,
    UnknownUser,
    UnknownSong,
    EmptyPlaylist,
    DuplicateSong,
    PlaylistExists,
    UnknownPlaylist,
    SongAlreadyInPlaylist,
    SongNotInPlaylist,
}

impl Reason {
    /// Every reason, in order of precedence (also the summary's order).
    pub const ALL: [Reason; 9] = [
        Reason::InvalidChange,
        Reason::UnknownUser,
        Reason::UnknownSong,
        Reason::EmptyPlaylist,
        Reason::DuplicateSong,
        Reason::PlaylistExists,
        Reason::UnknownPlaylist,
        Reason::SongAlreadyInPlaylist,
        Reason::SongNotInPlaylist,
    ];

    /// The name in the rejects report.
    pub fn name(self) -> &'static str {
        match self {
            Reason::InvalidChange => "invalid_change",
            Reason::UnknownUser => "unknown_user",
            Reason::UnknownSong => "unknown_song",
            Reason::EmptyPlaylist => "empty_playlist",
            Reason::DuplicateSong => "duplicate_song",
            Reason::PlaylistExists => "playlist_exists",
            Reason::UnknownPlaylist => "unknown_playlist",
            Reason::SongAlreadyInPlaylist => "song_already_in_playlist",
            Reason::SongNotInPlaylist => "song_not_in_playlist",
        }
    }

    /// Its position in [`Reason::ALL`] (how a SQLite store writes it).
    pub fn ordinal(self) -> usize {
        self as usize
    }

    /// The reason named `name` in a rejects report.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Why one change cannot apply: the reason and the report's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// A rejected change, as the rejects report lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The change's index in CHANGES.
    pub index: u64,
    /// The change's `op` as JSON: a string, or `null` when missing or not a
    /// string. Borrowed for the four ops (nearly every reject).
    pub op_json: std::borrow::Cow<'static, str>,
    pub reason: Reason,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_precedence_is_declaration_order() {
        for (i, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(Reason::from_name(reason.name()), Some(reason));
            assert_eq!(reason.ordinal(), i);
            assert!(Reason::ALL[..i].iter().all(|earlier| *earlier < reason));
        }
        assert_eq!(Reason::from_name("nope"), None);
    }
}
