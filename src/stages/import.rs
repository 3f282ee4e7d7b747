//! Stage 1, import: MIXTAPE into the work database.
//!
//! The document is read once, front to back, by the validating [`Scanner`]; each
//! element of `users`, `playlists` and `songs` is captured on its own, minified,
//! checked and inserted, so memory holds one element at a time whatever the size
//! of the document. Top-level members may come in any order; members other than
//! the three arrays are kept in `extras` and written back after them.
//!
//! What makes the document invalid (and stops the run, docs/GUIDE.md "The mixtape document"): not JSON, not an
//! object, one of the three members not an array, an element that is not an
//! object or has no valid id, a duplicate id in one array, a playlist whose
//! `song_ids` is not an array of ids. The message names the array, the element's
//! position (0-based) and the id, with the element's line and column.
//!
//! Playlists whose owner or songs do not exist are a warning, not an error: they
//! are kept as they are. The songs may come after the playlists in the
//! document, so the import notes the ids the playlists name and asks the
//! indexes about them at the end ([`references`]): when all exist, the count is
//! known here; else the merge counts, one slice of playlists per partition.
//!
//! ## Restarting
//!
//! Import commits every 50,000 elements to keep the WAL small, but is not
//! resumed half-way: a rerun clears the tables and starts over. It is one
//! sequential read, so redoing it is cheap next to keeping track of it.

mod references;

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::ids::index::{self as id_index, IdIndex};
use crate::ids::sort::IdSorter;
use crate::json;
use crate::json::scan::{ScanError, Scanner};
use crate::place::{self, errors, Reader};
use crate::store::{ArrayRange, ArrayRanges, DocumentFacts, DocumentWriter, IdKind, Store};

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

/// Where the import keeps a copy of MIXTAPE as it reads it: MIXTAPE in a
/// bucket, with a SQLite store ([`crate::stages::input::Input::copied_while_imported`]).
/// The copy is written through `partial`, renamed to `kept` once whole, and
/// recorded as MIXTAPE's text in the same transaction as the import.
pub struct LocalCopy<'a> {
    pub partial: &'a Path,
    pub kept: &'a Path,
}

/// Imports MIXTAPE at `path`; `progress` gets the number of bytes read so far.
/// With `threads` ≥ 2, scanning and processing run on two threads. With
/// `copy`, the bytes read are kept in a local file too, and the document's
/// playlists are kept as places in it (as they are in a MIXTAPE that is a
/// file); without, an object's playlists are copied into the store.
pub fn import(
    store: &Store,
    path: &Path,
    threads: usize,
    copy: Option<LocalCopy>,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportFigures> {
    let mut file =
        place::open_at(path, 0).with_context(|| format!("opening MIXTAPE {}", path.display()))?;
    if let Some(copy) = &copy {
        let into = crate::run::private_file::create_new(copy.partial)?;
        file = Box::new(Tee { from: file, into });
    }
    let mut processor = Processor {
        writer: store.document_writer()?,
        path,
        places: copy.is_some() || !place::is_object(path),
        minified: Vec::new(),
        figures: ImportFigures::default(),
        owner_key: None,
        max_playlist_id: 0,
        extras: 0,
        users: IdSorter::with_dense_table(),
        songs: IdSorter::with_dense_table(),
        playlists: IdSorter::default(),
        references: references::References::default(),
        progress,
    };
    // Dropping the processor on an error rolls its transaction back.
    let ranges = if threads >= 2 {
        pipelined(file, path, &mut processor)?
    } else {
        let mut scan = DocumentScan::new(path, &mut processor);
        let scanned = scan.document(&mut Scanner::new(file, 0));
        scanned.map_err(|e| e.into_error(path))?;
        scan.ranges
    };
    let Processor {
        writer,
        figures,
        owner_key,
        max_playlist_id,
        users,
        songs,
        playlists,
        references,
        ..
    } = processor;
    build_indexes(store, path, threads, [users, songs, playlists])?;
    let warnings = references.warnings(
        &IdIndex::open(&store.index_path(IdKind::Users)?)?,
        &IdIndex::open(&store.index_path(IdKind::Songs)?)?,
    );
    let text = copy.map(|copy| keep_copy(path, copy)).transpose()?;
    writer.finish(&DocumentFacts {
        text,
        warnings,
        owner_key: owner_key.unwrap_or_else(|| "owner_id".into()),
        max_playlist_id,
        users: figures.users,
        playlists: figures.playlists,
        songs: figures.songs,
        ranges,
    })?;
    Ok(figures)
}

/// Builds the id indexes from the import's sorters, the songs' on a thread
/// of its own when `threads` allows.
fn build_indexes(
    store: &Store,
    path: &Path,
    threads: usize,
    [users, songs, playlists]: [IdSorter; 3],
) -> Result<()> {
    let index_path = |kind| store.index_path(kind);
    let (users_at, songs_at) = (index_path(IdKind::Users)?, index_path(IdKind::Songs)?);
    let playlists_at = index_path(IdKind::Playlists)?;
    if threads >= 2 {
        // The songs index (the largest, as a rule) on a thread of its own,
        // beside the other two; a duplicate in users is still the error
        // reported before one in songs, and that before one in playlists.
        let (users_and_playlists, songs) = std::thread::scope(|scope| {
            let songs = scope.spawn(|| build_index(&songs_at, path, IdKind::Songs, songs));
            let others = build_index(&users_at, path, IdKind::Users, users)
                .map(|()| build_index(&playlists_at, path, IdKind::Playlists, playlists));
            let songs = songs
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the songs index builder panicked")));
            (others, songs)
        });
        let playlists = users_and_playlists?;
        songs?;
        playlists?;
    } else {
        build_index(&users_at, path, IdKind::Users, users)?;
        build_index(&songs_at, path, IdKind::Songs, songs)?;
        build_index(&playlists_at, path, IdKind::Playlists, playlists)?;
    }
    Ok(())
}

/// A reader that writes what it reads to a file too.
struct Tee {
    from: Reader,
    into: std::fs::File,
}

impl std::io::Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        std::io::Write::write_all(&mut self.into, &buf[..n])?;
        Ok(n)
    }
}

/// The copy [`Tee`] wrote, once MIXTAPE was read to its end: checked whole,
/// synced and renamed into place; its path and fingerprint, for the store to
/// record as MIXTAPE's text with the import's done-marker.
fn keep_copy(path: &Path, copy: LocalCopy) -> Result<(std::path::PathBuf, String)> {
    let written = std::fs::File::open(copy.partial)
        .and_then(|file| file.sync_all().and_then(|()| file.metadata()))
        .with_context(|| format!("writing {}", copy.partial.display()))?
        .len();
    let size = place::size(path)?;
    if written != size {
        anyhow::bail!(
            "the copy of MIXTAPE {} at {} holds {written} of its {size} bytes",
            path.display(),
            copy.partial.display()
        );
    }
    std::fs::rename(copy.partial, copy.kept).with_context(|| {
        format!(
            "renaming {} to {}",
            copy.partial.display(),
            copy.kept.display()
        )
    })?;
    crate::run::paths::sync_directory_of(copy.kept)?;
    Ok((copy.kept.to_path_buf(), place::fingerprint(copy.kept)?))
}

/// Scans on a thread of its own, which sends the elements in batches to this
/// one, where `processor` takes them in document order. The first error in
/// document order wins, as in one thread: the scanner's error comes after
/// every element it sent.
fn pipelined(file: Reader, path: &Path, processor: &mut Processor) -> Result<ArrayRanges> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let scanner = scope.spawn(move || {
            let mut sink = ChannelSink {
                batch: Batch::default(),
                tx,
            };
            let mut scan = DocumentScan::new(path, &mut sink);
            let outcome = scan.document(&mut Scanner::new(file, 0));
            let ranges = std::mem::take(&mut scan.ranges);
            sink.batch.end = Some(outcome.map(|()| ranges));
            let _ = sink.tx.send(std::mem::take(&mut sink.batch));
        });
        let mut result = Err(anyhow!("the MIXTAPE scanner stopped without a word"));
        for batch in rx.iter() {
            if let Err(e) = processor.take(&batch) {
                result = Err(e.into_error(path));
                break;
            }
            if let Some(end) = batch.end {
                result = end.map_err(|e| e.into_error(path));
                break;
            }
        }
        // Dropping the receiver stops a scanner still sending.
        drop(rx);
        scanner
            .join()
            .map_err(|_| anyhow!("the MIXTAPE scanner panicked"))?;
        result
    })
}

/// Builds the id index of `kind` at `index` from its sorted ids; a duplicate id is the
/// document's error, located at the element that repeats it.
fn build_index(index: &Path, path: &Path, kind: IdKind, mut ids: IdSorter) -> Result<()> {
    let count = ids.len();
    let slots = ids.take_dense_slots();
    let mut ids = Some(ids);
    id_index::build(index, kind.values(), count, slots, &mut |add| {
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

impl Failure {
    fn into_error(self, path: &Path) -> anyhow::Error {
        match self {
            Failure::Scan(e) => errors::scan_error("MIXTAPE", path, e),
            Failure::Other(e) => e,
        }
    }
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

/// Where the scanning half of the import hands over what it found.
trait Sink {
    /// Element `position` of `array`, raw, found at `offset`.
    fn element(
        &mut self,
        array: IdKind,
        position: u64,
        raw: &[u8],
        offset: u64,
    ) -> Result<(), Failure>;
    /// A top-level member other than the three arrays: raw key, raw value.
    fn extra(&mut self, key_raw: &[u8], value_raw: &[u8]) -> Result<(), Failure>;
    /// The scan got to byte `offset`.
    fn progress(&mut self, offset: u64) -> Result<(), Failure>;
}

/// The scanning half: walks the document's structure with the validating
/// scanner, finds the elements and where the users and songs arrays are.
struct DocumentScan<'a, S: Sink + ?Sized> {
    path: &'a Path,
    sink: &'a mut S,
    /// Where the users and songs arrays are in MIXTAPE.
    ranges: ArrayRanges,
    /// The document's top-level member names, for the message when it has
    /// none of the three arrays.
    top_level_keys: Vec<String>,
}

/// The processing half: reads each element's id, keeps users' and songs' ids
/// for the indexes, checks and stores playlists and other members.
struct Processor<'a> {
    writer: DocumentWriter<'a>,
    path: &'a Path,
    /// Whether playlists are kept as places in MIXTAPE's text (a file, or
    /// the local copy), or copied into the store (an object read once).
    places: bool,
    /// Reused buffer for the minified element.
    minified: Vec<u8>,
    figures: ImportFigures,
    /// The owner member name of the first playlist (docs/GUIDE.md "The changes file", new playlists).
    owner_key: Option<String>,
    /// Largest playlist id of the form `[1-9][0-9]{0,17}` (docs/GUIDE.md "The changes file", automatic ids).
    max_playlist_id: u64,
    extras: u64,
    /// The ids of users, songs and playlists, on their way to the id indexes
    /// (where duplicates are found).
    users: IdSorter,
    songs: IdSorter,
    playlists: IdSorter,
    /// The ids the playlists name, for the warning count.
    references: references::References,
    progress: &'a mut dyn FnMut(u64),
}

/// Elements sent from the scanning thread at once, and batches in flight:
/// bounded, so memory does not grow when processing is the slower half.
const BATCH_BYTES: usize = 1 << 20;
const BATCHES_IN_FLIGHT: usize = 4;

/// What the scanning thread sends: elements (their bytes in one buffer), and
/// with the last batch, how the scan ended.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    items: Vec<Item>,
    end: Option<Result<ArrayRanges, Failure>>,
}

enum Item {
    Element {
        array: IdKind,
        position: u64,
        offset: u64,
        bytes: std::ops::Range<usize>,
    },
    Extra {
        key: std::ops::Range<usize>,
        value: std::ops::Range<usize>,
    },
    Progress(u64),
}

/// The scanning thread's sink: fills batches and sends them.
struct ChannelSink {
    batch: Batch,
    tx: std::sync::mpsc::SyncSender<Batch>,
}

impl ChannelSink {
    fn keep(&mut self, raw: &[u8]) -> std::ops::Range<usize> {
        let start = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(raw);
        start..self.batch.bytes.len()
    }

    fn send_if_full(&mut self) -> Result<(), Failure> {
        if self.batch.bytes.len() < BATCH_BYTES {
            return Ok(());
        }
        // A closed channel: the processing half failed and reports why.
        self.tx
            .send(std::mem::take(&mut self.batch))
            .map_err(|_| Failure::Other(anyhow!("import stopped")))
    }
}

impl Sink for ChannelSink {
    fn element(
        &mut self,
        array: IdKind,
        position: u64,
        raw: &[u8],
        offset: u64,
    ) -> Result<(), Failure> {
        let bytes = self.keep(raw);
        self.batch.items.push(Item::Element {
            array,
            position,
            offset,
            bytes,
        });
        self.send_if_full()
    }

    fn extra(&mut self, key_raw: &[u8], value_raw: &[u8]) -> Result<(), Failure> {
        let key = self.keep(key_raw);
        let value = self.keep(value_raw);
        self.batch.items.push(Item::Extra { key, value });
        self.send_if_full()
    }

    fn progress(&mut self, offset: u64) -> Result<(), Failure> {
        self.batch.items.push(Item::Progress(offset));
        Ok(())
    }
}

impl Sink for Processor<'_> {
    fn element(
        &mut self,
        array: IdKind,
        position: u64,
        raw: &[u8],
        offset: u64,
    ) -> Result<(), Failure> {
        self.element(array, position, raw, offset)?;
        crate::run::fault::point("import-element");
        Ok(())
    }

    fn extra(&mut self, key_raw: &[u8], value_raw: &[u8]) -> Result<(), Failure> {
        self.minified.clear();
        json::minify_into(value_raw, &mut self.minified);
        let key = String::from_utf8_lossy(key_raw);
        let raw = String::from_utf8_lossy(&self.minified);
        self.writer.extra(self.extras, &key, &raw)?;
        self.extras += 1;
        Ok(())
    }

    fn progress(&mut self, offset: u64) -> Result<(), Failure> {
        (self.progress)(offset);
        Ok(())
    }
}

impl<'a, S: Sink + ?Sized> DocumentScan<'a, S> {
    fn new(path: &'a Path, sink: &'a mut S) -> Self {
        DocumentScan {
            path,
            sink,
            ranges: ArrayRanges::default(),
            top_level_keys: Vec::new(),
        }
    }
    fn document(&mut self, s: &mut Scanner<Reader>) -> Result<(), Failure> {
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
        let mut seen: Vec<IdKind> = Vec::new();
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
                    "users" => Some(IdKind::Users),
                    "playlists" => Some(IdKind::Playlists),
                    "songs" => Some(IdKind::Songs),
                    _ => None,
                };
                match array {
                    Some(array) => {
                        if seen.contains(&array) {
                            return Err(located(
                                self.path,
                                key_offset,
                                &format!("member {} appears twice", array.array_name()),
                            ));
                        }
                        seen.push(array);
                        self.array(s, array)?;
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
        self.sink.progress(s.offset())
    }

    fn array(&mut self, s: &mut Scanner<Reader>, array: IdKind) -> Result<(), Failure> {
        if s.peek()? != Some(b'[') {
            let at = s.offset();
            return Err(located(
                self.path,
                at,
                &format!("member {} must be an array", array.array_name()),
            ));
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
            self.sink.element(array, position, s.captured(), offset)?;
            s.end_capture();
            position += 1;
            if position.is_multiple_of(1024) {
                self.sink.progress(s.offset())?;
                crate::run::interrupt::check()?;
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
                IdKind::Users => self.ranges.users = Some(range),
                IdKind::Songs => self.ranges.songs = Some(range),
                IdKind::Playlists => {}
            }
            return Ok(());
        }
    }

    fn extra(&mut self, s: &mut Scanner<Reader>, key_raw: &[u8]) -> Result<(), Failure> {
        s.peek()?;
        s.begin_capture();
        s.value()?;
        let sent = self.sink.extra(key_raw, s.captured());
        s.end_capture();
        sent
    }
}

/// An error about the element of MIXTAPE (at `path`) at `offset`, with its
/// line and column.
fn located(path: &Path, offset: u64, message: &str) -> Failure {
    Failure::Other(errors::at_offset("MIXTAPE", path, offset, message))
}

impl Processor<'_> {
    /// Takes a batch from the scanning thread, in order.
    fn take(&mut self, batch: &Batch) -> Result<(), Failure> {
        for item in &batch.items {
            match item {
                Item::Element {
                    array,
                    position,
                    offset,
                    bytes,
                } => Sink::element(
                    self,
                    *array,
                    *position,
                    &batch.bytes[bytes.clone()],
                    *offset,
                )?,
                Item::Extra { key, value } => {
                    Sink::extra(self, &batch.bytes[key.clone()], &batch.bytes[value.clone()])?
                }
                Item::Progress(offset) => Sink::progress(self, *offset)?,
            }
        }
        Ok(())
    }

    fn element(
        &mut self,
        array: IdKind,
        position: u64,
        raw: &[u8],
        offset: u64,
    ) -> Result<(), Failure> {
        if array == IdKind::Playlists {
            self.minified.clear();
            json::minify_into(raw, &mut self.minified);
            let minified = std::mem::take(&mut self.minified);
            let in_mixtape = offset..offset + raw.len() as u64;
            let result = self.playlist(position, &minified, offset, in_mixtape);
            self.minified = minified;
            return result;
        }
        // Users and songs never change: only their ids are kept (for the
        // index; duplicates are found when the ids are sorted), and export
        // copies them from MIXTAPE again. So only the id is read, in place.
        let (id, written) = self.id_of(array, position, json::find_member(raw, "id"), offset)?;
        let written = std::str::from_utf8(written).map_err(|e| anyhow!(e))?;
        if array == IdKind::Users {
            self.users.push(&id, written, position, offset)?;
            self.figures.users += 1;
        } else {
            self.songs.push(&id, written, position, offset)?;
            self.figures.songs += 1;
        }
        Ok(())
    }

    /// An element's id (its text, and as written), from what looking for its
    /// `id` member found: `None` when it is not an object.
    fn id_of<'r>(
        &self,
        array: IdKind,
        position: u64,
        found: Option<Option<&'r [u8]>>,
        offset: u64,
    ) -> Result<(std::borrow::Cow<'r, str>, &'r [u8]), Failure> {
        let name = array.array_name();
        let Some(found) = found else {
            return Err(located(
                self.path,
                offset,
                &format!("{name}[{position}] is not an object"),
            ));
        };
        let Some(id_raw) = found else {
            return Err(located(
                self.path,
                offset,
                &format!("{name}[{position}] has no id"),
            ));
        };
        let Some(id) = json::id_text(id_raw) else {
            return Err(located(
                self.path,
                offset,
                &format!(
                    "{name}[{position}]: id must be a string or an integer, found {}",
                    String::from_utf8_lossy(id_raw)
                ),
            ));
        };
        Ok((id, id_raw))
    }

    /// Checks and stores a playlist: `minified` is MIXTAPE's bytes
    /// `in_mixtape` minified.
    fn playlist(
        &mut self,
        position: u64,
        minified: &[u8],
        offset: u64,
        in_mixtape: std::ops::Range<u64>,
    ) -> Result<(), Failure> {
        let members = json::object_members(minified);
        let found = members.as_ref().map(|m| json::member(m, "id"));
        let (id, _) = self.id_of(IdKind::Playlists, position, found, offset)?;
        let members = members.expect("id_of checked it is an object");
        let name = IdKind::Playlists.array_name();
        let raw_text = std::str::from_utf8(minified).map_err(|e| anyhow!(e))?;
        // The owner as the warning count reads it (the merge's, too).
        let owner = json::member(&members, "owner_id")
            .or_else(|| json::member(&members, "user_id"))
            .and_then(json::id_text);
        let songs = json::member(&members, "song_ids").map(json::array_elements);
        let songs = songs.unwrap_or(Some(Vec::new()));
        let noted = songs.is_some_and(|songs| self.references.playlist(owner.as_deref(), &songs));
        if !noted {
            return Err(located(
                self.path,
                offset,
                &format!("{name}[{position}] (id {id}): song_ids must be an array of song ids"),
            ));
        }
        if self.owner_key.is_none() {
            let uses_user_id = json::member(&members, "owner_id").is_none()
                && json::member(&members, "user_id").is_some();
            self.owner_key = Some(if uses_user_id { "user_id" } else { "owner_id" }.into());
        }
        if let Some(v) = json::auto_id_value(&id) {
            self.max_playlist_id = self.max_playlist_id.max(v);
        }
        self.playlists.push(&id, "", position, offset)?;
        // A playlist is kept as a place in MIXTAPE only where MIXTAPE's text
        // is a file: read back one at a time, an object would cost a request
        // each.
        let place_in_mixtape = self.places.then_some(in_mixtape);
        self.writer.playlist(position, raw_text, place_in_mixtape)?;
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
