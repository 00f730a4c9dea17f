//! The base image a diff image refers to (`spec/format.md` §7.6).

use std::borrow::Cow;

/// Identity of the base image of a diff.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/diff.pbr");
/// let diff = pbr_format::Image::open(path)?;
/// let base: &pbr_format::BaseRef = diff.base().unwrap();
/// println!("apply to {} (blake3 {:02x?}...)", base.name, &base.blake3[..4]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseRef<'a> {
    /// The base image's content hash ([`crate::Image::content_hash`]).
    pub blake3: [u8; 32],
    /// The content hash of the image this diff rebuilds, when known.
    pub result_blake3: Option<[u8; 32]>,
    /// The base image's page size.
    pub page_size: u32,
    /// A hint: the base's file name.
    pub name: Cow<'a, str>,
}
