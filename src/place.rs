//! Where a run's files live: on this host's filesystem, or as objects in a
//! bucket (`s3://BUCKET/KEY`, docs/GUIDE.md "Inputs and outputs in a
//! bucket"). Every stage reads its inputs and writes its results through
//! this module, so a stage never asks which of the two a path is.
//!
//! A path is an object when it starts with `s3://`; anything else is a file
//! (a file whose name starts so is still reachable as `./s3://...`). An
//! object URL travels through the run as a [`Path`], the way a file's path
//! does, so the store, the plan and the worker protocol carry it unchanged.
//!
//! What the two kinds share:
//! - [`open_at`]: a reader from a byte offset (a file seeked; an object read
//!   by range, conditional on the ETag the run pinned, [`s3::read`]).
//! - [`size`], [`fingerprint`]: how an input is recognised again (a file's
//!   sampled fingerprint; an object's size, ETag and version id).
//! - [`write_whole`]: a result written whole or not at all (a file through a
//!   temporary and a rename; an object through a multipart upload completed
//!   at the end, [`s3::write`]).
//! - [`remove`], [`check_writable`], [`remove_stale_temporaries`].

pub mod errors;
pub mod s3;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::run::output_file::{self, Temporary};

/// A reader of an input from some offset on.
pub type Reader = Box<dyn Read + Send>;

/// Whether `path` names an object in a bucket (see the module docs).
pub fn is_object(path: &Path) -> bool {
    path.as_os_str()
        .as_encoded_bytes()
        .starts_with(s3::SCHEME.as_bytes())
}

/// A reader of `path` from byte `offset` to its end.
pub fn open_at(path: &Path, offset: u64) -> std::io::Result<Reader> {
    open_range(path, offset, u64::MAX)
}

/// A reader of `path` from byte `from` to byte `to` (or its end). An error
/// names `path` and says why.
pub fn open_range(path: &Path, from: u64, to: u64) -> std::io::Result<Reader> {
    if is_object(path) {
        return s3::read::ObjectReader::open_range(path, from, to)
            .map(|reader| Box::new(reader) as Reader)
            .map_err(|e| std::io::Error::other(format!("{e:#}")));
    }
    let mut file = File::open(path)?;
    if from > 0 {
        file.seek(SeekFrom::Start(from))?;
    }
    Ok(match to {
        u64::MAX => Box::new(file),
        _ => Box::new(file.take(to.saturating_sub(from))),
    })
}

/// The size of `path` in bytes.
pub fn size(path: &Path) -> Result<u64> {
    if is_object(path) {
        return Ok(s3::read::pin_of(path)?.size);
    }
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// How the store recognises `path` again ([`crate::run::fingerprint`] for a
/// file; [`s3::read::Pin`] for an object, asked of the bucket).
pub fn fingerprint(path: &Path) -> Result<String> {
    if is_object(path) {
        return Ok(s3::read::Pin::of(path)?.fingerprint());
    }
    crate::run::fingerprint::of_file(path).with_context(|| format!("reading {}", path.display()))
}

/// Takes `fingerprint` (recorded by the store) as what every later read of
/// the object `path` must find: an object replaced since is refused. A file
/// needs no pin: its fingerprint is checked where it is read.
pub fn pin(path: &Path, fingerprint: &str) -> Result<()> {
    if is_object(path) {
        s3::read::Pin::parse(fingerprint)
            .with_context(|| format!("the work store's record of {}", path.display()))?
            .hold(path);
    }
    Ok(())
}

/// Removes `path`; one already gone is no error.
pub fn remove(path: &Path) -> Result<()> {
    if is_object(path) {
        return s3::write::delete(path);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Fails, before any work, when `path` (`what`, for the message) could not be
/// written (see [`output_file::check_writable`]; for an object, its bucket
/// must answer a listing of its name).
pub fn check_writable(what: &str, path: &Path) -> Result<()> {
    if is_object(path) {
        return s3::write::check_writable(what, path);
    }
    output_file::check_writable(what, path)
}

/// Removes what a killed run left of its write of `path`: temporary files
/// beside a file, an unfinished upload of an object.
pub fn remove_stale_temporaries(path: &Path) -> Result<()> {
    if is_object(path) {
        return s3::write::abort_stale_upload(path);
    }
    output_file::remove_stale_temporaries(path)
}

/// Where [`write_whole`] writes: the temporary file, or the upload.
pub enum Sink<'a, 'f> {
    File(&'a mut Temporary<'f>),
    Object(&'a mut s3::write::ObjectWriter),
}

impl Sink<'_, '_> {
    /// Appends all of `file` from its current position (through the kernel
    /// when the sink is a file).
    pub fn append_file(&mut self, file: &mut File) -> std::io::Result<u64> {
        match self {
            Sink::File(out) => std::io::copy(file, *out),
            Sink::Object(out) => out.append_file(file),
        }
    }
}

impl Write for Sink<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(out) => out.write(buf),
            Sink::Object(out) => out.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(out) => out.write_all(buf),
            Sink::Object(out) => out.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(out) => out.flush(),
            Sink::Object(out) => out.flush(),
        }
    }
}

/// Writes `path` whole or not at all. `on_whole` is called with what holds
/// the new bytes once they are whole: for a file, its temporary, just before
/// the rename; for an object, the object itself, just after its upload
/// completed (an object is not readable before, and a run never writes an
/// object it reads, so nothing can be lost between the two).
pub fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut Sink) -> Result<()>,
    on_whole: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if is_object(path) {
        let mut upload = s3::write::ObjectWriter::create(path)?;
        write(&mut Sink::Object(&mut upload))
            .with_context(|| format!("writing {}", path.display()))?;
        upload.finish()?;
        return on_whole(path);
    }
    output_file::write_atomically_then(path, |out| write(&mut Sink::File(out)), on_whole)
}

/// [`write_whole`] with nothing to do once whole.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    write_whole(path, |out| write(out), |_| Ok(()))
}
