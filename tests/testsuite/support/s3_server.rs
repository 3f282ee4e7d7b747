//! An S3 server for the tests, on an address they choose (127.0.0.1, or a
//! test host's veth address): s3s-fs (an S3 server over a directory, made for
//! integration tests) behind a thin layer that adds what the tests need of a
//! real S3 and s3s-fs lacks or makes slow:
//!
//! - ETags on HEAD and GET, taken from the file's size, modification time and
//!   inode (s3s-fs hashes the whole file on every GET and sends no ETag on
//!   HEAD; S3's ETags are opaque, so any value that changes with the content
//!   will do);
//! - `If-Match` on GET: 412 when the object is not that version any more;
//! - DeleteObjects answered as S3 does for keys that are not there;
//! - DeleteObjects answered as S3 does for keys that are not there;
//! - faults on demand ([`Faults`]): 5xx answers, and bodies cut (a reset) or
//!   stalled after some bytes, for the GETs of keys that contain a given text.
//!
//! - parts and completions that do not hash every byte (s3s-fs hashes each
//!   part, then copies the parts through a small buffer and hashes the whole
//!   object again: on this machine's two cores that time is the run's).
//!
//! The rest (PUT, starting and aborting uploads, listings, single deletes)
//! is s3s-fs's own.
//! `examples/s3_server.rs` serves the same layer for the benchmark.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use s3s_fs::FileSystem;

/// The credentials the server accepts.
pub const ACCESS_KEY: &str = "mixtape-test";
pub const SECRET_KEY: &str = "test-secret-7Hq2pX9vLm4R";

/// Faults the next GETs of matching keys meet (each counter is used up one
/// GET at a time).
#[derive(Default)]
pub struct Faults {
    /// GETs of keys containing this text are the ones faulted.
    pub key_contains: Mutex<String>,
    /// Answered 500 InternalError.
    pub fail: AtomicU32,
    /// Their body is cut (the connection reset) after `after_bytes`.
    pub cut: AtomicU32,
    /// The server stops answering mid-range: the next GET's body stops
    /// after `after_bytes`, and no later GET gets an answer, while this is set.
    pub stall: AtomicBool,
    pub after_bytes: AtomicU64,
    stalled_once: AtomicBool,
    /// Ranged GETs served, of any key.
    pub gets: AtomicU64,
}

impl Faults {
    pub fn on_keys_containing(&self, text: &str) {
        *self.key_contains.lock().unwrap() = text.to_string();
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

struct Layer {
    fs: FileSystem,
    root: PathBuf,
    faults: Arc<Faults>,
}

impl Layer {
    fn object_path(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        if bucket.contains("..") || key.split('/').any(|part| part == "..") {
            return Err(s3_error!(InvalidArgument));
        }
        Ok(self.root.join(bucket).join(key))
    }

    /// The file s3s-fs keeps for a multipart upload begun and not finished.
    fn upload_info(&self, upload_id: &str) -> S3Result<PathBuf> {
        let path = self.root.join(format!(".upload-{upload_id}.json"));
        match upload_id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
            && path.is_file()
        {
            true => Ok(path),
            false => Err(s3_error!(NoSuchUpload)),
        }
    }

    fn part_path(&self, upload_id: &str, part: i32) -> S3Result<PathBuf> {
        self.upload_info(upload_id)?;
        Ok(self
            .root
            .join(format!(".upload_id-{upload_id}.part-{part}")))
    }

    /// The object's size and ETag (see the module docs).
    async fn version(&self, path: &Path) -> S3Result<(u64, String, Timestamp)> {
        let meta = match tokio::fs::metadata(path).await {
            Ok(meta) if meta.is_file() => meta,
            _ => return Err(s3_error!(NoSuchKey)),
        };
        let modified = meta.modified().map_err(|_| s3_error!(InternalError))?;
        let nanos = modified
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let etag = format!("{:x}-{nanos:x}-{:x}", meta.len(), meta.ino());
        Ok((meta.len(), etag, Timestamp::from(modified)))
    }
}

fn matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(ETag::Strong(value) | ETag::Weak(value)) => value == etag,
    }
}

/// The body of a GET: `len` bytes of `file` from where it stands, read on a
/// blocking thread a MiB at a time (tokio's own file reads hop threads for
/// every read), cut or stalled after `fault`'s bytes.
fn body(
    file: std::fs::File,
    len: u64,
    fault: Option<(bool, u64)>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
    let (send, receive) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file.take(len);
        loop {
            let mut buf = Vec::with_capacity(1 << 20);
            match (&mut file).take(1 << 20).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if send.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = send.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let receive = Arc::new(tokio::sync::Mutex::new(receive));
    futures_util::stream::unfold((Bytes::new(), 0u64), move |(mut pending, sent)| {
        let receive = receive.clone();
        async move {
            if pending.is_empty() {
                pending = match receive.lock().await.recv().await? {
                    Ok(bytes) => bytes,
                    Err(e) => return Some((Err(e), (Bytes::new(), len))),
                };
            }
            let mut take = pending.len();
            if let Some((cut, after)) = fault {
                if sent >= after {
                    if cut {
                        let reset = std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "cut by the test",
                        );
                        return Some((Err(reset), (Bytes::new(), len)));
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                take = take.min((after - sent) as usize).max(1);
            }
            let chunk = pending.split_to(take);
            Some((Ok(chunk), (pending, sent + take as u64)))
        }
    })
}

#[async_trait::async_trait]
impl S3 for Layer {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let path = self.object_path(&input.bucket, &input.key)?;
        let (size, etag, modified) = self.version(&path).await?;
        if let Some(condition) = &input.if_match {
            if !matches(condition, &etag) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let range = match &input.range {
            Some(range) => range.check(size).map_err(|_| s3_error!(InvalidRange))?,
            None => 0..size,
        };
        self.faults.gets.fetch_add(1, Ordering::SeqCst);
        let faulted = {
            let wanted = self.faults.key_contains.lock().unwrap();
            !wanted.is_empty() && input.key.contains(wanted.as_str())
        };
        let after = self.faults.after_bytes.load(Ordering::SeqCst);
        let fault = if !faulted {
            None
        } else if Faults::take(&self.faults.fail) {
            return Err(s3_error!(InternalError, "failed by the test"));
        } else if Faults::take(&self.faults.cut) {
            Some((true, after))
        } else if self.faults.stall.load(Ordering::SeqCst) {
            if self.faults.stalled_once.swap(true, Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Some((false, after))
        } else {
            None
        };
        let mut file = std::fs::File::open(&path).map_err(|_| s3_error!(NoSuchKey))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(range.start))
            .map_err(|_| s3_error!(InternalError))?;
        let len = range.end - range.start;
        let output = GetObjectOutput {
            body: Some(StreamingBlob::wrap(body(file, len, fault))),
            content_length: Some(len as i64),
            content_range: input.range.is_some().then(|| {
                format!(
                    "bytes {}-{}/{size}",
                    range.start,
                    range.end.saturating_sub(1).max(range.start)
                )
            }),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(modified),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let path = self.object_path(&req.input.bucket, &req.input.key)?;
        let (size, etag, modified) = self.version(&path).await?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(size as i64),
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(modified),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    /// As S3 answers it: every key is reported deleted, those that were
    /// not there too (s3s-fs leaves them out, an answer clients cannot read).
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let mut deleted = Vec::new();
        for object in input.delete.objects {
            let path = self.object_path(&input.bucket, &object.key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return Err(s3_error!(InternalError)),
            }
            deleted.push(DeletedObject {
                key: Some(object.key),
                ..Default::default()
            });
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    /// Writes the part where s3s-fs keeps it, without hashing it (its
    /// ETag is opaque to clients).
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        use futures_util::StreamExt;
        let input = req.input;
        self.upload_info(&input.upload_id)?;
        let mut body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let path = self.part_path(&input.upload_id, input.part_number)?;
        // Gathered, then written at once on a blocking thread: tokio's file
        // writes hop threads for every piece of the body.
        let mut data = Vec::new();
        while let Some(bytes) = body.next().await {
            data.extend_from_slice(&bytes.map_err(|_| s3_error!(IncompleteBody))?);
        }
        let size = data.len();
        let written = tokio::task::spawn_blocking(move || std::fs::write(path, data)).await;
        if !matches!(written, Ok(Ok(()))) {
            return Err(s3_error!(InternalError));
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(format!("{}-{size:x}", input.part_number))),
            ..Default::default()
        }))
    }

    /// Puts the parts together in the kernel (copy_file_range) under a
    /// temporary name and renames it into place: the object appears whole.
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let info = self.upload_info(&input.upload_id)?;
        let parts: Vec<i32> = (input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default())
        .iter()
        .map(|part| part.part_number.ok_or_else(|| s3_error!(InvalidPart)))
        .collect::<S3Result<_>>()?;
        let part_paths: Vec<PathBuf> = parts
            .iter()
            .map(|&n| self.part_path(&input.upload_id, n))
            .collect::<S3Result<_>>()?;
        let object = self.object_path(&input.bucket, &input.key)?;
        let joined = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let temporary = object.with_file_name(format!(
                ".{}.completing",
                object.file_name().unwrap_or_default().to_string_lossy()
            ));
            let mut out = std::fs::File::create(&temporary)?;
            for part in &part_paths {
                std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
            }
            std::fs::rename(&temporary, &object)?;
            for part in &part_paths {
                std::fs::remove_file(part)?;
            }
            std::fs::remove_file(info)
        })
        .await;
        if !matches!(joined, Ok(Ok(()))) {
            return Err(s3_error!(InvalidPart));
        }
        let (_, etag, _) = self
            .version(&self.object_path(&input.bucket, &input.key)?)
            .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }
}

/// A running server; stopped when dropped. Or another implementation that
/// runs on its own ([`S3Server::external`]), reached through the S3 API only.
pub struct S3Server {
    /// `http://ADDRESS:PORT`.
    pub endpoint: String,
    /// The directory it serves: `root/BUCKET/KEY` (`None` for another
    /// implementation).
    pub root: Option<PathBuf>,
    pub faults: Arc<Faults>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Serves `root` on `address` (port 0: any free one).
    pub fn start(root: &Path, address: SocketAddr) -> S3Server {
        let faults = Arc::new(Faults::default());
        let layer = Layer {
            fs: FileSystem::new(root).expect("s3s-fs opens its directory"),
            root: root.to_path_buf(),
            faults: faults.clone(),
        };
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(layer);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            use hyper_util::rt::{TokioExecutor, TokioIo};
            use hyper_util::server::conn::auto::Builder;
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // As S3's own front ends do: a small answer is not held back
                // waiting for the client's delayed acknowledgement (40 ms).
                let _ = socket.set_nodelay(true);
                let connection = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        S3Server {
            endpoint,
            root: Some(root.to_path_buf()),
            faults,
            runtime: Some(runtime),
        }
    }

    /// Another implementation (moto's server, in CI), already running at
    /// `endpoint`, with its buckets made, accepting these credentials.
    pub fn external(endpoint: &str) -> S3Server {
        S3Server {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            root: None,
            faults: Arc::default(),
            runtime: None,
        }
    }

    /// A client of `bucket`, for another implementation's objects.
    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_bucket_name(bucket)
            .build()
            .unwrap()
    }

    fn block_on<T>(call: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(call)
    }

    /// Makes `bucket` (a directory of the root; another implementation's
    /// buckets are made before the tests).
    pub fn bucket(&self, bucket: &str) {
        if let Some(root) = &self.root {
            std::fs::create_dir_all(root.join(bucket)).unwrap();
        }
    }

    /// Puts `bytes` at `bucket/key`, returning its URL.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> String {
        match &self.root {
            Some(root) => {
                let path = root.join(bucket).join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            None => {
                use object_store::ObjectStoreExt;
                let client = self.client(bucket);
                let payload = object_store::PutPayload::from(bytes.to_vec());
                S3Server::block_on(client.put(&key.into(), payload)).unwrap();
            }
        }
        format!("s3://{bucket}/{key}")
    }

    /// The bytes at `bucket/key`, if there is an object.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match &self.root {
            Some(root) => std::fs::read(root.join(bucket).join(key)).ok(),
            None => {
                use object_store::ObjectStoreExt;
                let client = self.client(bucket);
                S3Server::block_on(async {
                    let answer = client.get(&key.into()).await.ok()?;
                    answer.bytes().await.ok().map(|b| b.to_vec())
                })
            }
        }
    }

    /// The names of the objects directly under `bucket/prefix/`.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = match &self.root {
            Some(root) => std::fs::read_dir(root.join(bucket).join(prefix))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            None => {
                use object_store::ObjectStore;
                let client = self.client(bucket);
                let listed =
                    S3Server::block_on(client.list_with_delimiter(Some(&prefix.into()))).unwrap();
                listed
                    .objects
                    .iter()
                    .map(|o| o.location.filename().unwrap().to_string())
                    .collect()
            }
        };
        names.sort();
        names
    }

    /// The environment a client needs for this server, as every AWS tool reads it.
    pub fn env(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ])
    }

    /// Multipart uploads begun and neither completed nor aborted, and their
    /// parts (s3s-fs keeps `.upload-ID.json` in its root for each, and
    /// `.upload_id-ID.part-N` for each part).
    /// (Another implementation's are not seen: both lists are empty.)
    pub fn unfinished_uploads(&self) -> (Vec<String>, Vec<String>) {
        let Some(root) = &self.root else {
            return (vec![], vec![]);
        };
        let names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let of = |prefix: &str| {
            names
                .iter()
                .filter(|n| n.starts_with(prefix))
                .cloned()
                .collect()
        };
        (of(".upload-"), of(".upload_id-"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
