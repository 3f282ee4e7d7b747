//! Exit codes of `harness` and `worker`, in one place (SPEC §6).

use std::process::ExitCode;

/// Done. Rejected changes are not an error (unless `--strict`).
pub const SUCCESS: u8 = 0;
/// An input is unreadable or not valid JSON, an input document is invalid, a
/// worker failed, the disk is full: anything that stops the run.
pub const FAILURE: u8 = 1;
/// Bad command line (clap exits with this code itself).
pub const USAGE: u8 = 2;
/// `--strict` and at least one change was rejected; no OUTPUT was written.
pub const REJECTED: u8 = 3;
/// Interrupted by Ctrl-C or SIGTERM; the work database is kept for a resume.
pub const INTERRUPTED: u8 = 130;

/// `code` as a process exit code.
pub fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}
