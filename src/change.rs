//! One change, read from its (minified) JSON text: its shape only.
//!
//! This is the first row of the reject table (README "Semantics and rejects"): a change that is not an
//! object, has an unknown `op`, or lacks a member or has one of the wrong type is
//! `invalid_change`. Everything that needs the database (does the user or song
//! exist) is the worker's job ([`crate::apply`]), and everything that depends on
//! order is the merge's ([`crate::merge`]).
//!
//! Members are checked in a fixed order, which decides the detail message when
//! several are wrong: `op`; then for `add_playlist` the owner (`owner_id`, or
//! `user_id` when there is no `owner_id`), `song_ids`, `playlist_id`; for the
//! others `playlist_id`, then `song_id`. A member that appears twice counts once,
//! at its first occurrence.
//!
//! The parsed change borrows from the text: ids stay as they are written, since
//! that is how they are written back.

use std::borrow::Cow;

use crate::json;

/// The four operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AddPlaylist,
    RemovePlaylist,
    AddSong,
    RemoveSong,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::AddPlaylist => "add_playlist",
            Op::RemovePlaylist => "remove_playlist",
            Op::AddSong => "add_song",
            Op::RemoveSong => "remove_song",
        }
    }

    /// The name as a JSON string, as the rejects report writes it.
    pub fn json_name(self) -> &'static str {
        match self {
            Op::AddPlaylist => "\"add_playlist\"",
            Op::RemovePlaylist => "\"remove_playlist\"",
            Op::AddSong => "\"add_song\"",
            Op::RemoveSong => "\"remove_song\"",
        }
    }

    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "add_playlist" => Op::AddPlaylist,
            "remove_playlist" => Op::RemovePlaylist,
            "add_song" => Op::AddSong,
            "remove_song" => Op::RemoveSong,
            _ => return None,
        })
    }
}

/// A well-formed change. Every id is a raw JSON string or integer token.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    AddPlaylist {
        /// `None`: the id is given automatically (README "The changes file").
        id: Option<&'a [u8]>,
        owner: &'a [u8],
        songs: Vec<&'a [u8]>,
        /// Members copied onto the new playlist: (raw key, raw value).
        copied: Vec<(&'a [u8], &'a [u8])>,
    },
    RemovePlaylist {
        playlist: &'a [u8],
    },
    AddSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
    RemoveSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
}

/// What reading one change gave.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The `op` member for the rejects report: a JSON string, or `null` when it
    /// is missing or not a string.
    pub op_json: Cow<'static, str>,
    /// The change, or why it is `invalid_change`.
    pub change: Result<Change<'a>, String>,
    /// The value of its `playlist_id` when that takes part in automatic ids.
    pub named_playlist_id: Option<u64>,
    /// An `add_playlist` without a `playlist_id` member: it counts towards the
    /// automatic ids, even when rejected.
    pub counts_as_auto: bool,
}

/// Members that are never copied onto a new playlist.
const NOT_COPIED: [&str; 6] = ["op", "id", "owner_id", "user_id", "song_ids", "playlist_id"];

/// Reads one change from minified JSON text.
pub fn parse(minified: &[u8]) -> Parsed<'_> {
    let Some(members) = json::object_members(minified) else {
        return Parsed {
            op_json: Cow::Borrowed("null"),
            change: Err("change is not an object".into()),
            named_playlist_id: None,
            counts_as_auto: false,
        };
    };
    let playlist_id = json::member(&members, "playlist_id");
    let named_playlist_id = playlist_id
        .and_then(json::id_text)
        .and_then(|t| json::auto_id_value(&t));
    let op_text = json::member(&members, "op").map(|raw| (raw, json::decode_string(raw)));
    let op_json: Cow<'static, str> = match &op_text {
        Some((_, Some(name))) => match Op::from_name(name) {
            Some(op) => Cow::Borrowed(op.json_name()),
            None => {
                let mut out = Vec::new();
                json::write_string(name, &mut out);
                Cow::Owned(String::from_utf8(out).expect("JSON is UTF-8"))
            }
        },
        _ => Cow::Borrowed("null"),
    };
    let op = match &op_text {
        None => Err("missing member op".to_string()),
        Some((_, None)) => Err("member op must be a string".to_string()),
        Some((_, Some(name))) => {
            Op::from_name(name).ok_or_else(|| format!("unknown op {}", op_json))
        }
    };
    let counts_as_auto = op == Ok(Op::AddPlaylist) && playlist_id.is_none();
    let change = op.and_then(|op| build(op, &members, playlist_id));
    Parsed {
        op_json,
        change,
        named_playlist_id,
        counts_as_auto,
    }
}

/// A member that must be an id.
fn id_member<'a>(members: &[(&'a [u8], &'a [u8])], name: &str) -> Result<&'a [u8], String> {
    let raw = json::member(members, name).ok_or_else(|| format!("missing member {name}"))?;
    checked_id(raw, name)
}

fn checked_id<'a>(raw: &'a [u8], name: &str) -> Result<&'a [u8], String> {
    match json::id_text(raw) {
        Some(_) => Ok(raw),
        None => Err(format!("member {name} must be a string or an integer id")),
    }
}

fn build<'a>(
    op: Op,
    members: &[(&'a [u8], &'a [u8])],
    playlist_id: Option<&'a [u8]>,
) -> Result<Change<'a>, String> {
    Ok(match op {
        Op::AddPlaylist => {
            let owner = match json::member(members, "owner_id") {
                Some(raw) => checked_id(raw, "owner_id")?,
                None => match json::member(members, "user_id") {
                    Some(raw) => checked_id(raw, "user_id")?,
                    None => return Err("missing member owner_id".into()),
                },
            };
            let songs_raw = json::member(members, "song_ids")
                .ok_or_else(|| "missing member song_ids".to_string())?;
            let songs = json::array_elements(songs_raw)
                .filter(|list| list.iter().all(|s| json::id_text(s).is_some()))
                .ok_or_else(|| "member song_ids must be an array of ids".to_string())?;
            let id = match playlist_id {
                Some(raw) => Some(checked_id(raw, "playlist_id")?),
                None => None,
            };
            let copied = members
                .iter()
                .filter(|(k, _)| {
                    json::key_name(k).is_none_or(|name| !NOT_COPIED.contains(&name.as_ref()))
                })
                .copied()
                .collect();
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            }
        }
        Op::RemovePlaylist => Change::RemovePlaylist {
            playlist: id_member(members, "playlist_id")?,
        },
        Op::AddSong => Change::AddSong {
            playlist: id_member(members, "playlist_id")?,
            song: id_member(members, "song_id")?,
        },
        Op::RemoveSong => Change::RemoveSong {
            playlist: id_member(members, "playlist_id")?,
            song: id_member(members, "song_id")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Parsed<'static> {
        let min = json::minify(text.as_bytes());
        parse(Box::leak(min.into_boxed_slice()))
    }

    #[test]
    fn shapes() {
        assert_eq!(p("5").change.unwrap_err(), "change is not an object");
        assert_eq!(p("{}").change.unwrap_err(), "missing member op");
        assert_eq!(
            p(r#"{"op":1}"#).change.unwrap_err(),
            "member op must be a string"
        );
        let x = p(r#"{"op":"dance","playlist_id":"12"}"#);
        assert_eq!(x.change.unwrap_err(), r#"unknown op "dance""#);
        assert_eq!(x.op_json, r#""dance""#);
        assert_eq!(x.named_playlist_id, Some(12));
        assert_eq!(
            p(r#"{"op":"add_song","playlist_id":1.5,"song_id":1}"#)
                .change
                .unwrap_err(),
            "member playlist_id must be a string or an integer id"
        );
        assert_eq!(
            p(r#"{"op":"add_playlist","owner_id":"1","song_ids":["1",null]}"#)
                .change
                .unwrap_err(),
            "member song_ids must be an array of ids"
        );
        let a = p(r#"{"op":"add_playlist","user_id":3,"song_ids":["1", 2],"name":"x","id":"9"}"#);
        assert!(a.counts_as_auto);
        match a.change.unwrap() {
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            } => {
                assert_eq!(id, None);
                assert_eq!(owner, b"3");
                assert_eq!(songs, vec![&b"\"1\""[..], b"2"]);
                assert_eq!(copied, vec![(&b"\"name\""[..], &b"\"x\""[..])]);
            }
            other => panic!("{other:?}"),
        }
        let a = p(r#"{"op":"add_playlist","playlist_id":null,"owner_id":"1","song_ids":[]}"#);
        assert!(!a.counts_as_auto);
        assert_eq!(
            a.change.unwrap_err(),
            "member playlist_id must be a string or an integer id"
        );
    }
}
