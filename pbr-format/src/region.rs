//! Guest memory regions (`spec/format.md` §5).

use std::borrow::Cow;

/// One region of guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region<'a> {
    /// Address of the first byte (a guest-physical address unless
    /// `synthetic`).
    pub base: u64,
    /// Length in bytes, a multiple of the page size.
    pub length: u64,
    /// Offset of this region inside the source's memory object `name`.
    pub source_offset: u64,
    /// Read-only memory (a ROM).
    pub read_only: bool,
    /// `base` is a place the converter chose, not a guest-physical address.
    pub synthetic: bool,
    /// Name, such as `pc.ram`.
    pub name: Cow<'a, str>,
}

impl Region<'_> {
    /// A writable, guest-physical region.
    pub fn ram(name: &str, base: u64, length: u64) -> Region<'static> {
        Region { base, length, source_offset: 0, read_only: false, synthetic: false, name: Cow::Owned(name.to_owned()) }
    }

    /// The first guest frame number of the region for `page_size`.
    pub fn first_gfn(&self, page_size: u32) -> u64 {
        self.base / u64::from(page_size)
    }

    /// Number of pages of the region for `page_size`.
    pub fn pages(&self, page_size: u32) -> u64 {
        self.length / u64::from(page_size)
    }

    /// An owned copy.
    pub fn into_owned(self) -> Region<'static> {
        Region { name: Cow::Owned(self.name.into_owned()), ..self }
    }
}
