//! Which merge partition a recorded change goes to, and which of the
//! document's playlists each partition owns.
//!
//! The changes about one playlist id must meet in one partition: the merge
//! replays them there, in order ([`crate::stages::merge`]). How ids are spread:
//!
//! - the id of a playlist **of the document** by its *position*: partition
//!   `p` of `P` owns the document's playlists at positions
//!   `[N·p/P, N·(p+1)/P)` of `N` ([`Partitions::slice`]);
//! - **any other** id (a new playlist's, or one that names nothing) by a hash
//!   of its text ([`crate::run::fingerprint::fnv1a`]);
//! - a new playlist with an automatic id, which no other change can name, by
//!   its change's index.
//!
//! Why positions: a partition then needs exactly the document playlists of its
//! slice, so the merge reads them with one range scan in the order they are
//! stored (and does its share of the document check, the warnings, in the
//! same pass), instead of one lookup by id for each playlist it touches.

/// How records are spread over the merge partitions of one run.
#[derive(Clone, Copy, Debug)]
pub struct Partitions {
    /// How many partitions there are (`P`, at least 1).
    pub count: u64,
    /// How many playlists the document has (`N`).
    pub playlists: u64,
}

impl Partitions {
    /// The partition of the changes about playlist id `id` (its text), whose
    /// position among the document's playlists is `position` (`None`: not a
    /// playlist of the document).
    pub fn of_playlist(&self, position: Option<u64>, id: &str) -> u64 {
        match position {
            Some(position) => self.of_position(position),
            None => crate::run::fingerprint::fnv1a(id.as_bytes()) % self.count,
        }
    }

    /// The partition of the new playlist created by change `index` with an
    /// automatic id.
    pub fn of_automatic(&self, index: u64) -> u64 {
        index % self.count
    }

    /// The partition whose slice holds document position `position`: the
    /// largest `p` with `⌊N·p/P⌋ ≤ position`, that is `⌊((position+1)·P − 1)/N⌋`.
    pub fn of_position(&self, position: u64) -> u64 {
        let (n, p) = (u128::from(self.playlists.max(1)), u128::from(self.count));
        let partition = ((u128::from(position) + 1) * p - 1) / n;
        (partition as u64).min(self.count - 1)
    }

    /// The document positions partition `partition` owns: `from..to`.
    pub fn slice(&self, partition: u64) -> (u64, u64) {
        let (n, p) = (u128::from(self.playlists), u128::from(self.count));
        let start = |k: u64| (n * u128::from(k) / p) as u64;
        (start(partition), start(partition + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position falls in the slice of the partition it is given to, for
    /// more partitions than playlists, fewer, and as many.
    #[test]
    fn each_position_is_in_its_partitions_slice() {
        for playlists in [0u64, 1, 2, 3, 7, 100, 1000] {
            for count in [1u64, 2, 3, 5, 64, 1000, 4096] {
                let partitions = Partitions { count, playlists };
                let mut covered = 0;
                for partition in 0..count {
                    let (from, to) = partitions.slice(partition);
                    assert!(from <= to, "{partitions:?} partition {partition}");
                    assert_eq!(from, covered, "{partitions:?}: slices leave no gap");
                    for position in from..to {
                        assert_eq!(
                            partitions.of_position(position),
                            partition,
                            "{partitions:?} {position}"
                        );
                    }
                    covered = to;
                }
                assert_eq!(
                    covered, playlists,
                    "{partitions:?}: slices cover the document"
                );
            }
        }
    }
}
