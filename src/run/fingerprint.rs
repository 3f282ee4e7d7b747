//! Recognising an input again: is this the same MIXTAPE or CHANGES as when the work
//! database was made?
//!
//! A plan is byte offsets into CHANGES, so it must never be applied to another
//! file (the same check csv-index does before trusting an index). The fingerprint
//! is the file's size, its modification time, and a hash of 64 blocks of 4 KiB
//! spread evenly over the file (the whole file when it is small). It costs a few
//! milliseconds whatever the size, which is why it is not a hash of every byte:
//! an edit that keeps size and modification time *and* misses every sampled block
//! would go unnoticed, and docs/GUIDE.md says so.
//!
//! The hash function, [`fnv1a`], is also how playlist ids are spread over merge
//! partitions: it must give the same value in every process, which std's hasher
//! (randomly keyed) does not.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::UNIX_EPOCH;

const BLOCK: u64 = 4096;
const BLOCKS: u64 = 64;

/// FNV-1a, 64 bits, continuing from `state` (start with [`FNV_START`]).
#[inline]
pub fn fnv1a_from(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01B3);
    }
    state
}

/// FNV-1a's offset basis.
pub const FNV_START: u64 = 0xCBF2_9CE4_8422_2325;

/// FNV-1a, 64 bits.
#[inline]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_START, bytes)
}

/// The fingerprint of the file at `path`, as stored in the work database.
pub fn of_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::other("is a directory"));
    }
    let size = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hash = FNV_START;
    let mut block = vec![0u8; BLOCK as usize];
    if size <= BLOCK * BLOCKS {
        let mut all = Vec::with_capacity(size as usize);
        file.read_to_end(&mut all)?;
        hash = fnv1a_from(hash, &all);
    } else {
        for i in 0..BLOCKS {
            let at = (size - BLOCK) * i / (BLOCKS - 1);
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut block)?;
            hash = fnv1a_from(hash, &block);
        }
    }
    Ok(format!(
        "size={size} mtime_ns={mtime_ns} sample={hash:016x}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_a_changed_byte_in_a_small_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"hello").unwrap();
        let a = of_file(&p).unwrap();
        assert_eq!(a, of_file(&p).unwrap());
        std::fs::write(&p, b"hellp").unwrap();
        assert_ne!(a, of_file(&p).unwrap());
    }

    #[test]
    fn fnv_known_value() {
        // Published FNV-1a test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
