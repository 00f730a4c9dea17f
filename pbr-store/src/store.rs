//! The store's client: one bucket and prefix of an S3-compatible server,
//! through `object_store`. Its calls block; many objects move at once
//! ([`Store::get_many`], [`Store::put_many`]) on a small runtime of its
//! own.

use std::sync::Arc;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::location::Location;

/// How many objects move at once.
pub const PARALLEL: usize = 16;

/// How long one request may take, and how long its retries may go on: a
/// dead server fails a pull (and refuses its candidate) in about this
/// long, not in minutes.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Retries of a failed request (a node of the store stopped: another
/// answers).
const RETRIES: usize = 4;

/// One object listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key, under the store's prefix (`images/vm1.idx`).
    pub key: String,
    /// Its size.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// A store: a bucket and a prefix on a server.
pub struct Store {
    rt: tokio::runtime::Runtime,
    s3: Arc<dyn ObjectStore>,
    /// Where it is.
    pub location: Location,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.location).finish_non_exhaustive()
    }
}

impl Store {
    /// The store at `location` on the server `config` names.
    ///
    /// # Errors
    /// The client cannot be built (a bad endpoint URL).
    pub fn open(location: &Location, config: &Config) -> Result<Store> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key)
            .with_secret_access_key(config.secret())
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig { max_retries: RETRIES, retry_timeout: REQUEST_TIMEOUT, ..Default::default() })
            .with_client_options(ClientOptions::new().with_timeout(REQUEST_TIMEOUT));
        if let Some(t) = config.token() {
            b = b.with_token(t);
        }
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let s3 = b.build().map_err(|e| Error::Url(format!("the store's client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the store's runtime", e))?;
        Ok(Store { rt, s3: Arc::new(s3), location: location.clone() })
    }

    /// The store at `url` (`s3://BUCKET[/PREFIX]`, or an image's
    /// `s3://BUCKET[/PREFIX]/NAME` when `image`: its [`Location::name`]),
    /// on the server and with the credentials of the environment
    /// ([`Config::from_env`]).
    ///
    /// # Errors
    /// The address does not parse, no credentials, or the client cannot be
    /// built.
    pub fn at(url: &str, image: bool) -> Result<Store> {
        Store::open(&Location::parse(url, image)?, &Config::from_env()?)
    }

    fn key(&self, rest: &str) -> Key {
        Key::from(self.location.key(rest))
    }

    /// Object `rest`'s bytes; `None` when it is not there.
    ///
    /// # Errors
    /// The server failed.
    pub fn get(&self, rest: &str) -> Result<Option<Vec<u8>>> {
        self.rt.block_on(read(&self.s3, self.key(rest)))
    }

    /// Writes object `rest`.
    ///
    /// # Errors
    /// The server failed.
    pub fn put(&self, rest: &str, bytes: Vec<u8>) -> Result<()> {
        let key = self.key(rest);
        self.rt.block_on(self.s3.put(&key, PutPayload::from(bytes))).map(drop).map_err(|source| Error::Store {
            op: "put",
            key: key.to_string(),
            source,
        })
    }

    /// When each of objects `rests` was last written; `None` for one
    /// that is not there (HEAD, many at once).
    ///
    /// # Errors
    /// The server failed.
    pub fn written(&self, rests: &[String]) -> Result<Vec<Option<SystemTime>>> {
        let s3 = &self.s3;
        self.rt.block_on(
            futures::stream::iter(rests.iter().map(|r| self.key(r)))
                .map(|key| async move {
                    match s3.head(&key).await {
                        Ok(m) => Ok(Some(m.last_modified.into())),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(source) => Err(Error::Store { op: "look up", key: key.to_string(), source }),
                    }
                })
                .buffered(PARALLEL)
                .try_collect(),
        )
    }

    /// Writes objects, many at once.
    ///
    /// # Errors
    /// The server failed on one.
    pub fn put_many(&self, objects: Vec<(String, Vec<u8>)>) -> Result<()> {
        let s3 = &self.s3;
        self.rt.block_on(
            futures::stream::iter(objects.into_iter().map(|(r, b)| (self.key(&r), b)))
                .map(|(key, bytes)| async move {
                    s3.put(&key, PutPayload::from(bytes)).await.map(drop).map_err(|source| Error::Store {
                        op: "put",
                        key: key.to_string(),
                        source,
                    })
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>(),
        )?;
        Ok(())
    }

    /// Reads objects, many at once, in the order asked; `None` for one
    /// that is not there.
    ///
    /// # Errors
    /// The server failed on one.
    pub fn get_many(&self, rests: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let s3 = &self.s3;
        self.rt.block_on(
            futures::stream::iter(rests.iter().map(|r| self.key(r)))
                .map(|key| read(s3, key))
                .buffered(PARALLEL)
                .try_collect(),
        )
    }

    /// Every object under `rest` (a directory of the store: `images/`).
    ///
    /// # Errors
    /// The server failed.
    pub fn list(&self, rest: &str) -> Result<Vec<Listed>> {
        let prefix = self.key(rest);
        let base = self.location.key("");
        let listed: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.s3.list(Some(&prefix)).try_collect())
            .map_err(|source| Error::Store { op: "list", key: prefix.to_string(), source })?;
        Ok(listed
            .into_iter()
            .map(|m| {
                let full = m.location.to_string();
                let key = full.strip_prefix(&base).unwrap_or(&full).trim_start_matches('/').to_owned();
                Listed { key, size: m.size, modified: m.last_modified.into() }
            })
            .collect())
    }

    /// Removes objects, many at once.
    ///
    /// # Errors
    /// The server failed on one.
    pub fn delete_many(&self, rests: &[String]) -> Result<()> {
        let s3 = &self.s3;
        self.rt.block_on(
            futures::stream::iter(rests.iter().map(|r| self.key(r)))
                .map(|key| async move {
                    match s3.delete(&key).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(source) => Err(Error::Store { op: "delete", key: key.to_string(), source }),
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>(),
        )?;
        Ok(())
    }
}

/// Object `key`'s bytes; `None` when it is not there.
async fn read(s3: &Arc<dyn ObjectStore>, key: Key) -> Result<Option<Vec<u8>>> {
    let got = match s3.get(&key).await {
        Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    got.map_err(|source| Error::Store { op: "get", key: key.to_string(), source })
}
