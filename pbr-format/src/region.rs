//! Guest memory regions (`spec/format.md` §5).

use std::borrow::Cow;

/// One region of guest memory.
///
/// # Example
/// ```
/// use pbr_format::Region;
/// // A ROM the guest sees through another window, placed by the converter.
/// let bios = Region { read_only: true, synthetic: true, ..Region::ram("pc.bios", 1 << 48, 256 << 10) };
/// assert_eq!(bios.pages(4096), 64);
/// ```
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
    ///
    /// # Example
    /// ```
    /// let r = pbr_format::Region::ram("pc.ram", 1 << 32, 1 << 30);
    /// assert!(!r.read_only && !r.synthetic);
    /// ```
    pub fn ram(name: &str, base: u64, length: u64) -> Region<'static> {
        Region { base, length, source_offset: 0, read_only: false, synthetic: false, name: Cow::Owned(name.to_owned()) }
    }

    /// The first guest frame number of the region for `page_size`.
    ///
    /// # Example
    /// ```
    /// let r = pbr_format::Region::ram("pc.ram", 1 << 32, 1 << 30);
    /// assert_eq!(r.first_gfn(4096), 0x10_0000);
    /// ```
    pub fn first_gfn(&self, page_size: u32) -> u64 {
        self.base / u64::from(page_size)
    }

    /// Number of pages of the region for `page_size`.
    ///
    /// # Example
    /// ```
    /// let r = pbr_format::Region::ram("pc.ram", 0, 1 << 30);
    /// assert_eq!(r.pages(4096), 262_144);
    /// assert_eq!(r.pages(2 << 20), 512);
    /// ```
    pub fn pages(&self, page_size: u32) -> u64 {
        self.length / u64::from(page_size)
    }

    /// An owned copy.
    ///
    /// # Example
    /// ```
    /// let name = String::from("pc.ram");
    /// let r = pbr_format::Region { name: name.as_str().into(), ..pbr_format::Region::ram("", 0, 4096) }.into_owned();
    /// drop(name);
    /// assert_eq!(r.name, "pc.ram");
    /// ```
    pub fn into_owned(self) -> Region<'static> {
        Region { name: Cow::Owned(self.name.into_owned()), ..self }
    }
}
