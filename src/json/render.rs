//! How a playlist that the changes made or changed is written (docs/GUIDE.md
//! "The changes file", new playlists, and "Output"): the one place that knows, used
//! by the merge and by the benchmark's rival.

use crate::json;

/// `[a,b,...]` of song ids as written.
pub fn song_list<'a>(out: &mut Vec<u8>, songs: impl IntoIterator<Item = &'a [u8]>) {
    out.push(b'[');
    for (i, s) in songs.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(s);
    }
    out.push(b']');
}

/// The bytes [`song_list`] writes for `songs`: a playlist is rendered into a
/// buffer of its size, where growing it by doubling would copy the text of
/// a long list several times.
fn song_list_len<'a>(songs: impl Iterator<Item = &'a [u8]>) -> usize {
    songs.map(|s| s.len() + 1).sum::<usize>() + 2
}

/// A new playlist: `id`, owner (under `owner_key`), `song_ids`, then the copied
/// members (already rendered as `,"key":value` pairs).
pub fn new_playlist<'a, S>(
    id: &[u8],
    owner_key: &str,
    owner: &[u8],
    songs: S,
    copied: &[u8],
) -> Vec<u8>
where
    S: IntoIterator<Item = &'a [u8]>,
    S::IntoIter: Clone,
{
    let songs = songs.into_iter();
    let mut out = Vec::with_capacity(
        id.len() + owner_key.len() + owner.len() + copied.len() + 32 + song_list_len(songs.clone()),
    );
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id);
    out.push(b',');
    json::write_string(owner_key, &mut out);
    out.push(b':');
    out.extend_from_slice(owner);
    out.extend_from_slice(b",\"song_ids\":");
    song_list(&mut out, songs);
    out.extend_from_slice(copied);
    out.push(b'}');
    out
}

/// Where the value of the first `song_ids` member is in `raw`, whose
/// members are `members` (as [`json::object_members`] gave them).
pub fn song_ids_range(raw: &[u8], members: &[(&[u8], &[u8])]) -> Option<std::ops::Range<usize>> {
    members
        .iter()
        .find(|(key, _)| json::key_is(key, "song_ids"))
        .map(|(_, value)| {
            let start = value.as_ptr() as usize - raw.as_ptr() as usize;
            start..start + value.len()
        })
}

/// [`changed_playlist`] when the place of `raw`'s `song_ids` value (its
/// first, [`song_ids_range`]) is known: the text around it is kept, the
/// value replaced.
pub fn with_songs<'a, S>(raw: &[u8], song_ids: Option<std::ops::Range<usize>>, songs: S) -> Vec<u8>
where
    S: IntoIterator<Item = &'a [u8]>,
    S::IntoIter: Clone,
{
    let Some(range) = song_ids else {
        return changed_playlist(raw, songs);
    };
    let songs = songs.into_iter();
    let mut out = Vec::with_capacity(raw.len() - range.len() + song_list_len(songs.clone()));
    out.extend_from_slice(&raw[..range.start]);
    song_list(&mut out, songs);
    out.extend_from_slice(&raw[range.end..]);
    out
}

/// A document playlist (`raw`, minified) with new songs: every member as it
/// was, `song_ids` replaced (or added at the end when it had none).
pub fn changed_playlist<'a>(raw: &[u8], songs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let members = json::object_members(raw).unwrap_or_default();
    let position = members
        .iter()
        .position(|(k, _)| json::key_is(k, "song_ids"));
    let mut songs = Some(songs);
    let mut out = Vec::with_capacity(raw.len() + 16);
    out.push(b'{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        out.push(b':');
        match songs.take() {
            Some(list) if Some(i) == position => song_list(&mut out, list),
            unused => {
                songs = unused;
                out.extend_from_slice(value);
            }
        }
    }
    if let Some(list) = songs {
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"song_ids\":");
        song_list(&mut out, list);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replacing the `song_ids` value in place gives what rebuilding the
    /// playlist member by member gives.
    #[test]
    fn songs_replaced_in_place_as_by_members() {
        let songs: [&[u8]; 3] = [b"\"1\"", b"2", b"\"x\\\"y\""];
        for raw in [
            &br#"{"id":"7","song_ids":[],"name":"x"}"#[..],
            br#"{"song_ids":["3",4],"id":"7"}"#,
            br#"{"id":"7","owner_id":"1","song_ids":[1,2,3]}"#,
            br#"{"id":"7","song_ids":[1],"song_ids":[2],"n":{"song_ids":[]}}"#,
            br#"{"id":"7","name":"song_ids"}"#,
            br#"{}"#,
        ] {
            let range = song_ids_range(raw, &json::object_members(raw).unwrap());
            assert_eq!(
                String::from_utf8(with_songs(raw, range, songs)).unwrap(),
                String::from_utf8(changed_playlist(raw, songs)).unwrap()
            );
        }
    }

    #[test]
    fn changed_and_new_playlists() {
        let songs: [&[u8]; 2] = [b"\"1\"", b"2"];
        assert_eq!(
            changed_playlist(br#"{"id":"7","song_ids":[],"name":"x"}"#, songs),
            br#"{"id":"7","song_ids":["1",2],"name":"x"}"#
        );
        assert_eq!(
            changed_playlist(br#"{"id":"7"}"#, songs),
            br#"{"id":"7","song_ids":["1",2]}"#
        );
        assert_eq!(
            changed_playlist(br#"{}"#, songs),
            br#"{"song_ids":["1",2]}"#
        );
        assert_eq!(
            new_playlist(b"\"9\"", "user_id", b"3", songs, br#","name":"y""#),
            br#"{"id":"9","user_id":3,"song_ids":["1",2],"name":"y"}"#
        );
    }
}
