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
    /// The caller asked for something this input or these options cannot
    /// do: an option value outside its set, a diff image where a full one
    /// is needed, a pipe where a file is needed, an image of another source
    /// than the export writes, an input of no known format.
    #[error("{0}")]
    Usage(String),
    /// An image reads (its checksums pass) but its own records do not hold
    /// together or do not fit what was asked: a converter's record that is
    /// corrupt, missing or out of its place, regions that no longer match
    /// the blocks they came from, a record too large for the output format,
    /// a rebuilt image that does not hash as its diff records.
    #[error("{0}")]
    Inconsistent(String),
    /// A side input that is not a stream (a `/proc/kpageflags` dump, a
    /// class map) is malformed or belongs to another guest or moment.
    #[error("{0}")]
    BadInput(String),
    /// A broken invariant of the tools themselves: a bug, reported instead
    /// of a panic. No input, however hostile, should cause it.
    #[error("internal error: {0}")]
    Internal(String),
    /// Page-cache pages left out of an image cannot be read back from the
    /// guest's disk as they were captured: the image must not be restored.
    #[error("cannot refill the page cache: {0}")]
    Refill(String),
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

    /// An I/O error while doing `context`.
    #[cold]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

/// The tools' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The kinds keep the messages the CLI prints; only an internal error
    /// says it is one.
    #[test]
    fn kinds_print_their_message() {
        assert_eq!(Error::Usage("--drop is empty".into()).to_string(), "--drop is empty");
        assert_eq!(Error::Inconsistent("no ram START".into()).to_string(), "no ram START");
        assert_eq!(Error::BadInput("dump: 7 bytes".into()).to_string(), "dump: 7 bytes");
        assert_eq!(Error::Internal("no image writer".into()).to_string(), "internal error: no image writer");
        let p = Error::Parse { format: "xl", offset: 0x30, msg: "bad".into() };
        assert_eq!(p.to_string(), "xl stream: bad (at offset 0x30)");
    }

    /// A recovery refuses a candidate only for its damage or its page cache;
    /// a usage, consistency or internal error ends it instead.
    #[test]
    fn only_damage_and_refill_refuse_a_candidate() {
        assert!(Error::Refill("disk changed".into()).refuses_candidate());
        for e in [
            Error::Usage("u".into()),
            Error::Inconsistent("i".into()),
            Error::BadInput("b".into()),
            Error::Internal("x".into()),
            Error::Parse { format: "qemu", offset: 0, msg: "m".into() },
        ] {
            assert!(!e.refuses_candidate() && !e.is_damage(), "{e:?}");
        }
    }
}
