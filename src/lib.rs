//! mixtape: apply a batch of playlist changes to a mixtape document, in a SQLite
//! work database, with any number of worker processes, and get the same bytes as
//! applying the changes one after another.
//!
//! The crate is the shared code of the two binaries:
//!
//! - `harness` (in `harness/`) owns the run: it imports, plans, spawns workers,
//!   merges and exports, each stage being one module here.
//! - `worker` (in `worker/`) applies one chunk of the plan ([`apply`]).
//!
//! The stages ([`stage::Stage`]), in order: [`decompress`] (compressed inputs
//! only) → [`import`] → [`plan`] → [`apply`]
//! (N worker processes) → [`merge`] → [`export`]. [`store`] owns the work
//! database they share: every table and every statement of SQL.

pub mod applied;
pub mod apply;
pub mod change;
pub mod decompress;
pub mod errors;
pub mod exit_codes;
pub mod export;
pub mod fault;
pub mod fingerprint;
pub mod generate;
pub mod id_index;
pub mod id_key;
pub mod id_sort;
pub mod import;
pub mod input;
pub mod interrupt;
pub mod json;
pub mod merge;
pub mod output_file;
pub mod parallel;
pub mod partition;
pub mod paths;
pub mod plan;
pub mod private_file;
pub mod protocol;
pub mod record;
pub mod reject;
pub mod render;
pub mod scan;
pub mod stage;
pub mod store;
pub mod values;
