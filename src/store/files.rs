//! The files that go with a work store on this host: id indexes, kept
//! decompressed inputs, copies of standard input, SQLite's WAL, and their
//! removal.

use super::types::IdKind;
use super::types::InputKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A server store's id index file on this host: the run's id in its name,
/// so that a cache never serves another run.
pub(super) fn tagged_index_path(base: &Path, tag: &str, which: IdKind) -> PathBuf {
    crate::run::paths::with_suffix(base, &format!(".{tag}{}", which.suffix()))
}

/// The kept decompressed inputs that go with a store at `base`, and their
/// partial files.
pub(super) fn kept_texts(base: &Path) -> [PathBuf; 4] {
    let kept = |kind: InputKind| crate::run::paths::with_suffix(base, kind.kept_text_suffix());
    [
        kept(InputKind::Mixtape),
        kept(InputKind::Changes),
        crate::run::paths::with_suffix(&kept(InputKind::Mixtape), ".partial"),
        crate::run::paths::with_suffix(&kept(InputKind::Changes), ".partial"),
    ]
}

/// The inputs read from standard input that go with a store at `base`
/// ([`InputKind::stdin_suffix`]). A new store keeps them (they are read
/// before it is made); a finished run's clean-up removes them.
pub(super) fn stdin_copies(base: &Path) -> [PathBuf; 2] {
    InputKind::ALL.map(|kind| crate::run::paths::with_suffix(base, kind.stdin_suffix()))
}

/// Removes files, those already gone included.
pub(super) fn remove_paths(files: &[PathBuf]) -> Result<()> {
    for file in files {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// The WAL of the SQLite database at `path` (SQLite's name for it).
pub(super) fn wal_of(path: &Path) -> PathBuf {
    crate::run::paths::with_suffix(path, "-wal")
}

/// Removes the SQLite database, its WAL and shared-memory files, its id
/// indexes and the kept decompressed inputs.
pub fn remove_files(path: &Path) -> Result<()> {
    let mut files = kept_texts(path).to_vec();
    files.extend([
        path.to_path_buf(),
        wal_of(path),
        crate::run::paths::with_suffix(path, "-shm"),
    ]);
    files.extend(IdKind::ALL.map(|k| crate::run::paths::with_suffix(path, k.suffix())));
    remove_paths(&files)
}
