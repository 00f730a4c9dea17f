//! Per-page state of an image being written: 9 bytes a page, so a 16 GiB
//! guest (4 Mi pages) needs 36 MiB.

use zerocopy::little_endian::{U16, U32, U64};

use crate::error::{Error, Result};
use crate::page::{PageClass, PageEncoding};
use crate::pod::ExtentRecord;
use crate::region::Region;

/// `meta` low nibble of a page nobody wrote.
pub(crate) const UNWRITTEN: u8 = 0x0f;

/// Dense arrays over every page of every region, in guest frame order.
pub(crate) struct PageTable {
    page_size: u32,
    /// Per region: first gfn, pages, dense index of its first page.
    spans: Vec<(u64, u64, u64)>,
    /// Raw: file slot (offset / page size); lz4: block id; dup: source's
    /// dense index.
    state: Vec<u32>,
    crc: Vec<u32>,
    /// Low nibble: encoding (or [`UNWRITTEN`]); high nibble: class.
    meta: Vec<u8>,
}

impl PageTable {
    pub fn new(regions: &[Region<'_>], page_size: u32) -> Result<PageTable> {
        let mut spans = Vec::with_capacity(regions.len());
        let mut dense = 0u64;
        for r in regions {
            spans.push((r.first_gfn(page_size), r.pages(page_size), dense));
            dense += r.pages(page_size);
        }
        let n = usize::try_from(dense).map_err(|_| Error::invalid("too many pages for this machine"))?;
        let alloc = |what: &str| Error::invalid(format!("cannot allocate the {what} of {n} pages"));
        let mut state = Vec::new();
        state.try_reserve_exact(n).map_err(|_| alloc("page table"))?;
        state.resize(n, 0);
        let mut crc = Vec::new();
        crc.try_reserve_exact(n).map_err(|_| alloc("crc table"))?;
        crc.resize(n, 0);
        let mut meta = Vec::new();
        meta.try_reserve_exact(n).map_err(|_| alloc("class table"))?;
        meta.resize(n, UNWRITTEN);
        Ok(PageTable { page_size, spans, state, crc, meta })
    }

    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// The dense index of `gfn`, by binary search over the regions.
    pub fn dense(&self, gfn: u64) -> Result<usize> {
        let i = self.spans.partition_point(|s| s.0 <= gfn);
        match i.checked_sub(1).map(|i| self.spans[i]) {
            Some((first, pages, dense)) if gfn < first + pages => Ok((dense + gfn - first) as usize),
            _ => Err(Error::new(crate::ErrorKind::NoSuchPage { gfn })),
        }
    }

    /// The region number of dense index `d`.
    pub fn region_of(&self, d: usize) -> usize {
        self.spans.partition_point(|s| s.2 <= d as u64) - 1
    }

    /// The gfn of dense index `d`.
    pub fn gfn(&self, d: usize) -> u64 {
        let (first, _, dense) = self.spans[self.region_of(d)];
        first + (d as u64 - dense)
    }

    pub fn set(&mut self, d: usize, enc: PageEncoding, class: PageClass, state: u32, crc: u32) {
        self.meta[d] = enc as u8 | ((class as u8) << 4);
        self.state[d] = state;
        self.crc[d] = crc;
    }

    pub fn set_class(&mut self, d: usize, class: PageClass) {
        self.meta[d] = (self.meta[d] & 0x0f) | ((class as u8) << 4);
    }

    /// The encoding written for page `d`, or `None` when unwritten.
    pub fn encoding(&self, d: usize) -> Option<PageEncoding> {
        PageEncoding::from_u8(self.meta[d] & 0x0f)
    }

    pub fn state(&self, d: usize) -> u32 {
        self.state[d]
    }

    pub fn crc(&self, d: usize) -> u32 {
        self.crc[d]
    }

    fn class(&self, d: usize) -> PageClass {
        PageClass::from_u8(self.meta[d] >> 4).unwrap_or_default()
    }

    /// Calls `f` with each extent, in order, built from runs of pages with
    /// one region, class and encoding whose storage continues the run.
    /// `lz4_block` gives an lz4 block id's file offset; `unwritten` is the
    /// encoding of pages nobody wrote.
    pub fn for_each_extent(
        &self,
        unwritten: PageEncoding,
        lz4_block: &dyn Fn(u32) -> u64,
        f: &mut dyn FnMut(&ExtentRecord, usize) -> Result<()>,
    ) -> Result<()> {
        let ps = u64::from(self.page_size);
        let mut stored = 0u64;
        for &(first_gfn, pages, dense) in &self.spans {
            let mut d = dense as usize;
            let end = (dense + pages) as usize;
            while d < end {
                let enc = self.encoding(d).unwrap_or(unwritten);
                let class = self.class(d);
                let mut n = 1usize;
                while d + n < end
                    && self.encoding(d + n).unwrap_or(unwritten) == enc
                    && self.class(d + n) == class
                    && self.continues(enc, d + n)
                    && n < u32::MAX as usize
                {
                    n += 1;
                }
                let data = match enc {
                    PageEncoding::Raw => u64::from(self.state[d]) * ps,
                    PageEncoding::Lz4 => lz4_block(self.state[d]),
                    PageEncoding::Dup => self.gfn(self.state[d] as usize),
                    _ => 0,
                };
                let aux = if enc.is_stored() { stored } else { 0 };
                if enc.is_stored() {
                    stored += n as u64;
                }
                let rec = ExtentRecord {
                    gfn: U64::new(first_gfn + (d as u64 - dense)),
                    count: U32::new(n as u32),
                    encoding: enc as u8,
                    class: class as u8,
                    flags: U16::new(0),
                    data: U64::new(data),
                    aux: U64::new(aux),
                };
                f(&rec, d)?;
                d += n;
            }
        }
        Ok(())
    }

    /// Whether page `d` continues the storage of page `d - 1` of the same
    /// encoding.
    fn continues(&self, enc: PageEncoding, d: usize) -> bool {
        match enc {
            PageEncoding::Raw => self.state[d] == self.state[d - 1].wrapping_add(1),
            PageEncoding::Lz4 | PageEncoding::Dup => self.state[d] == self.state[d - 1],
            PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base => true,
        }
    }
}
