//! Objects in Amazon S3 and the S3-compatible stores (MinIO, Ceph, R2, GCS's
//! XML API), through Apache Arrow's `object_store` crate: it signs every
//! request, and DataFusion, Polars and delta-rs read S3 through it.
//!
//! Configuration is the environment, the way every AWS tool reads it:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` for an S3-compatible server (path-style
//! addressing), `AWS_ALLOW_HTTP=true` for a plain-http one. Nothing here
//! ever formats a credential: messages name the object's URL and the cause.
//!
//! Every request is bounded ([`Bounds`]): a connection must open within
//! [`Bounds::connect`]; a request must be answered, and a read's body must
//! deliver its next bytes, within [`Bounds::request`]; a 5xx, a reset or a
//! timeout is retried [`Bounds::RETRIES`] times with backoff (object_store
//! retries the requests, [`read`] the bodies it streams), then the run fails
//! with the URL and the cause, keeping what it committed for the resume.
//!
//! The calls are async; the stages are threads. One small runtime
//! ([`runtime`]) runs them, and each stage thread blocks on its own calls.

pub mod read;
pub mod write;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

/// How an object's URL starts.
pub const SCHEME: &str = "s3://";

/// An object: its bucket's client and its key.
#[derive(Clone)]
pub struct Object {
    pub client: Arc<AmazonS3>,
    pub key: object_store::path::Path,
    /// `s3://BUCKET/KEY`, for messages.
    pub url: String,
}

impl Object {
    /// The object `path` names (`s3://BUCKET/KEY`).
    pub fn at(path: &Path) -> Result<Object> {
        let url = path.to_string_lossy().into_owned();
        let (bucket, key) = split_url(&url)?;
        Ok(Object {
            client: client(bucket)?,
            key: object_store::path::Path::from(key),
            url,
        })
    }

    /// Another object of the same bucket, beside this one: its name with
    /// `.NAME` prefixed and `suffix` appended (`out/.o.json.upload`).
    pub fn hidden_sibling(&self, suffix: &str) -> Object {
        let key = self.key.as_ref();
        let (dir, name) = match key.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), key),
        };
        let sibling = format!("{dir}.{name}{suffix}");
        let bucket_end = self.url.len() - key.len();
        Object {
            client: self.client.clone(),
            url: format!("{}{sibling}", &self.url[..bucket_end]),
            key: object_store::path::Path::from(sibling),
        }
    }
}

/// `s3://BUCKET/KEY` → (BUCKET, KEY); both must be there.
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url.strip_prefix(SCHEME).unwrap_or(url);
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
            Ok((bucket, key))
        }
        _ => bail!("{url} is not an object's URL: give s3://BUCKET/KEY"),
    }
}

/// The bounds every request keeps (module docs; docs/GUIDE.md states them).
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub connect: Duration,
    pub request: Duration,
}

impl Bounds {
    /// Retries after a 5xx, a reset or a timeout, before the run fails.
    pub const RETRIES: u32 = 4;
    /// The first pause before a retry; each pause doubles, up to [`Self::MAX_BACKOFF`].
    pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    pub const MAX_BACKOFF: Duration = Duration::from_secs(4);

    /// 5 s to connect and 30 s for an answer or a body's next bytes; the
    /// tests shorten both (`MIXTAPE_S3_TIMEOUT_MS`, a testing aid).
    pub fn get() -> Bounds {
        match crate::run::fault::s3_timeout() {
            Some(timeout) => Bounds {
                connect: timeout,
                request: timeout,
            },
            None => Bounds {
                connect: Duration::from_secs(5),
                request: Duration::from_secs(30),
            },
        }
    }

    /// The pause before retry number `attempt` (1-based).
    pub fn backoff(attempt: u32) -> Duration {
        (Self::FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(Self::MAX_BACKOFF)
    }
}

/// The runtime the calls run on: one thread for the connections (the
/// stages' own threads are busy enough on a small machine); the
/// calling thread itself drives each call it waits for.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mixtape-s3")
            .enable_all()
            .build()
            .expect("the S3 runtime starts")
    })
}

/// Runs `call` to its end, or fails after `limit` saying what timed out.
pub fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T> {
    match runtime().block_on(async { tokio::time::timeout(limit, call).await }) {
        Ok(result) => result.map_err(|e| cause(what, e)),
        Err(_) => Err(anyhow!(
            "{what}: no answer within {} s",
            limit.as_secs_f64()
        )),
    }
}

/// An object_store error as the user reads it: what was being done, then
/// the store's own words (the URL and the server's answer; never a secret).
pub fn cause(what: &str, error: object_store::Error) -> anyhow::Error {
    anyhow!("{what}: {error}")
}

/// The client of `bucket`, made once per process from the environment.
fn client(bucket: &str) -> Result<Arc<AmazonS3>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<AmazonS3>>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .expect("clients");
    if let Some(client) = clients.get(bucket) {
        return Ok(client.clone());
    }
    let bounds = Bounds::get();
    let options = ClientOptions::new()
        .with_connect_timeout(bounds.connect)
        // A read's body is bounded per next bytes by `read`, not as a whole:
        // a worker's chunk may take minutes to stream, never a minute idle.
        .with_timeout_disabled();
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Bounds::FIRST_BACKOFF,
            max_backoff: Bounds::MAX_BACKOFF,
            base: 2.0,
        },
        max_retries: Bounds::RETRIES as usize,
        retry_timeout: bounds.request * (Bounds::RETRIES + 1),
    };
    let mut builder = AmazonS3Builder::new()
        .with_client_options(options)
        .with_retry(retry)
        .with_bucket_name(bucket);
    // As AmazonS3Builder::from_env, after the options above so that
    // AWS_ALLOW_HTTP is kept.
    for (name, value) in std::env::vars_os() {
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            continue;
        };
        if !name.starts_with("AWS_") {
            continue;
        }
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    let client = Arc::new(
        builder
            .build()
            .map_err(|e| cause(&format!("s3://{bucket}"), e))?,
    );
    clients.insert(bucket.to_string(), client.clone());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_key() {
        assert_eq!(split_url("s3://b/k/o.json").unwrap(), ("b", "k/o.json"));
        for bad in ["s3://b", "s3://b/", "s3:///k", "s3://b/dir/"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        assert_eq!(Bounds::backoff(1), Duration::from_millis(100));
        assert_eq!(Bounds::backoff(3), Duration::from_millis(400));
        assert_eq!(Bounds::backoff(30), Bounds::MAX_BACKOFF);
    }
}
