//! The benchmark's rival: what a careful engineer would write instead of using
//! mixtape, when memory is no object. Full spec (every reject reason and
//! detail, all three changes forms, automatic ids, warnings, the output layout),
//! one thread, everything in memory, written for speed:
//!
//! - both files read whole; validated once by serde_json (`IgnoredAny`), then
//!   read with the same byte-level helpers the tool uses ([`mixtape::json`],
//!   [`mixtape::changes::change`]): ids and elements are borrowed from the input text;
//! - hash maps keyed by ids packed into integers, with a fast hasher
//!   ([`mixtape::ids::key`]), a song list and a membership map per playlist;
//! - one pass over the changes: an automatic id `M + k` cannot be named by any
//!   change (every named id is at most `M`), so new playlists keep `k` and get
//!   their id when the output is written, once `M` is known;
//! - no teardown: the process exits without freeing its maps.
//!
//! `cargo run --release --example rival -- MIXTAPE CHANGES OUTPUT` writes OUTPUT
//! and OUTPUT.rejects.jsonl, the same bytes as the harness, and prints its wall
//! time and peak RSS on stderr.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::time::Instant;

use mixtape::changes::change::{self, Change};
use mixtape::ids::key::{FxMap, IdKey};
use mixtape::{json, json::render};

fn text(raw: &[u8]) -> Cow<'_, str> {
    json::id_text(raw).unwrap_or_default()
}

/// A playlist while the changes are applied.
struct Playlist<'a> {
    /// Song ids as written, in order.
    songs: Vec<&'a [u8]>,
    /// How often each song id text occurs in `songs`.
    counts: FxMap<IdKey<'a>, u32>,
    origin: Origin<'a>,
}

enum Origin<'a> {
    /// The document's playlist at this position; `changed` once its songs differ.
    Document { position: usize, changed: bool },
    /// Created by the change at `index`, with its id as written and rendered members.
    New {
        index: usize,
        id: Id<'a>,
        owner: &'a [u8],
        copied: Vec<u8>,
    },
}

#[derive(Clone, Copy)]
enum Id<'a> {
    Given(&'a [u8]),
    /// The k-th `add_playlist` without `playlist_id`: `M + k` once M is known.
    Auto(u64),
}

struct State<'a> {
    users: FxMap<IdKey<'a>, &'a [u8]>,
    songs: FxMap<IdKey<'a>, &'a [u8]>,
    /// Live playlists by id text.
    playlists: FxMap<IdKey<'a>, Playlist<'a>>,
    /// New playlists with automatic ids (never named by another change).
    auto_created: Vec<Playlist<'a>>,
    max_id: u64,
    auto_count: u64,
    rejects: Vec<u8>,
    rejected: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: rival MIXTAPE CHANGES OUTPUT");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mixtape = std::fs::read(&args[1]).expect("reading MIXTAPE");
    let changes = std::fs::read(&args[2]).expect("reading CHANGES");
    let output = std::fs::File::create(&args[3]).expect("creating OUTPUT");
    let mut out = BufWriter::with_capacity(1 << 20, output);
    let outcome = run(&mixtape, &changes, &mut out).unwrap_or_else(|e| {
        eprintln!("rival: {e}");
        std::process::exit(1)
    });
    out.flush().expect("writing OUTPUT");
    std::fs::write(format!("{}.rejects.jsonl", args[3]), &outcome.rejects)
        .expect("writing rejects");
    let rss_kb = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss())
        .unwrap_or(0);
    eprintln!(
        "rival: {} changes, {} rejected, {} warnings; wall={:.2}s rss_kb={rss_kb}",
        outcome.changes,
        outcome.rejected,
        outcome.warnings,
        started.elapsed().as_secs_f64()
    );
    // No teardown: the maps die with the process.
    std::process::exit(0);
}

/// What a run gives besides OUTPUT.
pub struct Outcome {
    pub rejects: Vec<u8>,
    pub changes: usize,
    pub rejected: usize,
    pub warnings: usize,
}

/// Applies `changes` to `mixtape`, writing the output document to `out`.
pub fn run(mixtape: &[u8], changes: &[u8], out: &mut impl Write) -> Result<Outcome, String> {
    // One validating pass each (serde_json), then the byte helpers.
    serde_json::from_slice::<serde::de::IgnoredAny>(mixtape)
        .map_err(|e| format!("MIXTAPE: {e}"))?;
    validate_changes(changes).map_err(|e| format!("CHANGES: {e}"))?;
    let minified_doc = json::minify(mixtape);
    let doc = Document::read(&minified_doc).map_err(|e| format!("MIXTAPE: {e}"))?;
    let mut state = State::new(&doc).map_err(|e| format!("MIXTAPE: {e}"))?;
    let mut count = 0usize;
    for_each_change(changes, |raw| {
        state.apply(count, raw);
        count += 1;
    });
    state
        .write(&doc, out)
        .map_err(|e| format!("writing OUTPUT: {e}"))?;
    let warnings = warnings(&doc, &state);
    // Leak the state rather than free millions of entries one by one.
    let state = std::mem::ManuallyDrop::new(state);
    Ok(Outcome {
        rejects: state.rejects.clone(),
        changes: count,
        rejected: state.rejected,
        warnings,
    })
}

/// The whole of CHANGES must be JSON in one of the three forms.
fn validate_changes(changes: &[u8]) -> Result<(), String> {
    let stream = serde_json::Deserializer::from_slice(changes).into_iter::<serde::de::IgnoredAny>();
    let mut values = 0;
    for value in stream {
        value.map_err(|e| e.to_string())?;
        values += 1;
    }
    let first = changes.iter().copied().find(|&b| !json::is_ws(b));
    if first == Some(b'[') && values > 1 {
        return Err("only JSON Lines may hold several values".into());
    }
    Ok(())
}

/// Calls `each` with every change's raw text, in file order, in any form.
fn for_each_change<'a>(changes: &'a [u8], mut each: impl FnMut(&'a [u8])) {
    let start = changes
        .iter()
        .position(|&b| !json::is_ws(b))
        .unwrap_or(changes.len());
    let (range, lines) = match changes.get(start) {
        Some(b'[') => (&changes[start + 1..], false),
        Some(b'{') => match json::find_member(&changes[start..], "changes") {
            Some(Some(array)) if array.first() == Some(&b'[') => (&array[1..], false),
            _ => (&changes[start..], true),
        },
        _ => (&changes[start..], true),
    };
    let mut i = 0;
    let mut minified = Vec::new();
    loop {
        while i < range.len() && (json::is_ws(range[i]) || range[i] == b',') {
            i += 1;
        }
        if i == range.len() || (!lines && range[i] == b']') {
            return;
        }
        let end = json::value_end(range, i, true).expect("validated");
        let raw = &range[i..end];
        if raw.iter().any(|&b| json::is_ws(b)) {
            minified.clear();
            json::minify_into(raw, &mut minified);
            // Minified text lives as long as the input: leak it (a few changes
            // in benchmark files are pretty-printed; the process exits anyway).
            each(Box::leak(minified.clone().into_boxed_slice()));
        } else {
            each(raw);
        }
        i = end;
    }
}

/// The document, minified, cut into its parts.
struct Document<'a> {
    users: Vec<&'a [u8]>,
    playlists: Vec<&'a [u8]>,
    songs: Vec<&'a [u8]>,
    extras: Vec<(&'a [u8], &'a [u8])>,
    owner_key: String,
}

impl<'a> Document<'a> {
    fn read(minified: &'a [u8]) -> Result<Document<'a>, String> {
        let start = minified.strip_prefix(b"\xEF\xBB\xBF").map_or(0, |_| 3);
        let members = json::object_members(&minified[start..]).ok_or("not an object")?;
        let mut doc = Document {
            users: Vec::new(),
            playlists: Vec::new(),
            songs: Vec::new(),
            extras: Vec::new(),
            owner_key: "owner_id".into(),
        };
        let mut seen = 0;
        for (key, value) in members {
            let list = match json::key_name(key).as_deref() {
                Some("users") => &mut doc.users,
                Some("playlists") => &mut doc.playlists,
                Some("songs") => &mut doc.songs,
                _ => {
                    doc.extras.push((key, value));
                    continue;
                }
            };
            seen += 1;
            *list = json::array_elements(value).ok_or("an array member is not an array")?;
        }
        if seen == 0 {
            return Err("not a mixtape: none of users, playlists, songs".into());
        }
        if let Some(first) = doc.playlists.first() {
            let members = json::object_members(first).unwrap_or_default();
            if json::member(&members, "owner_id").is_none()
                && json::member(&members, "user_id").is_some()
            {
                doc.owner_key = "user_id".into();
            }
        }
        Ok(doc)
    }
}

/// The id of an element, as text and as written.
fn element_id(element: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let raw = json::find_member(element, "id")??;
    Some((json::id_text(raw)?, raw))
}

impl<'a> State<'a> {
    fn new(doc: &Document<'a>) -> Result<State<'a>, String> {
        let mut state = State {
            users: FxMap::default(),
            songs: FxMap::default(),
            playlists: FxMap::default(),
            auto_created: Vec::new(),
            max_id: 0,
            auto_count: 0,
            rejects: Vec::new(),
            rejected: 0,
        };
        for (list, map) in [
            (&doc.users, &mut state.users),
            (&doc.songs, &mut state.songs),
        ] {
            map.reserve(list.len());
            for element in list {
                let (id, written) = element_id(element).ok_or("an element has no valid id")?;
                if map.insert(IdKey::of(id), written).is_some() {
                    return Err("duplicate id".into());
                }
            }
        }
        for (position, element) in doc.playlists.iter().enumerate() {
            let (id, _) = element_id(element).ok_or("a playlist has no valid id")?;
            if let Some(v) = json::auto_id_value(&id) {
                state.max_id = state.max_id.max(v);
            }
            let members = json::object_members(element).unwrap_or_default();
            let songs = json::member(&members, "song_ids")
                .map(|s| json::array_elements(s).ok_or("song_ids is not an array"))
                .transpose()?
                .unwrap_or_default();
            let playlist = Playlist {
                counts: counts(&songs),
                songs,
                origin: Origin::Document {
                    position,
                    changed: false,
                },
            };
            if state.playlists.insert(IdKey::of(id), playlist).is_some() {
                return Err("duplicate playlist id".into());
            }
        }
        Ok(state)
    }

    fn reject(&mut self, index: usize, op_json: &str, reason: &str, detail: &str) {
        self.rejected += 1;
        let _ = write!(
            self.rejects,
            "{{\"index\": {index}, \"op\": {op_json}, \"reason\": \"{reason}\", \"detail\": "
        );
        json::write_string(detail, &mut self.rejects);
        self.rejects.extend_from_slice(b"}\n");
    }

    /// Applies the change at `index`, or rejects it.
    fn apply(&mut self, index: usize, raw: &'a [u8]) {
        let parsed = change::parse(raw);
        if let Some(id) = parsed.named_playlist_id {
            self.max_id = self.max_id.max(id);
        }
        if parsed.counts_as_auto {
            self.auto_count += 1;
        }
        let outcome = match parsed.change {
            Err(detail) => Err(("invalid_change", detail)),
            Ok(change) => self.apply_change(index, change),
        };
        if let Err((reason, detail)) = outcome {
            self.reject(index, &parsed.op_json, reason, &detail);
        }
    }

    fn apply_change(
        &mut self,
        index: usize,
        change: Change<'a>,
    ) -> Result<(), (&'static str, String)> {
        match change {
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            } => self.add_playlist(index, id, owner, songs, copied),
            Change::RemovePlaylist { playlist } => {
                match self.playlists.remove(&IdKey::raw(playlist)) {
                    Some(_) => Ok(()),
                    None => Err(unknown_playlist(playlist)),
                }
            }
            Change::AddSong { playlist, song } => {
                let song_key = IdKey::raw(song);
                let Some(&written) = self.songs.get(&song_key) else {
                    return Err((
                        "unknown_song",
                        format!("song {} does not exist", text(song)),
                    ));
                };
                let Some(p) = self.playlists.get_mut(&IdKey::raw(playlist)) else {
                    return Err(unknown_playlist(playlist));
                };
                let n = p.counts.entry(song_key).or_insert(0);
                if *n > 0 {
                    return Err((
                        "song_already_in_playlist",
                        format!(
                            "song {} is already in playlist {}",
                            text(song),
                            text(playlist)
                        ),
                    ));
                }
                *n = 1;
                p.songs.push(written);
                p.mark_changed();
                Ok(())
            }
            Change::RemoveSong { playlist, song } => {
                let Some(p) = self.playlists.get_mut(&IdKey::raw(playlist)) else {
                    return Err(unknown_playlist(playlist));
                };
                let song_text = text(song);
                if p.counts.remove(&IdKey::raw(song)).unwrap_or(0) == 0 {
                    return Err((
                        "song_not_in_playlist",
                        format!("song {song_text} is not in playlist {}", text(playlist)),
                    ));
                }
                p.songs.retain(|s| text(s) != song_text);
                p.mark_changed();
                Ok(())
            }
        }
    }

    fn add_playlist(
        &mut self,
        index: usize,
        id: Option<&'a [u8]>,
        owner: &'a [u8],
        songs: Vec<&'a [u8]>,
        copied: Vec<(&'a [u8], &'a [u8])>,
    ) -> Result<(), (&'static str, String)> {
        let Some(&owner_written) = self.users.get(&IdKey::raw(owner)) else {
            return Err((
                "unknown_user",
                format!("user {} does not exist", text(owner)),
            ));
        };
        let mut written = Vec::with_capacity(songs.len());
        for song in &songs {
            match self.songs.get(&IdKey::raw(song)) {
                Some(&w) => written.push(w),
                None => {
                    return Err((
                        "unknown_song",
                        format!("song {} does not exist", text(song)),
                    ))
                }
            }
        }
        if songs.is_empty() {
            return Err(("empty_playlist", "song_ids is empty".into()));
        }
        let counts = counts(&written);
        if counts.len() < written.len() {
            let mut seen = FxMap::default();
            for song in &songs {
                if seen.insert(IdKey::raw(song), ()).is_some() {
                    return Err((
                        "duplicate_song",
                        format!("song {} appears more than once in song_ids", text(song)),
                    ));
                }
            }
        }
        let mut rendered = Vec::new();
        for (key, value) in copied {
            rendered.push(b',');
            rendered.extend_from_slice(key);
            rendered.push(b':');
            rendered.extend_from_slice(value);
        }
        let new = |id| Playlist {
            songs: written,
            counts,
            origin: Origin::New {
                index,
                id,
                owner: owner_written,
                copied: rendered,
            },
        };
        match id {
            None => self.auto_created.push(new(Id::Auto(self.auto_count))),
            Some(given) => {
                let key = IdKey::raw(given);
                if self.playlists.contains_key(&key) {
                    return Err((
                        "playlist_exists",
                        format!("playlist {} already exists", text(given)),
                    ));
                }
                self.playlists.insert(key, new(Id::Given(given)));
            }
        }
        Ok(())
    }

    /// The output document.
    fn write(&self, doc: &Document, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(b"{\n")?;
        write_array(out, "users", doc.users.iter().map(|e| Cow::Borrowed(*e)))?;
        out.write_all(b",\n")?;
        // Surviving document playlists in document order, then new ones in
        // order of creation.
        let mut by_position: Vec<Option<&Playlist>> = vec![None; doc.playlists.len()];
        let mut new: Vec<(usize, &Playlist)> = Vec::new();
        for p in self.playlists.values().chain(&self.auto_created) {
            match p.origin {
                Origin::Document { position, .. } => by_position[position] = Some(p),
                Origin::New { index, .. } => new.push((index, p)),
            }
        }
        new.sort_unstable_by_key(|(index, _)| *index);
        let document = doc
            .playlists
            .iter()
            .zip(&by_position)
            .filter_map(|(raw, live)| {
                let live = (*live)?;
                match live.origin {
                    Origin::Document { changed: true, .. } => Some(Cow::Owned(
                        render::changed_playlist(raw, live.songs.iter().copied()),
                    )),
                    _ => Some(Cow::Borrowed(*raw)),
                }
            });
        let created = new.iter().map(|(_, p)| Cow::Owned(self.render_new(doc, p)));
        write_array(out, "playlists", document.chain(created))?;
        out.write_all(b",\n")?;
        write_array(out, "songs", doc.songs.iter().map(|e| Cow::Borrowed(*e)))?;
        for (key, value) in &doc.extras {
            out.write_all(b",\n")?;
            out.write_all(key)?;
            out.write_all(b": ")?;
            out.write_all(value)?;
        }
        out.write_all(b"\n}\n")
    }

    fn render_new(&self, doc: &Document, p: &Playlist) -> Vec<u8> {
        let Origin::New {
            id, owner, copied, ..
        } = &p.origin
        else {
            unreachable!("only new playlists")
        };
        let mut auto = Vec::new();
        let id: &[u8] = match id {
            Id::Given(written) => written,
            Id::Auto(k) => {
                json::write_string(&(self.max_id + k).to_string(), &mut auto);
                &auto
            }
        };
        render::new_playlist(id, &doc.owner_key, owner, p.songs.iter().copied(), copied)
    }
}

impl Playlist<'_> {
    fn mark_changed(&mut self) {
        if let Origin::Document { changed, .. } = &mut self.origin {
            *changed = true;
        }
    }
}

fn unknown_playlist(raw: &[u8]) -> (&'static str, String) {
    (
        "unknown_playlist",
        format!("playlist {} does not exist", text(raw)),
    )
}

fn counts<'a>(songs: &[&'a [u8]]) -> FxMap<IdKey<'a>, u32> {
    let mut counts = FxMap::with_capacity_and_hasher(songs.len(), Default::default());
    for s in songs {
        *counts.entry(IdKey::raw(s)).or_insert(0) += 1;
    }
    counts
}

fn write_array<'b>(
    out: &mut impl Write,
    name: &str,
    elements: impl Iterator<Item = Cow<'b, [u8]>>,
) -> std::io::Result<()> {
    write!(out, "\"{name}\": [")?;
    let mut first = true;
    for e in elements {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        first = false;
        out.write_all(&e)?;
    }
    out.write_all(if first { b"]" } else { b"\n]" })
}

/// Document playlists whose owner or one of whose songs does not exist.
fn warnings(doc: &Document, state: &State) -> usize {
    doc.playlists
        .iter()
        .filter(|raw| {
            let members = json::object_members(raw).unwrap_or_default();
            let owner =
                json::member(&members, "owner_id").or_else(|| json::member(&members, "user_id"));
            let owner_ok = owner.is_some_and(|o| state.users.contains_key(&IdKey::raw(o)));
            let songs = json::member(&members, "song_ids")
                .and_then(json::array_elements)
                .unwrap_or_default();
            !(owner_ok
                && songs
                    .iter()
                    .all(|s| state.songs.contains_key(&IdKey::raw(s))))
        })
        .count()
}
