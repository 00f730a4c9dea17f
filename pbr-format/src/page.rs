//! What a page is (its class) and how it is stored (its encoding); and
//! whether a page's bytes are all zero, and the crc32 of a zero page.

use std::fmt;
use std::str::FromStr;

/// What the guest used a page for (`spec/format.md` §6.1).
///
/// # Example
/// ```
/// use pbr_format::PageClass;
/// // What a restore may drop: free pages; cache pages can be re-read.
/// let droppable = |c: PageClass| matches!(c, PageClass::Free | PageClass::Cache);
/// assert!(droppable(PageClass::Free) && !droppable(PageClass::Kernel));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum PageClass {
    /// Not classified.
    #[default]
    Unknown = 0,
    /// Free in the guest; a restore does not need it.
    Free = 1,
    /// Clean page cache with a copy on disk.
    Cache = 2,
    /// Allocated by the guest kernel.
    Kernel = 3,
    /// User memory.
    User = 4,
}

impl PageClass {
    /// Every class, in value order.
    pub const ALL: [PageClass; 5] =
        [PageClass::Unknown, PageClass::Free, PageClass::Cache, PageClass::Kernel, PageClass::User];

    /// The class with on-disk value `v`, if it is one.
    ///
    /// # Example
    /// ```
    /// use pbr_format::PageClass;
    /// assert_eq!(PageClass::from_u8(PageClass::ALL[1] as u8), Some(PageClass::ALL[1]));
    /// assert_eq!(PageClass::from_u8(200), None);
    /// ```
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The lower-case name used in the CLI and JSON.
    ///
    /// # Example
    /// ```
    /// use pbr_format::PageClass;
    /// assert_eq!(PageClass::Cache.name(), "cache");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            PageClass::Unknown => "unknown",
            PageClass::Free => "free",
            PageClass::Cache => "cache",
            PageClass::Kernel => "kernel",
            PageClass::User => "user",
        }
    }
}

impl fmt::Display for PageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PageClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown page class '{s}' (expected unknown, free, cache, kernel or user)"))
    }
}

/// How a page is stored (`spec/format.md` §6.2).
///
/// # Example
/// ```
/// use pbr_format::PageEncoding;
/// assert!(PageEncoding::Raw.is_stored());
/// assert!(!PageEncoding::Trimmed.is_stored());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PageEncoding {
    /// Page-aligned bytes in the file, mmap-able.
    Raw = 0,
    /// All zero.
    Zero = 1,
    /// An lz4 block.
    Lz4 = 2,
    /// Dropped; reads as zero.
    Trimmed = 3,
    /// Unchanged from the base image.
    Base = 4,
    /// Equal to another page of the image.
    Dup = 5,
}

impl PageEncoding {
    /// Every encoding, in value order.
    pub const ALL: [PageEncoding; 6] = [
        PageEncoding::Raw,
        PageEncoding::Zero,
        PageEncoding::Lz4,
        PageEncoding::Trimmed,
        PageEncoding::Base,
        PageEncoding::Dup,
    ];

    /// The encoding with on-disk value `v`, if it is one.
    ///
    /// # Example
    /// ```
    /// use pbr_format::PageEncoding;
    /// assert_eq!(PageEncoding::from_u8(PageEncoding::ALL[1] as u8), Some(PageEncoding::ALL[1]));
    /// assert_eq!(PageEncoding::from_u8(200), None);
    /// ```
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }

    /// The lower-case name used in the CLI and JSON.
    ///
    /// # Example
    /// ```
    /// use pbr_format::PageEncoding;
    /// assert_eq!(PageEncoding::Trimmed.name(), "trimmed");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            PageEncoding::Raw => "raw",
            PageEncoding::Zero => "zero",
            PageEncoding::Lz4 => "lz4",
            PageEncoding::Trimmed => "trimmed",
            PageEncoding::Base => "base",
            PageEncoding::Dup => "dup",
        }
    }

    /// Whether pages of this encoding have their own bytes in `PAGE_DATA`
    /// and a stored-page number.
    ///
    /// # Example
    /// ```
    /// assert!(pbr_format::PageEncoding::Lz4.is_stored());
    /// assert!(!pbr_format::PageEncoding::Zero.is_stored());
    /// ```
    pub fn is_stored(self) -> bool {
        matches!(self, PageEncoding::Raw | PageEncoding::Lz4)
    }
}

impl fmt::Display for PageEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether every byte of `data` is zero.
///
/// # Example
/// ```
/// assert!(pbr_format::is_zero(&[0; 4096]));
/// assert!(!pbr_format::is_zero(&[0, 0, 1]));
/// ```
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(64).all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// crc32 of one all-zero page of `page_size` bytes.
///
/// # Example
/// ```
/// assert_eq!(pbr_format::zero_page_crc(4096), crc32fast::hash(&[0; 4096]));
/// ```
pub fn zero_page_crc(page_size: u32) -> u32 {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut h = crc32fast::Hasher::new();
    for _ in 0..page_size / 4096 {
        h.update(&ZEROS);
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_values_round_trip() {
        for c in PageClass::ALL {
            assert_eq!(PageClass::from_u8(c as u8), Some(c));
            assert_eq!(c.name().parse::<PageClass>(), Ok(c));
        }
        assert_eq!(PageClass::from_u8(5), None);
        assert!("dirty".parse::<PageClass>().is_err());
    }

    #[test]
    fn encoding_values_round_trip() {
        for e in PageEncoding::ALL {
            assert_eq!(PageEncoding::from_u8(e as u8), Some(e));
        }
        assert_eq!(PageEncoding::from_u8(6), None);
    }
}
