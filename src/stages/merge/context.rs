//! What every partition of the merge needs to know, read once from the store.

use anyhow::Result;

use crate::changes::partition::Partitions;
use crate::store::{Key, Store};

/// What every partition needs to know.
pub(super) struct MergeContext {
    pub(super) owner_key: String,
    /// `M` of the automatic ids (docs/GUIDE.md "The changes file").
    pub(super) max_id: u64,
    /// For each chunk, the automatic ids of all earlier chunks: `k` of a
    /// chunk's first automatic id, less one.
    pub(super) auto_before: Vec<u64>,
    pub(super) partitions: Partitions,
    /// The import counted the warnings ([`crate::stages::import`]): the
    /// merge reads only the document playlists that changes name.
    pub(super) warnings_counted: bool,
    /// The warnings are counted and there are fewer changes than document
    /// playlists: most of a slice's playlists are named by no change, so a
    /// partition finds which are before it reads any.
    pub(super) sparse: bool,
}

impl MergeContext {
    pub(super) fn read(store: &Store) -> Result<MergeContext> {
        let warnings_counted = store.document_warnings()?.is_some();
        let mut max_id = store.meta_number(Key::DocumentMaxPlaylistId)?;
        let mut auto_before = Vec::new();
        let mut total = 0u64;
        for chunk in store.chunks()? {
            auto_before.push(total);
            total += chunk.auto_count;
            max_id = max_id.max(chunk.max_playlist_id);
        }
        Ok(MergeContext {
            owner_key: store.meta(Key::OwnerKey)?,
            max_id,
            auto_before,
            partitions: store.partitions()?,
            warnings_counted,
            sparse: warnings_counted
                && store.meta_number(Key::Changes)? < store.meta_number(Key::Playlists)?,
        })
    }
}
