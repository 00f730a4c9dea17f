//! The one error type of this crate.
//!
//! An [`Error`] is one pointer wide. It carries an [`ErrorKind`] and, where
//! the problem is in the file, the section and the byte offset it was found
//! at, so the message names what is wrong and where.

use std::fmt;

/// What went wrong.
///
/// # Example
/// ```
/// use pbr_format::{ErrorKind, Image};
/// let err = Image::from_bytes(vec![0; 256]).unwrap_err();
/// assert!(matches!(err.kind(), ErrorKind::BadMagic { .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system refused an operation.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the `.pbr` magic (or is empty).
    #[error("not a .pbr image: {}", bad_magic(found))]
    BadMagic {
        /// The first bytes of the file.
        found: Vec<u8>,
    },
    /// The file's major version is not one this reader knows.
    #[error("unsupported format version {major}.{minor}: this reader reads major version {known}")]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// The major version this reader knows.
        known: u16,
    },
    /// The file has no valid trailer.
    #[error("incomplete image: {reason}; the writer did not finish or the file was truncated")]
    Incomplete {
        /// Why the trailer is not valid.
        reason: String,
    },
    /// A crc32 did not match.
    #[error("crc32 mismatch in {what}: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// What the checksum covers.
        what: String,
        /// The value in the file.
        stored: u32,
        /// The value of the bytes present.
        computed: u32,
    },
    /// A blake3 hash did not match.
    #[error("blake3 mismatch in {what}")]
    HashMismatch {
        /// What the hash covers.
        what: String,
    },
    /// The file needs a feature this reader does not have.
    #[error("unsupported required feature bits {bits:#x}")]
    UnsupportedFeature {
        /// The unknown bits.
        bits: u64,
    },
    /// A must-understand section of a kind this reader does not know.
    #[error("unknown must-understand section kind {kind:#010x}")]
    UnknownRequiredSection {
        /// The section kind.
        kind: u32,
    },
    /// The structure breaks a rule of the specification.
    #[error("{0}")]
    Malformed(String),
    /// A page was asked for that no region holds.
    #[error("guest frame {gfn:#x} is not in any region")]
    NoSuchPage {
        /// The guest frame number.
        gfn: u64,
    },
    /// The caller passed something the operation cannot take.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// An error with its location in the file, if it has one.
///
/// # Example
/// ```
/// let err = pbr_format::Image::from_bytes(vec![0; 256]).unwrap_err();
/// // One line naming what is wrong and where.
/// eprintln!("error: {err}");
/// assert!(err.to_string().contains("bad magic"));
/// ```
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    section: Option<&'static str>,
    offset: Option<u64>,
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with no location.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::NoSuchPage { gfn: 0x42 });
    /// assert!(e.to_string().contains("0x42"));
    /// ```
    #[cold]
    pub fn new(kind: ErrorKind) -> Self {
        Error(Box::new(Inner { kind, section: None, offset: None }))
    }

    /// A structural error in `section` found at byte `offset`.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::malformed("PAGE_INDEX", 0x1000, "extents overlap");
    /// assert_eq!((e.section(), e.offset()), (Some("PAGE_INDEX"), Some(0x1000)));
    /// ```
    #[cold]
    pub fn malformed(section: &'static str, offset: u64, msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Malformed(msg.into())).at(section, offset)
    }

    /// An I/O error while doing `context`.
    ///
    /// # Example
    /// ```
    /// let source = std::io::Error::from(std::io::ErrorKind::NotFound);
    /// let e = pbr_format::Error::io("cannot open guest.pbr", source);
    /// assert!(e.to_string().starts_with("cannot open guest.pbr"));
    /// ```
    #[cold]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::new(ErrorKind::Io { context: context.into(), source })
    }

    /// An invalid-input error.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::invalid("page 0x10 is 100 bytes, not the page size 4096");
    /// assert_eq!(e.section(), None);
    /// ```
    #[cold]
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput(msg.into()))
    }

    /// Attaches a section name and offset.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::invalid("bad record").at("DEVICES", 0x2000);
    /// assert_eq!(e.offset(), Some(0x2000));
    /// ```
    #[must_use]
    pub fn at(mut self, section: &'static str, offset: u64) -> Self {
        self.0.section = Some(section);
        self.0.offset = Some(offset);
        self
    }

    /// What went wrong.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::invalid("x");
    /// assert!(matches!(e.kind(), pbr_format::ErrorKind::InvalidInput(_)));
    /// ```
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// Whether the error is damage to page data or found by a checksum or
    /// hash: bytes that are not what was written (also a stored page that
    /// does not decode), as opposed to a malformed structure, an I/O
    /// failure or a wrong argument.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Error, ErrorKind};
    /// let e = Error::new(ErrorKind::ChecksumMismatch { what: "raw page gfn 0x10".into(), stored: 1, computed: 2 });
    /// assert!(e.is_damage());
    /// assert!(!Error::invalid("x").is_damage());
    /// ```
    pub fn is_damage(&self) -> bool {
        match self.0.kind {
            ErrorKind::ChecksumMismatch { .. } | ErrorKind::HashMismatch { .. } => true,
            // Page data that does not decode (a damaged lz4 page) is as
            // damaged as one that fails its crc32.
            ErrorKind::Malformed(_) => self.0.section == Some("PAGE_DATA"),
            _ => false,
        }
    }

    /// The section the error was found in, if any.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::malformed("REGIONS", 8, "overlap");
    /// assert_eq!(e.section(), Some("REGIONS"));
    /// ```
    pub fn section(&self) -> Option<&'static str> {
        self.0.section
    }

    /// The byte offset in the file the error was found at, if any.
    ///
    /// # Example
    /// ```
    /// let e = pbr_format::Error::malformed("REGIONS", 8, "overlap");
    /// assert_eq!(e.offset(), Some(8));
    /// ```
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(section) = self.0.section {
            write!(f, "{section}: ")?;
        }
        write!(f, "{}", self.0.kind)?;
        if let Some(offset) = self.0.offset {
            write!(f, " (at offset {offset:#x})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            ErrorKind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind)
    }
}

/// What the first bytes of a file that is not a `.pbr` image are.
fn bad_magic(found: &[u8]) -> String {
    if found.is_empty() { "the file is empty".into() } else { format!("bad magic {found:02x?}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(size_of::<Error>(), size_of::<usize>());
    }

    #[test]
    fn an_empty_file_is_said_to_be_empty() {
        let e = crate::Image::from_bytes(Vec::new()).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::BadMagic { found } if found.is_empty()));
        assert_eq!(e.to_string(), "not a .pbr image: the file is empty");
        let e = crate::Image::from_bytes(b"QEVM".to_vec()).unwrap_err();
        assert_eq!(e.to_string(), "not a .pbr image: bad magic [51, 45, 56, 4d]");
    }

    #[test]
    fn display_names_section_and_offset() {
        let e = Error::malformed("PAGE_INDEX", 0x1f40, "extent overlaps its predecessor");
        assert_eq!(e.to_string(), "PAGE_INDEX: extent overlaps its predecessor (at offset 0x1f40)");
    }
}
