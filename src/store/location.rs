//! Where a work store is (a SQLite file or a PostgreSQL database), as the
//! user named it, and which files go with it on this host.

use super::files::remove_paths;
use super::files::{remove_files, WorkFiles};
use super::postgres;
use super::postgres::PgTarget;
use super::sqlite;
use super::types::IdKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where a work store is: a SQLite file (the default), or a PostgreSQL
/// database (`postgresql://...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Postgres(Box<PgTarget>),
}

impl Location {
    /// What `--db` says: a `postgresql://` or `postgres://` URL, or a file path.
    /// `local_base` is where files that go with a server store are kept on this
    /// host (ignored for a file: they go beside it).
    pub fn from_argument(argument: &std::ffi::OsStr, local_base: &Path) -> Result<Location> {
        match argument.to_str() {
            Some(url) if postgres::target::is_url(url) => Ok(Location::Postgres(Box::new(
                PgTarget::parse(url, local_base.to_path_buf())
                    .context("reading the work store's URL")?,
            ))),
            _ => Ok(Location::File(PathBuf::from(argument))),
        }
    }

    /// The password a server store is reached with, for a process to hand
    /// to its children in their environment (never on a command line).
    pub fn password(&self) -> Option<&str> {
        match self {
            Location::File(_) => None,
            Location::Postgres(target) => target.password(),
        }
    }

    /// How messages name it (a server URL with its password masked).
    pub fn display(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Postgres(target) => target.shown(),
        }
    }

    /// How a worker's command line names it (never with a password).
    pub fn argument(&self) -> std::ffi::OsString {
        match self {
            Location::File(path) => path.clone().into_os_string(),
            Location::Postgres(target) => target.argument().into(),
        }
    }

    /// The file, for a SQLite store.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Location::File(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }

    /// Where this process keeps the files that go with the store: the id
    /// indexes (built by the import, read by everyone) and, for the harness,
    /// the kept decompressed inputs, named by appending to this path. For a
    /// SQLite file: beside it.
    pub fn local_base(&self) -> PathBuf {
        match self {
            Location::File(path) => path.clone(),
            Location::Postgres(target) => target.local_base.clone(),
        }
    }

    /// The files on this host that go with the store ([`WorkFiles`]).
    pub fn work_files(&self) -> WorkFiles {
        WorkFiles::of(&self.local_base())
    }

    /// Fails ([`NotAWorkDatabase`](super::NotAWorkDatabase)) when a file store's path holds a file
    /// that is not a mixtape work database: checked before the run lock is
    /// taken, so that nothing is made beside someone else's file.
    pub fn refuse_foreign_file(&self) -> Result<()> {
        match self {
            Location::File(path) if std::fs::symlink_metadata(path).is_ok() => {
                sqlite::refuse_unless_work_database(path)
            }
            _ => Ok(()),
        }
    }

    /// Whether a store exists there (to resume from).
    pub fn exists(&self) -> Result<bool> {
        Ok(match self {
            Location::File(path) => path.exists(),
            Location::Postgres(target) => postgres::PgDb::connect(target)?.schema_exists()?,
        })
    }

    /// Removes the store and the files that go with it on this host.
    pub fn remove(&self) -> Result<()> {
        match self {
            Location::File(path) => {
                remove_files(path)?;
                remove_paths(self.work_files().stdin_copies())
            }
            Location::Postgres(target) => {
                let tag = postgres::drop_store(target)?;
                let files = self.work_files();
                remove_paths(files.kept_texts().chain(files.stdin_copies()))?;
                if let Some(tag) = tag {
                    remove_paths(IdKind::ALL.map(|k| files.tagged_index(&tag, k)))?;
                }
                Ok(())
            }
        }
    }
}
