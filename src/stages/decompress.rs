//! The decompress stage (docs/GUIDE.md "Compressed inputs"): gzip and zstd inputs,
//! recognised by their magic bytes (never their names), decompressed once into
//! a file kept beside the work database; both at once when both inputs are
//! compressed, and never again for a kept file the store says is whole.
//!
//! Why a file and not a stream: a plan is byte offsets into CHANGES and each
//! worker seeks to its own chunk; the import records where MIXTAPE's users and
//! songs arrays are, and the export copies them back from MIXTAPE by offset.
//! None of that works on a stream, and all of it works unchanged on the
//! decompressed text, so every later stage simply reads the kept file. The kept
//! file is written under a `.partial` name and renamed when complete, so a file
//! under the final name is always whole; the pipeline records its fingerprint in
//! the store, and a resumed run that finds it intact does not decompress again.
//!
//! A multi-member gzip file (`cat a.gz b.gz`) is one stream ([`MultiGzDecoder`]),
//! and so is a zstd file of several frames (the zstd decoder reads on across
//! frames). A file that ends inside a member or frame, or whose data does not
//! decode, is an error naming the input, the format and how far it got.

use std::cell::Cell;

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;

use crate::stages::input::{Compression, Input, Inputs};
use crate::store::Store;

/// How much is decompressed between progress reports and interrupt checks.
const BUFFER: usize = 1 << 20;

/// What a decompression read and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decompressed {
    pub compressed_bytes: u64,
    pub decompressed_bytes: u64,
}

/// The compressed inputs whose kept text is not whole yet: what the stage
/// has to do.
pub fn pending<'a>(inputs: &'a Inputs, store: &Store) -> Result<Vec<&'a Input>> {
    let mut to_do = Vec::new();
    for input in inputs.both() {
        if input.compression.is_some() && !input.text_is_whole(store)? {
            to_do.push(input);
        }
    }
    Ok(to_do)
}

/// The decompress stage: decompresses each of `to_do` (from [`pending`]) into
/// its kept text, at the same time when there are two and `threads` allows,
/// and records each kept text in the store once it is whole. `progress(i,
/// read, written)` reports on `to_do[i]`; the figures come back in that order.
pub fn stage(
    to_do: &[&Input],
    store: &Store,
    threads: usize,
    progress: &(dyn Fn(usize, u64, u64) + Sync),
) -> Result<Vec<Decompressed>> {
    let one = |i: usize| {
        let input = to_do[i];
        let format = input
            .compression
            .expect("only compressed inputs are pending");
        let label = input.kind.label();
        let partial =
            (input.partial_text.as_deref()).expect("a compressed input has a partial text");
        decompress(
            label,
            &input.path,
            format,
            (&input.text, partial),
            &mut |read, written| progress(i, read, written),
        )
    };
    let results: Vec<Result<Decompressed>> = if threads >= 2 && to_do.len() > 1 {
        std::thread::scope(|scope| {
            let running: Vec<_> = (0..to_do.len())
                .map(|i| scope.spawn(move || one(i)))
                .collect();
            (running.into_iter())
                .map(|handle| handle.join().expect("decompression panicked"))
                .collect()
        })
    } else {
        (0..to_do.len()).map(one).collect()
    };
    let mut figures = Vec::new();
    for (input, result) in to_do.iter().zip(results) {
        figures.push(result?);
        let print = crate::place::fingerprint(&input.text)?;
        store.record_input_text(input.kind, &input.text, &print)?;
    }
    Ok(figures)
}

/// Progress: compressed bytes read so far, decompressed bytes written so far.
pub type ProgressFn<'a> = dyn FnMut(u64, u64) + 'a;

/// Decompresses `source` (the input `label`, in `format`) into `kept`, through
/// `partial` and a rename (both from the run's [`crate::store::WorkFiles`]).
/// `progress` is called about once per MiB written.
pub fn decompress(
    label: &str,
    source: &Path,
    format: Compression,
    (kept, partial): (&Path, &Path),
    progress: &mut ProgressFn,
) -> Result<Decompressed> {
    let size = crate::place::size(source)?;
    let file = crate::place::open_at(source, 0)
        .with_context(|| format!("opening {label} {}", source.display()))?;
    let read_so_far = Cell::new(0u64);
    let counted = Counting {
        inner: file,
        count: &read_so_far,
    };
    let mut decoder: Box<dyn Read + '_> = match format {
        Compression::Gzip => Box::new(MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(counted)
                .with_context(|| format!("starting to decompress {label}"))?,
        ),
    };
    let mut report = |written| progress(read_so_far.get(), written);
    let failure = |written| Failure {
        label,
        source,
        format,
        size,
        read: read_so_far.get(),
        written,
    };
    let written = if crate::place::is_object(kept) {
        // Kept in the bucket for the workers of every host: an upload,
        // whole once complete, as a renamed file is.
        let mut written = 0;
        crate::place::write_atomically(kept, |out| {
            written = copy(&mut decoder, out, None, label, &mut report, failure)?;
            Ok(())
        })?;
        written
    } else {
        let mut out = crate::run::private_file::create_new(partial)?;
        let room = Room::of(partial)?;
        let copied = copy(
            &mut decoder,
            &mut out,
            Some((&room, partial)),
            label,
            &mut report,
            failure,
        )
        .and_then(|written| {
            out.sync_all()
                .with_context(|| format!("writing {}", partial.display()))?;
            Ok(written)
        });
        let written = match copied {
            Ok(written) => written,
            Err(e) => {
                // A partial text is of no use to anyone: a new run starts over.
                let _ = std::fs::remove_file(partial);
                return Err(e);
            }
        };
        std::fs::rename(partial, kept)
            .with_context(|| format!("renaming {} to {}", partial.display(), kept.display()))?;
        crate::run::paths::sync_directory_of(kept)?;
        written
    };
    Ok(Decompressed {
        compressed_bytes: size,
        decompressed_bytes: written,
    })
}

/// Copies what `decoder` gives to `out`, keeping `room` free on the file
/// system of the file it names; returns the bytes written. `failure`
/// describes a decoding error after `written` bytes.
fn copy<'a>(
    decoder: &mut dyn Read,
    out: &mut dyn Write,
    room: Option<(&Room, &Path)>,
    label: &str,
    progress: &mut dyn FnMut(u64),
    failure: impl Fn(u64) -> Failure<'a>,
) -> Result<u64> {
    let mut buffer = vec![0u8; BUFFER];
    let mut written = 0u64;
    loop {
        let n = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failure(written).explain(e)),
        };
        if let Some((room, file)) = room {
            room.check(n as u64, written, label, file)?;
        }
        out.write_all(&buffer[..n])
            .with_context(|| format!("writing the decompressed {label}"))?;
        written += n as u64;
        crate::run::fault::point("decompress-block");
        progress(written);
        crate::run::interrupt::check()?;
    }
    Ok(written)
}

/// The free space a decompression leaves on the file system of the kept text
/// (docs/DESIGN.md "Limits"): 5 % of the file system, at least 16 MiB, at most 1 GiB.
/// A testing aid sets it ([`crate::run::fault::min_free_bytes`]).
pub fn free_space_margin(total_bytes: u64) -> u64 {
    if let Some(bytes) = crate::run::fault::min_free_bytes() {
        return bytes;
    }
    (total_bytes / 20).clamp(16 << 20, 1 << 30)
}

/// The file system a kept text is written on, and the margin to keep there.
struct Room {
    dir: std::path::PathBuf,
    margin: u64,
}

impl Room {
    fn of(file: &Path) -> Result<Room> {
        let dir = crate::run::paths::directory_of(file).to_path_buf();
        let (_, total) = Room::space(&dir)?;
        Ok(Room {
            margin: free_space_margin(total),
            dir,
        })
    }

    /// (available to us, file system size), in bytes.
    fn space(dir: &Path) -> Result<(u64, u64)> {
        let fs = nix::sys::statvfs::statvfs(dir)
            .with_context(|| format!("asking how much room is left in {}", dir.display()))?;
        let unit = fs.fragment_size() as u64;
        Ok((
            (fs.blocks_available() as u64).saturating_mul(unit),
            (fs.blocks() as u64).saturating_mul(unit),
        ))
    }

    /// Fails, before writing `next` more bytes, if that would leave less than
    /// the margin free.
    fn check(&self, next: u64, written: u64, label: &str, partial: &Path) -> Result<()> {
        let (available, _) = Room::space(&self.dir)?;
        if available < self.margin.saturating_add(next) {
            anyhow::bail!(
                "decompressing {label} stopped before the disk is full: {written} bytes of text were written to {} and only {available} bytes are left on that file system, which mixtape keeps at least {} bytes free on (docs/DESIGN.md \"Limits\"); make room, or put the work database on a larger disk with --db",
                partial.display(),
                self.margin
            );
        }
        Ok(())
    }
}

/// Where a decompression stopped, for its error message.
struct Failure<'a> {
    label: &'a str,
    source: &'a Path,
    format: Compression,
    size: u64,
    read: u64,
    written: u64,
}

impl Failure<'_> {
    /// `CHANGES c.json.gz: the gzip data is truncated (it ends inside a member):
    /// got 1048576 bytes of text from the first 5120 of its 5200 bytes`.
    fn explain(&self, error: io::Error) -> anyhow::Error {
        let format = self.format.name();
        let what = if error.kind() == io::ErrorKind::UnexpectedEof {
            format!("the {format} data is truncated: the file ends inside a compressed block")
        } else {
            format!("the {format} data is corrupt ({error})")
        };
        anyhow::anyhow!(
            "{} {}: {what}; decompression stopped after {} bytes of text, having read {} of the file's {} bytes",
            self.label,
            self.source.display(),
            self.written,
            self.read.min(self.size),
            self.size
        )
    }
}

/// A reader that counts the bytes it hands on (how far into the compressed file
/// the decoder got).
struct Counting<'a, R> {
    inner: R,
    count: &'a Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn run(compressed: &[u8], format: Compression) -> Result<(Vec<u8>, Decompressed)> {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("in");
        let kept = dir.path().join("kept");
        let partial = dir.path().join("kept.partial");
        std::fs::write(&source, compressed).unwrap();
        let got = decompress(
            "CHANGES",
            &source,
            format,
            (&kept, &partial),
            &mut |_, _| {},
        )?;
        assert!(!partial.exists());
        Ok((std::fs::read(&kept).unwrap(), got))
    }

    fn text() -> Vec<u8> {
        (0..50_000)
            .map(|i| format!("{{\"op\":\"remove_playlist\",\"playlist_id\":\"{i}\"}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn magic_bytes_decide() {
        assert_eq!(Compression::of_magic(&gzip(b"x")), Some(Compression::Gzip));
        let z = zstd::encode_all(&b"x"[..], 3).unwrap();
        assert_eq!(Compression::of_magic(&z), Some(Compression::Zstd));
        assert_eq!(Compression::of_magic(b"{\"users\""), None);
        assert_eq!(Compression::of_magic(b""), None);
        assert_eq!(Compression::of_magic(&[0x1f]), None);
    }

    #[test]
    fn multi_member_gzip_and_multi_frame_zstd_are_one_stream() {
        let mut two = gzip(b"first half, ");
        two.extend(gzip(b"second half"));
        let (out, got) = run(&two, Compression::Gzip).unwrap();
        assert_eq!(out, b"first half, second half");
        assert_eq!(got.decompressed_bytes, 23);
        let mut frames = zstd::encode_all(&b"one "[..], 1).unwrap();
        frames.extend(zstd::encode_all(&b"two"[..], 1).unwrap());
        assert_eq!(run(&frames, Compression::Zstd).unwrap().0, b"one two");
    }

    #[test]
    fn truncated_inputs_are_errors_saying_how_far_they_got() {
        let text = text();
        let z = zstd::encode_all(&text[..], 3).unwrap();
        for (format, whole) in [(Compression::Gzip, gzip(&text)), (Compression::Zstd, z)] {
            assert_eq!(run(&whole, format).unwrap().0, text);
            let cut = &whole[..whole.len() * 2 / 3];
            let e = format!("{:#}", run(cut, format).unwrap_err());
            assert!(
                e.contains(&format!("{} data is truncated", format.name())),
                "{e}"
            );
            assert!(
                e.contains(&format!("of the file's {} bytes", cut.len())),
                "{e}"
            );
        }
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let mut bad = gzip(&text());
        let middle = bad.len() / 2;
        for b in &mut bad[middle..middle + 64] {
            *b ^= 0x5a;
        }
        let e = format!("{:#}", run(&bad, Compression::Gzip).unwrap_err());
        assert!(e.contains("gzip data is corrupt"), "{e}");
        // Only the magic bytes: it claims to be gzip, and is not.
        let e = format!(
            "{:#}",
            run(b"\x1f\x8b{\"users\":[]}", Compression::Gzip).unwrap_err()
        );
        assert!(e.contains("CHANGES") && e.contains("gzip data is"), "{e}");
    }
}
