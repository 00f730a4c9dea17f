//! The page index: extents, stored-page arrays, lookup (`spec/format.md` §6).

use std::ops::Range;

use zerocopy::little_endian::U32;

use crate::error::{Error, Result};
use crate::page::{PageClass, PageEncoding};
use crate::pod::ExtentRecord;
use crate::region::Region;

use super::header::HeaderInfo;
use super::table::Table;

/// A run of pages with one class and one encoding.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let e: pbr_format::Extent = image.extent_of(0)?;
/// println!("{} pages from {:#x}: {} {}", e.count, e.gfn, e.class.name(), e.encoding.name());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First guest frame number.
    pub gfn: u64,
    /// Number of pages.
    pub count: u32,
    /// How the pages are stored.
    pub encoding: PageEncoding,
    /// What the pages are.
    pub class: PageClass,
    /// Encoding-specific data word (`spec/format.md` §6.2).
    pub data: u64,
    /// Stored-page number of the first page (raw and lz4 extents).
    pub aux: u64,
}

impl Extent {
    /// One past the last guest frame number.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extent_of(0)?;
    /// assert_eq!(e.end_gfn(), e.gfn + u64::from(e.count));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn end_gfn(&self) -> u64 {
        self.gfn + u64::from(self.count)
    }

    /// The guest frame numbers of the extent.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extent_of(0)?;
    /// assert_eq!(e.gfns().count(), e.count as usize);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn gfns(&self) -> Range<u64> {
        self.gfn..self.end_gfn()
    }

    fn from_record(r: &ExtentRecord) -> Option<Extent> {
        Some(Extent {
            gfn: r.gfn.get(),
            count: r.count.get(),
            encoding: PageEncoding::from_u8(r.encoding)?,
            class: PageClass::from_u8(r.class)?,
            data: r.data.get(),
            aux: r.aux.get(),
        })
    }
}

/// Raw pages contiguous both in guest memory and in the file: what a VMM
/// maps `MAP_PRIVATE` as guest memory.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let pages: u64 = image.raw_runs().iter().map(|r: &pbr_format::RawRun| r.pages).sum();
/// assert!(pages > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRun {
    /// First guest frame number.
    pub gfn: u64,
    /// Number of pages.
    pub pages: u64,
    /// File offset of the first page (page aligned).
    pub file_offset: u64,
}

/// The checked page index of an open image.
pub(crate) struct PageIndex {
    extents: ExtentStore,
    crcs: Table,
    hashes: Option<Table>,
    page_data: Range<usize>,
    page_size: u32,
    stored_pages: u64,
    encodings_present: u8,
}

/// Extents borrowed from the file when their record size is the one this
/// version writes, or copied when a newer minor version made them longer.
enum ExtentStore {
    Mapped(Table),
    Owned(Vec<ExtentRecord>),
}

const NAME: &str = "PAGE_INDEX";

impl PageIndex {
    pub fn parse(
        bytes: &[u8],
        header: &HeaderInfo,
        regions: &[Region<'_>],
        index: Range<usize>,
        crcs: Range<usize>,
        hashes: Option<Range<usize>>,
        page_data: Range<usize>,
    ) -> Result<PageIndex> {
        let t = Table::parse(bytes, index, NAME, size_of::<ExtentRecord>(), None)?;
        let extents = match t.slice::<ExtentRecord>(bytes) {
            Some(_) => ExtentStore::Mapped(t.clone()),
            None => {
                let mut v = Vec::new();
                v.try_reserve_exact(t.count)
                    .map_err(|_| Error::malformed(NAME, t.offset_of(0), "cannot allocate the extent list"))?;
                for i in 0..t.count {
                    v.push(t.record::<ExtentRecord>(bytes, i)?);
                }
                ExtentStore::Owned(v)
            }
        };
        let crcs = Table::parse(bytes, crcs, "PAGE_CRCS", 4, None)?;
        let hashes = hashes.map(|r| Table::parse(bytes, r, "PAGE_HASHES", 32, None)).transpose()?;
        let mut index = PageIndex {
            extents,
            crcs,
            hashes,
            page_data,
            page_size: header.page_size,
            stored_pages: 0,
            encodings_present: 0,
        };
        index.check(bytes, regions, &t)?;
        Ok(index)
    }

    fn records<'a>(&'a self, bytes: &'a [u8]) -> &'a [ExtentRecord] {
        match &self.extents {
            ExtentStore::Mapped(t) => t.slice(bytes).unwrap_or(&[]),
            ExtentStore::Owned(v) => v,
        }
    }

    /// Checks the rules of `spec/format.md` §6.2 and counts stored pages.
    fn check(&mut self, bytes: &[u8], regions: &[Region<'_>], t: &Table) -> Result<()> {
        let ps = u64::from(self.page_size);
        let mut region = 0usize;
        let mut next: Option<u64> = None;
        let mut stored = 0u64;
        let mut present = 0u8;
        let mut dups: Vec<(usize, u64)> = Vec::new();
        let (pd_start, pd_end) = (self.page_data.start as u64, self.page_data.end as u64);
        for (i, r) in self.records(bytes).iter().enumerate() {
            let at = t.offset_of(i);
            let bad = |msg: String| Error::malformed(NAME, at, format!("extent {i}: {msg}"));
            let e = Extent::from_record(r)
                .ok_or_else(|| bad(format!("unknown encoding {} or class {}", r.encoding, r.class)))?;
            if r.flags.get() != 0 {
                return Err(bad(format!("reserved flags {:#x} are set", r.flags.get())));
            }
            if e.count == 0 {
                return Err(bad("count is 0".into()));
            }
            let Some(reg) = regions.get(region) else {
                return Err(bad(format!("gfn {:#x} lies past the last region", e.gfn)));
            };
            let reg_end = reg.first_gfn(self.page_size) + reg.pages(self.page_size);
            let expected = next.unwrap_or(reg.first_gfn(self.page_size));
            if e.gfn != expected {
                return Err(bad(format!(
                    "starts at gfn {:#x} but the next page to cover is {expected:#x} in region '{}'",
                    e.gfn, reg.name
                )));
            }
            if e.end_gfn() > reg_end {
                return Err(bad(format!("gfn {:#x}+{} crosses the end of region '{}'", e.gfn, e.count, reg.name)));
            }
            if e.end_gfn() == reg_end {
                region += 1;
                next = None;
            } else {
                next = Some(e.end_gfn());
            }
            present |= 1 << (e.encoding as u8);
            match e.encoding {
                PageEncoding::Raw => {
                    let end = u64::from(e.count).checked_mul(ps).and_then(|n| n.checked_add(e.data));
                    if e.data % ps != 0 || e.data < pd_start || end.is_none_or(|end| end > pd_end) {
                        return Err(bad(format!(
                            "raw data at {:#x} for {} pages is not page aligned inside PAGE_DATA",
                            e.data, e.count
                        )));
                    }
                }
                PageEncoding::Lz4 => {
                    let table_end = e.data.checked_add(4 * u64::from(e.count));
                    if e.data < pd_start || table_end.is_none_or(|end| end > pd_end) {
                        return Err(bad(format!(
                            "lz4 block at {:#x} for {} pages is not inside PAGE_DATA",
                            e.data, e.count
                        )));
                    }
                }
                PageEncoding::Dup => dups.push((i, e.data)),
                PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base => {
                    if e.data != 0 || e.aux != 0 {
                        return Err(bad(format!("{} extent has non-zero data or aux", e.encoding)));
                    }
                }
            }
            if e.encoding.is_stored() {
                if e.aux != stored {
                    return Err(bad(format!("aux {} is not the stored-page number {stored}", e.aux)));
                }
                stored += u64::from(e.count);
            } else if e.encoding == PageEncoding::Dup && e.aux != 0 {
                return Err(bad("dup extent has non-zero aux".into()));
            }
        }
        if let Some(reg) = regions.get(region) {
            let from = next.unwrap_or(reg.first_gfn(self.page_size));
            return Err(Error::malformed(
                NAME,
                t.offset_of(t.count),
                format!("the index ends before covering region '{}' from gfn {from:#x}", reg.name),
            ));
        }
        if self.crcs.count as u64 != stored {
            return Err(Error::malformed(
                "PAGE_CRCS",
                self.crcs.offset_of(0),
                format!("count {} differs from the {stored} stored pages of the index", self.crcs.count),
            ));
        }
        if let Some(h) = &self.hashes
            && h.count as u64 != stored
        {
            return Err(Error::malformed(
                "PAGE_HASHES",
                h.offset_of(0),
                format!("count {} differs from the {stored} stored pages of the index", h.count),
            ));
        }
        self.stored_pages = stored;
        self.encodings_present = present;
        for (i, source) in dups {
            let ok = self.find(bytes, source).is_some_and(|e| e.encoding.is_stored());
            if !ok {
                return Err(Error::malformed(
                    NAME,
                    t.offset_of(i),
                    format!("extent {i}: dup source gfn {source:#x} is not a raw or lz4 page"),
                ));
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        match &self.extents {
            ExtentStore::Mapped(t) => t.count,
            ExtentStore::Owned(v) => v.len(),
        }
    }

    pub fn has_hashes(&self) -> bool {
        self.hashes.is_some()
    }

    pub fn has_encoding(&self, e: PageEncoding) -> bool {
        self.encodings_present & (1 << (e as u8)) != 0
    }

    pub fn stored_pages(&self) -> u64 {
        self.stored_pages
    }

    /// Extent `i` (checked on open, so always decodable).
    pub fn get(&self, bytes: &[u8], i: usize) -> Option<Extent> {
        self.records(bytes).get(i).and_then(Extent::from_record)
    }

    /// Index of the first extent whose pages end after `gfn`.
    pub fn position(&self, bytes: &[u8], gfn: u64) -> usize {
        self.records(bytes).partition_point(|r| r.gfn.get() + u64::from(r.count.get()) <= gfn)
    }

    /// The extent holding `gfn`: a binary search.
    pub fn find(&self, bytes: &[u8], gfn: u64) -> Option<Extent> {
        self.get(bytes, self.position(bytes, gfn)).filter(|e| e.gfn <= gfn)
    }

    /// crc32 of stored page `k`.
    pub fn crc(&self, bytes: &[u8], k: u64) -> Option<u32> {
        self.crcs.slice::<U32>(bytes).map_or_else(
            || self.crcs.record::<U32>(bytes, k as usize).ok().map(|v| v.get()),
            |s| s.get(k as usize).map(|v| v.get()),
        )
    }

    /// blake3 of stored page `k`, when the image has `PAGE_HASHES`.
    pub fn hash(&self, bytes: &[u8], k: u64) -> Option<[u8; 32]> {
        let h = self.hashes.as_ref()?;
        if k as usize >= h.count {
            return None;
        }
        h.record::<[u8; 32]>(bytes, k as usize).ok()
    }

    pub fn page_data(&self) -> Range<usize> {
        self.page_data.clone()
    }
}
