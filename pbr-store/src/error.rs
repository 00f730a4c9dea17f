//! What can go wrong with a store: its address and credentials, the
//! store's server, and damage found in what it holds.

/// An error of the fleet store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An `s3://` address that does not parse.
    #[error("{0}")]
    Url(String),
    /// No credentials, or a profile file that does not read.
    #[error("{0}")]
    Credentials(String),
    /// The store's server failed or refused (`op` on `key`). Told by the
    /// first line of the client's error, at most 200 characters: a
    /// server's reply body (which may echo signed headers) stays out.
    #[error("the store failed to {op} {key}: {}", first_line(source))]
    Store {
        /// What was asked (`get`, `put`, `list`, `delete`).
        op: &'static str,
        /// The object.
        key: String,
        /// The client's error.
        source: object_store::Error,
    },
    /// An object the store should hold is not there.
    #[error("{0} is not in the store")]
    Missing(String),
    /// An object the store holds is damaged: its bytes do not hash to its
    /// name, or it breaks its format (named, with where).
    #[error("damaged: {0}")]
    Damaged(String),
    /// A read of a mounted image's RAM failed: what the mount found
    /// (`crate::mount`).
    #[error("{0}")]
    Served(String),
    /// An image cannot be stored this way.
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing an image.
    #[error(transparent)]
    Tools(#[from] pbr_tools::Error),
    /// Local I/O (the chunk cache, a work file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The first line of `e`, at most 200 characters.
fn first_line(e: &object_store::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().chars().take(200).collect()
}

impl Error {
    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}

impl From<pbr_format::Error> for Error {
    fn from(e: pbr_format::Error) -> Error {
        Error::Tools(e.into())
    }
}

/// The store's result.
pub type Result<T> = std::result::Result<T, Error>;
