//! What the plan stage hands on: the form of CHANGES, and the chunks it is cut
//! into, each a byte range on change boundaries with the index of its first
//! change. The store saves it; workers claim its chunks.

/// The form of a changes file (docs/GUIDE.md "The changes file").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `{"changes": [...], ...}`
    Object,
    /// `[...]`
    Array,
    /// values one after another
    Lines,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Object => "object",
            Form::Array => "array",
            Form::Lines => "lines",
        }
    }
}

/// One chunk of CHANGES: what one worker claims and applies at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of its first change.
    pub start: u64,
    /// Byte offset just past its range (the next chunk's start, or the end of the
    /// last change).
    pub end: u64,
    /// Index of its first change in the whole file.
    pub first_index: u64,
    /// How many changes it holds.
    pub changes: u64,
}

/// The result of the plan stage.
#[derive(Clone, Debug)]
pub struct Plan {
    pub form: Form,
    pub changes: u64,
    pub chunks: Vec<Chunk>,
}
