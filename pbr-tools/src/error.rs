//! The error type of the tools.

/// What went wrong in a tool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image could not be read or written.
    #[error(transparent)]
    Format(#[from] pbr_format::Error),
    /// The operating system refused an operation.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An input stream breaks its format.
    #[error("{format} stream: {msg} (at offset {offset:#x})")]
    Parse {
        /// Which format: `qemu`, `xl`, ...
        format: &'static str,
        /// Byte offset in the input.
        offset: u64,
        /// What is wrong.
        msg: String,
    },
    /// The request cannot be carried out on this input.
    #[error("{0}")]
    Unsupported(String),
    /// Page-cache pages left out of an image cannot be read back from the
    /// guest's disk as they were captured: the image must not be restored.
    #[error("cannot refill the page cache: {0}")]
    Refill(String),
    /// No candidate image can be restored safely: the caller reboots from
    /// scratch.
    #[error("no valid candidate: {0}")]
    NoCandidate(String),
}

impl Error {
    /// Whether this is damage found in an image: a page or section whose
    /// crc32 or hash does not match ([`pbr_format::Error::is_damage`]).
    /// A recovery refuses such a candidate and tries the next one.
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Format(e) if e.is_damage())
    }

    /// Whether this error is the candidate's own, so that a recovery
    /// refuses that candidate and tries the next one: damage
    /// ([`Error::is_damage`]) or page-cache pages that cannot be read back
    /// ([`Error::Refill`]). Other errors (QEMU, the host) end the recovery.
    pub fn refuses_candidate(&self) -> bool {
        self.is_damage() || matches!(self, Error::Refill(_))
    }

    /// The one-line reason a recovery gives for refusing a candidate
    /// because of this error.
    pub fn refusal(&self) -> String {
        if self.is_damage() { format!("damaged: {self}") } else { self.to_string() }
    }

    /// An I/O error while doing `context`.
    #[cold]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// The tools' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
