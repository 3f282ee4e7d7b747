//! Stage 1, import: MIXTAPE into the work database.
//!
//! The document is read once, front to back, by the validating [`Scanner`]; each
//! element of `users`, `playlists` and `songs` is captured on its own, minified,
//! checked and inserted, so memory holds one element at a time whatever the size
//! of the document. Top-level members may come in any order; members other than
//! the three arrays are kept in `extras` and written back after them.
//!
//! What makes the document invalid (and stops the run, README "The mixtape document"): not JSON, not an
//! object, one of the three members not an array, an element that is not an
//! object or has no valid id, a duplicate id in one array, a playlist whose
//! `song_ids` is not an array of ids. The message names the array, the element's
//! position (0-based) and the id, with the element's line and column.
//!
//! Playlists whose owner or songs do not exist are a warning, not an error: they
//! are kept as they are. Counting them takes a lookup per song, and the songs may
//! come after the playlists in the document, so the merge counts them later, in
//! parallel, one slice of playlists per partition.
//!
//! ## Restarting
//!
//! Import commits every 50,000 elements to keep the WAL small, but is not
//! resumed half-way: a rerun clears the tables and starts over. It is one
//! sequential read, so redoing it is cheap next to keeping track of it.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::errors;
use crate::id_index;
use crate::id_sort::{FoundId, IdSorter};
use crate::json;
use crate::scan::{ScanError, Scanner};
use crate::store::{
    ArrayRange, ArrayRanges, DocumentFacts, DocumentWriter, IdKind, Inserted, Store,
};

/// How much of the users or songs array the export copies as one piece (the
/// import records where such pieces start).
const EXPORT_PIECE_BYTES: u64 = 4 << 20;

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
pub fn import(store: &Store, path: &Path, progress: &mut dyn FnMut(u64)) -> Result<ImportFigures> {
    let file = File::open(path).with_context(|| format!("opening MIXTAPE {}", path.display()))?;
    let mut importer = Importer {
        writer: store.document_writer()?,
        path,
        minified: Vec::new(),
        figures: ImportFigures::default(),
        owner_key: None,
        max_playlist_id: 0,
        extras: 0,
        users: IdSorter::default(),
        songs: IdSorter::default(),
        ranges: ArrayRanges::default(),
        top_level_keys: Vec::new(),
    };
    let mut scanner = Scanner::new(file, 0);
    match importer.document(&mut scanner, progress) {
        Ok(()) => {}
        // Dropping the importer rolls its transaction back.
        Err(Failure::Scan(e)) => return Err(errors::scan_error("MIXTAPE", path, e)),
        Err(Failure::Other(e)) => return Err(e),
    }
    let Importer {
        writer,
        figures,
        owner_key,
        max_playlist_id,
        users,
        songs,
        ranges,
        ..
    } = importer;
    build_index(store, path, IdKind::Users, users)?;
    build_index(store, path, IdKind::Songs, songs)?;
    writer.finish(&DocumentFacts {
        owner_key: owner_key.unwrap_or_else(|| "owner_id".into()),
        max_playlist_id,
        users: figures.users,
        playlists: figures.playlists,
        songs: figures.songs,
        ranges,
    })?;
    Ok(figures)
}

/// Builds the id index of `kind` from its sorted ids; a duplicate id is the
/// document's error, located at the element that repeats it.
fn build_index(store: &Store, path: &Path, kind: IdKind, ids: IdSorter) -> Result<()> {
    let mut ids = Some(ids);
    id_index::build(&store.index_path(kind), &mut |add| {
        let sorted = ids.take().expect("the index asks for its ids once");
        let Some(dup) = sorted.merge(add)? else {
            return Ok(());
        };
        Err(errors::at_offset(
            "MIXTAPE",
            path,
            dup.offset,
            &format!(
                "{}[{}]: duplicate id {:?}",
                kind.array_name(),
                dup.position,
                dup.id
            ),
        ))
    })
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

struct Importer<'a> {
    writer: DocumentWriter<'a>,
    path: &'a Path,
    /// Reused buffer for the minified element.
    minified: Vec<u8>,
    figures: ImportFigures,
    /// The owner member name of the first playlist (README "The changes file", new playlists).
    owner_key: Option<String>,
    /// Largest playlist id of the form `[1-9][0-9]{0,17}` (README "The changes file", automatic ids).
    max_playlist_id: u64,
    extras: u64,
    /// The ids of users and songs, on their way to the id indexes.
    users: IdSorter,
    songs: IdSorter,
    /// Where the users and songs arrays are in MIXTAPE.
    ranges: ArrayRanges,
    /// The document's top-level member names, for the message when it has
    /// none of the three arrays.
    top_level_keys: Vec<String>,
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
            Some(b'[') => {
                let message = format!(
                    "expected a JSON object (the mixtape document), found '[': an array, as a changes file is. {ARGUMENT_ORDER}"
                );
                return Err(s.error_at(s.offset(), message).into());
            }
            _ => return Err(s.unexpected("a JSON object (the mixtape document)").into()),
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
                if self.top_level_keys.len() < 8 {
                    self.top_level_keys.push(name);
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
        if seen.is_empty() {
            return Err(Failure::Other(not_a_mixtape(
                self.path,
                &self.top_level_keys,
            )));
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
        let inside = s.offset();
        if s.eat(b']')? {
            return Ok(());
        }
        let mut position = 0u64;
        let mut splits = Vec::new();
        let mut piece_start = inside;
        loop {
            s.peek()?;
            let offset = s.offset();
            if offset - piece_start >= EXPORT_PIECE_BYTES {
                splits.push(offset);
                piece_start = offset;
            }
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
            s.peek()?;
            let range = ArrayRange {
                start: inside,
                end: s.offset(),
                splits,
            };
            s.expect(b']', "',' or ']' after an array element")?;
            match array {
                Array::Users => self.ranges.users = Some(range),
                Array::Songs => self.ranges.songs = Some(range),
                Array::Playlists => {}
            }
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
        self.writer.extra(self.extras, &key, &raw)?;
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
        if array == Array::Playlists {
            self.minified.clear();
            json::minify_into(raw, &mut self.minified);
            let minified = std::mem::take(&mut self.minified);
            let result = self.playlist(position, &minified, offset);
            self.minified = minified;
            return result;
        }
        // Users and songs never change: only their ids are kept (for the
        // index; duplicates are found when the ids are sorted), and export
        // copies them from MIXTAPE again. So only the id is read, in place.
        let (id, written) = self.id_of(array, position, json::find_member(raw, "id"), offset)?;
        let found = FoundId {
            id: id.into_owned(),
            written: String::from_utf8_lossy(written).into_owned(),
            position,
            offset,
        };
        if array == Array::Users {
            self.users.push(found)?;
            self.figures.users += 1;
        } else {
            self.songs.push(found)?;
            self.figures.songs += 1;
        }
        Ok(())
    }

    /// An element's id (its text, and as written), from what looking for its
    /// `id` member found: `None` when it is not an object.
    fn id_of<'r>(
        &self,
        array: Array,
        position: u64,
        found: Option<Option<&'r [u8]>>,
        offset: u64,
    ) -> Result<(std::borrow::Cow<'r, str>, &'r [u8]), Failure> {
        let name = array.name();
        let Some(found) = found else {
            return Err(self.located(offset, &format!("{name}[{position}] is not an object")));
        };
        let Some(id_raw) = found else {
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
        Ok((id, id_raw))
    }

    fn playlist(&mut self, position: u64, minified: &[u8], offset: u64) -> Result<(), Failure> {
        let members = json::object_members(minified);
        let found = members.as_ref().map(|m| json::member(m, "id"));
        let (id, _) = self.id_of(Array::Playlists, position, found, offset)?;
        let members = members.expect("id_of checked it is an object");
        let name = Array::Playlists.name();
        let raw_text = std::str::from_utf8(minified).map_err(|e| anyhow!(e))?;
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
        if self.writer.playlist(position, &id, raw_text)? == Inserted::DuplicateId {
            return Err(self.located(offset, &format!("{name}[{position}]: duplicate id {id:?}")));
        }
        self.figures.playlists += 1;
        Ok(())
    }
}

/// How to call the harness, for messages about swapped arguments.
const ARGUMENT_ORDER: &str = "The arguments are: harness MIXTAPE CHANGES OUTPUT";

/// The error for an object that has none of `users`, `playlists`, `songs`:
/// most likely the arguments were swapped. Says what the object looks like.
fn not_a_mixtape(path: &Path, keys: &[String]) -> anyhow::Error {
    let looks_like = if keys.iter().any(|k| k == "changes") {
        "it has a changes member, like a changes file".to_string()
    } else if keys.iter().any(|k| k == "op") {
        "it has an op member, like a change (a JSON Lines changes file)".to_string()
    } else if keys.is_empty() {
        "it is an empty object".to_string()
    } else {
        format!("its members are {}", keys.join(", "))
    };
    anyhow!(
        "MIXTAPE {} is not a mixtape document: it has none of users, playlists, songs ({looks_like}). {ARGUMENT_ORDER}",
        path.display()
    )
}
