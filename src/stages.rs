//! The six stages of a run, in pipeline order, and their names.
//!
//! Each stage is one module with one entry point; the harness calls them in
//! this order (see `docs/DESIGN.md` for the data that passes between them):
//!
//! 1. [`decompress`]: gzip and zstd inputs into kept plain text (nothing to do
//!    for plain inputs).
//! 2. [`import`]: MIXTAPE into the work store.
//! 3. [`plan`]: CHANGES cut into chunks on change boundaries.
//! 4. [`apply`]: what each `worker` process does with the chunks it claims.
//! 5. [`merge`]: the order-dependent rules settled per playlist, one partition
//!    at a time.
//! 6. [`export`]: OUTPUT and the reports, from the store.
//!
//! [`input`] is what every stage reads: the two inputs as the harness opens
//! them (a file, or standard input kept beside the store) and the store
//! records them, with the text each stage reads (a compressed input's kept
//! text).
//!
//! [`Stage`] names them once (in `crate::run::stage`, below the store, which
//! keeps each stage's done-marker).

pub mod apply;
pub mod decompress;
pub mod export;
pub mod import;
pub mod input;
pub mod merge;
pub mod plan;

pub use crate::run::stage::Stage;
