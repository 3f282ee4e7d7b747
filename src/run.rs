//! The run's plumbing, shared by both binaries: everything that is not a stage,
//! the store, JSON or the id indexes.
//!
//! - Paths and files: [`paths`] (the run's path plan), [`output_file`] (files
//!   written for the user, whole or not at all), [`private_file`] (files a run
//!   makes for itself), [`fingerprint`] (recognising an input again).
//! - Processes: [`interrupt`] (Ctrl-C and SIGTERM), [`exit_codes`], [`protocol`]
//!   (what a worker tells the harness), [`parallel`] (the harness's thread pool).
//! - Testing aids: [`fault`] (fault injection, only under the
//!   `fault-injection` feature).
//! - [`stage`]: the names of the stages, and their done-markers' keys.
//! - [`generate`]: shell completions and man pages.

pub mod exit_codes;
pub mod fault;
pub mod fingerprint;
pub mod generate;
pub mod interrupt;
pub mod output_file;
pub mod parallel;
pub mod paths;
pub mod private_file;
pub mod protocol;
pub mod stage;
