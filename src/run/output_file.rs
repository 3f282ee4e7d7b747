//! The files a run writes for its user (OUTPUT and the rejects report): checked
//! before any work, replaced whole or not at all, with the permissions people
//! expect.
//!
//! A file is written to a temporary file beside it, `.NAME.XXXXXX.tmp`, flushed
//! to disk and renamed over NAME, so an existing file is replaced whole or not at
//! all whatever happens meanwhile. A `kill -9` between creating and renaming
//! leaves the temporary file behind; the next run on that file removes it
//! ([`remove_stale_temporaries`]).
//!
//! ## Permissions
//!
//! A new file gets `0666` less the umask, as any program's would (the temporary
//! file is created with that mode; tempfile's default, `0600`, would survive the
//! rename and make every OUTPUT private). Replacing an existing file keeps its
//! mode, so running with OUTPUT = MIXTAPE does not change who may read it.

use std::fs::Permissions;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::run::paths::directory_of;

/// Random characters tempfile puts in a temporary file's name.
const RANDOM_LEN: usize = 6;
const TEMP_SUFFIX: &str = ".tmp";

/// The prefix of `path`'s temporary files: `.NAME.`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

fn temp_builder(prefix: &str) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder
        .prefix(prefix)
        .suffix(TEMP_SUFFIX)
        .rand_bytes(RANDOM_LEN)
        .permissions(Permissions::from_mode(0o666));
    builder
}

/// Fails, before any work is done, when `path` (`what`, for the message) could
/// not be written: it is a directory, its directory is missing, or no file can
/// be created there.
pub fn check_writable(what: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{what} {} is a directory; give a file path", path.display());
    }
    let dir = directory_of(path);
    if !dir.is_dir() {
        bail!("{what} directory {} does not exist", dir.display());
    }
    // Creating (and at once removing) a file is the only honest test: modes,
    // ACLs, read-only mounts and quotas all have their say.
    temp_builder(&temp_prefix(path))
        .tempfile_in(dir)
        .with_context(|| format!("{what} directory {} is not writable", dir.display()))?;
    Ok(())
}

/// Removes the temporary files that an interrupted write of `path` left
/// beside it (see module docs). Only names of exactly our pattern are touched.
pub fn remove_stale_temporaries(path: &Path) -> Result<()> {
    let dir = directory_of(path);
    let prefix = temp_prefix(path);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_ours = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX))
            .is_some_and(|random| {
                random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if is_ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let stale = entry.path();
            std::fs::remove_file(&stale)
                .with_context(|| format!("removing stale {}", stale.display()))?;
        }
    }
    Ok(())
}

/// The temporary file [`write_atomically_then`] writes through: a buffer over
/// the file itself, so that `std::io::copy` from another file goes through the
/// kernel (`copy_file_range`) without passing through this process.
pub type Temporary<'a> = BufWriter<&'a std::fs::File>;

/// Writes `path` through a temporary file beside it and a rename (see module
/// docs), calling `before_rename` with the temporary file once
/// it is whole and on disk, just before it is renamed over `path` (the
/// pipeline records there what it is about to publish). The directory is
/// synced after the rename, so the new name survives a power cut.
pub fn write_atomically_then(
    path: &Path,
    write: impl FnOnce(&mut Temporary) -> Result<()>,
    before_rename: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = directory_of(path);
    let existing_mode = std::fs::metadata(path).ok().map(|m| m.permissions());
    let temp = temp_builder(&temp_prefix(path))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    if let Some(mode) = existing_mode {
        temp.as_file()
            .set_permissions(mode)
            .with_context(|| format!("keeping the permissions of {}", path.display()))?;
    }
    with_early_writeback(temp.as_file(), || {
        let mut out = BufWriter::with_capacity(1 << 20, temp.as_file());
        write(&mut out).with_context(|| format!("writing {}", path.display()))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    })?;
    temp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    before_rename(temp.path())?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    crate::run::paths::sync_directory_of(path)
}

/// Runs `write`, which writes `file` front to back, while a helper thread
/// asks the kernel to start writing what it has written so far to disk
/// ([`WRITEBACK_EVERY`] bytes at a time, `sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`: it starts the writes and waits for none).
///
/// Why: a file is synced before it is renamed into place, and without this
/// the kernel writes nothing of it until then (its dirty pages stay under
/// the kernel's thresholds), so the whole file went to disk in that one sync
/// while every core sat idle (BENCHMARKS.md, "What was tried": writing
/// OUTPUT back early). Started
/// early, the disk writes overlap the rendering, and the sync waits for the
/// tail. It changes nothing about what is durable when: only the sync after
/// the write makes a promise, and its errors are the ones reported.
///
/// Returns `write`'s result and how many bytes the helper asked to have
/// written (for the tests).
fn with_early_writeback<T>(
    file: &std::fs::File,
    write: impl FnOnce() -> Result<T>,
) -> Result<(T, u64)> {
    use std::sync::mpsc::{channel, RecvTimeoutError};
    std::thread::scope(|scope| {
        // The helper ticks until `stop` hangs up, as `apply::keep_lease` does.
        let (stop, stopped) = channel::<()>();
        let helper = scope.spawn(move || {
            let mut started = 0u64;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WRITEBACK_POLL) {
                let Ok(written) = file.metadata().map(|m| m.len()) else {
                    break;
                };
                if written >= started + WRITEBACK_EVERY {
                    start_writeback(file, started, written - started);
                    started = written;
                }
            }
            started
        });
        let result = write();
        drop(stop);
        let asked = helper.join().unwrap_or(0);
        result.map(|value| (value, asked))
    })
}

/// How much newly written data makes the helper of [`with_early_writeback`]
/// start writing it to disk.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// How often that helper looks at the file's size.
const WRITEBACK_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Starts writing bytes `from..from + len` of `file` to disk, without
/// waiting. A failure is ignored: the sync that follows the write reports it.
fn start_writeback(file: &std::fs::File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(from), Ok(len)) = (i64::try_from(from), i64::try_from(len)) else {
        return;
    };
    // SAFETY: `sync_file_range` reads no memory of this process; the
    // descriptor is open for the duration of the call (`file` is borrowed).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn stale_temporaries_of_this_file_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.json");
        let names = [
            ".o.json.aB3xY9.tmp",               // ours: removed
            ".o.json.aB3xY9Z.tmp",              // other length: kept
            ".o.json.rejects.jsonl.aB3xY9.tmp", // another file's: kept
            ".p.json.aB3xY9.tmp",               // another file's: kept
            "o.json.aB3xY9.tmp",                // no dot: kept
        ];
        for n in names {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        remove_stale_temporaries(&out).unwrap();
        for n in names {
            assert_eq!(dir.path().join(n).exists(), n != names[0], "{n}");
        }
    }

    /// A file written over a while has its pages sent to disk as it grows,
    /// and comes out the bytes written.
    #[test]
    fn a_growing_file_is_written_back_early_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("f")).unwrap();
        let piece: Vec<u8> = (0..WRITEBACK_EVERY).map(|i| (i % 251) as u8).collect();
        let ((), asked) = with_early_writeback(&file, || {
            for _ in 0..3 {
                (&file).write_all(&piece)?;
                // Long enough for the helper to look at the size (bounded:
                // three pauses of a few polls).
                std::thread::sleep(WRITEBACK_POLL * 5);
            }
            Ok(())
        })
        .unwrap();
        assert!(
            asked >= 2 * WRITEBACK_EVERY,
            "only {asked} bytes were sent to disk early"
        );
        let back = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(back.len() as u64, 3 * WRITEBACK_EVERY);
        assert!(back.chunks(piece.len()).all(|chunk| chunk == piece));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.json");
        std::fs::write(&out, "old").unwrap();
        let failed = write_atomically_then(
            &out,
            |w| {
                w.write_all(b"new")?;
                bail!("disk on fire")
            },
            |_| Ok(()),
        );
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
