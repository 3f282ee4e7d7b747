//! Stage 1, import: MIXTAPE into the work database.
//!
//! The document is read once, front to back, by the validating [`Scanner`]; each
//! element of `users`, `playlists` and `songs` is captured on its own, minified,
//! checked and inserted, so memory holds one element at a time whatever the size
//! of the document. Top-level members may come in any order; members other than
//! the three arrays are kept in `extras` and written back after them.
//!
//! What makes the document invalid (and stops the run, SPEC §2): not JSON, not an
//! object, one of the three members not an array, an element that is not an
//! object or has no valid id, a duplicate id in one array, a playlist whose
//! `song_ids` is not an array of ids. The message names the array, the element's
//! position (0-based) and the id, with the element's line and column.
//!
//! Playlists whose owner or songs do not exist are a warning, not an error: they
//! are kept as they are. Counting them takes a lookup per song, and the songs may
//! come after the playlists in the document, so [`count_warnings`] runs later, in
//! parallel, one slice of playlists per merge partition.
//!
//! ## Restarting
//!
//! Import commits every `BATCH` elements to keep the WAL small, but is not
//! resumed half-way: a rerun clears the tables and starts over. It is one
//! sequential read, so redoing it is cheap next to keeping track of it.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, ErrorCode};

use crate::errors;
use crate::json;
use crate::scan::{ScanError, Scanner};
use crate::workdb;

/// Elements per transaction.
const BATCH: u64 = 50_000;

/// What the document held.
#[derive(Debug, Default, Clone)]
pub struct ImportFigures {
    pub users: u64,
    pub playlists: u64,
    pub songs: u64,
}

/// The three arrays the tool understands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Array {
    Users,
    Playlists,
    Songs,
}

impl Array {
    fn name(self) -> &'static str {
        match self {
            Array::Users => "users",
            Array::Playlists => "playlists",
            Array::Songs => "songs",
        }
    }
}

/// Imports MIXTAPE at `path`; `progress` gets the number of bytes read so far.
pub fn import(
    conn: &mut Connection,
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportFigures> {
    let file = File::open(path).with_context(|| format!("opening MIXTAPE {}", path.display()))?;
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         DELETE FROM users; DELETE FROM user_ids; DELETE FROM songs; DELETE FROM song_ids;
         DELETE FROM playlists; DELETE FROM extras;",
    )?;
    let mut importer = Importer {
        conn,
        path,
        minified: Vec::new(),
        figures: ImportFigures::default(),
        owner_key: None,
        max_playlist_id: 0,
        in_transaction: 0,
        extras: 0,
    };
    let mut scanner = Scanner::new(file, 0);
    let outcome = importer.document(&mut scanner, progress);
    let outcome = match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Scan(e)) => Err(errors::scan_error("MIXTAPE", path, e)),
        Err(Failure::Other(e)) => Err(e),
    };
    if let Err(e) = outcome {
        let _ = importer.conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    let Importer {
        conn,
        figures,
        owner_key,
        max_playlist_id,
        ..
    } = importer;
    workdb::meta_set(
        conn,
        "owner_key",
        owner_key.unwrap_or_else(|| "owner_id".into()),
    )?;
    workdb::meta_set(conn, "document_max_playlist_id", max_playlist_id)?;
    workdb::meta_set(conn, "users", figures.users)?;
    workdb::meta_set(conn, "playlists", figures.playlists)?;
    workdb::meta_set(conn, "songs", figures.songs)?;
    workdb::mark_done(conn, "import")?;
    conn.execute_batch("COMMIT")?;
    workdb::checkpoint(conn)?;
    Ok(figures)
}

/// A scanner error (reported with line and column) or any other.
enum Failure {
    Scan(ScanError),
    Other(anyhow::Error),
}

impl From<ScanError> for Failure {
    fn from(e: ScanError) -> Self {
        Failure::Scan(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Other(e.into())
    }
}

struct Importer<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// Reused buffer for the minified element.
    minified: Vec<u8>,
    figures: ImportFigures,
    /// The owner member name of the first playlist (SPEC §3, new playlists).
    owner_key: Option<String>,
    /// Largest playlist id of the form `[1-9][0-9]{0,17}` (SPEC §3, new ids).
    max_playlist_id: u64,
    /// Elements written since the last commit.
    in_transaction: u64,
    extras: u64,
}

impl Importer<'_> {
    fn document(
        &mut self,
        s: &mut Scanner<File>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Failure> {
        s.skip_bom()?;
        match s.peek()? {
            Some(b'{') => s.expect(b'{', "'{'")?,
            Some(_) => return Err(s.unexpected("a JSON object (the mixtape document)").into()),
            None => return Err(s.unexpected("a JSON object (the mixtape document)").into()),
        }
        let mut seen: Vec<Array> = Vec::new();
        if !s.eat(b'}')? {
            loop {
                s.peek()?;
                let key_offset = s.offset();
                s.begin_capture();
                let name = s.key()?;
                let key_raw = {
                    let cap = s.captured();
                    cap[..json::string_end(cap, 0).unwrap_or(cap.len())].to_vec()
                };
                s.end_capture();
                let array = match name.as_str() {
                    "users" => Some(Array::Users),
                    "playlists" => Some(Array::Playlists),
                    "songs" => Some(Array::Songs),
                    _ => None,
                };
                match array {
                    Some(array) => {
                        if seen.contains(&array) {
                            return Err(self.located(
                                key_offset,
                                &format!("member {} appears twice", array.name()),
                            ));
                        }
                        seen.push(array);
                        self.array(s, array, progress)?;
                    }
                    None => self.extra(s, &key_raw)?,
                }
                if s.eat(b',')? {
                    continue;
                }
                s.expect(b'}', "',' or '}' after a member of the document")?;
                break;
            }
        }
        if s.peek()?.is_some() {
            return Err(s.unexpected("end of input after the document").into());
        }
        progress(s.offset());
        Ok(())
    }

    fn array(
        &mut self,
        s: &mut Scanner<File>,
        array: Array,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Failure> {
        if s.peek()? != Some(b'[') {
            let at = s.offset();
            return Err(self.located(at, &format!("member {} must be an array", array.name())));
        }
        s.expect(b'[', "'['")?;
        if s.eat(b']')? {
            return Ok(());
        }
        let mut position = 0u64;
        loop {
            s.peek()?;
            let offset = s.offset();
            s.begin_capture();
            s.value()?;
            self.element(array, position, s.captured(), offset)?;
            s.end_capture();
            position += 1;
            crate::fault::point("import-element");
            if position.is_multiple_of(1024) {
                progress(s.offset());
                crate::interrupt::check()?;
            }
            if s.eat(b',')? {
                continue;
            }
            s.expect(b']', "',' or ']' after an array element")?;
            return Ok(());
        }
    }

    fn extra(&mut self, s: &mut Scanner<File>, key_raw: &[u8]) -> Result<(), Failure> {
        s.peek()?;
        s.begin_capture();
        s.value()?;
        self.minified.clear();
        json::minify_into(s.captured(), &mut self.minified);
        s.end_capture();
        let key = String::from_utf8_lossy(key_raw);
        let raw = String::from_utf8_lossy(&self.minified);
        self.conn
            .prepare_cached("INSERT INTO extras(seq, key, raw) VALUES (?1, ?2, ?3)")?
            .execute(params![self.extras, key, raw])?;
        self.extras += 1;
        Ok(())
    }

    /// An error about the element at `offset`, with its line and column.
    fn located(&self, offset: u64, message: &str) -> Failure {
        Failure::Other(errors::at_offset("MIXTAPE", self.path, offset, message))
    }

    fn element(
        &mut self,
        array: Array,
        position: u64,
        raw: &[u8],
        offset: u64,
    ) -> Result<(), Failure> {
        let name = array.name();
        self.minified.clear();
        json::minify_into(raw, &mut self.minified);
        let minified = std::mem::take(&mut self.minified);
        let result = self.checked_element(array, position, &minified, offset, name);
        self.minified = minified;
        result?;
        self.in_transaction += 1;
        if self.in_transaction >= BATCH {
            self.conn.execute_batch("COMMIT; BEGIN IMMEDIATE")?;
            self.in_transaction = 0;
        }
        Ok(())
    }

    fn checked_element(
        &mut self,
        array: Array,
        position: u64,
        minified: &[u8],
        offset: u64,
        name: &str,
    ) -> Result<(), Failure> {
        let Some(members) = json::object_members(minified) else {
            return Err(self.located(offset, &format!("{name}[{position}] is not an object")));
        };
        let Some(id_raw) = json::member(&members, "id") else {
            return Err(self.located(offset, &format!("{name}[{position}] has no id")));
        };
        let Some(id) = json::id_text(id_raw) else {
            return Err(self.located(
                offset,
                &format!(
                    "{name}[{position}]: id must be a string or an integer, found {}",
                    String::from_utf8_lossy(id_raw)
                ),
            ));
        };
        let raw_text = std::str::from_utf8(minified).map_err(|e| anyhow!(e))?;
        let written = std::str::from_utf8(id_raw).map_err(|e| anyhow!(e))?;
        let inserted = match array {
            Array::Users | Array::Songs => {
                let (table, ids) = if array == Array::Users {
                    ("users", "user_ids")
                } else {
                    ("songs", "song_ids")
                };
                let first = self
                    .conn
                    .prepare_cached(&format!("INSERT INTO {ids}(id, written) VALUES (?1, ?2)"))?
                    .execute(params![id, written]);
                if first.is_ok() {
                    self.conn
                        .prepare_cached(&format!("INSERT INTO {table}(seq, raw) VALUES (?1, ?2)"))?
                        .execute(params![position, raw_text])?;
                }
                first
            }
            Array::Playlists => {
                if let Some(songs) = json::member(&members, "song_ids") {
                    let valid = json::array_elements(songs)
                        .is_some_and(|list| list.iter().all(|s| json::id_text(s).is_some()));
                    if !valid {
                        return Err(self.located(
                            offset,
                            &format!("{name}[{position}] (id {id}): song_ids must be an array of song ids"),
                        ));
                    }
                }
                if self.owner_key.is_none() {
                    let uses_user_id = json::member(&members, "owner_id").is_none()
                        && json::member(&members, "user_id").is_some();
                    self.owner_key = Some(if uses_user_id { "user_id" } else { "owner_id" }.into());
                }
                if let Some(v) = json::auto_id_value(&id) {
                    self.max_playlist_id = self.max_playlist_id.max(v);
                }
                self.conn
                    .prepare_cached("INSERT INTO playlists(seq, id, raw) VALUES (?1, ?2, ?3)")?
                    .execute(params![position, id, raw_text])
            }
        };
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation =>
            {
                return Err(
                    self.located(offset, &format!("{name}[{position}]: duplicate id {id:?}"))
                );
            }
            Err(e) => return Err(e.into()),
        }
        match array {
            Array::Users => self.figures.users += 1,
            Array::Playlists => self.figures.playlists += 1,
            Array::Songs => self.figures.songs += 1,
        }
        Ok(())
    }
}

/// Counts playlists whose owner or some song does not exist (SPEC §2: kept, but
/// reported as a warning).
/// Counts them among the document's playlists at positions `from..to`.
pub fn count_warnings(conn: &Connection, from: u64, to: u64) -> Result<u64> {
    let mut user_exists = conn.prepare_cached("SELECT 1 FROM user_ids WHERE id = ?1")?;
    let mut song_exists = conn.prepare_cached("SELECT 1 FROM song_ids WHERE id = ?1")?;
    let mut slice =
        conn.prepare_cached("SELECT raw FROM playlists WHERE seq >= ?1 AND seq < ?2")?;
    let mut rows = slice.query([from, to])?;
    let mut warnings = 0;
    while let Some(row) = rows.next()? {
        let raw = row.get_ref(0)?.as_bytes()?;
        let members = json::object_members(raw).unwrap_or_default();
        let owner =
            json::member(&members, "owner_id").or_else(|| json::member(&members, "user_id"));
        let owner_ok = match owner.and_then(json::id_text) {
            Some(id) => user_exists.exists([id.as_ref()])?,
            None => false,
        };
        let mut songs_ok = true;
        if owner_ok {
            let songs = json::member(&members, "song_ids")
                .and_then(json::array_elements)
                .unwrap_or_default();
            for song in songs {
                let exists = match json::id_text(song) {
                    Some(id) => song_exists.exists([id.as_ref()])?,
                    None => false,
                };
                if !exists {
                    songs_ok = false;
                    break;
                }
            }
        }
        if !(owner_ok && songs_ok) {
            warnings += 1;
        }
    }
    Ok(warnings)
}
