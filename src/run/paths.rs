//! Small helpers for the paths a run derives from the ones the user gave.

use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name (`out.json` → `out.json.work.db`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory a file at `path` lives in (`.` for a bare file name).
pub fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Flushes the directory holding `path` to disk: after a rename that
/// publishes a file, so that the new name is as durable as its contents.
pub fn sync_directory_of(path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = directory_of(path);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_and_directory() {
        assert_eq!(
            with_suffix(Path::new("a/o.json"), ".lock"),
            PathBuf::from("a/o.json.lock")
        );
        assert_eq!(directory_of(Path::new("o.json")), Path::new("."));
        assert_eq!(directory_of(Path::new("a/b/o.json")), Path::new("a/b"));
    }
}
