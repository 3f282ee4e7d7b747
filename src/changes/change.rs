//! One change, read from its JSON text: its shape only.
//!
//! This is the first row of the reject table (docs/GUIDE.md "Semantics and rejects"): a change that is not an
//! object, has an unknown `op`, or lacks a member or has one of the wrong type is
//! `invalid_change`. Everything that needs the database (does the user or song
//! exist) is the worker's job ([`crate::stages::apply`]), and everything that depends on
//! order is the merge's ([`crate::stages::merge`]).
//!
//! Members are checked in a fixed order, which decides the detail message when
//! several are wrong: `op`; then for `add_playlist` the owner (`owner_id`, or
//! `user_id` when there is no `owner_id`), `song_ids`, `playlist_id`; for the
//! others `playlist_id`, then `song_id`. A member that appears twice counts once,
//! at its first occurrence.
//!
//! The parsed change borrows from the text: ids stay as they are written, since
//! that is how they are written back.

use std::borrow::Cow;

use crate::json;

/// The four operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AddPlaylist,
    RemovePlaylist,
    AddSong,
    RemoveSong,
}

impl Op {
    /// Every op.
    pub const ALL: [Op; 4] = [
        Op::AddPlaylist,
        Op::RemovePlaylist,
        Op::AddSong,
        Op::RemoveSong,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::AddPlaylist => "add_playlist",
            Op::RemovePlaylist => "remove_playlist",
            Op::AddSong => "add_song",
            Op::RemoveSong => "remove_song",
        }
    }

    /// The name as a JSON string, as the rejects report writes it.
    pub fn json_name(self) -> &'static str {
        match self {
            Op::AddPlaylist => "\"add_playlist\"",
            Op::RemovePlaylist => "\"remove_playlist\"",
            Op::AddSong => "\"add_song\"",
            Op::RemoveSong => "\"remove_song\"",
        }
    }

    /// The op whose [`Op::json_name`] is `json`.
    fn from_json_name(json: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.json_name() == json)
    }

    /// The op whose name the raw JSON string `raw` spells without an escape
    /// (nearly every change's `op`): no decoding needed.
    fn from_plain_json(raw: &[u8]) -> Option<Op> {
        Some(match raw {
            b"\"add_song\"" => Op::AddSong,
            b"\"remove_song\"" => Op::RemoveSong,
            b"\"add_playlist\"" => Op::AddPlaylist,
            b"\"remove_playlist\"" => Op::RemovePlaylist,
            _ => return None,
        })
    }

    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "add_playlist" => Op::AddPlaylist,
            "remove_playlist" => Op::RemovePlaylist,
            "add_song" => Op::AddSong,
            "remove_song" => Op::RemoveSong,
            _ => return None,
        })
    }
}

/// A reject's `op` read back from a store: borrowed when it is one of the
/// four ops' names, as nearly every one is.
pub fn op_json_of(json: String) -> Cow<'static, str> {
    match Op::from_json_name(&json) {
        Some(op) => Cow::Borrowed(op.json_name()),
        None => Cow::Owned(json),
    }
}

/// A well-formed change. Every id is a raw JSON string or integer token.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    AddPlaylist {
        /// `None`: the id is given automatically (docs/GUIDE.md "The changes file").
        id: Option<&'a [u8]>,
        owner: &'a [u8],
        songs: Vec<&'a [u8]>,
        /// Members copied onto the new playlist: (raw key, raw value).
        copied: Vec<(&'a [u8], &'a [u8])>,
    },
    RemovePlaylist {
        playlist: &'a [u8],
    },
    AddSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
    RemoveSong {
        playlist: &'a [u8],
        song: &'a [u8],
    },
}

/// What reading one change gave.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The `op` member for the rejects report: a JSON string, or `null` when it
    /// is missing or not a string.
    pub op_json: Cow<'static, str>,
    /// The change, or why it is `invalid_change`.
    pub change: Result<Change<'a>, String>,
    /// The value of its `playlist_id` when that takes part in automatic ids.
    pub named_playlist_id: Option<u64>,
    /// An `add_playlist` without a `playlist_id` member: it counts towards the
    /// automatic ids, even when rejected.
    pub counts_as_auto: bool,
}

/// Reads one change from its raw text (white space anywhere JSON allows it).
///
/// Nearly every change is read in one pass over `raw` ([`Fields::of_raw`]);
/// the few that pass cannot read (an escape in a member name, a copied
/// member whose value is an array or object with white space inside) are
/// minified into `scratch` and read by [`parse`]. Both give the same result:
/// the fuzz tests hold them to it.
pub fn read<'a>(raw: &'a [u8], scratch: &'a mut Vec<u8>) -> Parsed<'a> {
    if let Some((parsed, len)) = read_common_shape(raw) {
        if only_ws_after(raw, len) {
            return parsed;
        }
    }
    if let Some(fields) = Fields::of_raw(raw) {
        return fields.into_parsed();
    }
    scratch.clear();
    json::minify_into(raw, scratch);
    let minified: &'a [u8] = scratch;
    parse(minified)
}

/// Reads the change at the start of `text` (the scanner validated it; more
/// text may follow) in one pass, and says how many bytes it took: `None` when
/// the change is not there whole, or is one [`read`] minifies first; the
/// caller then finds its end and calls [`read`]. This saves the separate scan
/// for the change's end that most changes took.
pub fn read_prefix(text: &[u8]) -> Option<(Parsed<'_>, usize)> {
    if let Some(found) = read_common_shape(text) {
        return Some(found);
    }
    let (fields, len) = Fields::of_text(text)?;
    Some((fields.into_parsed(), len))
}

/// A change of the shape nearly every change has,
/// `{"op":"add_song","playlist_id":P,"song_id":S}` (or `remove_song`), at the
/// start of some text: these three members in this order, no white space but
/// one space after a colon or a comma, each id a string of printable ASCII
/// without escapes or an integer without leading zeros. Such text is valid
/// JSON, so the plan may take it as scanned ([`common_shape_len`]), and the
/// worker reads it straight into the change ([`read_common_shape`]), by
/// comparing fixed text: walking every byte of such changes was most of the
/// plan's time (BENCHMARKS.md, "What was tried": the common change shape).
struct CommonShape<'a> {
    op: Op,
    playlist: &'a [u8],
    song: &'a [u8],
    len: usize,
}

fn common_shape(raw: &[u8]) -> Option<CommonShape<'_>> {
    let mut text = Text { raw, at: 0 };
    text.literal(b"{\"op\"")?;
    text.colon()?;
    let op = match text.literal(b"\"add_song\"") {
        Some(_) => Op::AddSong,
        None => text.literal(b"\"remove_song\"").map(|_| Op::RemoveSong)?,
    };
    text.comma()?;
    text.literal(b"\"playlist_id\"")?;
    text.colon()?;
    let playlist = text.plain_id()?;
    text.comma()?;
    text.literal(b"\"song_id\"")?;
    text.colon()?;
    let song = text.plain_id()?;
    text.literal(b"}")?;
    Some(CommonShape {
        op,
        playlist,
        song,
        len: text.at,
    })
}

/// The length of a change of the common shape ([`CommonShape`]) at the start
/// of `raw`, if one is there whole: the plan skips it without scanning it
/// byte by byte.
pub fn common_shape_len(raw: &[u8]) -> Option<usize> {
    common_shape(raw).map(|shape| shape.len)
}

/// [`read_prefix`] of a change of the common shape ([`CommonShape`]): what
/// the general path gives for that text (the test
/// `the_common_shape_reads_as_the_general_path_does`); `None` for any other
/// text, which the general path then reads.
fn read_common_shape(raw: &[u8]) -> Option<(Parsed<'_>, usize)> {
    let CommonShape {
        op,
        playlist,
        song,
        len,
    } = common_shape(raw)?;
    // As `Fields::build` checks them, in the same order.
    let checked = checked_id(playlist, "playlist_id").and_then(|playlist| {
        let song = checked_id(song, "song_id")?;
        Ok(match op {
            Op::AddSong => Change::AddSong { playlist, song },
            _ => Change::RemoveSong { playlist, song },
        })
    });
    let parsed = Parsed {
        op_json: Cow::Borrowed(op.json_name()),
        change: checked,
        named_playlist_id: auto_id_of_raw(playlist),
        counts_as_auto: false,
    };
    Some((parsed, len))
}

/// Whether `raw` holds only white space after its first `len` bytes (a
/// change read whole by [`read`] is all of its text).
fn only_ws_after(raw: &[u8], len: usize) -> bool {
    raw[len..].iter().all(|&b| json::is_ws(b))
}

/// Reads one change from minified JSON text.
pub fn parse(minified: &[u8]) -> Parsed<'_> {
    match json::object_members(minified) {
        Some(members) => Fields::of_members(&members).into_parsed(),
        None => Parsed {
            op_json: Cow::Borrowed("null"),
            change: Err("change is not an object".into()),
            named_playlist_id: None,
            counts_as_auto: false,
        },
    }
}

/// The members a change is read from, each at its first occurrence, and the
/// members an `add_playlist` would copy, in order. Every value is raw and
/// minified.
#[derive(Default)]
struct Fields<'a> {
    op: Option<&'a [u8]>,
    playlist_id: Option<&'a [u8]>,
    song_id: Option<&'a [u8]>,
    owner_id: Option<&'a [u8]>,
    user_id: Option<&'a [u8]>,
    /// `Some(None)`: `song_ids` is there but is not an array.
    song_ids: Option<Option<Vec<&'a [u8]>>>,
    /// Members an `add_playlist` copies, in order, but the first `song_id`
    /// (see `first_song_id`).
    copied: Vec<Member<'a>>,
    /// The first `song_id` member (which an `add_playlist` copies) and how
    /// many copied members came before it: kept out of `copied` so that an
    /// `add_song` or `remove_song` allocates nothing, and put in its place
    /// when an `add_playlist` is built.
    first_song_id: Option<(usize, Member<'a>)>,
}

/// A member as written: (raw key, raw value).
type Member<'a> = (&'a [u8], &'a [u8]);

/// What a member of a given name is to a change. An `add_playlist` copies
/// every member onto the new playlist but `op`, `id`, `owner_id`, `user_id`,
/// `song_ids` and `playlist_id`.
enum Role {
    Op,
    PlaylistId,
    /// `song_id`: read by `add_song` and `remove_song`, copied by `add_playlist`.
    SongId,
    OwnerId,
    UserId,
    SongIds,
    /// `id`: neither read nor copied.
    Ignored,
    Copied,
}

impl Role {
    fn of(name: &[u8]) -> Role {
        match name {
            b"op" => Role::Op,
            b"playlist_id" => Role::PlaylistId,
            b"song_id" => Role::SongId,
            b"owner_id" => Role::OwnerId,
            b"user_id" => Role::UserId,
            b"song_ids" => Role::SongIds,
            b"id" => Role::Ignored,
            _ => Role::Copied,
        }
    }
}

impl<'a> Fields<'a> {
    /// From the members of a minified object.
    fn of_members(members: &[(&'a [u8], &'a [u8])]) -> Fields<'a> {
        let mut fields = Fields::default();
        for &(key, value) in members {
            let role = match json::key_name(key) {
                Some(name) => Role::of(name.as_bytes()),
                None => Role::Copied,
            };
            fields.take(key, value, role, || json::array_elements(value));
        }
        fields
    }

    /// Files one member under its role; `elements` splits a `song_ids`
    /// value, and is called only for the first one.
    fn take(
        &mut self,
        key: &'a [u8],
        value: &'a [u8],
        role: Role,
        elements: impl FnOnce() -> Option<Vec<&'a [u8]>>,
    ) {
        let first = |slot: &mut Option<&'a [u8]>| {
            slot.get_or_insert(value);
        };
        match role {
            Role::Op => first(&mut self.op),
            Role::PlaylistId => first(&mut self.playlist_id),
            Role::SongId => {
                first(&mut self.song_id);
                match self.first_song_id {
                    None => self.first_song_id = Some((self.copied.len(), (key, value))),
                    Some(_) => self.copied.push((key, value)),
                }
            }
            Role::OwnerId => first(&mut self.owner_id),
            Role::UserId => first(&mut self.user_id),
            Role::SongIds => {
                if self.song_ids.is_none() {
                    self.song_ids = Some(elements());
                }
            }
            Role::Ignored => {}
            Role::Copied => self.copied.push((key, value)),
        }
    }

    /// From raw text in one pass, or `None` when the change needs minifying
    /// first (see [`read`]). Never wrong: any byte it does not expect sends
    /// the change to the minifying path.
    fn of_raw(raw: &'a [u8]) -> Option<Fields<'a>> {
        let (fields, len) = Fields::of_text(raw)?;
        only_ws_after(raw, len).then_some(fields)
    }

    /// [`Fields::of_raw`] of the object at the start of `raw`, and where it
    /// ends; what follows it is not looked at.
    fn of_text(raw: &'a [u8]) -> Option<(Fields<'a>, usize)> {
        let mut text = Text { raw, at: 0 };
        let mut fields = Fields::default();
        // A copied array or object with white space inside would be copied
        // with it; that matters only to an add_playlist.
        let mut copies_unminified = false;
        text.skip_ws();
        text.expect(b'{')?;
        text.skip_ws();
        if text.peek() == Some(b'}') {
            text.at += 1;
        } else {
            loop {
                let key = text.plain_key()?;
                text.skip_ws();
                text.expect(b':')?;
                text.skip_ws();
                let role = Role::of(&key[1..key.len() - 1]);
                let start = text.at;
                if matches!(role, Role::SongIds) && fields.song_ids.is_none() {
                    let elements = text.elements()?;
                    fields.song_ids = Some(elements);
                } else {
                    let value = text.value()?;
                    let copied = matches!(role, Role::Copied | Role::SongId);
                    if copied && matches!(raw[start], b'[' | b'{') && !is_minified(value) {
                        copies_unminified = true;
                    }
                    fields.take(key, value, role, || None);
                }
                text.skip_ws();
                match text.next()? {
                    b',' => text.skip_ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        let adds_playlist =
            || fields.op.and_then(json::decode_string).as_deref() == Some("add_playlist");
        if copies_unminified && adds_playlist() {
            return None;
        }
        Some((fields, text.at))
    }

    /// The change these members make, or why it is `invalid_change`.
    fn into_parsed(self) -> Parsed<'a> {
        let named_playlist_id = self.playlist_id.and_then(auto_id_of_raw);
        if let Some(op) = self.op.and_then(Op::from_plain_json) {
            // Nearly every change: its op spelled plainly.
            let counts_as_auto = op == Op::AddPlaylist && self.playlist_id.is_none();
            return Parsed {
                op_json: Cow::Borrowed(op.json_name()),
                change: self.build(op),
                named_playlist_id,
                counts_as_auto,
            };
        }
        let op_name = self.op.map(json::decode_string);
        let op_json: Cow<'static, str> = match &op_name {
            Some(Some(name)) => match Op::from_name(name) {
                Some(op) => Cow::Borrowed(op.json_name()),
                None => {
                    let mut out = Vec::new();
                    json::write_string(name, &mut out);
                    Cow::Owned(String::from_utf8(out).expect("JSON is UTF-8"))
                }
            },
            _ => Cow::Borrowed("null"),
        };
        let op = match &op_name {
            None => Err("missing member op".to_string()),
            Some(None) => Err("member op must be a string".to_string()),
            Some(Some(name)) => {
                Op::from_name(name).ok_or_else(|| format!("unknown op {}", op_json))
            }
        };
        let counts_as_auto = op == Ok(Op::AddPlaylist) && self.playlist_id.is_none();
        let change = op.and_then(|op| self.build(op));
        Parsed {
            op_json,
            change,
            named_playlist_id,
            counts_as_auto,
        }
    }

    fn build(self, op: Op) -> Result<Change<'a>, String> {
        Ok(match op {
            Op::AddPlaylist => {
                let owner = match (self.owner_id, self.user_id) {
                    (Some(raw), _) => checked_id(raw, "owner_id")?,
                    (None, Some(raw)) => checked_id(raw, "user_id")?,
                    (None, None) => return Err("missing member owner_id".into()),
                };
                let songs = self
                    .song_ids
                    .ok_or_else(|| "missing member song_ids".to_string())?
                    .filter(|list| list.iter().all(|s| json::id_text(s).is_some()))
                    .ok_or_else(|| "member song_ids must be an array of ids".to_string())?;
                let id = match self.playlist_id {
                    Some(raw) => Some(checked_id(raw, "playlist_id")?),
                    None => None,
                };
                let mut copied = self.copied;
                if let Some((at, member)) = self.first_song_id {
                    copied.insert(at, member);
                }
                Change::AddPlaylist {
                    id,
                    owner,
                    songs,
                    copied,
                }
            }
            Op::RemovePlaylist => Change::RemovePlaylist {
                playlist: id_member(self.playlist_id, "playlist_id")?,
            },
            Op::AddSong => Change::AddSong {
                playlist: id_member(self.playlist_id, "playlist_id")?,
                song: id_member(self.song_id, "song_id")?,
            },
            Op::RemoveSong => Change::RemoveSong {
                playlist: id_member(self.playlist_id, "playlist_id")?,
                song: id_member(self.song_id, "song_id")?,
            },
        })
    }
}

/// A member that must be an id.
fn id_member<'a>(raw: Option<&'a [u8]>, name: &str) -> Result<&'a [u8], String> {
    checked_id(raw.ok_or_else(|| format!("missing member {name}"))?, name)
}

fn checked_id<'a>(raw: &'a [u8], name: &str) -> Result<&'a [u8], String> {
    if json::is_id(raw) {
        Ok(raw)
    } else {
        Err(format!("member {name} must be a string or an integer id"))
    }
}

/// [`json::auto_id_value`] of the id `raw` (a raw JSON string or integer
/// token), without decoding it: an automatic id's digits are the token's
/// bytes, bare or quoted, and a token with other bytes spells none, unless
/// an escape spells a digit, which only decoding tells.
fn auto_id_of_raw(raw: &[u8]) -> Option<u64> {
    match json::plain_digits(raw) {
        Some(digits) => json::auto_id_value(digits),
        None if raw.contains(&b'\\') => json::id_text(raw).and_then(|t| json::auto_id_value(&t)),
        None => None,
    }
}

/// Raw JSON text (which the scanner validated) being read front to back by
/// [`Fields::of_raw`]. Every method returns `None` on a byte it does not
/// expect.
struct Text<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Text<'a> {
    fn peek(&self) -> Option<u8> {
        self.raw.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(json::is_ws) {
            self.at += 1;
        }
    }

    /// `literal` if the text goes on with it (then passed).
    fn literal<const N: usize>(&mut self, literal: &[u8; N]) -> Option<()> {
        // Compared as an array of known size: a few loads, not a call.
        let found: &[u8; N] = self.raw.get(self.at..self.at + N)?.try_into().ok()?;
        (found == literal).then(|| self.at += N)
    }

    /// A colon, and a space after it if there is one.
    fn colon(&mut self) -> Option<()> {
        self.literal(b":")?;
        self.literal(b" ");
        Some(())
    }

    /// A comma, and a space after it if there is one.
    fn comma(&mut self) -> Option<()> {
        self.literal(b",")?;
        self.literal(b" ");
        Some(())
    }

    /// An id as the common shape has it ([`CommonShape`]): a string of
    /// printable ASCII without escapes, or an integer without leading zeros
    /// (JSON's, but for fractions and exponents) directly followed by `,` or
    /// `}`; `None` for anything else (the general path reads it).
    fn plain_id(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        if self.peek()? == b'"' {
            self.at += 1;
            loop {
                match self.next()? {
                    b'"' => return Some(&self.raw[start..self.at]),
                    b'\\' => return None,
                    b' '..=b'~' => {}
                    _ => return None,
                }
            }
        }
        self.literal(b"-");
        let digits = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        let leading_zero = self.raw.get(digits) == Some(&b'0') && self.at - digits > 1;
        if self.at == digits || leading_zero || !matches!(self.peek()?, b',' | b'}') {
            return None;
        }
        Some(&self.raw[start..self.at])
    }

    /// A member name without escapes, with its quotes.
    fn plain_key(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        self.expect(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(&self.raw[start..self.at]),
                b'\\' => return None,
                _ => {}
            }
        }
    }

    /// One value, raw. Strings (ids, mostly) are short: a byte loop beats
    /// `memchr` on them.
    fn value(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        match self.peek()? {
            b'"' => {
                self.at += 1;
                loop {
                    match self.next()? {
                        b'"' => break,
                        b'\\' => self.at += 1,
                        _ => {}
                    }
                }
            }
            _ => self.at = json::value_end(self.raw, start, true)?,
        }
        Some(&self.raw[start..self.at])
    }

    /// The elements of the array here, raw; `Some(None)` when the value here
    /// is not an array.
    fn elements(&mut self) -> Option<Option<Vec<&'a [u8]>>> {
        if self.peek()? != b'[' {
            self.value()?;
            return Some(None);
        }
        self.at += 1;
        let mut elements = Vec::new();
        self.skip_ws();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(Some(elements));
        }
        loop {
            elements.push(self.value()?);
            self.skip_ws();
            match self.next()? {
                b',' => self.skip_ws(),
                b']' => return Some(Some(elements)),
                _ => return None,
            }
        }
    }
}

/// Whether `raw` has no white space outside its strings.
fn is_minified(raw: &[u8]) -> bool {
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => match json::string_end(raw, i) {
                Some(end) => i = end,
                None => return false,
            },
            b if json::is_ws(b) => return false,
            _ => i += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated changes near the common shape: every text the fast path
    /// reads must give the same change and length by the general path, and
    /// be one whole JSON value to the scanner, ending where the plan passes
    /// over it; and the fast path must read every plain one.
    #[test]
    fn the_common_shape_reads_as_the_general_path_does() {
        const OPS: [&[u8]; 5] = [
            br#""add_song""#,
            br#""remove_song""#,
            br#""add_playlist""#,
            br#""add_son""#,
            br#""add\u005fsong""#,
        ];
        // The first PLAIN_IDS are ids the fast path must read.
        const PLAIN_IDS: usize = 9;
        const IDS: [&[u8]; 24] = [
            br#""54002""#,
            b"54002",
            b"0",
            b"-7",
            b"-0",
            br#""""#,
            br#""a b""#,
            br#""99999999999999999999""#,
            b"18446744073709551616",
            b"\"\xff\"",
            "\"é\"".as_bytes(),
            b"007",
            b"-",
            b"1.5",
            b"1e3",
            b"true",
            b"null",
            br#""x\"y""#,
            br#""\u0041""#,
            b"\"tab\there\"",
            br#"["1"]"#,
            br#"{"a":1}"#,
            b"12 ",
            // Read up to its escaped quote, the rest would look like members.
            br#""\", "song_id":"1"}""#,
        ];
        // The first two of each are what the fast path must read.
        const COLONS: [&[u8]; 5] = [b":", b": ", b":  ", b" :", b":\t"];
        const COMMAS: [&[u8]; 5] = [b",", b", ", b",  ", b",\n", b" ,"];
        const ENDS: [&[u8]; 6] = [
            b"}",
            b"}\n{\"op\":\"remove_playlist\"}",
            b" }",
            b"}}",
            b"",
            br#","id":1}"#,
        ];
        const KEYS: [[&[u8]; 3]; 4] = [
            [br#""op""#, br#""playlist_id""#, br#""song_id""#],
            [br#""op""#, br#""song_id""#, br#""playlist_id""#],
            [br#""op""#, br#""playlist_id""#, br#""playlist_id""#],
            [br#""o\u0070""#, br#""playlist_id""#, br#""song_id""#],
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut pick = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut read_fast, mut plain) = (0, 0);
        for case in 0..50_000 {
            // A quarter of the cases are plain: the shape the fast path is for.
            let is_plain = case % 4 == 0;
            let mut choose = |n: usize, plain_of: usize| match is_plain {
                true => pick(plain_of),
                false => pick(n),
            };
            let keys = KEYS[choose(KEYS.len(), 1)];
            let op = OPS[choose(OPS.len(), 2)];
            let playlist = IDS[choose(IDS.len(), PLAIN_IDS)];
            let song = IDS[choose(IDS.len(), PLAIN_IDS)];
            let colon = COLONS[choose(COLONS.len(), 2)];
            let comma = COMMAS[choose(COMMAS.len(), 2)];
            let end = ENDS[choose(ENDS.len(), 2)];
            let [op_key, playlist_key, song_key] = keys;
            let raw = [
                b"{",
                op_key,
                colon,
                op,
                comma,
                playlist_key,
                colon,
                playlist,
                comma,
                song_key,
                colon,
                song,
                end,
            ]
            .concat();
            let raw = &raw[..];
            let text = String::from_utf8_lossy(raw);
            let general = Fields::of_text(raw).map(|(f, len)| (f.into_parsed(), len));
            match read_common_shape(raw) {
                Some(fast) => {
                    read_fast += 1;
                    assert_eq!(Some(fast), general, "{text}");
                    // And what the plan skips is one whole JSON value.
                    let len = common_shape_len(raw).expect("the same shape");
                    let mut scanner = crate::json::scan::Scanner::new(raw, 0);
                    assert!(scanner.value().is_ok(), "not JSON: {text}");
                    assert_eq!(scanner.offset(), len as u64, "{text}");
                }
                None => assert!(!is_plain, "the fast path did not read {text}"),
            }
            plain += usize::from(is_plain);
        }
        assert!(
            read_fast >= plain && plain > 10_000,
            "{plain} plain, {read_fast} read fast"
        );
    }

    fn p(text: &str) -> Parsed<'static> {
        let min = json::minify(text.as_bytes());
        parse(Box::leak(min.into_boxed_slice()))
    }

    /// `read` and `parse` of the minified text must agree; `one_pass` says
    /// whether `read` must manage without minifying.
    fn same_either_way(text: &str, one_pass: bool) {
        let raw = text.as_bytes();
        assert_eq!(Fields::of_raw(raw).is_some(), one_pass, "{text}");
        let mut scratch = Vec::new();
        let minified = json::minify(raw);
        assert_eq!(read(raw, &mut scratch), parse(&minified), "{text}");
        // At the start of more text, whole or cut anywhere: the same change
        // and its length, or `None` (never a change read from a cut).
        let trimmed = text.trim_end();
        let followed = format!("{trimmed}\n{{\"op\":\"remove_playlist\"}} ");
        let prefix = read_prefix(followed.as_bytes());
        match one_pass {
            true => assert_eq!(prefix, Some((parse(&minified), trimmed.len())), "{text}"),
            false => assert_eq!(prefix, None, "{text}"),
        }
        for cut in 0..trimmed.len() {
            assert_eq!(
                read_prefix(&trimmed.as_bytes()[..cut]),
                None,
                "{text} cut at {cut}"
            );
        }
    }

    #[test]
    fn one_pass_reads_what_minifying_reads() {
        for text in [
            r#"{"op":"add_song","playlist_id":"54002","song_id":"738545"}"#,
            " {\n \"op\" :\t\"remove_song\" , \"playlist_id\": 7, \"song_id\" : -3 }\r\n",
            r#"{ "op": "add_playlist", "owner_id": "27745", "song_ids": [ "1" , 2 ], "name": "Mix \" }", "playlist_id": "1200000" }"#,
            r#"{"op":"add_playlist","user_id":3,"song_ids":["1", [2, 3]],"name":"x"}"#,
            r#"{"op":"add_playlist","user_id":3,"song_ids":"1","tags":["a","b"]}"#,
            r#"{"op":"add_playlist","owner_id":1,"song_ids":[],"song_id":5,"id":"9","id":1}"#,
            r#"{"op":"add_song","op":"remove_playlist","playlist_id":"1","playlist_id":[1, 2]}"#,
            r#"{"op":"add_song","playlist_id":"1","song_id":1.5}"#,
            r#"{"op":"rename","playlist_id":"012","x":{"y": 1}}"#,
            r#"{"op":"\u0061dd_song","playlist_id":true,"song_id":null}"#,
            r#"{"op":5,"song_ids":[1, 2],"song_ids":"no"}"#,
            "{}",
            " { } ",
        ] {
            same_either_way(text, true);
        }
        for text in [
            r#"{"\u006fp":"add_song","playlist_id":"1","song_id":"2"}"#,
            r#"{"op":"add_playlist","owner_id":1,"song_ids":[1],"tags":["a", "b"]}"#,
            r#"{"op":"add_playlist","owner_id":1,"song_ids":[1],"song_id":{ "a":1}}"#,
            r#"{"x":[1, 2],"op":"add_playlist","owner_id":1,"song_ids":[1]}"#,
            "[1, 2]",
            "5",
            r#""op""#,
        ] {
            same_either_way(text, false);
        }
    }

    /// An `add_playlist` copies every `song_id` member in its place among
    /// the others, however many there are, though the first is kept aside
    /// while reading.
    #[test]
    fn song_id_members_are_copied_in_place() {
        let base = r#""op":"add_playlist","owner_id":1,"song_ids":[1]"#;
        for (members, expected) in [
            (r#""song_id":5"#, vec![r#""song_id":5"#]),
            (
                r#""a":1,"song_id":5,"b":2"#,
                vec![r#""a":1"#, r#""song_id":5"#, r#""b":2"#],
            ),
            (
                r#""song_id":5,"a":1,"song_id":6"#,
                vec![r#""song_id":5"#, r#""a":1"#, r#""song_id":6"#],
            ),
            (
                r#""a":1,"song_id":5,"song_id":6,"b":[2],"song_id":7"#,
                vec![
                    r#""a":1"#,
                    r#""song_id":5"#,
                    r#""song_id":6"#,
                    r#""b":[2]"#,
                    r#""song_id":7"#,
                ],
            ),
            (r#""a":1,"b":2"#, vec![r#""a":1"#, r#""b":2"#]),
        ] {
            let expected: Vec<(&[u8], &[u8])> = expected
                .iter()
                .map(|m| {
                    let (k, v) = m.split_once(':').unwrap();
                    (k.as_bytes(), v.as_bytes())
                })
                .collect();
            for text in [
                format!("{{{base},{members}}}"),
                format!("{{{members},{base}}}"),
            ] {
                let mut scratch = Vec::new();
                match read(text.as_bytes(), &mut scratch).change {
                    Ok(Change::AddPlaylist { copied, .. }) => {
                        assert_eq!(copied, expected, "{text}")
                    }
                    other => panic!("{text}: {other:?}"),
                }
                same_either_way(&text, true);
            }
        }
    }

    /// The shortcuts for plain tokens (an op spelled without escapes, an id
    /// told without decoding it, an automatic id read from its bytes) say
    /// what decoding says.
    #[test]
    fn plain_token_shortcuts_agree_with_decoding() {
        let tokens = [
            "\"add_song\"",
            "\"remove_song\"",
            "\"add_playlist\"",
            "\"remove_playlist\"",
            "\"add_songs\"",
            "\"Add_song\"",
            r#""\u0061dd_song""#,
            "\"\"",
            "\"7\"",
            "7",
            "-7",
            "0",
            "\"0\"",
            "\"07\"",
            "\"1\"",
            "123456789012345678",
            "1234567890123456789",
            "\"123456789012345678\"",
            "\"1234567890123456789\"",
            r#""\u0031""#,
            r#""1\u0032""#,
            "\"é\"",
            "\"1é\"",
            "1.5",
            "1e3",
            "true",
            "null",
            "[1]",
            "{}",
            "\"a b\"",
            "\"-3\"",
        ];
        for token in tokens {
            let raw = token.as_bytes();
            let decoded = json::id_text(raw);
            assert_eq!(json::is_id(raw), decoded.is_some(), "{token}");
            assert_eq!(
                auto_id_of_raw(raw),
                decoded.as_deref().and_then(json::auto_id_value),
                "{token}"
            );
            let by_name = json::decode_string(raw).and_then(|name| Op::from_name(&name));
            if let Some(op) = Op::from_plain_json(raw) {
                assert_eq!(Some(op), by_name, "{token}");
            } else {
                assert!(by_name.is_none() || raw.contains(&b'\\'), "{token}");
            }
        }
    }

    #[test]
    fn shapes() {
        assert_eq!(p("5").change.unwrap_err(), "change is not an object");
        assert_eq!(p("{}").change.unwrap_err(), "missing member op");
        assert_eq!(
            p(r#"{"op":1}"#).change.unwrap_err(),
            "member op must be a string"
        );
        let x = p(r#"{"op":"dance","playlist_id":"12"}"#);
        assert_eq!(x.change.unwrap_err(), r#"unknown op "dance""#);
        assert_eq!(x.op_json, r#""dance""#);
        assert_eq!(x.named_playlist_id, Some(12));
        assert_eq!(
            p(r#"{"op":"add_song","playlist_id":1.5,"song_id":1}"#)
                .change
                .unwrap_err(),
            "member playlist_id must be a string or an integer id"
        );
        assert_eq!(
            p(r#"{"op":"add_playlist","owner_id":"1","song_ids":["1",null]}"#)
                .change
                .unwrap_err(),
            "member song_ids must be an array of ids"
        );
        let a = p(r#"{"op":"add_playlist","user_id":3,"song_ids":["1", 2],"name":"x","id":"9"}"#);
        assert!(a.counts_as_auto);
        match a.change.unwrap() {
            Change::AddPlaylist {
                id,
                owner,
                songs,
                copied,
            } => {
                assert_eq!(id, None);
                assert_eq!(owner, b"3");
                assert_eq!(songs, vec![&b"\"1\""[..], b"2"]);
                assert_eq!(copied, vec![(&b"\"name\""[..], &b"\"x\""[..])]);
            }
            other => panic!("{other:?}"),
        }
        let a = p(r#"{"op":"add_playlist","playlist_id":null,"owner_id":"1","song_ids":[]}"#);
        assert!(!a.counts_as_auto);
        assert_eq!(
            a.change.unwrap_err(),
            "member playlist_id must be a string or an integer id"
        );
    }
}
