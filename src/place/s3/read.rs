//! Reading objects by range, pinned to the version the run began with.
//!
//! An input is pinned once ([`Pin`]): its size, ETag and version id (where
//! the bucket keeps versions) are recorded in the work store, and every later
//! read, by any process on any host, asks for exactly that object: the
//! request carries `If-Match: ETAG` (and the version id), and the answer's
//! ETag is compared too, for the servers that ignore the header. An object
//! replaced during the run, or between a crash and the resume, is refused,
//! never mixed with the one the plan was made from.
//!
//! An [`ObjectReader`] streams one ranged GET from its offset to the end of
//! what it was asked for, so a worker reads its own chunk straight from the
//! bucket in one request, with a buffer of one network read. When the body
//! fails or stalls (no bytes within [`Bounds::request`]), the reader asks
//! again from the first byte it has not handed out, up to [`Bounds::RETRIES`]
//! times in a row with backoff; then the read fails with the URL and the cause.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::{bounded, Bounds, Object};

/// What identifies the one version of an object a run reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
}

/// How a pin starts in the store (after it, `size=N etag=E version=V`).
const FINGERPRINT_PREFIX: &str = "object";

impl Pin {
    /// Asks the bucket what `path` is now, and holds that as its pin for
    /// this process.
    pub fn of(path: &Path) -> Result<Pin> {
        let object = Object::at(path)?;
        let meta = bounded(
            &format!("reading {}", object.url),
            Bounds::get().request * (Bounds::RETRIES + 1),
            object.client.head(&object.key),
        )?;
        let pin = Pin {
            size: meta.size,
            etag: meta.e_tag,
            version: meta.version,
        };
        pin.clone().hold(path);
        Ok(pin)
    }

    /// As the work store records it.
    pub fn fingerprint(&self) -> String {
        format!(
            "{FINGERPRINT_PREFIX} size={} etag={} version={}",
            self.size,
            self.etag.as_deref().unwrap_or("-"),
            self.version.as_deref().unwrap_or("-")
        )
    }

    /// The pin [`Self::fingerprint`] wrote.
    pub fn parse(fingerprint: &str) -> Result<Pin> {
        let bad = || anyhow!("{fingerprint:?} is not an object's fingerprint");
        let mut words = fingerprint.split(' ');
        if words.next() != Some(FINGERPRINT_PREFIX) {
            return Err(bad());
        }
        let mut field = |name: &str| {
            let value = words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .ok_or_else(bad)?;
            Ok::<_, anyhow::Error>((value != "-").then(|| value.to_string()))
        };
        let size = field("size=")?
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        Ok(Pin {
            size,
            etag: field("etag=")?,
            version: field("version=")?,
        })
    }

    /// Makes this the pin of `path` for every later read in this process.
    pub fn hold(self, path: &Path) {
        pins()
            .lock()
            .expect("pins")
            .insert(path.to_string_lossy().into_owned(), self);
    }
}

fn pins() -> &'static Mutex<HashMap<String, Pin>> {
    static PINS: OnceLock<Mutex<HashMap<String, Pin>>> = OnceLock::new();
    PINS.get_or_init(Default::default)
}

/// The pin this process holds for `path`, asking the bucket when none is held.
pub fn pin_of(path: &Path) -> Result<Pin> {
    let held = pins()
        .lock()
        .expect("pins")
        .get(&*path.to_string_lossy())
        .cloned();
    match held {
        Some(pin) => Ok(pin),
        None => Pin::of(path),
    }
}

/// A reader of an object from an offset to its end (see the module docs).
pub struct ObjectReader {
    object: Object,
    pin: Pin,
    /// The offset of the first byte not handed out yet, and the end.
    next: u64,
    end: u64,
    /// Received and not handed out yet.
    buffered: Bytes,
    body: Option<BoxStream<'static, object_store::Result<Bytes>>>,
    /// Failures since the last bytes arrived.
    failures: u32,
    bounds: Bounds,
}

impl ObjectReader {
    /// A reader of the object `path` from `offset` to `end` (or its end).
    pub fn open_range(path: &Path, offset: u64, end: u64) -> Result<ObjectReader> {
        let pin = pin_of(path)?;
        Ok(ObjectReader {
            object: Object::at(path)?,
            next: offset.min(pin.size),
            end: end.min(pin.size),
            pin,
            buffered: Bytes::new(),
            body: None,
            failures: 0,
            bounds: Bounds::get(),
        })
    }

    /// Asks for the bytes from `next` to `end`; a refused condition is
    /// final, anything else may be retried.
    fn request(&mut self) -> Result<BoxStream<'static, object_store::Result<Bytes>>, Failure> {
        let options = GetOptions {
            if_match: self.pin.etag.clone(),
            version: self.pin.version.clone(),
            range: Some(GetRange::Bounded(self.next..self.end)),
            ..Default::default()
        };
        let what = format!("reading {}", self.object.url);
        let call = self.object.client.get_opts(&self.object.key, options);
        let limit = self.bounds.request;
        let answer =
            match super::runtime().block_on(async { tokio::time::timeout(limit, call).await }) {
                Err(_) => {
                    return Err(Failure::Retry(anyhow!(
                        "{what}: no answer within {} s",
                        self.bounds.request.as_secs_f64()
                    )))
                }
                Ok(Err(object_store::Error::Precondition { .. })) => {
                    return Err(Failure::Final(self.replaced(None)))
                }
                Ok(Err(e @ object_store::Error::NotFound { .. })) => {
                    return Err(Failure::Final(super::cause(&what, e)))
                }
                // object_store retried what it could already.
                Ok(Err(e)) => return Err(Failure::Final(super::cause(&what, e))),
                Ok(Ok(answer)) => answer,
            };
        if self.pin.etag.is_some() && answer.meta.e_tag != self.pin.etag {
            return Err(Failure::Final(self.replaced(answer.meta.e_tag.as_deref())));
        }
        if answer.range != (self.next..self.end) {
            return Err(Failure::Retry(anyhow!(
                "{what}: asked for bytes {}..{}, got {}..{}",
                self.next,
                self.end,
                answer.range.start,
                answer.range.end
            )));
        }
        Ok(answer.into_stream())
    }

    fn replaced(&self, now: Option<&str>) -> anyhow::Error {
        let was = self.pin.etag.as_deref().unwrap_or("-");
        match now {
            Some(now) => anyhow!(
                "{} was replaced since the run began (its ETag was {was}, is {now}); the run does not mix two versions of an input: run the harness again to start afresh",
                self.object.url
            ),
            None => anyhow!(
                "{} was replaced since the run began (it no longer has ETag {was}); the run does not mix two versions of an input: run the harness again to start afresh",
                self.object.url
            ),
        }
    }

    /// The next bytes of the body, opening it when needed.
    fn fill(&mut self) -> Result<()> {
        loop {
            let attempt = match self.body.as_mut() {
                Some(body) => {
                    let limit = self.bounds.request;
                    let next = super::runtime()
                        .block_on(async { tokio::time::timeout(limit, body.next()).await });
                    match next {
                        Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
                        Ok(Some(Err(e))) => Err(Failure::Retry(super::cause(
                            &format!("reading {}", self.object.url),
                            e,
                        ))),
                        Ok(None) => Err(Failure::Retry(anyhow!(
                            "reading {}: the answer ended at byte {} of {}",
                            self.object.url,
                            self.next,
                            self.end
                        ))),
                        Err(_) => Err(Failure::Retry(anyhow!(
                            "reading {}: no bytes within {} s at byte {}",
                            self.object.url,
                            self.bounds.request.as_secs_f64(),
                            self.next
                        ))),
                    }
                }
                None => self.request().map(|body| {
                    self.body = Some(body);
                    None
                }),
            };
            match attempt {
                Ok(Some(bytes)) if !bytes.is_empty() => {
                    self.failures = 0;
                    self.buffered = bytes;
                    return Ok(());
                }
                Ok(_) => {}
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(e)) => {
                    self.body = None;
                    self.failures += 1;
                    if self.failures > Bounds::RETRIES {
                        return Err(e.context(format!(
                            "gave up after {} tries in a row",
                            Bounds::RETRIES + 1
                        )));
                    }
                    std::thread::sleep(Bounds::backoff(self.failures));
                }
            }
        }
    }
}

/// Why a request did not give bytes.
enum Failure {
    /// Asking again may help (a reset, a timeout, a short answer).
    Retry(anyhow::Error),
    /// It will not (the object was replaced, or is not there).
    Final(anyhow::Error),
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.buffered.is_empty() {
            if self.next >= self.end {
                return Ok(0);
            }
            self.fill()
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
        }
        let n = buf.len().min(self.buffered.len());
        buf[..n].copy_from_slice(&self.buffered[..n]);
        let _ = self.buffered.split_to(n);
        self.next += n as u64;
        Ok(n)
    }
}

/// The first `n` bytes of the object `path` (fewer when it is shorter), under its pin.
pub fn head_bytes(path: &Path, n: usize) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    ObjectReader::open_range(path, 0, n as u64)?
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_reads_back_from_its_fingerprint() {
        for pin in [
            Pin {
                size: 12,
                etag: Some("\"abc\"".into()),
                version: None,
            },
            Pin {
                size: 0,
                etag: None,
                version: Some("v1".into()),
            },
        ] {
            assert_eq!(Pin::parse(&pin.fingerprint()).unwrap(), pin);
        }
        assert!(Pin::parse("12 34 abc").is_err());
    }
}
