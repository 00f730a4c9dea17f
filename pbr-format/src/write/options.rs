//! The writer's options, their checks, and the file header they make.

use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::error::{Error, Result};
use crate::limits::PAGE_SIZES;
use crate::page::PageEncoding;
use crate::pod::{self, HEADER_SIZE, Header};

/// How an [`ImageWriter`](crate::ImageWriter) writes.
///
/// # Example
/// ```
/// use pbr_format::{PageEncoding, WriterOptions};
/// // A diff image with page hashes, from my-vmm 2.1.
/// let opts = WriterOptions {
///     producer_name: "my-vmm".into(),
///     producer_version: "2.1".into(),
///     page_hashes: true,
///     unwritten: PageEncoding::Base,
///     ..WriterOptions::default()
/// };
/// assert_eq!(opts.page_size, 4096);
/// ```
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Page size: 4096 or 2 MiB.
    pub page_size: u32,
    /// Producer name for the header (at most 32 bytes).
    pub producer_name: String,
    /// Producer version for the header (at most 32 bytes).
    pub producer_version: String,
    /// Store a blake3 per stored page (`PAGE_HASHES`).
    pub page_hashes: bool,
    /// Encoding of pages nobody wrote: `Zero` for a full image, `Base` for a
    /// diff (then [`ImageWriter::set_base`](crate::ImageWriter::set_base) is required), or `Trimmed`.
    pub unwritten: PageEncoding,
    /// fsync the image before publishing it (default). Off only for
    /// scratch images whose loss on a crash does not matter.
    pub sync: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            page_size: 4096,
            producer_name: "pbr-format".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            page_hashes: false,
            unwritten: PageEncoding::Zero,
            sync: true,
        }
    }
}

impl WriterOptions {
    /// Refuses a page size the format does not know, or an encoding for
    /// unwritten pages that is not zero, trimmed or base.
    pub(super) fn check(&self) -> Result<()> {
        if !PAGE_SIZES.contains(&self.page_size) {
            return Err(Error::invalid(format!("page size {} is neither 4096 nor 2097152", self.page_size)));
        }
        if !matches!(self.unwritten, PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base) {
            return Err(Error::invalid(format!("unwritten pages cannot be {}", self.unwritten)));
        }
        Ok(())
    }

    /// The header of an image written with these options, announcing
    /// `required` and `optional` features and format minor version `minor`.
    pub(super) fn header(&self, required: u64, optional: u64, minor: u16) -> Header {
        let mut h = Header {
            magic: pod::MAGIC,
            version_major: U16::new(pod::VERSION_MAJOR),
            version_minor: U16::new(minor),
            header_size: U32::new(HEADER_SIZE as u32),
            page_size: U32::new(self.page_size),
            reserved0: U32::new(0),
            required_features: U64::new(required),
            optional_features: U64::new(optional),
            producer_name: padded(&self.producer_name),
            producer_version: padded(&self.producer_version),
            reserved1: [0; 20],
            header_crc32: U32::new(0),
        };
        h.header_crc32 = U32::new(crc32fast::hash(&h.as_bytes()[..124]));
        h
    }
}

/// `s` as a NUL-padded 32-byte field, cut at a character boundary.
fn padded(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut n = s.len().min(32);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}
