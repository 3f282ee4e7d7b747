//! Stage 2, plan: find where every change starts and cut CHANGES into chunks.
//!
//! One pass of the validating [`Scanner`] over CHANGES, so the whole file is known
//! to be JSON before any worker starts, and a syntax error is reported once, with
//! its line and column. The pass recognises the file's form (docs/GUIDE.md "The changes file") from the
//! first non-blank byte:
//!
//! - `[`: a bare array of changes;
//! - `{`: an object with a `changes` array (the object form), or, when that first
//!   object has no `changes` member, the first line of JSON Lines;
//! - anything else (or nothing): JSON Lines.
//!
//! While scanning it cuts the file into at most K chunks (`--chunks`, by default
//! the number of workers) of about equal bytes, on
//! change boundaries only: a chunk is a byte range that starts at a change and
//! ends where the next chunk starts (or where the last change ends), plus the
//! global index of its first change, so every change keeps its index whichever
//! worker applies it. Between two changes of one chunk there is only white space
//! and commas, which is all a worker needs to know to walk its range.
//!
//! Memory: constant (the scanner's buffer and the list of chunks).

use std::path::Path;

use anyhow::{Context, Result};

use crate::json::scan::{ScanResult, Scanner};
use crate::place::errors;
use crate::place::{self, Reader};

pub use crate::changes::chunk::{Chunk, Form, Plan};

/// Where the plan aims its `i`-th cut of a file of `size` bytes into
/// `wanted` chunks: byte `size * i / wanted` (the first change starting there
/// or after begins chunk `i`). The one place both ways of planning (one scan,
/// or segments on several threads) take it from.
fn cut_target(size: u64, i: u64, wanted: u64) -> u64 {
    (u128::from(size) * u128::from(i) / u128::from(wanted.max(1))) as u64
}

/// Cuts chunks as change starts go by (see module docs).
struct Cutter {
    size: u64,
    /// How many chunks to cut at most.
    wanted: u64,
    /// Index of the next target cut (target `i` is at `size * i / wanted`).
    next_cut: u64,
    chunks: Vec<Chunk>,
    changes: u64,
}

impl Cutter {
    fn target(&self, i: u64) -> u64 {
        if i >= self.wanted {
            u64::MAX
        } else {
            cut_target(self.size, i, self.wanted)
        }
    }

    fn change_starts(&mut self, offset: u64) {
        let cut = match self.chunks.last() {
            None => true,
            Some(_) => offset >= self.target(self.next_cut),
        };
        if cut {
            if let Some(last) = self.chunks.last_mut() {
                last.end = offset;
            }
            while self.target(self.next_cut) <= offset {
                self.next_cut += 1;
            }
            self.chunks.push(Chunk {
                start: offset,
                end: offset,
                first_index: self.changes,
                changes: 0,
            });
        }
        let current = self.chunks.last_mut().expect("a chunk was just made");
        current.changes += 1;
        self.changes += 1;
    }

    fn change_ends(&mut self, offset: u64) {
        if let Some(last) = self.chunks.last_mut() {
            last.end = offset;
        }
    }
}

mod segments;

/// The least body per thread for a plan on several threads: below it, one
/// thread is quicker than starting more.
const MIN_SEGMENT_BYTES: u64 = 1 << 20;

/// Scans CHANGES at `path` and cuts it into up to `wanted` chunks, on up to
/// `threads` threads (JSON Lines and bare arrays; see [`segments`]);
/// `progress` gets the number of bytes read so far.
pub fn plan(
    path: &Path,
    wanted: usize,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Plan> {
    plan_with(path, wanted, threads, MIN_SEGMENT_BYTES, progress)
}

fn plan_with(
    path: &Path,
    wanted: usize,
    threads: usize,
    min_segment: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Plan> {
    let file =
        place::open_at(path, 0).with_context(|| format!("opening CHANGES {}", path.display()))?;
    let size = place::size(path)?;
    if threads >= 2 {
        // Its own handle: a clone would share (and move) the file position.
        let head = body_of(Scanner::new(place::open_range(path, 0, size)?, 0))
            .map_err(|e| errors::scan_error("CHANGES", path, e))?;
        if let Some((form, body_start)) = head {
            let threads = threads.min(((size - body_start) / min_segment.max(1)) as usize);
            if threads >= 2 {
                let split = segments::Split {
                    path,
                    form,
                    size,
                    body_start,
                    targets: (1..wanted.max(1) as u64)
                        .map(|i| cut_target(size, i, wanted as u64))
                        .collect(),
                };
                let planned = split
                    .run(threads, progress)
                    .map_err(|e| errors::scan_error("CHANGES", path, e))?;
                progress(size);
                return Ok(planned);
            }
        }
    }
    let mut cutter = Cutter {
        size,
        wanted: wanted.max(1) as u64,
        next_cut: 1,
        chunks: Vec::new(),
        changes: 0,
    };
    let mut scanner = Scanner::new(file, 0);
    let form = scan(&mut scanner, &mut cutter, progress)
        .map_err(|e| errors::scan_error("CHANGES", path, e))?;
    progress(size);
    Ok(Plan {
        form,
        changes: cutter.changes,
        chunks: cutter.chunks,
    })
}

/// How CHANGES begins: what decides its form, read the same way by the
/// one-thread plan ([`scan`]) and the parallel one ([`body_of`]).
enum Head {
    /// A bare array; the scanner is after its `[`.
    Array,
    /// The object form; the scanner is at the value of its `changes` member
    /// (the members before it read).
    Object,
    /// JSON Lines whose first value, an object without `changes` at offset
    /// `first`, is read (the scanner is after it).
    FirstLineRead { first: u64 },
    /// JSON Lines, the scanner at the first value (or at the end).
    Lines,
}

fn head(s: &mut Scanner<Reader>) -> ScanResult<Head> {
    s.skip_bom()?;
    match s.peek()? {
        Some(b'[') => {
            s.expect(b'[', "'['")?;
            Ok(Head::Array)
        }
        Some(b'{') => {
            let first = s.offset();
            s.expect(b'{', "'{'")?;
            if s.eat(b'}')? {
                return Ok(Head::FirstLineRead { first });
            }
            loop {
                s.peek()?;
                if s.key()? == "changes" {
                    return Ok(Head::Object);
                }
                s.value()?;
                if s.eat(b',')? {
                    continue;
                }
                s.expect(b'}', "',' or '}' after an object member")?;
                return Ok(Head::FirstLineRead { first });
            }
        }
        _ => Ok(Head::Lines),
    }
}

/// The form of CHANGES and where its changes start, for the forms whose
/// changes sit at the top level (a bare array: after its `[`; JSON Lines: at
/// the first value); `None` for the object form, or a beginning that does
/// not even scan (the one-thread plan reports it).
fn body_of(mut s: Scanner<Reader>) -> ScanResult<Option<(Form, u64)>> {
    Ok(match head(&mut s) {
        Ok(Head::Array) => Some((Form::Array, s.offset())),
        Ok(Head::FirstLineRead { first }) => Some((Form::Lines, first)),
        Ok(Head::Lines) => s.peek()?.map(|_| (Form::Lines, s.offset())),
        Ok(Head::Object) | Err(_) => None,
    })
}

fn scan(
    s: &mut Scanner<Reader>,
    cutter: &mut Cutter,
    progress: &mut dyn FnMut(u64),
) -> ScanResult<Form> {
    let form = match head(s)? {
        Head::Array => {
            changes_array(s, cutter, progress)?;
            Form::Array
        }
        Head::Object => {
            object_form(s, cutter, progress)?;
            Form::Object
        }
        Head::FirstLineRead { first } => {
            cutter.change_starts(first);
            cutter.change_ends(s.offset());
            lines(s, cutter, progress)?;
            return Ok(Form::Lines);
        }
        Head::Lines => {
            lines(s, cutter, progress)?;
            return Ok(Form::Lines);
        }
    };
    if s.peek()?.is_some() {
        return Err(s.unexpected(
            "end of input after the changes document (only JSON Lines may hold several values)",
        ));
    }
    Ok(form)
}

/// The object form from the value of its `changes` member on: the changes
/// array, then the members after it (none of them `changes` again), up to and
/// including the closing `}`.
fn object_form(
    s: &mut Scanner<Reader>,
    cutter: &mut Cutter,
    progress: &mut dyn FnMut(u64),
) -> ScanResult<()> {
    if s.peek()? != Some(b'[') {
        let at = s.offset();
        return Err(s.error_at(at, "member changes must be an array of changes"));
    }
    s.expect(b'[', "'['")?;
    changes_array(s, cutter, progress)?;
    while s.eat(b',')? {
        s.peek()?;
        let key_offset = s.offset();
        if s.key()? == "changes" {
            return Err(s.error_at(key_offset, "member changes appears twice"));
        }
        s.value()?;
    }
    s.expect(b'}', "',' or '}' after an object member")
}

/// The elements of a changes array, after its `[`, up to and including its `]`.
fn changes_array(
    s: &mut Scanner<Reader>,
    cutter: &mut Cutter,
    progress: &mut dyn FnMut(u64),
) -> ScanResult<()> {
    if s.eat(b']')? {
        return Ok(());
    }
    loop {
        one_change(s, cutter, progress)?;
        if s.eat(b',')? {
            continue;
        }
        return s.expect(b']', "',' or ']' after a change");
    }
}

/// JSON Lines: values until the end of input.
fn lines(
    s: &mut Scanner<Reader>,
    cutter: &mut Cutter,
    progress: &mut dyn FnMut(u64),
) -> ScanResult<()> {
    while s.peek()?.is_some() {
        one_change(s, cutter, progress)?;
    }
    Ok(())
}

fn one_change(
    s: &mut Scanner<Reader>,
    cutter: &mut Cutter,
    progress: &mut dyn FnMut(u64),
) -> ScanResult<()> {
    s.peek()?;
    cutter.change_starts(s.offset());
    scan_change(s)?;
    cutter.change_ends(s.offset());
    crate::run::fault::point("plan-change");
    if cutter.changes.is_multiple_of(4096) {
        progress(s.offset());
        if crate::run::interrupt::requested() {
            return Err(crate::json::scan::ScanError::Interrupted);
        }
    }
    Ok(())
}

/// Scans the change at the scanner (after white space). Most changes have
/// one shape, which is valid JSON when it matches
/// ([`crate::changes::change::common_shape_len`]): it is passed over, not scanned byte
/// by byte (BENCHMARKS.md, "What was tried": the common change shape).
fn scan_change(s: &mut Scanner<Reader>) -> ScanResult<()> {
    if !s.skip_known(crate::changes::change::common_shape_len) {
        s.value()?;
    }
    Ok(())
}

/// How many merge partitions for a changes file of `size` bytes and a document
/// of `playlists` playlists. A merge thread holds the state of every playlist its
/// partition touches, so a partition should cover a few MiB of changes (which
/// bounds the playlists they create) and about a thousand of the document's
/// playlists: the merge's memory then stays bounded whatever the input size.
pub fn partitions_for(size: u64, playlists: u64) -> u64 {
    ((size >> 22) + 1)
        .max((playlists >> 10) + 1)
        .next_power_of_two()
        .clamp(8, 4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The one-thread plan of `text`, after checking that the plan on 2, 3
    /// and 7 threads (with segments as small as one byte) is the same, or
    /// fails with the same message.
    fn plan_text(text: &str, workers: usize) -> Result<Plan> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let one = plan(f.path(), workers, 1, &mut |_| {});
        for threads in [2, 3, 7] {
            let many = plan_with(f.path(), workers, threads, 1, &mut |_| {});
            match (&one, &many) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        (a.form, a.changes, &a.chunks),
                        (b.form, b.changes, &b.chunks),
                        "{threads} threads, {workers} workers: {text:?}"
                    )
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "{threads} threads: {text:?}")
                }
                _ => panic!("{threads} threads: {one:?} but {many:?} for {text:?}"),
            }
        }
        one
    }

    /// The text of every change, by cutting each chunk at its white space and
    /// commas the way a worker does.
    fn change_texts(text: &str, plan: &Plan) -> Vec<String> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        for c in &plan.chunks {
            let range = &bytes[c.start as usize..c.end as usize];
            let mut i = 0;
            let mut n = 0;
            while i < range.len() {
                if crate::json::is_ws(range[i]) || range[i] == b',' {
                    i += 1;
                    continue;
                }
                let end = crate::json::value_end(range, i, true).unwrap();
                out.push(String::from_utf8(range[i..end].to_vec()).unwrap());
                i = end;
                n += 1;
            }
            assert_eq!(n, c.changes);
        }
        out
    }

    /// What serde_json sees as the changes of `text`.
    fn serde_changes(text: &str) -> Vec<String> {
        let t = text.trim_start();
        let values: Vec<serde_json::Value> = if t.starts_with('[') {
            serde_json::from_str(t).unwrap()
        } else if t.starts_with('{') {
            let first = serde_json::Deserializer::from_str(t)
                .into_iter::<serde_json::Value>()
                .next()
                .unwrap()
                .unwrap();
            match first.get("changes") {
                Some(serde_json::Value::Array(a)) => a.clone(),
                _ => serde_json::Deserializer::from_str(t)
                    .into_iter::<serde_json::Value>()
                    .map(|v| v.unwrap())
                    .collect(),
            }
        } else {
            serde_json::Deserializer::from_str(t)
                .into_iter::<serde_json::Value>()
                .map(|v| v.unwrap())
                .collect()
        };
        values.iter().map(|v| v.to_string()).collect()
    }

    fn agrees(text: &str) {
        let reparse = |s: &String| {
            serde_json::from_str::<serde_json::Value>(s)
                .unwrap()
                .to_string()
        };
        for workers in [1, 2, 3, 7, 50] {
            let p = plan_text(text, workers).unwrap();
            assert!(p.chunks.len() <= workers);
            let ours: Vec<String> = change_texts(text, &p).iter().map(reparse).collect();
            assert_eq!(ours, serde_changes(text), "workers={workers} text={text:?}");
            assert_eq!(p.changes as usize, ours.len());
            let mut index = 0;
            for c in &p.chunks {
                assert_eq!(c.first_index, index);
                assert!(c.changes > 0);
                index += c.changes;
            }
        }
    }

    #[test]
    fn boundaries_match_serde_json_in_every_form() {
        let nasty = r#"{"op":"add_song","playlist_id":"1","song_id":"2","x":"}],\"{[\\","u":"\u00e9\ud83d\ude00"}"#;
        let pretty = "{\n  \"op\": \"remove_playlist\",\n  \"playlist_id\": 7\n}";
        agrees(&format!("[{nasty}, {pretty}, 5, \"s\", null, [1,[2]]]"));
        agrees(&format!(
            "{{\"version\": 1, \"changes\": [{nasty},\n{pretty}], \"after\": {{\"changes\": 1}}}}"
        ));
        agrees(&format!("{nasty}\n{pretty}\n\n{nasty}\n"));
        agrees(&format!("{pretty}\n1\n\"x\"\n[2]\n"));
        agrees("[]");
        agrees("{\"changes\": []}");
        agrees("");
        agrees("  \n ");
    }

    #[test]
    fn object_form_is_decided_by_the_first_value() {
        let p = plan_text("{\"a\": 1, \"changes\": [{}, {}]}", 2).unwrap();
        assert_eq!((p.form, p.changes), (Form::Object, 2));
        let p = plan_text("{\"a\": 1}\n{\"changes\": [{}, {}]}", 2).unwrap();
        assert_eq!((p.form, p.changes), (Form::Lines, 2));
    }

    #[test]
    fn cuts_into_about_equal_chunks() {
        let text: String = (0..1000)
            .map(|i| format!("{{\"op\":\"x\",\"n\":{i}}}\n"))
            .collect();
        let p = plan_text(&text, 4).unwrap();
        assert_eq!(p.chunks.len(), 4);
        for c in &p.chunks {
            let share = (c.end - c.start) as f64 / text.len() as f64;
            assert!((0.2..0.3).contains(&share), "{share}");
        }
        let p = plan_text("{}\n{}\n", 8).unwrap();
        assert_eq!(p.chunks.len(), 2);
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in [
            "[{}, {},]",
            "[{}",
            "{\"changes\": [1] } x",
            "{\"changes\": 5}",
            "{} {",
            "[1] [2]",
            "{\"changes\":[],\"changes\":[]}",
        ] {
            assert!(plan_text(bad, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn threads_agree_on_long_files_with_pretty_changes_and_late_errors() {
        let mut lines = String::new();
        for i in 0..300 {
            if i % 7 == 0 {
                lines.push_str(&format!(
                    "{{\n  \"op\": \"x\",\n  \"n\": [\n    {i}\n  ]\n}}\n"
                ));
            } else {
                lines.push_str(&format!(
                    "{{\"op\":\"x\",\"s\":\"a\\n}}\\\"{{\",\"n\":{i}}}\n"
                ));
            }
        }
        agrees(&lines);
        let array = format!("[\n{}\n]\n", lines.trim_end().replace("}\n{", "},\n{"));
        agrees(&array);
        let comma_first = format!("[\n{}\n]", lines.trim_end().replace("}\n{", "}\n,{"));
        agrees(&comma_first);
        for bad in [
            format!("{lines}{{\"op\": }}\n"),
            format!("{lines}]"),
            array.replace("]\n", ",]"),
            format!("{array}x"),
            array.replace("\n]\n", "\n"),
        ] {
            assert!(plan_text(&bad, 3).is_err());
        }
    }
}
