//! Writing objects whole or not at all: a multipart upload, completed only
//! once every byte is uploaded. S3 makes a completed object visible at once
//! and whole, so until then the previous object, if any, is what everyone
//! reads; a failed or killed run leaves it as it was.
//!
//! A killed run cannot abort its own upload, and S3 keeps the parts (and
//! bills them) until someone does. So before its first part an upload
//! records its id in a marker object beside the target (`.NAME.upload`,
//! [`UPLOAD_MARKER`]), and the next run on that target aborts the upload the
//! marker names ([`abort_stale_upload`]) before it starts its own. The marker
//! is removed once the upload is complete or aborted. (An upload killed
//! between its creation and its marker is left to the bucket's lifecycle
//! rule for incomplete uploads; docs/GUIDE.md says so.)
//!
//! Parts are [`PART_BYTES`] long (more once an upload has many, S3 allows
//! 10,000 parts), and up to [`PARTS_IN_FLIGHT`] upload at once while the
//! next one fills: memory is bounded by those two.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::{bounded, Bounds, Object};

/// The suffix of the marker beside an object that names its upload.
pub const UPLOAD_MARKER: &str = ".upload";

/// The first parts' size; every [`PARTS_PER_SIZE`] parts, the size doubles.
pub const PART_BYTES: usize = 8 << 20;
const PARTS_PER_SIZE: usize = 2500;
/// Parts uploading at once. Two keep the upload of L's OUTPUT as fast as
/// three did, and the harness under 100 MB with the rejects report
/// uploading beside it (BENCHMARKS.md, "A bucket").
pub const PARTS_IN_FLIGHT: usize = 2;

/// How long a call may take, retries included.
fn call_limit() -> std::time::Duration {
    Bounds::get().request * (Bounds::RETRIES + 1)
}

/// A multipart upload to one object (see the module docs).
pub struct ObjectWriter {
    object: Object,
    marker: Object,
    id: String,
    part: Vec<u8>,
    /// Parts sent, in order; each one's id once its upload is done.
    done: Vec<PartId>,
    in_flight: VecDeque<JoinHandle<object_store::Result<PartId>>>,
    finished: bool,
}

impl ObjectWriter {
    /// Starts an upload to `path`, after aborting one a killed run left.
    pub fn create(path: &Path) -> Result<ObjectWriter> {
        let object = Object::at(path)?;
        let marker = object.hidden_sibling(UPLOAD_MARKER);
        abort_stale(&object, &marker)?;
        let id = bounded(
            &format!("starting the upload of {}", object.url),
            call_limit(),
            object.client.create_multipart(&object.key),
        )?;
        let writer = ObjectWriter {
            object,
            marker,
            id,
            part: Vec::with_capacity(PART_BYTES),
            done: Vec::new(),
            in_flight: VecDeque::new(),
            finished: false,
        };
        bounded(
            &format!("writing {}", writer.marker.url),
            call_limit(),
            writer.marker.client.put(
                &writer.marker.key,
                PutPayload::from(writer.id.clone().into_bytes()),
            ),
        )?;
        crate::run::fault::point("object-upload-started");
        Ok(writer)
    }

    /// The size of the part being filled now.
    fn part_size(&self) -> usize {
        let parts = self.done.len() + self.in_flight.len();
        PART_BYTES << (parts / PARTS_PER_SIZE).min(8)
    }

    /// Sends the part filled so far.
    fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let index = self.done.len() + self.in_flight.len();
        let next_size = self.part_size();
        let data = Bytes::from(std::mem::replace(
            &mut self.part,
            Vec::with_capacity(next_size),
        ));
        let (client, key, id) = (
            self.object.client.clone(),
            self.object.key.clone(),
            self.id.clone(),
        );
        let limit = call_limit();
        let upload = async move {
            let call = client.put_part(&key, &id, index, PutPayload::from(data));
            match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => Err(object_store::Error::Generic {
                    store: "S3",
                    source: format!(
                        "part {} got no answer within {} s",
                        index + 1,
                        limit.as_secs()
                    )
                    .into(),
                }),
            }
        };
        self.in_flight.push_back(super::runtime().spawn(upload));
        crate::run::fault::point("object-part-sent");
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<()> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let what = format!("uploading {}", self.object.url);
        let part = super::runtime()
            .block_on(oldest)
            .with_context(|| what.clone())?
            .map_err(|e| super::cause(&what, e))?;
        self.done.push(part);
        Ok(())
    }

    /// Uploads what is left and completes the upload: the object appears,
    /// whole. The marker goes after.
    pub fn finish(mut self) -> Result<()> {
        if !self.part.is_empty() || self.done.len() + self.in_flight.len() == 0 {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        crate::run::fault::point("object-upload-complete");
        bounded(
            &format!("completing the upload of {}", self.object.url),
            call_limit(),
            self.object.client.complete_multipart(
                &self.object.key,
                &self.id,
                std::mem::take(&mut self.done),
            ),
        )?;
        self.finished = true;
        delete_object(&self.marker)
    }
}

impl ObjectWriter {
    /// Appends the rest of `file`, read straight into the part being filled.
    pub fn append_file(&mut self, file: &mut std::fs::File) -> io::Result<u64> {
        use std::io::Read;
        let mut appended = 0;
        loop {
            let room = (self.part_size() - self.part.len()) as u64;
            let n = (&mut *file).take(room).read_to_end(&mut self.part)?;
            appended += n as u64;
            if self.part.len() >= self.part_size() {
                self.send_part()
                    .map_err(|e| io::Error::other(format!("{e:#}")))?;
            }
            if n == 0 {
                return Ok(appended);
            }
        }
    }
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.part_size() - self.part.len();
        let n = buf.len().min(room);
        self.part.extend_from_slice(&buf[..n]);
        if self.part.len() >= self.part_size() {
            self.send_part()
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ObjectWriter {
    /// An upload given up (an error, an interrupt) is aborted at once; its
    /// marker goes with it. A failure here is left to the next run.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        let aborted = bounded(
            "aborting an upload",
            call_limit(),
            self.object
                .client
                .abort_multipart(&self.object.key, &self.id),
        );
        if aborted.is_ok() {
            let _ = delete_object(&self.marker);
        }
    }
}

/// Aborts the upload to `path` that a killed run left, if its marker says
/// there is one.
pub fn abort_stale_upload(path: &Path) -> Result<()> {
    let object = Object::at(path)?;
    let marker = object.hidden_sibling(UPLOAD_MARKER);
    abort_stale(&object, &marker)
}

fn abort_stale(object: &Object, marker: &Object) -> Result<()> {
    let read = bounded(&format!("reading {}", marker.url), call_limit(), async {
        match marker.client.get(&marker.key).await {
            Ok(answer) => answer.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })?;
    let Some(id) = read else {
        return Ok(());
    };
    let id = String::from_utf8_lossy(&id).into_owned();
    let aborted = bounded(
        &format!("aborting the unfinished upload of {}", object.url),
        call_limit(),
        async {
            match object.client.abort_multipart(&object.key, &id).await {
                // Completed or aborted already.
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        },
    );
    aborted?;
    delete_object(marker)
}

/// Deletes `path`; one already gone is no error.
pub fn delete(path: &Path) -> Result<()> {
    delete_object(&Object::at(path)?)
}

fn delete_object(object: &Object) -> Result<()> {
    bounded(&format!("removing {}", object.url), call_limit(), async {
        match object.client.delete(&object.key).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    })
}

/// Before any work: the bucket must be there and answer a listing of the
/// object's name (the permissions docs/GUIDE.md lists are checked as the
/// run goes; a missing bucket or a wrong secret is found here).
pub fn check_writable(what: &str, path: &Path) -> Result<()> {
    let object = Object::at(path)?;
    let listed = bounded(&format!("{what} {}", object.url), call_limit(), async {
        let mut listing = object.client.list(Some(&object.key));
        match listing.next().await {
            Some(Err(e)) => Err(e),
            _ => Ok(()),
        }
    });
    listed.context("the bucket is not usable")
}
