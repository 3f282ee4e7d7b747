//! The run's two inputs, as the harness opens them and the store records them.
//!
//! An [`Input`] is a file the user named (MIXTAPE or CHANGES): how the work
//! database recognises it again on resume (its fingerprint, always of the file
//! the user gave), whether it is compressed (its magic bytes), and the text the
//! stages read: the file itself, or for a compressed input its decompressed copy
//! kept beside the work database (`DB.mixtape`, `DB.changes`), which the
//! decompress stage writes ([`crate::stages::decompress::stage`]).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::place;
use crate::run::fingerprint;
use crate::store::{InputKind, Store, WorkFiles};

/// The run's two inputs.
pub struct Inputs {
    pub mixtape: Input,
    pub changes: Input,
}

impl Inputs {
    /// Both, MIXTAPE first (in [`InputKind::ALL`] order).
    pub fn both(&self) -> [&Input; 2] {
        [&self.mixtape, &self.changes]
    }
}

/// An input, as the store records it.
pub struct Input {
    pub kind: InputKind,
    /// The file the user named, canonical.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    pub fingerprint: String,
    /// `None` for plain text.
    pub compression: Option<Compression>,
    /// What the stages read: `path`, or the kept decompressed text.
    pub text: PathBuf,
    /// For a compressed input, the file its kept text is written through
    /// and renamed from once whole.
    pub partial_text: Option<PathBuf>,
}

impl Input {
    /// Looks at the input at `path` for a run whose work store has `files`.
    pub fn open(kind: InputKind, path: &Path, files: &WorkFiles) -> Result<Input> {
        let cannot_read = || format!("cannot read {} {}", kind.label(), path.display());
        if place::is_object(path) {
            return Input::open_object(kind, path, files).with_context(cannot_read);
        }
        // Before any open: a FIFO would block the open, a device would never end.
        let meta = std::fs::metadata(path).with_context(cannot_read)?;
        if !meta.is_file() {
            bail!(
                "{} {} is not a regular file (it is {}); give a file",
                kind.label(),
                path.display(),
                kind_of_file(&meta.file_type())
            );
        }
        let fingerprint = fingerprint::of_file(path).with_context(cannot_read)?;
        let compression = Compression::of_file(path).with_context(cannot_read)?;
        let size = std::fs::metadata(path).with_context(cannot_read)?.len();
        let path = path.canonicalize().with_context(cannot_read)?;
        let (text, partial_text) = match compression {
            Some(_) => (
                files.kept_text(kind).to_path_buf(),
                Some(files.partial_text(kind).to_path_buf()),
            ),
            None => (path.clone(), None),
        };
        Ok(Input {
            kind,
            path,
            size,
            fingerprint,
            compression,
            text,
            partial_text,
        })
    }

    /// An input in a bucket: pinned now (its size, ETag and version id are
    /// its fingerprint), never canonicalised (its URL is its name).
    fn open_object(kind: InputKind, path: &Path, files: &WorkFiles) -> Result<Input> {
        let fingerprint = place::fingerprint(path)?;
        let compression = Compression::of_magic(&place::s3::read::head_bytes(path, 4)?);
        Ok(Input {
            kind,
            path: path.to_path_buf(),
            size: place::size(path)?,
            fingerprint,
            compression,
            text: match compression {
                Some(_) => files.kept_text(kind).to_path_buf(),
                None => path.to_path_buf(),
            },
            partial_text: compression.map(|_| files.partial_text(kind).to_path_buf()),
        })
    }

    /// MIXTAPE in a bucket, plain, for a SQLite store: its text becomes a
    /// local copy beside the store, which the import writes as it streams
    /// the object ([`crate::stages::import::LocalCopy`]). Later stages read
    /// the document's playlists back one at a time, which costs a request
    /// each from an object and nothing from a file; without the copy they
    /// are copied into the store, which takes the import longer
    /// (BENCHMARKS.md, "A bucket"). A server store keeps them itself.
    pub fn copied_while_imported(self, files: &WorkFiles) -> Input {
        if self.kind != InputKind::Mixtape
            || self.compression.is_some()
            || !place::is_object(&self.path)
        {
            return self;
        }
        Input {
            text: files.kept_text(self.kind).to_path_buf(),
            partial_text: Some(files.partial_text(self.kind).to_path_buf()),
            ..self
        }
    }

    /// Whether the text is a local copy of the input that the import writes
    /// as it reads the input ([`Input::copied_while_imported`]): a plain
    /// input whose text is another file.
    pub fn is_copied(&self) -> bool {
        self.compression.is_none() && self.text != self.path
    }

    /// What the stage that reads this input first reads: the text, or the
    /// object a local copy is made from.
    pub fn source(&self) -> &Path {
        if self.is_copied() {
            &self.path
        } else {
            &self.text
        }
    }

    /// Reads standard input (MIXTAPE or CHANGES given as `-`) once into a
    /// file kept beside the work database `db` (`DB.stdin-mixtape`,
    /// `DB.stdin-changes`, private), which is then the input as if the user
    /// had named it: read as it is when plain, decompressed when it is gzip
    /// or zstd (recognised by its magic bytes, as a file is). When the kept
    /// file already holds exactly these bytes (SHA-256), it is kept as it is,
    /// so that a rerun with the same stream on stdin resumes; other bytes
    /// replace it, and the run starts fresh. `progress` gets the bytes read.
    pub fn from_stdin(
        kind: InputKind,
        files: &WorkFiles,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Input> {
        let spooled = files.stdin_copy(kind).to_path_buf();
        let dir = spooled.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let reading = || format!("reading {} from standard input", kind.label());
        let mut temporary = tempfile::Builder::new()
            .prefix(".stdin-")
            .tempfile_in(dir)
            .with_context(|| format!("making a file in {} to keep it", dir.display()))?;
        let read = copy_hashed(
            &mut std::io::stdin().lock(),
            temporary.as_file_mut(),
            progress,
        )
        .with_context(reading)?;
        temporary.as_file().sync_all().with_context(reading)?;
        let kept = match std::fs::File::open(&spooled) {
            Ok(mut file) => copy_hashed(&mut file, &mut std::io::sink(), &mut |_| {}).ok(),
            Err(_) => None,
        };
        if kept != Some(read) {
            temporary
                .persist(&spooled)
                .with_context(|| format!("keeping {} at {}", kind.label(), spooled.display()))?;
            crate::run::paths::sync_directory_of(&spooled)?;
        }
        Input::open(kind, &spooled, files)
    }

    /// Why the store's record of this input differs from the file, if it does.
    pub fn changed_since(&self, store: &Store) -> Result<Option<String>> {
        let (path, print) = store.recorded_input(self.kind)?;
        let label = self.kind.label();
        Ok(if path.as_deref() != Some(&*self.path.to_string_lossy()) {
            Some(format!(
                "{label} is another file than the work database was made from"
            ))
        } else if print.as_deref() != Some(&self.fingerprint) && place::is_object(&self.path) {
            Some(format!(
                "{label} {} was replaced since the work database was made",
                self.path.display()
            ))
        } else if print.as_deref() != Some(&self.fingerprint) {
            Some(format!("{label} changed since the work database was made"))
        } else {
            None
        })
    }

    /// Records the input in a new store; a plain input is also the text the
    /// stages read (a compressed one's text is recorded once it is whole).
    pub fn record(&self, store: &Store) -> Result<()> {
        let text =
            (self.text == self.path).then_some((self.text.as_path(), self.fingerprint.as_str()));
        store.record_input(
            self.kind,
            &self.path.to_string_lossy(),
            &self.fingerprint,
            text,
        )
    }

    /// The size of the text the stages read.
    pub fn text_size(&self) -> Result<u64> {
        place::size(self.source())
    }

    /// Whether the text the stages read is there and whole: always for a plain
    /// input; for a compressed one, when the kept file is the one the store
    /// recorded after its decompression finished.
    pub fn text_is_whole(&self, store: &Store) -> Result<bool> {
        if self.text == self.path {
            return Ok(true);
        }
        Ok(match store.input_text(self.kind)? {
            Some((path, print)) if path == self.text => {
                place::fingerprint(&path).ok().as_deref() == Some(&print)
            }
            _ => false,
        })
    }

    /// Adds to an error from a stage that read this input's text where its
    /// positions are, when that text is not the file the user named.
    pub fn explain_positions(&self, error: anyhow::Error) -> anyhow::Error {
        match self.compression {
            None => error,
            Some(format) => error.context(format!(
                "{} {} is {}-compressed, so the line, column and byte offset that follow are in its decompressed text (kept at {})",
                self.kind.label(),
                self.path.display(),
                format.name(),
                self.text.display()
            )),
        }
    }
}

/// What a file that is not a regular file is, for messages.
fn kind_of_file(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Copies `from` to `to`, returning the SHA-256 of what was copied; `progress`
/// gets the bytes copied so far, about once per MiB.
fn copy_hashed(
    from: &mut dyn std::io::Read,
    to: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Vec<u8>> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buffer[..n]);
        to.write_all(&buffer[..n])?;
        copied += n as u64;
        progress(copied);
    }
    to.flush()?;
    Ok(hash.finish().as_ref().to_vec())
}

/// A compression format an input may come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// RFC 1952: ID1, ID2.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// RFC 8878: a zstd frame's magic number, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// How messages, the store and the run report name it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The format whose magic bytes `head` starts with; `None` for anything
    /// else, which is read as plain text (JSON cannot start with these bytes).
    pub fn of_magic(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else if head.starts_with(&ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// The format of the file at `path`, from its first bytes.
    pub fn of_file(path: &Path) -> io::Result<Option<Compression>> {
        let mut head = [0u8; 4];
        let mut file = File::open(path)?;
        let mut got = 0;
        while got < head.len() {
            match file.read(&mut head[got..])? {
                0 => break,
                n => got += n,
            }
        }
        Ok(Compression::of_magic(&head[..got]))
    }
}
