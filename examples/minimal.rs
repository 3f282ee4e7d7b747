//! The second rival: the *minimal* in-memory applier, `minimal MIXTAPE
//! CHANGES OUTPUT`; and the floor the benchmark measures the harness against,
//! `minimal --floor MIXTAPE CHANGES OUTPUT BYTES,BYTES` (see [`floor`]).
//!
//! What a hurried engineer would write: both files in memory, parsed once by
//! serde_json into borrowed structs; a `HashSet` of user ids and one of song
//! ids; a `Vec` of songs per playlist, scanned for membership; changes applied
//! one after another. It keeps only `id`, the owner, `song_ids` and `name` of a
//! playlist, writes no rejects report (it counts them) and no warnings, so it
//! does less than the spec asks: its output is not checked byte for byte by
//! `bench/run.py`, only its time and memory count. It is a floor for what an
//! in-memory program costs, not a replacement for the tool.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

/// An id as text: strings borrowed, integers printed.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Id<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Id<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<'a> {
            Text(&'a str),
            Number(u64),
        }
        Ok(Id(match Either::deserialize(d)? {
            Either::Text(s) => Cow::Borrowed(s),
            Either::Number(n) => Cow::Owned(n.to_string()),
        }))
    }
}

#[derive(Deserialize)]
struct WithId<'a> {
    #[serde(borrow)]
    id: Id<'a>,
}

#[derive(Deserialize)]
struct Playlist<'a> {
    #[serde(borrow)]
    id: Id<'a>,
    #[serde(borrow, alias = "user_id")]
    owner_id: Id<'a>,
    #[serde(borrow)]
    song_ids: Vec<Id<'a>>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Document<'a> {
    #[serde(borrow)]
    users: Vec<&'a RawValue>,
    #[serde(borrow)]
    playlists: Vec<Playlist<'a>>,
    #[serde(borrow)]
    songs: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    playlist_id: Option<Id<'a>>,
    #[serde(borrow, default)]
    song_id: Option<Id<'a>>,
    #[serde(borrow, default, alias = "user_id")]
    owner_id: Option<Id<'a>>,
    #[serde(borrow, default)]
    song_ids: Option<Vec<Id<'a>>>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 6 && args[1] == "--floor" {
        return floor(&args[2], &args[3], &args[4], &args[5]);
    }
    if args.len() != 4 {
        eprintln!("usage: minimal MIXTAPE CHANGES OUTPUT\n       minimal --floor MIXTAPE CHANGES OUTPUT BYTES,BYTES");
        std::process::exit(2);
    }
    let started = Instant::now();
    let mixtape = std::fs::read(&args[1]).expect("reading MIXTAPE");
    let changes = std::fs::read(&args[2]).expect("reading CHANGES");
    let doc: Document = serde_json::from_slice(&mixtape).expect("parsing MIXTAPE");
    let changes = parse_changes(&changes);
    let (state, rejected) = apply_all(&doc, &changes);
    let file = std::fs::File::create(&args[3]).expect("creating OUTPUT");
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write_output(&mut out, &doc, &state).expect("writing OUTPUT");
    out.flush().expect("writing OUTPUT");
    let rss_kb = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss())
        .unwrap_or(0);
    eprintln!(
        "minimal: {} changes, {rejected} rejected; wall={:.2}s rss_kb={rss_kb}",
        changes.len(),
        started.elapsed().as_secs_f64()
    );
    std::process::exit(0); // no teardown
}

/// The floor (`--floor`): what any program that reads both inputs with
/// serde_json and writes the result must spend, on two threads. Each input is
/// read and parsed, into the same borrowed structs as above, on a thread of
/// its own; then OUTPUT and `OUTPUT.rejects.jsonl` are written with as many
/// bytes as `sizes` says (the real output's and report's sizes, which
/// `bench/run.py` takes from the rival's run): bytes of a pattern, since
/// writing costs by the byte, not by what the bytes say. Nothing is applied.
fn floor(mixtape: &str, changes: &str, output: &str, sizes: &str) {
    let started = Instant::now();
    let (documents, changes) = std::thread::scope(|scope| {
        let changes = scope.spawn(|| {
            let text = std::fs::read(changes).expect("reading CHANGES");
            let count = parse_changes(&text).len();
            (count, text.len())
        });
        let text = std::fs::read(mixtape).expect("reading MIXTAPE");
        let doc: Document = serde_json::from_slice(&text).expect("parsing MIXTAPE");
        let playlists = doc.playlists.len();
        (playlists, changes.join().expect("the CHANGES thread"))
    });
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|n| n.parse().expect("a size"))
        .collect();
    let pattern = b"{\"id\":\"12345\",\"name\":\"A name\"},\n".repeat(1 << 14);
    for (path, size) in [output.to_string(), format!("{output}.rejects.jsonl")]
        .iter()
        .zip(sizes)
    {
        let mut out = std::fs::File::create(path).expect("creating OUTPUT");
        let mut left = size;
        while left > 0 {
            let n = left.min(pattern.len());
            out.write_all(&pattern[..n]).expect("writing OUTPUT");
            left -= n;
        }
    }
    let rss_kb = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss())
        .unwrap_or(0);
    eprintln!(
        "floor: {} changes, {documents} playlists; wall={:.2}s rss_kb={rss_kb}",
        changes.0,
        started.elapsed().as_secs_f64()
    );
    std::process::exit(0); // no teardown
}

/// The changes file in any of its three forms. A change that does not fit
/// [`Change`] (no `op`, a member of the wrong type) becomes `None`, rejected;
/// when every change fits (the benchmark's cases), the file is parsed once.
fn parse_changes(text: &[u8]) -> Vec<Option<Change<'_>>> {
    if let Some(all) = parse_each::<Change>(text) {
        return all.into_iter().map(Some).collect();
    }
    let raw = parse_each::<&RawValue>(text).expect("parsing CHANGES");
    raw.into_iter()
        .map(|r| serde_json::from_str(r.get()).ok())
        .collect()
}

/// Every change of `text` as a `T`, in any of the three forms; `None` when one
/// does not parse as a `T`.
fn parse_each<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Option<Vec<T>> {
    #[derive(Deserialize)]
    struct Object<T> {
        changes: Vec<T>,
    }
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return serde_json::from_slice(text).ok();
    }
    if let Ok(object) = serde_json::from_slice::<Object<T>>(text) {
        return Some(object.changes);
    }
    serde_json::Deserializer::from_slice(text)
        .into_iter::<T>()
        .collect::<Result<_, _>>()
        .ok()
}

/// A playlist as it stands: its owner, songs, name.
struct Live<'a> {
    owner: Id<'a>,
    songs: Vec<Id<'a>>,
    name: Option<&'a RawValue>,
}

/// The playlists in output order (`None` once removed), and an index by id.
#[derive(Default)]
struct State<'a> {
    order: Vec<(Id<'a>, Option<Live<'a>>)>,
    by_id: HashMap<Id<'a>, usize>,
}

fn apply_all<'a>(doc: &'a Document<'a>, changes: &'a [Option<Change<'a>>]) -> (State<'a>, usize) {
    let known = Known {
        users: doc.users.iter().map(|u| id_of(u)).collect(),
        songs: doc.songs.iter().map(|s| id_of(s)).collect(),
    };
    let mut state = State::default();
    for p in &doc.playlists {
        let live = Live {
            owner: p.owner_id.clone(),
            songs: p.song_ids.clone(),
            name: p.name,
        };
        state.by_id.insert(p.id.clone(), state.order.len());
        state.order.push((p.id.clone(), Some(live)));
    }
    let max_id = doc
        .playlists
        .iter()
        .map(|p| &p.id)
        .chain(
            changes
                .iter()
                .flatten()
                .filter_map(|c| c.playlist_id.as_ref()),
        )
        .filter_map(|id| id.0.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let mut automatic = 0;
    let mut rejected = 0;
    for change in changes {
        let Some(change) = change else {
            rejected += 1;
            continue;
        };
        if change.op == "add_playlist" && change.playlist_id.is_none() {
            automatic += 1;
        }
        let auto_id = Id(Cow::Owned((max_id + automatic).to_string()));
        if !state.apply(change, &known, auto_id) {
            rejected += 1;
        }
    }
    (state, rejected)
}

/// The users and songs of the document, which never change.
struct Known<'a> {
    users: HashSet<Id<'a>>,
    songs: HashSet<Id<'a>>,
}

fn id_of<'a>(element: &'a RawValue) -> Id<'a> {
    serde_json::from_str::<WithId>(element.get())
        .expect("an element without an id")
        .id
}

impl<'a> State<'a> {
    fn live(&mut self, id: &Id<'a>) -> Option<&mut Live<'a>> {
        let at = *self.by_id.get(id)?;
        self.order[at].1.as_mut()
    }

    /// Applies one change; false when it is rejected.
    fn apply(&mut self, change: &'a Change<'a>, known: &Known, auto_id: Id<'a>) -> bool {
        let (playlist, song) = (change.playlist_id.as_ref(), change.song_id.as_ref());
        match (&*change.op, playlist, song) {
            ("add_song", Some(p), Some(s)) if known.songs.contains(s) => match self.live(p) {
                Some(live) if !live.songs.contains(s) => {
                    live.songs.push(s.clone());
                    true
                }
                _ => false,
            },
            ("remove_song", Some(p), Some(s)) => match self.live(p) {
                Some(live) if live.songs.contains(s) => {
                    live.songs.retain(|x| x != s);
                    true
                }
                _ => false,
            },
            ("remove_playlist", Some(p), _) => match self.by_id.remove(p) {
                Some(at) if self.order[at].1.is_some() => {
                    self.order[at].1 = None;
                    true
                }
                _ => false,
            },
            ("add_playlist", _, _) => self.add_playlist(change, known, auto_id),
            _ => false,
        }
    }

    fn add_playlist(&mut self, change: &'a Change<'a>, known: &Known, auto_id: Id<'a>) -> bool {
        let (Some(owner), Some(list)) = (&change.owner_id, &change.song_ids) else {
            return false;
        };
        let unique: HashSet<&Id> = list.iter().collect();
        if !known.users.contains(owner)
            || list.is_empty()
            || !list.iter().all(|s| known.songs.contains(s))
            || unique.len() != list.len()
        {
            return false;
        }
        let id = change.playlist_id.clone().unwrap_or(auto_id);
        if self.live(&id).is_some() {
            return false;
        }
        let live = Live {
            owner: owner.clone(),
            songs: list.clone(),
            name: change.name,
        };
        self.by_id.insert(id.clone(), self.order.len());
        self.order.push((id, Some(live)));
        true
    }
}

fn write_output(out: &mut impl Write, doc: &Document, state: &State) -> std::io::Result<()> {
    writeln!(out, "{{\"users\": [")?;
    write_raw(out, &doc.users)?;
    writeln!(out, "],\n\"playlists\": [")?;
    let mut first = true;
    for (id, live) in &state.order {
        let Some(live) = live else { continue };
        let sep = if first { "" } else { ",\n" };
        first = false;
        let songs: Vec<&str> = live.songs.iter().map(|s| &*s.0).collect();
        write!(
            out,
            "{sep}{{\"id\": {}, \"owner_id\": {}, \"song_ids\": {}",
            serde_json::to_string(&*id.0)?,
            serde_json::to_string(&*live.owner.0)?,
            serde_json::to_string(&songs)?
        )?;
        if let Some(name) = live.name {
            write!(out, ", \"name\": {}", name.get())?;
        }
        write!(out, "}}")?;
    }
    writeln!(out, "\n],\n\"songs\": [")?;
    write_raw(out, &doc.songs)?;
    writeln!(out, "]}}")
}

fn write_raw(out: &mut impl Write, elements: &[&RawValue]) -> std::io::Result<()> {
    for (i, e) in elements.iter().enumerate() {
        let sep = if i + 1 < elements.len() { "," } else { "" };
        writeln!(out, "{}{sep}", e.get())?;
    }
    Ok(())
}
