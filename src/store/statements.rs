//! The statements of the rules written once for both backends, in the SQL
//! both speak: the chunk queries, resetting a chunk, clearing the merge.

use crate::run::stage::Stage;

/// One statement of a rule written once for both backends, in the SQL both
/// speak: tables unqualified (a server connection's `search_path` is the
/// run's schema), `$1` for the one parameter, `true`/`false` for flags.
pub(crate) struct Statement {
    pub(super) sql: &'static str,
    pub(super) param: Option<Param>,
}

/// The one bind parameter of a [`Statement`].
#[derive(Clone, Copy)]
pub(super) enum Param {
    Number(i64),
    Text(&'static str),
}

/// Every chunk's row, in the columns [`ChunkRow::from_columns`](super::ChunkRow::from_columns) reads.
pub(super) const SELECT_CHUNKS: &str =
    "SELECT chunk, start_offset, end_offset, first_index, changes,
     next_offset, next_index, auto_count, max_playlist_id, done
     FROM chunks ORDER BY chunk";

/// One chunk's row (`$1`), in the columns [`ChunkRow::from_columns`](super::ChunkRow::from_columns) reads.
pub(super) const SELECT_CHUNK: &str =
    "SELECT chunk, start_offset, end_offset, first_index, changes,
     next_offset, next_index, auto_count, max_playlist_id, done
     FROM chunks WHERE chunk = $1";

/// What the merge leaves: its results, its rejects, `merged` and its marker.
pub(super) fn clear_merge_statements() -> [Statement; 4] {
    [
        Statement::plain("DELETE FROM results"),
        Statement::plain("DELETE FROM rejects WHERE by_merge = true"),
        Statement::plain("DELETE FROM merged"),
        Statement {
            sql: "DELETE FROM meta WHERE key = $1",
            param: Some(Param::Text(
                Stage::Merge.done_marker().expect("the merge has a marker"),
            )),
        },
    ]
}

/// What chunk `$1` recorded (its blocks, its workers' rejects of its indexes)
/// and its position, put back at its start.
pub(super) const RESET_CHUNK: [&str; 3] = [
    "DELETE FROM blocks WHERE chunk = $1",
    "DELETE FROM rejects WHERE by_merge = false
       AND idx >= (SELECT first_index FROM chunks WHERE chunk = $1)
       AND idx < (SELECT first_index + changes FROM chunks WHERE chunk = $1)",
    "UPDATE chunks SET next_offset = start_offset, next_index = first_index, auto_count = 0,
         max_playlist_id = 0, batches = 0, done = false WHERE chunk = $1",
];

impl Statement {
    fn plain(sql: &'static str) -> Statement {
        Statement { sql, param: None }
    }
}
