//! The files that go with a work store on this host, named in one place
//! ([`WorkFiles`]): the SQLite file's WAL, shared memory, lock and the file
//! being created, the id indexes, the kept decompressed inputs and their
//! partial files, the copies of standard input; and their removal.
//!
//! Every other module takes these paths from a [`WorkFiles`]: the harness's
//! path plan compares them with the user's files before any work, so a path
//! made anywhere else would escape that check.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::types::{IdKind, InputKind};
use crate::run::paths::with_suffix;

/// Every file on this host that goes with the work store at `base` (the
/// SQLite file itself, or a server store's base for its local files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkFiles {
    pub base: PathBuf,
    /// SQLite's write-ahead log and shared memory (SQLite's names for them).
    pub wal: PathBuf,
    pub shm: PathBuf,
    /// The harness run's exclusive lock ([`super::RunLock`]).
    pub lock: PathBuf,
    /// A new SQLite store while it is made, and its WAL and shared memory.
    pub creating: [PathBuf; 3],
    /// The id indexes, in [`IdKind::ALL`]'s order.
    indexes: [PathBuf; 3],
    /// The kept decompressed inputs, in [`InputKind::ALL`]'s order, and the
    /// partial files they are written through.
    kept: [PathBuf; 2],
    partial: [PathBuf; 2],
    /// The inputs read from standard input, kept ([`InputKind::ALL`]'s order).
    stdin: [PathBuf; 2],
}

impl WorkFiles {
    /// The files of the store at `base`. A server store's `base` may be an
    /// object (OUTPUT in a bucket, with `.work` appended): then the kept
    /// decompressed inputs, which the workers of every host read, are
    /// objects beside it, and this host's own files (id indexes, copies of
    /// standard input) go in the current directory under its name.
    pub fn of(base: &Path) -> WorkFiles {
        let shared = base;
        let own;
        let base = if crate::place::is_object(base) {
            own = PathBuf::from(base.file_name().unwrap_or(base.as_os_str()));
            own.as_path()
        } else {
            base
        };
        let creating = with_suffix(base, ".creating");
        let kept = InputKind::ALL.map(|kind| with_suffix(shared, kind.kept_text_suffix()));
        WorkFiles {
            base: base.to_path_buf(),
            wal: with_suffix(base, "-wal"),
            shm: with_suffix(base, "-shm"),
            lock: with_suffix(base, ".lock"),
            creating: [
                creating.clone(),
                with_suffix(&creating, "-wal"),
                with_suffix(&creating, "-shm"),
            ],
            indexes: IdKind::ALL.map(|kind| with_suffix(base, kind.suffix())),
            partial: kept.clone().map(|kept| with_suffix(&kept, ".partial")),
            kept,
            stdin: InputKind::ALL.map(|kind| with_suffix(base, kind.stdin_suffix())),
        }
    }

    /// The id index of `which` beside a SQLite store.
    pub fn id_index(&self, which: IdKind) -> &Path {
        &self.indexes[which as usize]
    }

    /// A server store's id index file on this host: the run's id (`tag`) in
    /// its name, so that a cache never serves another run.
    pub fn tagged_index(&self, tag: &str, which: IdKind) -> PathBuf {
        with_suffix(&self.base, &format!(".{tag}{}", which.suffix()))
    }

    /// Where the decompressed text of a compressed `kind` input is kept.
    pub fn kept_text(&self, kind: InputKind) -> &Path {
        &self.kept[kind as usize]
    }

    /// The file [`Self::kept_text`] is written through, renamed when whole.
    pub fn partial_text(&self, kind: InputKind) -> &Path {
        &self.partial[kind as usize]
    }

    /// Where `kind`, read from standard input, is kept.
    pub fn stdin_copy(&self, kind: InputKind) -> &Path {
        &self.stdin[kind as usize]
    }

    /// The kept texts and their partial files.
    pub fn kept_texts(&self) -> impl Iterator<Item = &Path> {
        self.kept.iter().chain(&self.partial).map(PathBuf::as_path)
    }

    /// The copies of standard input. A new store keeps them (they are read
    /// before it is made); a finished run's clean-up removes them.
    pub fn stdin_copies(&self) -> impl Iterator<Item = &Path> {
        self.stdin.iter().map(PathBuf::as_path)
    }

    /// Every file here, with how messages name it. `sqlite`: the files of a
    /// SQLite store too (a server store's index names carry the run's id, not
    /// known before it opens).
    pub fn named(&self, sqlite: bool) -> Vec<(&'static str, PathBuf)> {
        let mut files = Vec::new();
        if sqlite {
            files.push(("work database", self.base.clone()));
            files.push(("work database's WAL", self.wal.clone()));
            files.push(("work database's shared memory", self.shm.clone()));
            files.push(("work database's lock", self.lock.clone()));
            let creating = [
                "work database being created",
                "work database being created (WAL)",
                "work database being created (shm)",
            ];
            files.extend(creating.into_iter().zip(self.creating.iter().cloned()));
            files.extend(self.indexes.iter().map(|path| ("id index", path.clone())));
        }
        let labels = [
            "kept MIXTAPE text",
            "kept CHANGES text",
            "partial MIXTAPE text",
            "partial CHANGES text",
            "MIXTAPE as read from standard input",
            "CHANGES as read from standard input",
        ];
        let paths = self.kept_texts().chain(self.stdin_copies());
        files.extend(labels.into_iter().zip(paths.map(Path::to_path_buf)));
        files
    }
}

/// Removes files, those already gone included.
pub(super) fn remove_paths<P: AsRef<Path>>(files: impl IntoIterator<Item = P>) -> Result<()> {
    for file in files {
        crate::place::remove(file.as_ref())?;
    }
    Ok(())
}

/// Removes the SQLite database at `path`, its WAL and shared-memory files,
/// its id indexes and the kept decompressed inputs.
pub fn remove_files(path: &Path) -> Result<()> {
    let files = WorkFiles::of(path);
    remove_paths(files.kept_texts())?;
    remove_paths([&files.base, &files.wal, &files.shm])?;
    remove_paths(&files.indexes)
}
