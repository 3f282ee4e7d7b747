//! The id indexes: for users and for songs, a compact, read-only map from an
//! id's text to how the document writes that id. Users and songs never change
//! during a run, so the stages ask these instead of the work store.
//!
//! - [`index`]: the memory-mapped index files and their lookups.
//! - [`key`]: ids as hash-map keys, and the hasher for them.
//! - [`sort`]: sorting the document's ids for an index, in bounded memory.

pub mod index;
pub mod key;
pub mod sort;
