//! Files a run makes for itself (docs/GUIDE.md "What is never lost"): private, never
//! through a symlink, never under a name someone else made first.
//!
//! Work files hold the document's contents (the work database, the id
//! indexes, the kept decompressed texts, a worker's cache of indexes), so they
//! are created `0600` whatever the umask and whatever MIXTAPE's own mode: a
//! private document must not be copied into files anyone may read. They are
//! created exclusively (`O_EXCL`, which also refuses a symlink at the name,
//! dangling or not) or, for the one file that is opened again on purpose (the
//! run lock), with `O_NOFOLLOW`. OUTPUT and the reports are the user's files
//! and follow [`crate::run::output_file`]'s rules instead.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The mode of every work file.
pub const MODE: u32 = 0o600;

/// Creates `path` for writing, `0600`, removing what an earlier run left
/// there first (a stale partial file, or a symlink planted in its place:
/// `unlink` removes the link, never its target). Fails if something appears
/// at the name meanwhile.
pub fn create_new(path: &Path) -> Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Opens (creating it if needed, `0600`) a file that is opened again by later
/// runs, refusing a symlink at its name.
pub fn open_or_create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} (it must be a regular file, not a symlink)",
                path.display()
            )
        })
}

/// Makes `dir` (and its parents) if missing; a directory made here is `0700`.
/// Refuses a directory that other users may write to or that is not ours: a
/// cache there could be filled by someone else.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
        bail!(
            "{} is not a private directory of this user (a directory owned by uid {me}, not writable by others); mixtape will not keep its cache there",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let planted = dir.path().join("work.partial");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut file = create_new(&planted).unwrap();
        std::io::Write::write_all(&mut file, b"text").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(&planted).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, MODE);

        let lock = dir.path().join("db.lock");
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        assert!(open_or_create(&lock).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
}
