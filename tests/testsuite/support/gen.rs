//! Random small cases for the differential tests: a mixtape and a changes file,
//! from a seed.
//!
//! The cases are small (a handful of users, songs and playlists, up to a few
//! dozen changes) but dense in what is hard: every op and every reject reason,
//! integer and string ids for the same things, automatic ids, playlists removed
//! and created again, references that cross chunk boundaries, strings full of
//! `}`, `]`, `,`, quotes, backslashes and escapes, pretty-printed changes, all
//! three forms of the changes file, top-level members in any order.
//!
//! Member names are always written canonically (the reference re-encodes names;
//! the tool keeps them as written), values are not.

/// splitmix64: small, fast, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Strings that break naive scanners; written raw (some with non-canonical escapes).
const NASTY: &[&str] = &[
    r#""plain""#,
    r#""comma, and } brace""#,
    r#""]}],{[""#,
    r#""quote \" inside""#,
    r#""backslash \\ end\\""#,
    r#""\\\"""#,
    r#""caf\u00e9 \u0041\/""#,
    "\"caf\u{e9} \u{1F600}\"",
    r#""tab\tnew\nline""#,
    r#""\ud83d\ude00""#,
    r#""""#,
];

/// White space between tokens: none, a space, or a line break and indent.
fn ws(rng: &mut Rng, pretty: bool) -> &'static str {
    if !pretty {
        return "";
    }
    ["", " ", "\n  ", "\n\t", "  "][rng.below(5) as usize]
}

/// An id written as a string or an integer (numeric texts only can be integers).
fn write_id(rng: &mut Rng, text: &str) -> String {
    let numeric = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if numeric && rng.chance(40) {
        text.to_string()
    } else {
        serde_json::to_string(text).unwrap()
    }
}

/// Writes an object from (canonical name, raw value) members.
fn object(rng: &mut Rng, pretty: bool, members: &[(&str, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(ws(rng, pretty));
        s.push_str(&serde_json::to_string(k).unwrap());
        s.push_str(ws(rng, pretty));
        s.push(':');
        s.push_str(ws(rng, pretty));
        s.push_str(v);
    }
    s.push_str(ws(rng, pretty));
    s.push('}');
    s
}

fn array(rng: &mut Rng, pretty: bool, items: &[String]) -> String {
    let mut s = String::from("[");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(ws(rng, pretty));
        s.push_str(v);
    }
    s.push_str(ws(rng, pretty));
    s.push(']');
    s
}

/// A generated case.
pub struct Case {
    pub mixtape: String,
    pub changes: String,
}

impl Case {
    /// The form of its changes file: `object`, `array` or `lines`.
    pub fn form(&self) -> &'static str {
        match self.changes.trim_start().as_bytes().first() {
            Some(b'[') => "array",
            _ if self.changes.contains("\"changes\"") => "object",
            _ => "lines",
        }
    }

    /// Writes it to a new temporary directory: (the directory, MIXTAPE, CHANGES).
    pub fn write_to_temp(&self) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (mixtape, changes) = (dir.path().join("m.json"), dir.path().join("c.json"));
        std::fs::write(&mixtape, &self.mixtape).unwrap();
        std::fs::write(&changes, &self.changes).unwrap();
        (dir, mixtape, changes)
    }
}

/// The case for `seed`. `max_changes` bounds the number of changes.
pub fn case(seed: u64, max_changes: u64) -> Case {
    build(seed, max_changes, false)
}

/// The cases for `seeds` (each of at most `max_changes` changes), with their
/// seeds, after checking that they hold every form of CHANGES between them:
/// what the tests that must cover every form loop over.
pub fn cases_in_every_form(seeds: std::ops::Range<u64>, max_changes: u64) -> Vec<(u64, Case)> {
    let cases: Vec<(u64, Case)> = seeds.map(|seed| (seed, case(seed, max_changes))).collect();
    let forms: std::collections::BTreeSet<&str> = cases.iter().map(|(_, c)| c.form()).collect();
    assert_eq!(forms.len(), 3, "every form of CHANGES: {forms:?}");
    cases
}

/// The case for `seed`, with exactly `changes` changes.
pub fn case_of(seed: u64, changes: u64) -> Case {
    build(seed, changes, true)
}

fn build(seed: u64, max_changes: u64, exact: bool) -> Case {
    let mut rng = Rng::new(seed);
    let pretty = rng.chance(50);
    let n_users = 1 + rng.below(6);
    let n_songs = 1 + rng.below(12);
    let n_playlists = rng.below(6);
    let user_ids: Vec<String> = (1..=n_users).map(|i| i.to_string()).collect();
    let mut song_ids: Vec<String> = (1..=n_songs).map(|i| i.to_string()).collect();
    if rng.chance(30) {
        song_ids.push("s,}\"x".into());
    }
    let mut playlist_ids: Vec<String> = Vec::new();
    while (playlist_ids.len() as u64) < n_playlists {
        let id = match rng.below(10) {
            0 => "007".to_string(),
            1 => "p-1".to_string(),
            _ => (1 + rng.below(20)).to_string(),
        };
        if !playlist_ids.contains(&id) {
            playlist_ids.push(id);
        }
    }
    // Ids that do not exist, for rejects.
    let ghost_users = ["99".to_string(), "u?".to_string()];
    let ghost_songs = ["98".to_string(), "0".to_string()];

    let users: Vec<String> = user_ids
        .iter()
        .map(|id| {
            let id = write_id(&mut rng, id);
            let name = rng.pick(NASTY).to_string();
            let mut m = vec![("id", id), ("name", name)];
            if rng.chance(20) {
                m.push(("email", "null".into()));
            }
            if rng.chance(30) {
                m.reverse();
            }
            object(&mut rng, pretty, &m)
        })
        .collect();
    let songs: Vec<String> = song_ids
        .iter()
        .map(|id| {
            let id = write_id(&mut rng, id);
            let title = rng.pick(NASTY).to_string();
            let m = vec![
                ("id", id),
                ("artist", "\"A\"".into()),
                ("title", title),
                ("year", "1.50e3".into()),
            ];
            object(&mut rng, pretty, &m)
        })
        .collect();
    let owner_member = if rng.chance(30) {
        "user_id"
    } else {
        "owner_id"
    };
    let playlists: Vec<String> = playlist_ids
        .iter()
        .map(|id| {
            let owner = if rng.chance(10) {
                rng.pick(&ghost_users).clone()
            } else {
                rng.pick(&user_ids).clone()
            };
            let mut list = Vec::new();
            for _ in 0..rng.below(5) {
                let s = if rng.chance(5) {
                    rng.pick(&ghost_songs).clone()
                } else {
                    rng.pick(&song_ids).clone()
                };
                list.push(write_id(&mut rng, &s));
            }
            let list = array(&mut rng, pretty, &list);
            let mut m = vec![
                ("id", write_id(&mut rng, id)),
                (owner_member, write_id(&mut rng, &owner)),
            ];
            if !rng.chance(10) {
                m.push(("song_ids", list));
            }
            if rng.chance(40) {
                m.push(("name", rng.pick(NASTY).to_string()));
            }
            if rng.chance(30) {
                m.swap(0, 1);
            }
            object(&mut rng, pretty, &m)
        })
        .collect();
    let mut top = vec![
        ("users", array(&mut rng, pretty, &users)),
        ("playlists", array(&mut rng, pretty, &playlists)),
        ("songs", array(&mut rng, pretty, &songs)),
    ];
    if rng.chance(30) {
        top.push(("version", "2".into()));
    }
    if rng.chance(30) {
        top.push(("meta", "{\"a\": [1, {\"b\": \"}\"}], \"c\": null}".into()));
    }
    if rng.chance(10) {
        top.retain(|(k, _)| *k != "playlists");
    }
    for i in (1..top.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        top.swap(i, j);
    }
    let mixtape = object(&mut rng, pretty, &top);

    // Playlist ids that changes may name: existing, new, and some that never exist.
    let mut pool: Vec<String> = playlist_ids.clone();
    pool.extend(["3", "12", "21", "p-2", "25"].iter().map(|s| s.to_string()));
    let n_changes = if exact {
        max_changes
    } else {
        rng.below(max_changes + 1)
    };
    let mut changes = Vec::new();
    for _ in 0..n_changes {
        let change_pretty = pretty && rng.chance(50);
        let p = |rng: &mut Rng| {
            let id = rng.pick(&pool).clone();
            write_id(rng, &id)
        };
        let song = |rng: &mut Rng| {
            let id = if rng.chance(8) {
                rng.pick(&ghost_songs).clone()
            } else {
                rng.pick(&song_ids).clone()
            };
            write_id(rng, &id)
        };
        let text = match rng.below(100) {
            0..=24 => {
                let owner = if rng.chance(8) {
                    rng.pick(&ghost_users).clone()
                } else {
                    rng.pick(&user_ids).clone()
                };
                let owner_key = if rng.chance(20) {
                    "user_id"
                } else {
                    "owner_id"
                };
                let mut list: Vec<String> = (0..rng.below(4)).map(|_| song(&mut rng)).collect();
                if rng.chance(10) && !list.is_empty() {
                    let first = list[0].clone();
                    list.push(first);
                }
                let list = array(&mut rng, change_pretty, &list);
                let mut m = vec![
                    ("op", "\"add_playlist\"".to_string()),
                    (owner_key, write_id(&mut rng, &owner)),
                    ("song_ids", list),
                ];
                if rng.chance(50) {
                    let id = if rng.chance(70) {
                        rng.pick(&pool).clone()
                    } else {
                        (30 + rng.below(5)).to_string()
                    };
                    pool.push(id.clone());
                    m.push(("playlist_id", write_id(&mut rng, &id)));
                }
                if rng.chance(40) {
                    m.push(("name", rng.pick(NASTY).to_string()));
                }
                if rng.chance(15) {
                    m.push(("id", "\"ignored\"".into()));
                }
                if rng.chance(15) {
                    m.push(("tags", "[\"a\", {\"b\": [1, 2]}]".into()));
                }
                object(&mut rng, change_pretty, &m)
            }
            25..=39 => {
                let m = vec![
                    ("op", "\"remove_playlist\"".to_string()),
                    ("playlist_id", p(&mut rng)),
                ];
                object(&mut rng, change_pretty, &m)
            }
            40..=74 => {
                let mut m = vec![
                    ("op", "\"add_song\"".to_string()),
                    ("playlist_id", p(&mut rng)),
                    ("song_id", song(&mut rng)),
                ];
                if rng.chance(20) {
                    m.reverse();
                }
                object(&mut rng, change_pretty, &m)
            }
            75..=89 => {
                let m = vec![
                    ("op", "\"remove_song\"".to_string()),
                    ("playlist_id", p(&mut rng)),
                    ("song_id", song(&mut rng)),
                ];
                object(&mut rng, change_pretty, &m)
            }
            _ => match rng.below(9) {
                0 => "42".to_string(),
                1 => rng.pick(NASTY).to_string(),
                2 => "[{\"op\": \"add_song\"}]".to_string(),
                3 => object(
                    &mut rng,
                    false,
                    &[
                        ("op", "\"shuffle\"".into()),
                        ("playlist_id", "\"777\"".into()),
                    ],
                ),
                4 => object(
                    &mut rng,
                    false,
                    &[
                        ("op", "\"add_song\"".into()),
                        ("playlist_id", "1.5".into()),
                        ("song_id", "\"1\"".into()),
                    ],
                ),
                5 => object(
                    &mut rng,
                    false,
                    &[
                        ("op", "\"add_playlist\"".into()),
                        ("owner_id", "\"1\"".into()),
                        ("song_ids", "\"1\"".into()),
                    ],
                ),
                6 => object(
                    &mut rng,
                    false,
                    &[("op", "null".into()), ("playlist_id", "600".into())],
                ),
                7 => object(
                    &mut rng,
                    false,
                    &[
                        ("op", "\"remove_song\"".into()),
                        ("playlist_id", "true".into()),
                        ("song_id", "\"1\"".into()),
                    ],
                ),
                _ => object(
                    &mut rng,
                    false,
                    &[
                        ("op", "\"add_playlist\"".into()),
                        ("song_ids", "[\"1\"]".into()),
                    ],
                ),
            },
        };
        changes.push(text);
    }
    let sep = |rng: &mut Rng| {
        if pretty {
            *rng.pick(&[",\n", ", ", ",\n\n  "])
        } else {
            ","
        }
    };
    let join = |rng: &mut Rng, items: &[String]| {
        let mut s = String::new();
        for (i, c) in items.iter().enumerate() {
            if i > 0 {
                s.push_str(sep(rng));
            }
            s.push_str(c);
        }
        s
    };
    let changes_text = match rng.below(3) {
        0 => format!(
            "{{\"note\": \"changes: [}}\", \"changes\": [{}]{}}}\n",
            join(&mut rng, &changes),
            if rng.chance(50) {
                ", \"after\": {\"changes\": 1}"
            } else {
                ""
            }
        ),
        1 => format!("[{}]", join(&mut rng, &changes)),
        _ => {
            // JSON Lines must start with an object (a first `[` means the array
            // form), and one without a `changes` member (ours never have one).
            if let Some(first_object) = changes.iter().position(|c| c.starts_with('{')) {
                changes.swap(0, first_object);
            } else {
                changes.insert(0, "{}".to_string());
            }
            let mut s = String::new();
            for c in &changes {
                s.push_str(c);
                s.push_str(if rng.chance(10) { "\n\n" } else { "\n" });
            }
            s
        }
    };
    Case {
        mixtape,
        changes: changes_text,
    }
}
