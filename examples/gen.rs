//! Benchmark case generator: `cargo run --release --example gen -- SIZE DIR [SEED]`.
//!
//! Writes `DIR/mixtape.json` and `DIR/changes.jsonl` for a named size:
//!
//! | size | changes | users | songs | playlists |
//! |---|---|---|---|---|
//! | S | the bundled fixtures (copied) | 7 | 40 | 3 |
//! | M | 1,000,000 | 100,000 | 1,000,000 | 200,000 |
//! | L | 5,000,000 | 100,000 | 1,000,000 | 200,000 |
//! | XL | 50,000,000 | 100,000 | 1,000,000 | 200,000 |
//! | D | 1,000,000 | 1,000,000 | 10,000,000 | 2,000,000 |
//! | MU | 1,000,000 | 100,000 | 1,000,000 | 200,000 |
//! | LU | 5,000,000 | 100,000 | 1,000,000 | 200,000 |
//! | U | 2,000,000 | 100,000 | 1,000,000 | 200,000 |
//!
//! M, L, XL and D are JSON Lines (`changes.jsonl`). MU, U and LU are the *uniform*
//! shape, written in the object form (`changes.json`,
//! `{"changes": [...]}`): every change names a playlist drawn uniformly from
//! every playlist id that exists so far (the document's and those added since,
//! removed ones included), so about a fifth are rejected, mostly
//! `unknown_playlist`; see [`Uniform`].
//!
//! The mix of M, L, XL and D is realistic: mostly `add_song`, some `remove_song` (of songs the
//! playlist holds), `add_playlist` (half with an id, half automatic) and
//! `remove_playlist`, and a few percent of rejects of every kind. It streams
//! (memory: the playlists' song lists, a few hundred MB for XL) and is seeded,
//! so a case is the same bytes every time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// xorshift64*: fast and good enough for data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
    fn percent(&mut self) -> u64 {
        self.below(100)
    }
}

struct Size {
    /// The uniform shape, in the object form ([`Uniform`]).
    uniform: bool,
    changes: u64,
    users: u64,
    songs: u64,
    playlists: u64,
}

fn size(name: &str) -> Option<Size> {
    Some(match name {
        // M and XL share L's document, so that M, L and XL differ in the
        // changes alone (the memory-flatness comparison is about those).
        "M" | "MU" => Size {
            uniform: name == "MU",
            changes: 1_000_000,
            users: 100_000,
            songs: 1_000_000,
            playlists: 200_000,
        },
        "U" => Size {
            uniform: true,
            changes: 2_000_000,
            users: 100_000,
            songs: 1_000_000,
            playlists: 200_000,
        },
        "L" | "LU" => Size {
            uniform: name == "LU",
            changes: 5_000_000,
            users: 100_000,
            songs: 1_000_000,
            playlists: 200_000,
        },
        "XL" => Size {
            uniform: false,
            changes: 50_000_000,
            users: 100_000,
            songs: 1_000_000,
            playlists: 200_000,
        },
        // A big document and few changes: what import and the warning check
        // cost when the document dominates.
        "D" => Size {
            uniform: false,
            changes: 1_000_000,
            users: 1_000_000,
            songs: 10_000_000,
            playlists: 2_000_000,
        },
        _ => return None,
    })
}

const ARTISTS: [&str; 8] = [
    "Zedd",
    "Drake",
    "Bebe Rexha",
    "Maroon 5",
    "The Weeknd",
    "Imagine Dragons",
    "Camila Cabello",
    "Dua Lipa",
];

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen S|M|L|XL|D|MU|U|LU DIR [SEED]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[2]);
    std::fs::create_dir_all(&dir)?;
    let seed: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    if args[1] == "S" {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        std::fs::copy(fixtures.join("mixtape.json"), dir.join("mixtape.json"))?;
        std::fs::copy(fixtures.join("changes.json"), dir.join("changes.jsonl"))?;
        return Ok(());
    }
    let Some(size) = size(&args[1]) else {
        eprintln!("unknown size {} (S, M, L, XL, D, MU, U or LU)", args[1]);
        std::process::exit(2);
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let started = std::time::Instant::now();
    let songs_of = write_document(&dir.join("mixtape.json"), &size, &mut rng)?;
    if size.uniform {
        let path = dir.join("changes.json");
        Uniform::new(size, rng, songs_of).write_all(&path)?;
        return report(&args[1], &path, started);
    }
    let mut changes = Changes {
        alive: (1..=size.playlists).map(Some).collect(),
        next_explicit: size.playlists + 1_000_000,
        songs_of,
        size,
        rng,
    };
    let path = dir.join("changes.jsonl");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    for _ in 0..changes.size.changes {
        changes.write_one(&mut out)?;
    }
    out.flush()?;
    report(&args[1], &path, started)
}

fn report(name: &str, path: &Path, started: std::time::Instant) -> std::io::Result<()> {
    let bytes = std::fs::metadata(path)?.len();
    eprintln!(
        "gen {name}: {} MB of changes in {:.1}s",
        bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The document: users, playlists, songs, one element per line. Returns each
/// playlist's songs.
fn write_document(path: &Path, size: &Size, rng: &mut Rng) -> std::io::Result<Vec<Vec<u32>>> {
    let mut songs_of: Vec<Vec<u32>> = Vec::with_capacity(size.playlists as usize);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    writeln!(out, "{{\"users\": [")?;
    for u in 1..=size.users {
        let sep = if u < size.users { "," } else { "" };
        writeln!(out, "{{\"id\": \"{u}\", \"name\": \"User {u}\"}}{sep}")?;
    }
    writeln!(out, "],\n\"playlists\": [")?;
    for p in 1..=size.playlists {
        let n = 1 + rng.below(20);
        let mut list = Vec::with_capacity(n as usize);
        while (list.len() as u64) < n {
            let s = 1 + rng.below(size.songs) as u32;
            if !list.contains(&s) {
                list.push(s);
            }
        }
        let owner = 1 + rng.below(size.users);
        write!(
            out,
            "{{\"id\": \"{p}\", \"owner_id\": \"{owner}\", \"song_ids\": ["
        )?;
        write_ids(&mut out, &list, ", ")?;
        let sep = if p < size.playlists { "," } else { "" };
        writeln!(out, "]}}{sep}")?;
        songs_of.push(list);
    }
    writeln!(out, "],\n\"songs\": [")?;
    for s in 1..=size.songs {
        let sep = if s < size.songs { "," } else { "" };
        let artist = ARTISTS[(s % ARTISTS.len() as u64) as usize];
        writeln!(
            out,
            "{{\"id\": \"{s}\", \"artist\": \"{artist}\", \"title\": \"Song {s}\"}}{sep}"
        )?;
    }
    writeln!(out, "]}}")?;
    out.flush()?;
    Ok(songs_of)
}

/// The song a `remove_song` names: one the playlist holds (taken out of
/// `list`), or any of the `songs` when it holds none or, `stray_percent` % of
/// the time, anyway.
fn take_held(rng: &mut Rng, list: &mut Vec<u32>, songs: u64, stray_percent: u64) -> u64 {
    if list.is_empty() || (stray_percent > 0 && rng.percent() < stray_percent) {
        1 + rng.below(songs)
    } else {
        let i = rng.below(list.len() as u64) as usize;
        u64::from(list.swap_remove(i))
    }
}

/// Quoted ids, `separator` between them.
fn write_ids(out: &mut impl Write, ids: &[u32], separator: &str) -> std::io::Result<()> {
    for (i, s) in ids.iter().enumerate() {
        write!(out, "{}\"{s}\"", if i > 0 { separator } else { "" })?;
    }
    Ok(())
}

/// The changes, JSON Lines. Playlists alive are tracked roughly so that most
/// changes apply.
struct Changes {
    size: Size,
    rng: Rng,
    /// Each playlist slot's id; `None` marks a removed playlist.
    alive: Vec<Option<u64>>,
    songs_of: Vec<Vec<u32>>,
    /// The next explicit id an `add_playlist` gives.
    next_explicit: u64,
}

impl Changes {
    /// Writes one change, of a kind drawn by the mix.
    fn write_one(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        // Mostly changes to live playlists: retry a few times past removed ones.
        let mut slot = self.rng.below(self.alive.len() as u64) as usize;
        for _ in 0..4 {
            if self.alive[slot].is_some() {
                break;
            }
            slot = self.rng.below(self.alive.len() as u64) as usize;
        }
        let roll = self.rng.percent();
        match (roll, self.alive[slot]) {
            (0..=69, Some(p)) => self.add_song(out, slot, p),
            (70..=84, Some(p)) => self.remove_song(out, slot, p),
            (85..=93, _) => self.add_playlist(out),
            (94..=95, Some(p)) => {
                writeln!(
                    out,
                    "{{\"op\":\"remove_playlist\",\"playlist_id\":\"{p}\"}}"
                )?;
                self.alive[slot] = None;
                self.songs_of[slot].clear();
                Ok(())
            }
            (96..=98, None) => self.playlist_comes_back(out, slot),
            (_, Some(p)) if roll >= 99 => {
                writeln!(
                    out,
                    "{{\"op\":\"rename\",\"playlist_id\":\"{p}\",\"name\":\"x\"}}"
                )
            }
            (_, p) => {
                // add_song on whatever this slot is (unknown_playlist when removed).
                let p = p.unwrap_or(slot as u64 + 1);
                writeln!(
                    out,
                    "{{\"op\":\"add_song\",\"playlist_id\":\"{p}\",\"song_id\":\"{}\"}}",
                    1 + self.rng.below(self.size.songs)
                )
            }
        }
    }

    /// `add_song` to playlist `p`; 2% of songs do not exist.
    fn add_song(&mut self, out: &mut impl Write, slot: usize, p: u64) -> std::io::Result<()> {
        let songs = self.size.songs;
        let song = if self.rng.percent() < 2 {
            songs + 1 + self.rng.below(1000)
        } else {
            1 + self.rng.below(songs)
        };
        writeln!(
            out,
            "{{\"op\":\"add_song\",\"playlist_id\":\"{p}\",\"song_id\":\"{song}\"}}"
        )?;
        if song <= songs && self.songs_of[slot].len() < 1000 {
            self.songs_of[slot].push(song as u32);
        }
        Ok(())
    }

    /// `remove_song` from playlist `p`, mostly of a song it holds.
    fn remove_song(&mut self, out: &mut impl Write, slot: usize, p: u64) -> std::io::Result<()> {
        let song = take_held(&mut self.rng, &mut self.songs_of[slot], self.size.songs, 5);
        writeln!(
            out,
            "{{\"op\":\"remove_song\",\"playlist_id\":\"{p}\",\"song_id\":\"{song}\"}}"
        )
    }

    /// `add_playlist`, half with an explicit id, 1% with a missing owner.
    fn add_playlist(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let (users, songs) = (self.size.users, self.size.songs);
        let owner = if self.rng.percent() < 1 {
            users + 7
        } else {
            1 + self.rng.below(users)
        };
        let n = 1 + self.rng.below(10);
        let list: Vec<u32> = (0..n).map(|_| 1 + self.rng.below(songs) as u32).collect();
        write!(
            out,
            "{{\"op\":\"add_playlist\",\"owner_id\":\"{owner}\",\"song_ids\":["
        )?;
        write_ids(out, &list, ",")?;
        write!(out, "],\"name\":\"Mix {}\"", self.rng.below(1_000_000))?;
        if self.rng.percent() < 50 {
            writeln!(out, ",\"playlist_id\":\"{}\"}}", self.next_explicit)?;
            self.alive.push(Some(self.next_explicit));
            self.songs_of.push(list);
            self.next_explicit += 1;
            Ok(())
        } else {
            writeln!(out, "}}")
        }
    }

    /// A removed playlist comes back under its old id.
    fn playlist_comes_back(&mut self, out: &mut impl Write, slot: usize) -> std::io::Result<()> {
        let playlists = self.size.playlists;
        let p = (slot as u64) + 1;
        let p = if p <= playlists {
            p
        } else {
            playlists + 1_000_000 + p - playlists - 1
        };
        writeln!(
            out,
            "{{\"op\":\"add_playlist\",\"owner_id\":\"{}\",\"song_ids\":[\"{}\"],\"playlist_id\":\"{p}\"}}",
            1 + self.rng.below(self.size.users),
            1 + self.rng.below(self.size.songs)
        )?;
        self.alive[slot] = Some(p);
        Ok(())
    }
}

/// The uniform shape: each change names a playlist id drawn uniformly from
/// every id that exists so far (the document's `1..=P`, then the explicit ids
/// `P + 1_000_000 ..` that `add_playlist` gave, removed ones included), in
/// the object form, one change per line.
///
/// The mix: 62 % `add_song` (2 % of unknown songs), 14 % `remove_song` (a song
/// the playlist was given, when it has one), 17 % `add_playlist` (four in five
/// with the next explicit id, the rest automatic), 7 % `remove_playlist`.
/// Removed playlists stay drawable, which is where most rejects come from.
struct Uniform {
    size: Size,
    rng: Rng,
    /// Songs per drawable playlist (the document's, then the added ones);
    /// cleared when removed.
    songs_of: Vec<Vec<u32>>,
    alive: Vec<bool>,
}

impl Uniform {
    fn new(size: Size, rng: Rng, songs_of: Vec<Vec<u32>>) -> Self {
        let alive = vec![true; songs_of.len()];
        Uniform {
            size,
            rng,
            songs_of,
            alive,
        }
    }

    /// The id of drawable playlist `slot`.
    fn id(&self, slot: usize) -> u64 {
        let document = self.size.playlists as usize;
        if slot < document {
            slot as u64 + 1
        } else {
            self.size.playlists + 1_000_000 + (slot - document) as u64
        }
    }

    fn write_all(mut self, path: &Path) -> std::io::Result<()> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        writeln!(out, "{{\"changes\": [")?;
        for i in 0..self.size.changes {
            if i > 0 {
                writeln!(out, ",")?;
            }
            self.write_one(&mut out)?;
        }
        writeln!(out, "\n]}}")?;
        out.flush()
    }

    fn write_one(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let slot = self.rng.below(self.songs_of.len() as u64) as usize;
        let p = self.id(slot);
        let songs = self.size.songs;
        match self.rng.percent() {
            0..=61 => {
                let song = if self.rng.percent() < 2 {
                    songs + 1 + self.rng.below(1000)
                } else {
                    1 + self.rng.below(songs)
                };
                if self.alive[slot] && song <= songs && self.songs_of[slot].len() < 1000 {
                    self.songs_of[slot].push(song as u32);
                }
                write!(
                    out,
                    "{{\"op\": \"add_song\", \"playlist_id\": \"{p}\", \"song_id\": \"{song}\"}}"
                )
            }
            62..=75 => {
                let song = take_held(&mut self.rng, &mut self.songs_of[slot], songs, 0);
                write!(
                    out,
                    "{{\"op\": \"remove_song\", \"playlist_id\": \"{p}\", \"song_id\": \"{song}\"}}"
                )
            }
            76..=92 => self.add_playlist(out),
            _ => {
                self.alive[slot] = false;
                self.songs_of[slot].clear();
                write!(
                    out,
                    "{{\"op\": \"remove_playlist\", \"playlist_id\": \"{p}\"}}"
                )
            }
        }
    }

    fn add_playlist(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        let owner = 1 + self.rng.below(self.size.users);
        let n = 1 + self.rng.below(5);
        let list: Vec<u32> = (0..n)
            .map(|_| 1 + self.rng.below(self.size.songs) as u32)
            .collect();
        write!(
            out,
            "{{\"op\": \"add_playlist\", \"owner_id\": \"{owner}\", \"song_ids\": ["
        )?;
        write_ids(out, &list, ", ")?;
        write!(out, "], \"name\": \"Mix {}\"", self.rng.below(1_000_000))?;
        if self.rng.percent() < 80 {
            let p = self.id(self.songs_of.len());
            write!(out, ", \"playlist_id\": \"{p}\"}}")?;
            self.songs_of.push(list);
            self.alive.push(true);
            Ok(())
        } else {
            write!(out, "}}")
        }
    }
}
