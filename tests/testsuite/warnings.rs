//! The warning count (docs/GUIDE.md "The mixtape document"): the import
//! knows it when every owner and song a playlist names exists, and leaves it
//! to the merge when one does not. Both ways count what the in-memory
//! reference counts, at every worker count, whatever the ids look like and
//! wherever the songs are in the document.

use crate::support;

use std::fs;

use support::{reference, stderr, TestCommand};

/// A document of `users` and `songs` (ids as written) and playlists given
/// as (owner member, song ids) texts; `songs_first` puts the songs before
/// the playlists.
fn document(
    users: &[&str],
    songs: &[&str],
    playlists: &[(&str, &str)],
    songs_first: bool,
) -> String {
    let users: Vec<String> = users.iter().map(|id| format!("{{\"id\": {id}}}")).collect();
    let songs: Vec<String> = songs.iter().map(|id| format!("{{\"id\": {id}}}")).collect();
    let playlists: Vec<String> = playlists
        .iter()
        .enumerate()
        .map(|(i, (owner, list))| {
            let owner = match owner.is_empty() {
                true => String::new(),
                false => format!(", {owner}"),
            };
            format!("{{\"id\": \"p{i}\"{owner}, \"song_ids\": [{list}]}}")
        })
        .collect();
    let (songs, playlists) = (songs.join(",\n"), playlists.join(",\n"));
    let users = users.join(",\n");
    match songs_first {
        true => {
            format!("{{\"users\": [{users}], \"songs\": [{songs}], \"playlists\": [{playlists}]}}")
        }
        false => {
            format!("{{\"users\": [{users}], \"playlists\": [{playlists}], \"songs\": [{songs}]}}")
        }
    }
}

/// The warning count the harness's summary line gives.
fn warnings_said(summary: &str) -> usize {
    summary
        .split("; ")
        .find_map(|part| part.strip_suffix(" input playlist(s) name a missing owner or song"))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn check(what: &str, mixtape: &str) {
    let changes =
        "{\"changes\": [{\"op\": \"add_song\", \"playlist_id\": \"p0\", \"song_id\": \"1\"}]}";
    let expected = reference::run(mixtape, changes).unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("mixtape.json"), mixtape).unwrap();
    fs::write(dir.path().join("changes.json"), changes).unwrap();
    for workers in [1, 3] {
        let o = TestCommand::harness()
            .args(["--progress", "never", "--workers", &workers.to_string()])
            .arg(dir.path().join("mixtape.json"))
            .arg(dir.path().join("changes.json"))
            .arg(dir.path().join("out.json"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert_eq!(
            warnings_said(&stderr(&o)),
            expected.warnings,
            "{what}, {workers} workers: {}",
            stderr(&o)
        );
    }
}

#[test]
fn warnings_are_counted_as_the_reference_counts_them_known_at_import_or_not() {
    let users = ["\"1\"", "2", "\"u-\\u0031\"", "\"007\"", "123456789012"];
    let songs = [
        "\"1\"",
        "\"2\"",
        "3",
        "\"s\\\"x\"",
        "\"007\"",
        "99999999999",
    ];
    // Every owner and song named exists; some playlists name no owner, or
    // one that is not an id: warnings the import knows.
    let sound = [
        ("\"owner_id\": \"1\"", "\"1\", 2, \"3\""),
        ("\"owner_id\": 2", "\"s\\\"x\", \"007\""),
        ("\"owner_id\": \"u-1\"", "99999999999"),
        ("\"owner_id\": \"007\"", ""),
        ("\"owner_id\": 123456789012", "\"2\""),
        ("", "\"1\""),
        ("\"owner_id\": null", "\"1\""),
        ("\"owner_id\": [1]", "\"9\""),
    ];
    // And a missing owner or song (an integer, a text, a large integer):
    // the merge counts.
    let unsound: [(&str, &str); 4] = [
        ("\"owner_id\": \"3\"", "\"1\""),
        ("\"owner_id\": \"1\"", "\"4\""),
        ("\"owner_id\": \"1\"", "\"07\""),
        ("\"owner_id\": \"1\"", "99999999998"),
    ];
    for songs_first in [false, true] {
        check(
            &format!("all exist, songs first: {songs_first}"),
            &document(&users, &songs, &sound, songs_first),
        );
        for missing in unsound {
            let mut playlists = sound.to_vec();
            playlists.insert(2, missing);
            check(
                &format!("{missing:?} missing, songs first: {songs_first}"),
                &document(&users, &songs, &playlists, songs_first),
            );
        }
    }
}
