//! mixtape: apply a batch of playlist changes to a mixtape document, with any
//! number of worker processes sharing one work store, and get the same bytes as
//! applying the changes one after another.
//!
//! The crate is the shared code of the two binaries: `harness` (in `harness/`)
//! owns a run and calls the stages in order; `worker` (in `worker/`) applies
//! chunks of the plan. The map of the crate, one folder per concern:
//!
//! | module | what lives there |
//! |---|---|
//! | [`stages`] | the six stages in pipeline order: [`stages::decompress`] → [`stages::import`] → [`stages::plan`] → [`stages::apply`] (N worker processes) → [`stages::merge`] → [`stages::export`]; and the inputs they read |
//! | [`store`] | the work store every stage shares: its contract, and the SQLite and PostgreSQL backends that hold every table and statement of SQL |
//! | [`changes`] | what passes between stages about changes: the plan's chunks, a change's shape, its recorded form, reject reasons, merge partitions |
//! | [`ids`] | the read-only id indexes of users and songs |
//! | [`place`] | where a run's files live: a file on this host or an object in a bucket, read and written through one interface |
//! | [`run`] | the run's plumbing: paths, output and private files, fingerprints, interrupts, exit codes, the stages' names, the worker protocol, testing aids |
//! | [`json`] | reading and writing JSON text: the streaming validator, value readers, byte helpers, rendering |
//!
//! Each folder uses only those listed below it (`stages` uses `store`, `store`
//! uses `changes`, ...): no module reaches up, and no two files import each
//! other. `docs/DESIGN.md` draws the same map with the data that moves between the
//! stages, and its glossary fixes the words the code uses.

pub mod changes;
pub mod ids;
pub mod json;
pub mod place;
pub mod run;
pub mod stages;
pub mod store;
