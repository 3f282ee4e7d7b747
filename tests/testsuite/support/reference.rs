//! The reference: docs/GUIDE.md "The mixtape document" to "Output" done the obvious way, in memory, one change at a time.
//!
//! It shares no code with the tool (it parses with serde_json and keeps plain
//! hash maps), so the differential tests compare two independent readings of the
//! spec. It is written to be checked by reading, and to be a fair rival in the
//! benchmark: hash maps, no needless copies, nothing deliberately slow.
//!
//! Two conventions it shares with the tool by design (they are the output
//! format, documented in docs/GUIDE.md): elements are written minified, and the
//! detail messages of rejects.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A member name, borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object with its members in order, values raw, borrowed from the text.
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((k.0, v));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Object<'a> {
    fn parse(raw: &'a str) -> Option<Object<'a>> {
        serde_json::from_str(raw).ok()
    }
    /// The first member called `name` (a repeated member counts once, first).
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.get())
    }
}

/// The first `playlist_id` member of an object, skipping everything else.
struct PlaylistIdOnly<'a>(Option<&'a RawValue>);

impl<'de> Deserialize<'de> for PlaylistIdOnly<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PlaylistIdOnly<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    if k.0 == "playlist_id" && found.is_none() {
                        found = Some(map.next_value::<&'de RawValue>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PlaylistIdOnly(found))
            }
        }
        d.deserialize_map(V)
    }
}

/// JSON text without white space outside strings.
pub fn minify(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// The text of an id: a string's value, or an integer's digits.
fn id_text(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.starts_with('"') {
        return serde_json::from_str::<String>(raw).ok();
    }
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| raw.to_string())
}

fn auto_value(text: &str) -> Option<u64> {
    let ok = (1..=18).contains(&text.len())
        && !text.starts_with('0')
        && text.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| text.parse().unwrap())
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The result of a run.
#[derive(Debug)]
pub struct Outcome {
    pub output: String,
    pub rejects: String,
    /// The applied report: one line per applied change, in index order.
    pub applied: String,
    pub changes: usize,
    pub rejected: usize,
    /// Input playlists naming an owner or song that does not exist.
    pub warnings: usize,
}

struct DocPlaylist {
    text: String,
    minified: String,
    members: Vec<(String, String)>,
}

#[derive(Clone)]
struct Live {
    /// `None`: the document's playlist (position); `Some(i)`: created by change i.
    created: Option<usize>,
    doc: usize,
    id_written: String,
    owner_written: String,
    /// (id text, id as written) of each song, in order.
    songs: Vec<(String, String)>,
    copied: Vec<(String, String)>,
    changed: bool,
}

/// The changes of a changes file, raw, in order (docs/GUIDE.md "The changes file").
fn changes_of(text: &str) -> Result<Vec<&RawValue>, String> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    let stream = || -> Result<Vec<&RawValue>, String> {
        serde_json::Deserializer::from_str(t)
            .into_iter::<&RawValue>()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())
    };
    if t.starts_with('[') {
        return serde_json::from_str(t).map_err(|e| e.to_string());
    }
    if t.starts_with('{') {
        let first: &RawValue = serde_json::Deserializer::from_str(t)
            .into_iter::<&RawValue>()
            .next()
            .unwrap()
            .map_err(|e| e.to_string())?;
        let object = Object::parse(first.get()).unwrap();
        if let Some(list) = object.get("changes") {
            serde_json::from_str::<serde::de::IgnoredAny>(t).map_err(|e| e.to_string())?;
            return serde_json::from_str(list).map_err(|e| e.to_string());
        }
    }
    stream()
}

/// Applies `changes` to `mixtape`, one change at a time.
pub fn run(mixtape: &str, changes: &str) -> Result<Outcome, String> {
    let top = serde_json::from_str::<Object>(mixtape.trim_start_matches('\u{feff}'))
        .map_err(|e| format!("MIXTAPE: {e}"))?;
    let (mut users_raw, mut playlists_raw, mut songs_raw) = (vec![], vec![], vec![]);
    let mut extras = Vec::new();
    for (key, value) in &top.0 {
        let list =
            || serde_json::from_str::<Vec<&RawValue>>(value.get()).map_err(|e| e.to_string());
        match key.as_ref() {
            "users" => users_raw = list()?,
            "playlists" => playlists_raw = list()?,
            "songs" => songs_raw = list()?,
            _ => extras.push((quoted(key), minify(value.get()))),
        }
    }
    // id text -> id as written, for users and songs.
    let index = |elements: &[&RawValue]| -> Result<HashMap<String, String>, String> {
        let mut ids = HashMap::new();
        for e in elements {
            let o = Object::parse(e.get()).ok_or("element is not an object")?;
            let raw = o.get("id").ok_or("element has no id")?;
            let text = id_text(raw).ok_or("invalid id")?;
            if ids.insert(text, minify(raw)).is_some() {
                return Err("duplicate id".into());
            }
        }
        Ok(ids)
    };
    let users = index(&users_raw)?;
    let songs = index(&songs_raw)?;
    let mut doc = Vec::new();
    let mut live: HashMap<String, Live> = HashMap::new();
    let mut max_id = 0u64;
    for (i, e) in playlists_raw.iter().enumerate() {
        let o = Object::parse(e.get()).ok_or("playlist is not an object")?;
        let text = id_text(o.get("id").ok_or("playlist has no id")?).ok_or("invalid id")?;
        max_id = max_id.max(auto_value(&text).unwrap_or(0));
        let song_list: Vec<(String, String)> = match o.get("song_ids") {
            Some(raw) => serde_json::from_str::<Vec<&RawValue>>(raw)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|s| (id_text(s.get()).unwrap_or_default(), minify(s.get())))
                .collect(),
            None => vec![],
        };
        let pl = Live {
            created: None,
            doc: i,
            id_written: String::new(),
            owner_written: String::new(),
            songs: song_list,
            copied: vec![],
            changed: false,
        };
        if live.insert(text.clone(), pl).is_some() {
            return Err("duplicate playlist id".into());
        }
        doc.push(DocPlaylist {
            text,
            minified: minify(e.get()),
            members: o
                .0
                .iter()
                .map(|(k, v)| (k.to_string(), minify(v.get())))
                .collect(),
        });
    }
    let warnings = playlists_raw
        .iter()
        .filter(|p| {
            let o = Object::parse(p.get()).unwrap();
            let owner = o
                .get("owner_id")
                .or_else(|| o.get("user_id"))
                .and_then(id_text);
            let owner_ok = owner.is_some_and(|u| users.contains_key(&u));
            let songs_ok = o.get("song_ids").is_none_or(|raw| {
                serde_json::from_str::<Vec<&RawValue>>(raw)
                    .unwrap()
                    .iter()
                    .all(|s| id_text(s.get()).is_some_and(|t| songs.contains_key(&t)))
            });
            !(owner_ok && songs_ok)
        })
        .count();
    let owner_key = match playlists_raw.first().and_then(|p| Object::parse(p.get())) {
        Some(o) if o.get("owner_id").is_none() && o.get("user_id").is_some() => "user_id",
        _ => "owner_id",
    };

    let changes = changes_of(changes)?;
    // Two passes over the changes rather than holding five million parsed
    // objects: M needs every playlist_id before the first change. The first pass
    // reads only `playlist_id`.
    for c in &changes {
        if let Ok(PlaylistIdOnly(Some(raw))) = serde_json::from_str::<PlaylistIdOnly>(c.get()) {
            if let Some(t) = id_text(raw.get()) {
                max_id = max_id.max(auto_value(&t).unwrap_or(0));
            }
        }
    }
    let mut auto_k = 0u64;
    let mut created_order: Vec<(usize, String)> = Vec::new();
    let mut rejects = String::new();
    let mut applied = String::new();
    let mut rejected = 0;
    for (index, change) in changes.iter().enumerate() {
        let object = Object::parse(change.get());
        let outcome = apply_one(
            index,
            &object,
            &users,
            &songs,
            &mut live,
            &mut auto_k,
            max_id,
            &mut created_order,
        );
        match outcome {
            Ok(line) => applied.push_str(&line),
            Err((op, reason, detail)) => {
                rejected += 1;
                rejects.push_str(&format!(
                    "{{\"index\": {index}, \"op\": {op}, \"reason\": \"{reason}\", \"detail\": {}}}\n",
                    quoted(&detail)
                ));
            }
        }
    }

    let mut playlists_out = Vec::new();
    for (i, d) in doc.iter().enumerate() {
        match live.get(&d.text) {
            Some(l) if l.created.is_none() && l.doc == i => {
                if !l.changed {
                    playlists_out.push(d.minified.clone());
                } else {
                    let written: Vec<&str> = l.songs.iter().map(|(_, w)| w.as_str()).collect();
                    let list = format!("[{}]", written.join(","));
                    let mut members: Vec<String> = Vec::new();
                    let mut replaced = false;
                    for (k, v) in &d.members {
                        if k == "song_ids" && !replaced {
                            members.push(format!("{}:{list}", quoted(k)));
                            replaced = true;
                        } else {
                            members.push(format!("{}:{v}", quoted(k)));
                        }
                    }
                    if !replaced {
                        members.push(format!("\"song_ids\":{list}"));
                    }
                    playlists_out.push(format!("{{{}}}", members.join(",")));
                }
            }
            _ => {}
        }
    }
    for (index, text) in &created_order {
        if let Some(l) = live.get(text) {
            if l.created == Some(*index) {
                let mut s = format!(
                    "{{\"id\":{},{}:{},\"song_ids\":[{}]",
                    l.id_written,
                    quoted(owner_key),
                    l.owner_written,
                    l.songs
                        .iter()
                        .map(|(_, w)| w.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                for (k, v) in &l.copied {
                    s.push_str(&format!(",{}:{v}", quoted(k)));
                }
                s.push('}');
                playlists_out.push(s);
            }
        }
    }
    let array = |name: &str, items: Vec<String>| {
        if items.is_empty() {
            format!("\"{name}\": []")
        } else {
            format!("\"{name}\": [\n{}\n]", items.join(",\n"))
        }
    };
    let minified = |list: &[&RawValue]| list.iter().map(|e| minify(e.get())).collect();
    let mut output = String::from("{\n");
    output.push_str(&array("users", minified(&users_raw)));
    output.push_str(",\n");
    output.push_str(&array("playlists", playlists_out));
    output.push_str(",\n");
    output.push_str(&array("songs", minified(&songs_raw)));
    for (k, v) in &extras {
        output.push_str(&format!(",\n{k}: {v}"));
    }
    output.push_str("\n}\n");
    Ok(Outcome {
        output,
        rejects,
        applied,
        changes: changes.len(),
        rejected,
        warnings,
    })
}

type Rejection = (String, &'static str, String);

#[allow(clippy::too_many_arguments)]
fn apply_one(
    index: usize,
    object: &Option<Object>,
    users: &HashMap<String, String>,
    songs: &HashMap<String, String>,
    live: &mut HashMap<String, Live>,
    auto_k: &mut u64,
    max_id: u64,
    created_order: &mut Vec<(usize, String)>,
) -> Result<String, Rejection> {
    let Some(o) = object else {
        return Err((
            "null".into(),
            "invalid_change",
            "change is not an object".into(),
        ));
    };
    let op_name: Option<String> = o
        .get("op")
        .and_then(|raw| serde_json::from_str::<String>(raw).ok());
    let op_json = op_name.as_deref().map_or("null".to_string(), quoted);
    let invalid = |detail: String| (op_json.clone(), "invalid_change", detail);
    if op_name.as_deref() == Some("add_playlist") && o.get("playlist_id").is_none() {
        *auto_k += 1;
    }
    let op = match (o.get("op"), op_name.as_deref()) {
        (None, _) => return Err(invalid("missing member op".into())),
        (Some(_), None) => return Err(invalid("member op must be a string".into())),
        (Some(_), Some(op @ ("add_playlist" | "remove_playlist" | "add_song" | "remove_song"))) => {
            op
        }
        (Some(_), Some(_)) => return Err(invalid(format!("unknown op {op_json}"))),
    };
    let id = |name: &str| -> Result<(String, String), Rejection> {
        let raw = o
            .get(name)
            .ok_or_else(|| invalid(format!("missing member {name}")))?;
        let text = id_text(raw)
            .ok_or_else(|| invalid(format!("member {name} must be a string or an integer id")))?;
        Ok((text, minify(raw)))
    };
    let reject = |reason: &'static str, detail: String| Err((op_json.clone(), reason, detail));
    match op {
        "add_playlist" => {
            let (owner, _) = if o.get("owner_id").is_some() {
                id("owner_id")?
            } else if o.get("user_id").is_some() {
                id("user_id")?
            } else {
                return Err(invalid("missing member owner_id".into()));
            };
            let list_raw = o
                .get("song_ids")
                .ok_or_else(|| invalid("missing member song_ids".into()))?;
            let list: Vec<String> = serde_json::from_str::<Vec<&RawValue>>(list_raw)
                .ok()
                .and_then(|l| {
                    l.iter()
                        .map(|s| id_text(s.get()))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| invalid("member song_ids must be an array of ids".into()))?;
            let given = match o.get("playlist_id") {
                Some(_) => Some(id("playlist_id")?),
                None => None,
            };
            let Some(owner_written) = users.get(&owner) else {
                return reject("unknown_user", format!("user {owner} does not exist"));
            };
            if let Some(missing) = list.iter().find(|s| !songs.contains_key(*s)) {
                return reject("unknown_song", format!("song {missing} does not exist"));
            }
            if list.is_empty() {
                return reject("empty_playlist", "song_ids is empty".into());
            }
            let mut seen = HashSet::new();
            if let Some(dup) = list.iter().find(|s| !seen.insert(*s)) {
                return reject(
                    "duplicate_song",
                    format!("song {dup} appears more than once in song_ids"),
                );
            }
            let (text, written) = match given {
                Some(g) => g,
                None => {
                    let t = (max_id + *auto_k).to_string();
                    let w = quoted(&t);
                    (t, w)
                }
            };
            if live.contains_key(&text) {
                return reject("playlist_exists", format!("playlist {text} already exists"));
            }
            let copied =
                o.0.iter()
                    .filter(|(k, _)| {
                        !["op", "id", "owner_id", "user_id", "song_ids", "playlist_id"]
                            .contains(&k.as_ref())
                    })
                    .map(|(k, v)| (k.to_string(), minify(v.get())))
                    .collect();
            live.insert(
                text.clone(),
                Live {
                    created: Some(index),
                    doc: usize::MAX,
                    id_written: written.clone(),
                    owner_written: owner_written.clone(),
                    songs: list.iter().map(|s| (s.clone(), songs[s].clone())).collect(),
                    copied,
                    changed: false,
                },
            );
            created_order.push((index, text));
            Ok(applied_line(index, op, &written, None))
        }
        "remove_playlist" => {
            let (p, p_raw) = id("playlist_id")?;
            if live.remove(&p).is_none() {
                return reject("unknown_playlist", format!("playlist {p} does not exist"));
            }
            Ok(applied_line(index, op, &p_raw, None))
        }
        _ => {
            let (p, p_raw) = id("playlist_id")?;
            let (s, s_raw) = id("song_id")?;
            if op == "add_song" && !songs.contains_key(&s) {
                return reject("unknown_song", format!("song {s} does not exist"));
            }
            let Some(pl) = live.get_mut(&p) else {
                return reject("unknown_playlist", format!("playlist {p} does not exist"));
            };
            let holds = pl.songs.iter().any(|(t, _)| *t == s);
            if op == "add_song" {
                if holds {
                    return reject(
                        "song_already_in_playlist",
                        format!("song {s} is already in playlist {p}"),
                    );
                }
                pl.songs.push((s.clone(), songs[&s].clone()));
            } else {
                if !holds {
                    return reject(
                        "song_not_in_playlist",
                        format!("song {s} is not in playlist {p}"),
                    );
                }
                pl.songs.retain(|(t, _)| *t != s);
            }
            pl.changed = true;
            Ok(applied_line(index, op, &p_raw, Some(&s_raw)))
        }
    }
}

/// A line of the applied report (docs/GUIDE.md "Pipelines"): ids as the change
/// wrote them, minified; a given id as a string.
fn applied_line(index: usize, op: &str, playlist: &str, song: Option<&str>) -> String {
    match song {
        Some(song) => format!(
            "{{\"index\":{index},\"op\":\"{op}\",\"playlist_id\":{playlist},\"song_id\":{song}}}\n"
        ),
        None => format!("{{\"index\":{index},\"op\":\"{op}\",\"playlist_id\":{playlist}}}\n"),
    }
}
