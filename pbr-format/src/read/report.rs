//! What a full verification found (`spec/format.md` §9).

use crate::error::Error;

/// What [`Image::verify`](super::Image::verify) checked.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let r: pbr_format::VerifyReport = image.verify()?;
/// println!("{r:?}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Sections whose crc32 matched.
    pub sections: usize,
    /// Stored pages whose crc32 (and blake3, when present) matched.
    pub pages: u64,
    /// Bytes covered by the trailer hash.
    pub hashed_bytes: u64,
}

/// What [`Image::check`](super::Image::check) found: the good parts counted, the damaged ones
/// counted and listed (up to a bound).
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let r: pbr_format::CheckReport = image.check(10, &|_| {});
/// println!("{} pages good, {} failures", r.pages, r.damaged);
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(Debug)]
pub struct CheckReport {
    /// Sections whose crc32 matched.
    pub sections: usize,
    /// Stored pages whose crc32 (and blake3, when present) matched.
    pub pages: u64,
    /// Bytes covered by the trailer hash.
    pub hashed_bytes: u64,
    /// The failures, in file order, at most the bound asked for.
    pub damage: Vec<Error>,
    /// How many failures there are in all.
    pub damaged: u64,
}
