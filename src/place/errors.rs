//! Errors a user sees about their inputs, with file, line, column and byte offset.
//!
//! Stages report a syntax error as a byte offset ([`crate::json::scan::ScanError`]);
//! this module turns it into the message the user reads, naming which input it is
//! (MIXTAPE or CHANGES), its path, and where.

use std::path::Path;

use crate::json::scan::{self, ScanError};

/// The message for a problem at `offset` in an input file: `MIXTAPE path: line L,
/// column C (byte B): message`.
pub fn at_offset(label: &str, path: &Path, offset: u64, message: &str) -> anyhow::Error {
    match super::open_at(path, 0).and_then(|text| scan::locate(text, offset)) {
        Ok((line, column)) => anyhow::anyhow!(
            "{label} {}: line {line}, column {column} (byte {offset}): {message}",
            path.display()
        ),
        Err(_) => anyhow::anyhow!("{label} {}: byte {offset}: {message}", path.display()),
    }
}

/// Turns a scanner error on input `label` at `path` into a user-facing error.
pub fn scan_error(label: &str, path: &Path, error: ScanError) -> anyhow::Error {
    match error {
        ScanError::Io(e) => {
            anyhow::Error::new(e).context(format!("reading {label} {}", path.display()))
        }
        ScanError::Syntax { offset, message } => {
            at_offset(label, path, offset, &format!("invalid JSON: {message}"))
        }
        ScanError::Interrupted => crate::run::interrupt::Interrupted.into(),
    }
}
