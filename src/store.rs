//! The work store: every table, every statement of SQL, and who may open it.
//!
//! One work store (a SQLite file in WAL mode, or a schema on a PostgreSQL
//! server) holds everything a run knows, so that a run can
//! stop at any point and continue later. The stages never write SQL: they call
//! the typed operations of [`Store`] ("append a batch", "the blocks of partition
//! P in index order", "commit a partition's results"). Those operations are
//! the [`Tables`] trait, the contract written once where it is implemented
//! against; [`Store`] dereferences to it, and adds the rules that are the same
//! for every backend on top of the private `Backend` trait (`meta` values, the
//! import's sink, lookups by position, id indexes for other hosts, and
//! [`Statement`]s of shared SQL run in one transaction). Two backends make the
//! same transactional promises: `sqlite` (one file, the default, this
//! module's docs below) and `postgres` (a server, for runs that span hosts).
//! What is the same for both lives here: `meta` keys, the id indexes, the
//! types of the operations, and the rules (leases, claims, the merge-join of
//! the final playlists, counting rejects, what resetting a chunk undoes).
//!
//! | table | written by | holds |
//! |---|---|---|
//! | `meta` | every stage | inputs and their fingerprints, stage markers, figures ([`Key`]) |
//! | `playlists`, `extras` | import | the document's playlists by position, in input order (on SQLite, where each is in MIXTAPE: `sqlite/playlist_rows.rs`; on PostgreSQL, minified), and its other members, minified |
//! | `chunks` | plan, workers | byte range of every chunk and how far its worker got |
//! | `blocks` | workers | recorded changes, encoded ([`crate::changes::record`]), one row per batch and partition |
//! | `rejects` | workers, merge | every rejected change, with its index (SQLite: up to 128 a row, encoded) |
//! | `results` | merge | every playlist whose fate differs from the document ([`Fate`]) (SQLite: up to 64 a row, encoded) |
//! | `merged` | merge | the partitions already merged, and the warnings each counted |
//!
//! Users and songs never change, so the store keeps no copy of them: two
//! read-only id indexes beside the file (`DB.users.idx`, `DB.songs.idx`,
//! [`crate::ids::index`]) answer "does this user or song exist, and how is it
//! written" for workers and the merge, and `meta` keeps where their arrays are
//! in MIXTAPE ([`ArrayRanges`]), from which the export copies them. The import
//! builds the indexes before it marks itself done; MIXTAPE's fingerprint,
//! checked on every resume, says the ranges still hold. A third index,
//! `DB.playlists.idx`, maps a document playlist's id to its position in
//! `playlists`: the merge asks it about every playlist id it meets, most of
//! them new playlists' ids that the document does not have.
//!
//! A compressed input is decompressed once into a kept text file beside the
//! database (`DB.mixtape`, `DB.changes`, [`crate::stages::decompress`]); `meta` records,
//! for each input, the file the stages read and its fingerprint
//! ([`Store::input_text`]), so workers read the kept text and a resumed run can
//! tell whether the kept file is still whole.
//!
//! `rejects` and `results` are append-only (no key but the rowid): writers add
//! rows in whatever order their work comes, and the export merges them in
//! order (SQLite: from sorted runs, `sqlite/runs.rs`). Keyed
//! inserts in random order would rewrite pages all over those tables in every
//! transaction, which at 5M changes made the merge ten times slower.
//!
//! ## Transactions
//!
//! Every write goes through the client's transaction guard (a `Transaction`
//! of rusqlite or of postgres), which rolls back when it is dropped unfinished
//! (an early `?` included). On SQLite, writers begin them IMMEDIATE:
//! they take the write lock up front, since a DEFERRED transaction that starts
//! writing later can fail with `SQLITE_BUSY_SNAPSHOT`, which no busy timeout
//! cures. What must happen together happens in one of these operations: a batch
//! and its chunk's new position ([`Tables::commit_batch`]), a partition's results
//! and its `merged` row ([`Tables::commit_partition`]), a stage's last rows and
//! its done-marker.
//!
//! ## Locking
//!
//! SQLite has one write lock per file. The harness creates the file, sets the page
//! size, WAL mode and the schema before any worker starts (two processes doing
//! that at once fail at once with "database is locked", whatever the busy
//! timeout). Writers then wait for the lock up to a long busy timeout instead
//! of failing, trying again every millisecond (`sqlite.rs`, `BUSY_POLL`).
//!
//! Two harness runs on one database would corrupt each other's plan, so the
//! harness also takes an exclusive `flock` on `DB.lock` ([`RunLock`]); a second run
//! refuses to start.
//!
//! ## Versions
//!
//! `PRAGMA user_version` holds [`SCHEMA_VERSION`]; a database of another version
//! (or another program's database) is never resumed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::changes::partition::Partitions;
use crate::ids::index::IdIndex;
use crate::run::stage::Stage;

mod contract;
mod files;
mod location;
mod postgres;
mod rules;
mod run_lock;
mod sqlite;
mod statements;
mod types;

pub use contract::Tables;
use contract::{Backend, DocumentSink};
pub use files::{remove_files, WorkFiles};
pub use location::Location;
pub use rules::explain_lost_connection;
use rules::*;
pub use run_lock::RunLock;
pub(crate) use statements::Statement;
use statements::*;
pub use types::*;

pub use postgres::target::{bound_silence_by_lease, silence_bound};
pub use postgres::PgTarget;

/// Bumped whenever the layout below changes.
pub const SCHEMA_VERSION: i64 = 18;

/// `meta` keys of the publication record ([`Store::record_publishing`]).
const PUBLISHED_PATH: &str = "published_output_path";

const PUBLISHED_FINGERPRINT: &str = "published_output_fingerprint";

/// A work store, open: one connection, used by one thread.
pub struct Store {
    db: Box<dyn Backend>,
    location: Location,
    /// The id indexes, opened on first use (they exist once the import is done).
    indexes: std::cell::OnceCell<Indexes>,
    /// What names the id index files (see [`Backend::index_tag`]), read once.
    index_tag: std::cell::OnceCell<Option<String>>,
}

/// The id indexes of users, songs and the document's playlists.
struct Indexes {
    users: IdIndex,
    songs: IdIndex,
    playlists: IdIndex,
}

impl Store {
    /// The run's partitioning, as the plan saved it.
    pub fn partitions(&self) -> Result<Partitions> {
        Ok(Partitions {
            count: self.meta_number(Key::Partitions)?.max(1),
            playlists: self.meta_number(Key::Playlists)?,
        })
    }

    /// Creates a new, empty work store at `location`, replacing any old one.
    pub fn create(location: &Location) -> Result<Store> {
        let db: Box<dyn Backend> = match location {
            Location::File(path) => Box::new(sqlite::SqliteDb::create(path)?),
            Location::Postgres(target) => Box::new(postgres::PgDb::create(target)?),
        };
        Ok(Store::with(db, location))
    }

    /// Opens an existing work store made by this version of the tool.
    pub fn open(location: &Location) -> Result<Store> {
        let db: Box<dyn Backend> = match location {
            Location::File(path) => Box::new(sqlite::SqliteDb::open(path)?),
            Location::Postgres(target) => Box::new(postgres::PgDb::open(target)?),
        };
        Ok(Store::with(db, location))
    }

    fn with(db: Box<dyn Backend>, location: &Location) -> Store {
        Store {
            db,
            location: location.clone(),
            indexes: std::cell::OnceCell::new(),
            index_tag: std::cell::OnceCell::new(),
        }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    // ---- meta ----

    /// A value from `meta` that must be there.
    pub fn meta(&self, key: Key) -> Result<String> {
        self.db.meta_text(key.name())?.with_context(|| {
            format!(
                "work database has no {}: was it made by an unfinished run?",
                key.name()
            )
        })
    }

    /// A number from `meta` that must be there.
    pub fn meta_number(&self, key: Key) -> Result<u64> {
        number_in_meta(key, &self.meta(key)?)
    }

    /// The document's warning count, when the import knew it.
    pub fn document_warnings(&self) -> Result<Option<u64>> {
        let key = Key::DocumentWarnings;
        let text = self.db.meta_text(key.name())?.unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        number_in_meta(key, &text).map(Some)
    }

    /// The warning count: the import's, or what the merge's partitions
    /// counted.
    pub fn warnings(&self) -> Result<u64> {
        Ok(self.document_warnings()?.unwrap_or(0) + self.db.warnings()?)
    }

    /// Whether `stage` is complete in this database.
    pub fn is_done(&self, stage: Stage) -> Result<bool> {
        match (stage, stage.done_marker()) {
            (_, Some(marker)) => Ok(self.db.meta_text(marker)?.is_some()),
            (Stage::Apply, None) => {
                Ok(self.is_done(Stage::Plan)? && self.chunks()?.iter().all(|c| c.done))
            }
            (Stage::Decompress, None) => {
                // Done when the text the stages read of each input (itself,
                // or its kept decompressed copy) is recorded and still has the
                // fingerprint recorded once it was whole.
                for kind in InputKind::ALL {
                    match self.input_text(kind)? {
                        Some((path, print))
                            if crate::place::fingerprint(&path).ok().as_deref() == Some(&print) => {
                        }
                        _ => return Ok(false),
                    }
                }
                Ok(true)
            }
            (_, None) => Ok(false),
        }
    }

    /// The path and fingerprint recorded for an input, when there are.
    pub fn recorded_input(&self, which: InputKind) -> Result<(Option<String>, Option<String>)> {
        let (path, print) = which.keys();
        Ok((self.db.meta_text(path)?, self.db.meta_text(print)?))
    }

    /// Records an input's path and fingerprint and, for a plain input, the
    /// text the stages read (itself), in one transaction: a store never holds
    /// half a record of an input.
    pub fn record_input(
        &self,
        which: InputKind,
        path: &str,
        fingerprint: &str,
        text: Option<(&Path, &str)>,
    ) -> Result<()> {
        let (path_key, print_key) = which.keys();
        let (text_path_key, text_print_key) = which.text_keys();
        let text_path = text.map(|(p, _)| p.to_string_lossy().into_owned());
        let mut pairs = vec![(path_key, path), (print_key, fingerprint)];
        if let (Some(text_path), Some((_, text_print))) = (&text_path, text) {
            pairs.push((text_path_key, text_path.as_str()));
            pairs.push((text_print_key, text_print));
        }
        self.db.set_meta_texts(&pairs)
    }

    /// Records, just before OUTPUT is renamed into place, which file the run
    /// publishes and the fingerprint it will have there (the temporary file's:
    /// a rename keeps size, modification time and contents). A run that finds
    /// this record and OUTPUT with that fingerprint knows the run finished.
    pub fn record_publishing(&self, output: &Path, fingerprint: &str) -> Result<()> {
        self.db.set_meta_texts_durably(&[
            (PUBLISHED_PATH, &output.to_string_lossy()),
            (PUBLISHED_FINGERPRINT, fingerprint),
        ])
    }

    /// What [`Store::record_publishing`] recorded, if anything.
    pub fn published_output(&self) -> Result<Option<(PathBuf, String)>> {
        Ok(
            match (
                self.db.meta_text(PUBLISHED_PATH)?,
                self.db.meta_text(PUBLISHED_FINGERPRINT)?,
            ) {
                (Some(path), Some(print)) => Some((PathBuf::from(path), print)),
                _ => None,
            },
        )
    }

    /// The file the stages read for an input, and its fingerprint when it was
    /// recorded: the input itself, or the kept text of a compressed input
    /// ([`crate::stages::decompress`]). `None` until it is known (a compressed input
    /// not yet wholly decompressed).
    pub fn input_text(&self, which: InputKind) -> Result<Option<(PathBuf, String)>> {
        let (path, print) = which.text_keys();
        Ok(
            match (self.db.meta_text(path)?, self.db.meta_text(print)?) {
                (Some(path), Some(print)) => Some((PathBuf::from(path), print)),
                _ => None,
            },
        )
    }

    /// Records the file the stages read for an input (see [`Store::input_text`]).
    pub fn record_input_text(
        &self,
        which: InputKind,
        path: &Path,
        fingerprint: &str,
    ) -> Result<()> {
        let (path_key, print_key) = which.text_keys();
        self.db.set_meta_texts(&[
            (path_key, &path.to_string_lossy()),
            (print_key, fingerprint),
        ])
    }

    /// Sets how long workers' leases last (the harness, at the start of every
    /// run; workers read it when they start).
    pub fn set_lease(&self, lease: Duration) -> Result<()> {
        let secs = lease.as_secs_f64().to_string();
        self.db.set_meta_texts(&[(Key::LeaseSecs.name(), &secs)])
    }

    /// How long a worker's lease lasts.
    pub fn lease(&self) -> Result<Duration> {
        let text = self.meta(Key::LeaseSecs)?;
        let secs: f64 = text
            .parse()
            .with_context(|| format!("work database: lease_secs is not a number: {text}"))?;
        Ok(Duration::from_secs_f64(secs))
    }

    // ---- import ----

    /// Starts the import: clears what an earlier import left and returns the
    /// writer for the document's elements.
    pub fn document_writer(&self) -> Result<DocumentWriter<'_>> {
        Ok(DocumentWriter {
            store: self,
            sink: self.db.document_writer()?,
        })
    }

    /// The id indexes, opened on first use. Asked once per lookup (tens of
    /// millions of times on a large document), so the answer once they are open is
    /// inlined, and opening them is a call of its own.
    #[inline]
    fn indexes(&self) -> Result<&Indexes> {
        match self.indexes.get() {
            Some(indexes) => Ok(indexes),
            None => self.open_indexes(),
        }
    }

    #[cold]
    #[inline(never)]
    fn open_indexes(&self) -> Result<&Indexes> {
        let open = |which: IdKind| -> Result<IdIndex> {
            let path = self.index_path(which)?;
            if !path.exists() || !self.db.cached_index_is_current(which, &path)? {
                // Another host's import built it: fetch it once into the
                // cache (again, when the cached copy is not the stored one).
                self.db.fetch_index(which, &path)?;
            }
            IdIndex::open(&path)
        };
        let indexes = Indexes {
            users: open(IdKind::Users)?,
            songs: open(IdKind::Songs)?,
            playlists: open(IdKind::Playlists)?,
        };
        Ok(self.indexes.get_or_init(|| indexes))
    }

    /// Where the import writes the id index of `which`, and where this host
    /// reads it (see [`crate::ids::index`]).
    pub fn index_path(&self, which: IdKind) -> Result<PathBuf> {
        let tag = match self.index_tag.get() {
            Some(tag) => tag,
            None => {
                let tag = self.db.index_tag()?;
                self.index_tag.get_or_init(|| tag)
            }
        };
        let files = self.location.work_files();
        Ok(match tag {
            None => files.id_index(which).to_path_buf(),
            Some(tag) => files.tagged_index(tag, which),
        })
    }

    /// Keeps the id indexes the import built in the store, for other hosts.
    pub fn publish_indexes(&self) -> Result<()> {
        for kind in IdKind::ALL {
            self.db.publish_index(kind, &self.index_path(kind)?)?;
        }
        Ok(())
    }

    /// Where the document's users and songs are in MIXTAPE.
    pub fn array_ranges(&self) -> Result<ArrayRanges> {
        Ok(ArrayRanges {
            users: ArrayRange::from_meta(&self.meta(Key::UsersRange)?)?,
            songs: ArrayRange::from_meta(&self.meta(Key::SongsRange)?)?,
        })
    }

    /// How the document writes the user whose id a change wrote as `token`,
    /// if the user exists ([`IdIndex::written_as`]).
    pub fn user_written<'a>(&'a self, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let id = crate::json::id_text(token).unwrap_or_default();
        self.indexes()?.users.written_as(&id, token)
    }

    /// How the document writes the song whose id a change wrote as `token`,
    /// if the song exists.
    pub fn song_written<'a>(&'a self, token: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>> {
        let id = crate::json::id_text(token).unwrap_or_default();
        self.indexes()?.songs.written_as(&id, token)
    }

    /// Starts loading what looking up the playlist and the song written as
    /// these tokens will read ([`crate::ids::index::IdIndex::prefetch`]), so
    /// that the two cache misses overlap.
    /// The bytes of the dense tables an `add_song` looks up (the playlists'
    /// and the songs').
    pub fn lookup_tables_bytes(&self) -> Result<usize> {
        let indexes = self.indexes()?;
        Ok(indexes.playlists.dense_bytes() + indexes.songs.dense_bytes())
    }

    pub fn prefetch_lookups(&self, playlist: Option<&[u8]>, song: Option<&[u8]>) {
        if let Ok(indexes) = self.indexes() {
            if let Some(token) = playlist {
                indexes.playlists.prefetch(token);
            }
            if let Some(token) = song {
                indexes.songs.prefetch(token);
            }
        }
    }

    pub fn user_exists(&self, id: &str) -> Result<bool> {
        Ok(self.indexes()?.users.contains(id))
    }

    /// Whether song `id` exists, or which slot of the songs index says
    /// ([`crate::ids::index::IdIndex::presence`]).
    pub fn song_presence(&self, id: &str) -> Result<crate::ids::index::Presence> {
        Ok(self.indexes()?.songs.presence(id))
    }

    /// Starts loading slot `n` of the songs index (a hint; see
    /// [`crate::ids::index::IdIndex::prefetch_slot`]).
    pub fn prefetch_song_slot(&self, n: u64) {
        if let Ok(indexes) = self.indexes() {
            indexes.songs.prefetch_slot(n);
        }
    }

    /// Whether slot `n` of the songs index holds a song.
    pub fn song_in_slot(&self, n: u64) -> Result<bool> {
        Ok(self.indexes()?.songs.slot_holds(n))
    }

    /// The position of the document's playlist `id`, if the document has one
    /// ([`crate::changes::partition`]).
    pub fn document_playlist_position(&self, id: &str) -> Result<Option<u64>> {
        Ok(self.indexes()?.playlists.position(id))
    }

    /// The document's playlist `id`: its position and raw text. Most ids the
    /// merge asks about are new playlists': the index answers those without
    /// touching the database.
    pub fn document_playlist(&self, id: &str) -> Result<Option<(i64, String)>> {
        match self.indexes()?.playlists.position(id) {
            Some(seq) => self.db.playlist_at(seq),
            None => Ok(None),
        }
    }

    // ---- the rules about undoing ----

    /// Undoes everything chunk `chunk` recorded, and the merge (which read it),
    /// in one transaction: the chunk starts again from its beginning.
    pub fn reset_chunk(&self, chunk: u64) -> Result<()> {
        let chunk = Param::Number(chunk as i64);
        let reset = RESET_CHUNK.map(|sql| Statement {
            sql,
            param: Some(chunk),
        });
        let statements: Vec<Statement> =
            reset.into_iter().chain(clear_merge_statements()).collect();
        self.db.run_in_one_transaction(&statements)
    }

    /// Clears what a merge left, in one transaction (before a merge starts
    /// from nothing: a chunk redone by hand may have changed what it read).
    pub fn clear_merge(&self) -> Result<()> {
        self.db.run_in_one_transaction(&clear_merge_statements())
    }
}

/// The stages call the tables' operations on the store itself.
/// The number `text`, the value of `key` in `meta`.
fn number_in_meta(key: Key, text: &str) -> Result<u64> {
    text.parse()
        .with_context(|| format!("work database: {} is not a number: {text}", key.name()))
}

impl std::ops::Deref for Store {
    type Target = dyn Tables;

    fn deref(&self) -> &(dyn Tables + 'static) {
        &*self.db
    }
}

/// Writes the document's elements during the import. Dropped without
/// [`DocumentWriter::finish`], it rolls back what it has not committed; a
/// rerun of the import starts over.
pub struct DocumentWriter<'a> {
    store: &'a Store,
    sink: Box<dyn DocumentSink + 'a>,
}

impl DocumentWriter<'_> {
    /// A document playlist, minified (its id goes to the playlists' index).
    /// `in_mixtape`: the playlist's bytes in MIXTAPE's text (the file
    /// recorded by [`Store::record_input_text`]), which minify to `raw`; a
    /// store may keep that place instead of a copy, and read it again.
    pub fn playlist(
        &mut self,
        position: u64,
        raw: &str,
        in_mixtape: Option<std::ops::Range<u64>>,
    ) -> Result<()> {
        self.sink.playlist(position, raw, in_mixtape)
    }

    /// A top-level member other than the three arrays.
    pub fn extra(&mut self, seq: u64, key: &str, raw: &str) -> Result<()> {
        self.sink.extra(seq, key, raw)
    }

    /// Stores what the import learnt and marks it done, with the last
    /// elements. The id indexes must be built by then ([`Store::index_path`]):
    /// a crash before the marker redoes the import, indexes included.
    pub fn finish(self, facts: &DocumentFacts) -> Result<()> {
        let mut meta = vec![
            (
                Key::UsersRange.name(),
                ArrayRange::to_meta(&facts.ranges.users),
            ),
            (
                Key::SongsRange.name(),
                ArrayRange::to_meta(&facts.ranges.songs),
            ),
            (Key::OwnerKey.name(), facts.owner_key.clone()),
            (
                Key::DocumentMaxPlaylistId.name(),
                facts.max_playlist_id.to_string(),
            ),
            (Key::Users.name(), facts.users.to_string()),
            (Key::Playlists.name(), facts.playlists.to_string()),
            (Key::Songs.name(), facts.songs.to_string()),
            (
                Stage::Import.done_marker().expect("import has a marker"),
                "1".to_string(),
            ),
        ];
        // Always written, empty when the merge counts: an import's facts
        // replace the last one's whole.
        let warnings = facts.warnings.map(|w| w.to_string()).unwrap_or_default();
        meta.push((Key::DocumentWarnings.name(), warnings));
        if let Some((path, print)) = &facts.text {
            let (path_key, print_key) = InputKind::Mixtape.text_keys();
            meta.push((path_key, path.to_string_lossy().into_owned()));
            meta.push((print_key, print.clone()));
        }
        self.store.publish_indexes()?;
        self.sink.finish(&meta)
    }
}
