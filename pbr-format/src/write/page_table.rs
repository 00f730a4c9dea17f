//! Per-page state of an image being written: 9 bytes a page, allocated in
//! chunks of 4096 pages as pages are written, so memory follows the pages
//! a producer actually writes, not the guest size regions claim (a 16 GiB
//! guest written in full needs 36 MiB; a hostile stream claiming a
//! terabyte allocates nothing until it sends pages).

use std::collections::BTreeMap;

use zerocopy::little_endian::{U16, U32, U64};

use crate::error::{Error, ErrorKind, Result};
use crate::page::{PageClass, PageEncoding};
use crate::pod::ExtentRecord;
use crate::region::Region;

/// `meta` low nibble of a page nobody wrote.
pub(crate) const UNWRITTEN: u8 = 0x0f;

/// Pages per chunk.
const CHUNK: usize = 4096;

struct Chunk {
    /// Raw: file slot (offset / page size); lz4: block id; dup: source's
    /// dense index.
    state: [u32; CHUNK],
    crc: [u32; CHUNK],
    /// Low nibble: encoding (or [`UNWRITTEN`]); high nibble: class.
    meta: [u8; CHUNK],
}

/// Page state over every page of every region, in guest frame order
/// (dense index), stored sparsely.
pub(crate) struct PageTable {
    page_size: u32,
    /// Per region: first gfn, pages, dense index of its first page.
    spans: Vec<(u64, u64, u64)>,
    chunks: BTreeMap<u64, Box<Chunk>>,
}

impl PageTable {
    pub fn new(regions: &[Region<'_>], page_size: u32) -> Result<PageTable> {
        let mut spans = Vec::with_capacity(regions.len());
        let mut dense = 0u64;
        for r in regions {
            spans.push((r.first_gfn(page_size), r.pages(page_size), dense));
            dense = dense.checked_add(r.pages(page_size)).ok_or_else(|| Error::invalid("regions overflow"))?;
        }
        usize::try_from(dense).map_err(|_| Error::invalid("too many pages for this machine"))?;
        Ok(PageTable { page_size, spans, chunks: BTreeMap::new() })
    }

    /// The same page state over new `regions`: every page written so far
    /// (content, encoding or class) must lie inside them. `moved` is called
    /// with the old and new dense index of every stored page.
    pub fn reshape(&self, regions: &[Region<'_>], moved: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<PageTable> {
        let mut out = PageTable::new(regions, self.page_size)?;
        for (&k, c) in &self.chunks {
            for (i, &meta) in c.meta.iter().enumerate() {
                if meta == UNWRITTEN {
                    continue;
                }
                let d = k * CHUNK as u64 + i as u64;
                let gfn = self.gfn(d);
                let nd = out.dense(gfn).map_err(|_| {
                    Error::invalid(format!("page {gfn:#x} was written but lies outside the new regions"))
                })?;
                let mut state = c.state[i];
                let enc = PageEncoding::from_u8(meta & 0x0f);
                if enc == Some(PageEncoding::Dup) {
                    let src = self.gfn(u64::from(state));
                    state =
                        u32::try_from(out.dense(src).map_err(|_| {
                            Error::invalid(format!("dup source {src:#x} lies outside the new regions"))
                        })?)
                        .map_err(|_| Error::invalid("dup source beyond 2^32 pages"))?;
                }
                let (nc, ni) = out.chunk_mut(nd);
                nc.meta[ni] = meta;
                nc.state[ni] = state;
                nc.crc[ni] = c.crc[i];
                if enc.is_some_and(PageEncoding::is_stored) {
                    moved(d, nd)?;
                }
            }
        }
        Ok(out)
    }

    /// The dense index of `gfn`, by binary search over the regions.
    pub fn dense(&self, gfn: u64) -> Result<u64> {
        let i = self.spans.partition_point(|s| s.0 <= gfn);
        match i.checked_sub(1).map(|i| self.spans[i]) {
            Some((first, pages, dense)) if gfn < first + pages => Ok(dense + gfn - first),
            _ => Err(Error::new(ErrorKind::NoSuchPage { gfn })),
        }
    }

    /// The region number of dense index `d`.
    pub fn region_of(&self, d: u64) -> usize {
        self.spans.partition_point(|s| s.2 <= d) - 1
    }

    /// The gfn of dense index `d`.
    pub fn gfn(&self, d: u64) -> u64 {
        let (first, _, dense) = self.spans[self.region_of(d)];
        first + (d - dense)
    }

    fn chunk_mut(&mut self, d: u64) -> (&mut Chunk, usize) {
        let c = self
            .chunks
            .entry(d / CHUNK as u64)
            .or_insert_with(|| Box::new(Chunk { state: [0; CHUNK], crc: [0; CHUNK], meta: [UNWRITTEN; CHUNK] }));
        (c, (d % CHUNK as u64) as usize)
    }

    fn chunk(&self, d: u64) -> Option<(&Chunk, usize)> {
        self.chunks.get(&(d / CHUNK as u64)).map(|c| (&**c, (d % CHUNK as u64) as usize))
    }

    pub fn set(&mut self, d: u64, enc: PageEncoding, class: PageClass, state: u32, crc: u32) {
        let (c, i) = self.chunk_mut(d);
        c.meta[i] = enc as u8 | ((class as u8) << 4);
        c.state[i] = state;
        c.crc[i] = crc;
    }

    /// Records that page `d` holds no content of its own (zero, trimmed or
    /// base), allocating nothing when that is what an unwritten page with
    /// class `Unknown` already means.
    pub fn set_empty(&mut self, d: u64, enc: PageEncoding, class: PageClass, unwritten: PageEncoding) {
        if self.chunk(d).is_none() && enc == unwritten && class == PageClass::Unknown {
            return;
        }
        self.set(d, enc, class, 0, 0);
    }

    /// Pages from dense index `d` to the end of its region.
    pub fn run_in_region(&self, d: u64) -> u64 {
        let (_, pages, dense) = self.spans[self.region_of(d)];
        dense + pages - d
    }

    /// [`PageTable::set_empty`] for `n` pages from `d`, skipping untouched
    /// chunks where that records nothing new.
    pub fn set_empty_run(
        &mut self,
        d: u64,
        n: u64,
        enc: PageEncoding,
        class: PageClass,
        unwritten: PageEncoding,
    ) -> Result<()> {
        let end = d + n;
        let mut i = d;
        while i < end {
            match self.untouched(i) {
                Some(k) if enc == unwritten && class == PageClass::Unknown => i += k.min(end - i),
                _ => {
                    if self.encoding(i) == Some(PageEncoding::Lz4) {
                        return Err(Error::invalid(format!(
                            "page {:#x} was already written lz4-compressed",
                            self.gfn(i)
                        )));
                    }
                    self.set(i, enc, class, 0, 0);
                    i += 1;
                }
            }
        }
        Ok(())
    }

    pub fn set_class(&mut self, d: u64, class: PageClass) {
        let (c, i) = self.chunk_mut(d);
        c.meta[i] = (c.meta[i] & 0x0f) | ((class as u8) << 4);
    }

    fn meta(&self, d: u64) -> u8 {
        self.chunk(d).map_or(UNWRITTEN, |(c, i)| c.meta[i])
    }

    /// The encoding written for page `d`, or `None` when unwritten.
    pub fn encoding(&self, d: u64) -> Option<PageEncoding> {
        PageEncoding::from_u8(self.meta(d) & 0x0f)
    }

    pub fn state(&self, d: u64) -> u32 {
        self.chunk(d).map_or(0, |(c, i)| c.state[i])
    }

    pub fn crc(&self, d: u64) -> u32 {
        self.chunk(d).map_or(0, |(c, i)| c.crc[i])
    }

    fn class(&self, d: u64) -> PageClass {
        PageClass::from_u8(self.meta(d) >> 4).unwrap_or_default()
    }

    /// Pages from `d` up to the end of its chunk when nobody wrote in that
    /// chunk (all unwritten, class unknown).
    fn untouched(&self, d: u64) -> Option<u64> {
        self.chunk(d).is_none().then(|| CHUNK as u64 - d % CHUNK as u64)
    }

    /// Dense indexes of written pages with stored content, in order.
    pub fn stored(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(&k, c)| {
            (0..CHUNK)
                .filter(move |&i| PageEncoding::from_u8(c.meta[i] & 0x0f).is_some_and(PageEncoding::is_stored))
                .map(move |i| k * CHUNK as u64 + i as u64)
        })
    }

    /// Calls `f` with each extent, in order, built from runs of pages with
    /// one region, class and encoding whose storage continues the run.
    /// `lz4_block` gives an lz4 block id's file offset; `unwritten` is the
    /// encoding of pages nobody wrote.
    pub fn for_each_extent(
        &self,
        unwritten: PageEncoding,
        lz4_block: &dyn Fn(u32) -> u64,
        f: &mut dyn FnMut(&ExtentRecord) -> Result<()>,
    ) -> Result<()> {
        let ps = u64::from(self.page_size);
        let mut stored = 0u64;
        for &(first_gfn, pages, dense) in &self.spans {
            let end = dense + pages;
            let mut d = dense;
            while d < end {
                let enc = self.encoding(d).unwrap_or(unwritten);
                let class = self.class(d);
                let mut n = self.untouched(d).map_or(1, |k| k.min(end - d));
                while d + n < end && n < u64::from(u32::MAX) {
                    let next = d + n;
                    if let Some(k) = self.untouched(next) {
                        if enc == unwritten && class == PageClass::Unknown && !enc.is_stored() {
                            n += k.min(end - next).min(u64::from(u32::MAX) - n);
                            continue;
                        }
                        break;
                    }
                    if self.encoding(next).unwrap_or(unwritten) == enc
                        && self.class(next) == class
                        && self.continues(enc, next)
                    {
                        n += 1;
                    } else {
                        break;
                    }
                }
                let data = match enc {
                    PageEncoding::Raw => u64::from(self.state(d)) * ps,
                    PageEncoding::Lz4 => lz4_block(self.state(d)),
                    PageEncoding::Dup => self.gfn(u64::from(self.state(d))),
                    _ => 0,
                };
                let aux = if enc.is_stored() { stored } else { 0 };
                if enc.is_stored() {
                    stored += n;
                }
                let rec = ExtentRecord {
                    gfn: U64::new(first_gfn + (d - dense)),
                    count: U32::new(n as u32),
                    encoding: enc as u8,
                    class: class as u8,
                    flags: U16::new(0),
                    data: U64::new(data),
                    aux: U64::new(aux),
                };
                f(&rec)?;
                d += n;
            }
        }
        Ok(())
    }

    /// Whether page `d` continues the storage of page `d - 1` of the same
    /// encoding.
    fn continues(&self, enc: PageEncoding, d: u64) -> bool {
        match enc {
            PageEncoding::Raw => self.state(d) == self.state(d - 1).wrapping_add(1),
            PageEncoding::Lz4 | PageEncoding::Dup => self.state(d) == self.state(d - 1),
            PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base => true,
        }
    }
}
