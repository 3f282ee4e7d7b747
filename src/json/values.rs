//! Reading the JSON values in a byte range of an input that the scanner already
//! validated: a worker's chunk of CHANGES, or the inside of the document's
//! `users` or `songs` array. Between two values there is only white space and
//! commas, so the non-validating [`crate::json::value_end`] finds each value's
//! end, and the range is streamed a few MiB at a time: memory holds the largest
//! single value, not the range.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::json;

/// Bytes read at a time.
const READ_SIZE: usize = 1 << 20;

/// Calls `each` with every value in bytes `from..end` of the input `path`,
/// which `source` reads from `from` on, and the offset just past it. `what` names the range in the error for a
/// range that ends inside a value (the file changed since it was validated).
pub fn each_value(
    source: &mut dyn Read,
    path: &Path,
    from: u64,
    end: u64,
    what: &str,
    each: &mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    each_value_read(source, path, from, end, what, None, &mut whole_values(each))
}

/// A reader for [`each_value_read`] that takes whole values only, and hands
/// each to `each` with the offset past it.
fn whole_values<'a>(
    each: &'a mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> impl FnMut(&[u8], bool, u64) -> Result<Option<usize>> + 'a {
    move |value, whole, after| {
        if whole {
            each(value, after)?;
        }
        Ok(None)
    }
}

/// [`each_value`], with every value minified (in the same pass that finds
/// its end).
pub fn each_minified_value(
    source: &mut dyn Read,
    path: &Path,
    from: u64,
    end: u64,
    what: &str,
    each: &mut dyn FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    each_value_read(
        source,
        path,
        from,
        end,
        what,
        Some(Vec::new()),
        &mut whole_values(each),
    )
}

/// What [`each_value_read_by`] calls at each value (see there).
pub type ValueReader<'a> = dyn FnMut(&[u8], bool, u64) -> Result<Option<usize>> + 'a;

/// [`each_value`], where `each` may read a value from its first byte on: it
/// gets the text read so far from there (`whole` false) and the file offset
/// of its first byte, and says how many bytes the value took, or `None` when
/// it cannot tell. Then the value's end is found here and `each` gets exactly
/// the value (`whole` true) and the file offset just past it, as
/// [`each_value`] gives them. This spares the scan for each value's end where
/// the reader finds it anyway (a worker's changes).
pub fn each_value_read_by(
    source: &mut dyn Read,
    path: &Path,
    from: u64,
    end: u64,
    what: &str,
    each: &mut ValueReader,
) -> Result<()> {
    each_value_read(source, path, from, end, what, None, each)
}

/// The one loop of this module: [`each_value_read_by`], each whole value
/// minified into `minified` when that is given (and then never offered
/// unfinished: its reader would see white space).
fn each_value_read(
    source: &mut dyn Read,
    path: &Path,
    from: u64,
    end: u64,
    what: &str,
    mut minified: Option<Vec<u8>>,
    each: &mut ValueReader,
) -> Result<()> {
    let mut source = source.take(end.saturating_sub(from));
    let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
    let mut buf_offset = from; // file offset of buf[0]
    let mut at_end = false;
    while !at_end {
        let have = buf.len();
        buf.resize(have + READ_SIZE, 0);
        let n = read_full(&mut source, &mut buf[have..])
            .with_context(|| format!("reading {}", path.display()))?;
        buf.truncate(have + n);
        at_end = n == 0 || buf_offset + buf.len() as u64 >= end;
        let mut i = 0;
        loop {
            while i < buf.len() && (json::is_ws(buf[i]) || buf[i] == b',') {
                i += 1;
            }
            if i == buf.len() {
                break;
            }
            if minified.is_none() {
                if let Some(len) = each(&buf[i..], false, buf_offset + i as u64)? {
                    i += len;
                    continue;
                }
            }
            let found = match minified.as_mut() {
                Some(out) => {
                    out.clear();
                    json::minify_value_into(&buf, i, at_end, out)
                }
                None => json::value_end(&buf, i, at_end),
            };
            let Some(value_end) = found else {
                if at_end {
                    bail!(
                        "{} {}: {what} ends inside a value at byte {}; the file changed since it was read",
                        path.display(),
                        what,
                        buf_offset + i as u64
                    );
                }
                break;
            };
            let value = match &minified {
                Some(out) => out.as_slice(),
                None => &buf[i..value_end],
            };
            each(value, true, buf_offset + value_end as u64)?;
            i = value_end;
        }
        buf.drain(..i);
        buf_offset += i as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or the source ends.
pub fn read_full(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &Path, offset: u64) -> std::fs::File {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::open(path).unwrap();
        file.seek(SeekFrom::Start(offset)).unwrap();
        file
    }

    #[test]
    fn values_between_commas_and_white_space() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let text = "[ {\"a\": \"],\"}, 2 ,\n[3, {}], \"x\" ]";
        std::fs::write(&p, text).unwrap();
        let mut seen = Vec::new();
        each_value(
            &mut at(&p, 1),
            &p,
            1,
            text.len() as u64 - 1,
            "array",
            &mut |v, end| {
                seen.push((String::from_utf8(v.to_vec()).unwrap(), end));
                Ok(())
            },
        )
        .unwrap();
        let values: Vec<&str> = seen.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(values, ["{\"a\": \"],\"}", "2", "[3, {}]", "\"x\""]);
        assert_eq!(&text[..seen[1].1 as usize], "[ {\"a\": \"],\"}, 2");
        let cut = each_value(&mut at(&p, 1), &p, 1, 5, "array", &mut |_, _| Ok(()));
        assert!(cut.unwrap_err().to_string().contains("ends inside a value"));
    }
}
