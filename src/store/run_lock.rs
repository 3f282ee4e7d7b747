//! The exclusive hold of one harness run on a work store.

use super::location::Location;
use super::postgres;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An exclusive hold on a work store for one harness run (see module docs):
/// a `flock` on `DB.lock` beside a SQLite file, a session advisory lock on
/// a server (held by a connection of its own, released when it closes).
pub struct RunLock(Held);

pub(super) enum Held {
    File {
        _lock: nix::fcntl::Flock<File>,
        path: PathBuf,
    },
    /// A server's advisory locks (they go when dropped).
    Server { lock: Box<postgres::ServerRunLock> },
}

impl RunLock {
    /// Takes the run lock of the store at `location`, or fails at once if
    /// another run holds it.
    pub fn acquire(location: &Location) -> Result<RunLock> {
        match location {
            Location::File(path) => RunLock::acquire_file(path),
            Location::Postgres(target) => Ok(RunLock(Held::Server {
                lock: Box::new(postgres::take_run_lock(target)?),
            })),
        }
    }

    /// Takes the lock beside the file `db`.
    fn acquire_file(db: &Path) -> Result<RunLock> {
        let path = super::WorkFiles::of(db).lock;
        let file = crate::run::private_file::open_or_create(&path)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(RunLock(Held::File { _lock: lock, path })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another harness run is using the work database {} (lock {} is held); wait for it to finish",
                db.display(),
                path.display()
            ),
            Err((_, e)) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Checks that the run still holds its lock, before a stage commits
    /// anything: on a server, a session of the lock that ended (docs/GUIDE.md
    /// "When a host dies") is taken again, and `say` tells the user; an error when
    /// the run can no longer be sure of holding it. (A file lock cannot be
    /// lost while the process lives.)
    pub fn keep_held(&mut self, say: &mut dyn FnMut(&str)) -> Result<()> {
        if let Held::Server { lock } = &mut self.0 {
            if lock.keep_held()? > 0 {
                say("the run lock's session on the server ended; took the lock again (no other run could take it meanwhile)");
            }
        }
        Ok(())
    }

    /// Removes the lock file, then releases the lock (after a finished run).
    /// Removing first means no other run can be holding the removed file.
    pub fn release_and_remove(self) {
        if let Held::File { path, .. } = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
