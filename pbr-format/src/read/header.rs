//! The header (`spec/format.md` §3): its fields, parsed and checked.

use zerocopy::FromBytes;

use crate::error::{Error, ErrorKind, Result};
use crate::pod::{self, HEADER_SIZE, Header};

/// The header fields of an open image.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let h = image.header();
/// assert_eq!((h.version_major, h.page_size), (1, 4096));
/// println!("written by {} {}", h.producer_name, h.producer_version);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Format major version.
    pub version_major: u16,
    /// Format minor version.
    pub version_minor: u16,
    /// Page size in bytes.
    pub page_size: u32,
    /// Required feature bits.
    pub required_features: u64,
    /// Optional feature bits.
    pub optional_features: u64,
    /// Name of the program that wrote the image.
    pub producer_name: String,
    /// Version of the program that wrote the image.
    pub producer_version: String,
}

/// Parses and checks the header at the start of `bytes`.
pub(super) fn parse_header(bytes: &[u8]) -> Result<HeaderInfo> {
    if bytes.len() < pod::MAGIC.len() || bytes[..pod::MAGIC.len()] != pod::MAGIC {
        return Err(ErrorKind::BadMagic { found: bytes.iter().take(8).copied().collect() }.into());
    }
    let Ok((h, _)) = Header::read_from_prefix(bytes) else {
        return Err(ErrorKind::Incomplete {
            reason: format!("the file is {} bytes, shorter than the header", bytes.len()),
        }
        .into());
    };
    let crc = crc32fast::hash(&bytes[..124]);
    if crc != h.header_crc32.get() {
        return Err(Error::new(ErrorKind::ChecksumMismatch {
            what: "header".into(),
            stored: h.header_crc32.get(),
            computed: crc,
        })
        .at("header", 124));
    }
    let (major, minor) = (h.version_major.get(), h.version_minor.get());
    if major != pod::VERSION_MAJOR {
        return Err(
            Error::new(ErrorKind::UnsupportedVersion { major, minor, known: pod::VERSION_MAJOR }).at("header", 8)
        );
    }
    let header_size = h.header_size.get() as usize;
    if header_size < HEADER_SIZE || header_size > bytes.len() {
        return Err(Error::malformed(
            "header",
            12,
            format!("header_size {header_size} is not in {HEADER_SIZE}..=file length"),
        ));
    }
    let page_size = h.page_size.get();
    if !crate::limits::PAGE_SIZES.contains(&page_size) {
        return Err(Error::malformed("header", 16, format!("page_size {page_size} is neither 4096 nor 2097152")));
    }
    let required = h.required_features.get();
    if required & !pod::KNOWN_REQUIRED_FEATURES != 0 {
        return Err(Error::new(ErrorKind::UnsupportedFeature { bits: required & !pod::KNOWN_REQUIRED_FEATURES })
            .at("header", 24));
    }
    Ok(HeaderInfo {
        version_major: major,
        version_minor: minor,
        page_size,
        required_features: required,
        optional_features: h.optional_features.get(),
        producer_name: padded_str(&h.producer_name, 40)?,
        producer_version: padded_str(&h.producer_version, 72)?,
    })
}

/// A NUL-padded producer field at `offset` of the header, as a string.
fn padded_str(b: &[u8], offset: u64) -> Result<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end])
        .map(str::to_owned)
        .map_err(|_| Error::malformed("header", offset, "producer string is not UTF-8"))
}
