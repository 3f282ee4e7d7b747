//! What a worker run by the harness tells it, on its stdout: one line when it
//! takes a chunk and one per committed batch, written and parsed here and
//! nowhere else.
//!
//! ```text
//! progress CHUNK BYTES TOTAL CHANGES HELD_US WAITED_US
//! ```
//!
//! - `CHUNK`: the chunk the worker is applying (a joined worker takes one after
//!   another);
//! - `BYTES`: bytes of the chunk applied so far (committed), from the chunk's start;
//! - `TOTAL`: bytes in the chunk;
//! - `CHANGES`: changes of this chunk this worker handled so far;
//! - `HELD_US`, `WAITED_US`: microseconds it held, and waited for, the write lock
//!   so far (the apply stage's serial part, for the benchmark).
//!
//! A line that does not parse is an error, not a zero: a worker and a harness of
//! different versions must not agree silently on wrong figures.

use std::fmt;
use std::time::Duration;

/// One progress report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub chunk: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub changes: u64,
    pub lock_held: Duration,
    pub lock_wait: Duration,
}

/// A line that is not a progress report.
#[derive(Debug, thiserror::Error)]
#[error("malformed progress line from a worker: {line:?} (expected `progress CHUNK BYTES TOTAL CHANGES HELD_US WAITED_US`)")]
pub struct Malformed {
    pub line: String,
}

const WORD: &str = "progress";

impl fmt::Display for Progress {
    /// The line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{WORD} {} {} {} {} {} {}",
            self.chunk,
            self.bytes_done,
            self.bytes_total,
            self.changes,
            self.lock_held.as_micros(),
            self.lock_wait.as_micros()
        )
    }
}

impl Progress {
    /// Reads a line written by [`Progress`]'s `Display`.
    pub fn parse(line: &str) -> Result<Progress, Malformed> {
        let malformed = || Malformed {
            line: line.to_string(),
        };
        let mut words = line.split(' ');
        if words.next() != Some(WORD) {
            return Err(malformed());
        }
        let mut numbers = [0u64; 6];
        for n in &mut numbers {
            *n = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(malformed)?;
        }
        if words.next().is_some() {
            return Err(malformed());
        }
        let [chunk, bytes_done, bytes_total, changes, held_us, waited_us] = numbers;
        Ok(Progress {
            chunk,
            bytes_done,
            bytes_total,
            changes,
            lock_held: Duration::from_micros(held_us),
            lock_wait: Duration::from_micros(waited_us),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = Progress {
            chunk: 7,
            bytes_done: 123,
            bytes_total: 456,
            changes: 45,
            lock_held: Duration::from_micros(6789),
            lock_wait: Duration::from_micros(10),
        };
        assert_eq!(Progress::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "",
            "progress",
            "progress 1 2 3 4 5",
            "progress 1 2 3 4 5 x",
            "progress 1 2 3 4 5 6 7",
            "progress -1 2 3 4 5 6",
            "progres 1 2 3 4 5 6",
            "progress  1 2 3 4 5 6",
        ] {
            assert!(Progress::parse(bad).is_err(), "{bad:?}");
        }
    }
}
