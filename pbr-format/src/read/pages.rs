//! Page access: lookup, iteration, zero-copy raw slices, lz4 decoding.

use std::ops::Range;

use crate::error::{Error, ErrorKind, Result};
use crate::page::{PageClass, PageEncoding, is_zero, zero_page_crc};
use crate::refill::DiskRef;

use super::Image;
use super::page_index::{Extent, RawRun};

impl Image {
    /// Number of extents in the page index.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.extent_count(), image.extents().count());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extent_count(&self) -> usize {
        self.index.len()
    }

    /// Number of stored (raw and lz4) pages.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let stored: u64 = image.extents().filter(|e| e.encoding.is_stored()).map(|e| u64::from(e.count)).sum();
    /// assert_eq!(image.stored_page_count(), stored);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stored_page_count(&self) -> u64 {
        self.index.stored_pages()
    }

    /// Every extent, in guest frame order.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for e in image.extents() {
    ///     println!("{:#x}+{} {} {}", e.gfn, e.count, e.class.name(), e.encoding.name());
    /// }
    /// assert_eq!(image.extents().map(|e| u64::from(e.count)).sum::<u64>(), image.page_count());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extents(&self) -> impl Iterator<Item = Extent> + '_ {
        let bytes = self.as_bytes();
        (0..self.index.len()).filter_map(move |i| self.index.get(bytes, i))
    }

    /// The extents that hold any page of `gfns`, in order. Finding the first
    /// is a binary search.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let first: Vec<_> = image.extents_in(0..4).collect();
    /// assert_eq!(first[0].gfn, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extents_in(&self, gfns: Range<u64>) -> impl Iterator<Item = Extent> + '_ {
        let bytes = self.as_bytes();
        let first = self.index.position(bytes, gfns.start);
        (first..self.index.len()).map_while(move |i| self.index.get(bytes, i).filter(|e| e.gfn < gfns.end))
    }

    /// The extents of pages of `class`, in order.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// use pbr_format::PageClass;
    /// let kernel: u64 = image.extents_of_class(PageClass::Kernel).map(|e| u64::from(e.count)).sum();
    /// assert!(kernel > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extents_of_class(&self, class: PageClass) -> impl Iterator<Item = Extent> + '_ {
        self.extents().filter(move |e| e.class == class)
    }

    /// The extent that holds `gfn`: O(log n).
    ///
    /// # Errors
    /// [`ErrorKind::NoSuchPage`] when no region holds `gfn`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extent_of(0)?;
    /// assert!(e.gfns().contains(&0));
    /// assert!(image.extent_of(1 << 40).is_err(), "not in any region");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn extent_of(&self, gfn: u64) -> Result<Extent> {
        self.index.find(self.as_bytes(), gfn).ok_or_else(|| ErrorKind::NoSuchPage { gfn }.into())
    }

    /// Raw pages merged into runs contiguous in guest memory and in the file,
    /// whatever their class: each can be mapped `MAP_PRIVATE` as guest memory
    /// once [`Image::check_run`] has checked its pages (mapping reads no
    /// crc32).
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for run in image.raw_runs() {
    ///     image.check_run(&run)?;
    ///     // mmap run.pages pages from run.file_offset as guest memory at run.gfn.
    ///     assert_eq!(run.file_offset % u64::from(image.page_size()), 0);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw_runs(&self) -> Vec<RawRun> {
        let ps = u64::from(self.page_size());
        let mut runs: Vec<RawRun> = Vec::new();
        for e in self.extents().filter(|e| e.encoding == PageEncoding::Raw) {
            match runs.last_mut() {
                Some(r) if r.gfn + r.pages == e.gfn && r.file_offset + r.pages * ps == e.data => {
                    r.pages += u64::from(e.count);
                }
                _ => runs.push(RawRun { gfn: e.gfn, pages: u64::from(e.count), file_offset: e.data }),
            }
        }
        runs
    }

    /// The bytes of a raw extent, borrowed from the map with no copy, each
    /// page checked against its crc32 first.
    ///
    /// # Errors
    /// An extent that is not raw or lies outside the file;
    /// [`ErrorKind::ChecksumMismatch`] naming the first damaged page.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// use pbr_format::PageEncoding;
    /// let e = image.extents().find(|e| e.encoding == PageEncoding::Raw).unwrap();
    /// let bytes = image.raw_bytes(&e)?;
    /// assert_eq!(bytes.len(), e.count as usize * 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw_bytes(&self, e: &Extent) -> Result<&[u8]> {
        self.raw_pages(e, e.gfns())
    }

    /// The bytes of pages `gfns` of raw extent `e`, borrowed from the map
    /// with no copy, each page checked against its crc32 first.
    ///
    /// # Errors
    /// As [`Image::raw_bytes`]; `gfns` not inside `e`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// use pbr_format::PageEncoding;
    /// let e = image.extents().find(|e| e.encoding == PageEncoding::Raw).unwrap();
    /// assert_eq!(image.raw_pages(&e, e.gfn..e.gfn + 1)?.len(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn raw_pages(&self, e: &Extent, gfns: Range<u64>) -> Result<&[u8]> {
        if e.encoding != PageEncoding::Raw {
            return Err(Error::invalid(format!("the extent at gfn {:#x} is {}, not raw", e.gfn, e.encoding)));
        }
        if gfns.start < e.gfn || gfns.end > e.gfn + u64::from(e.count) || gfns.start > gfns.end {
            return Err(Error::invalid(format!("pages {gfns:#x?} are not all in the extent at {:#x}", e.gfn)));
        }
        let ps = self.page_size() as usize;
        let start = e.data as usize + (gfns.start - e.gfn) as usize * ps;
        let len = (gfns.end - gfns.start) as usize * ps;
        let bytes = self
            .as_bytes()
            .get(start..start + len)
            .ok_or_else(|| Error::malformed("PAGE_DATA", start as u64, "raw extent lies outside the file"))?;
        for (page, gfn) in bytes.chunks_exact(ps).zip(gfns) {
            self.check_page(e, gfn, page)?;
        }
        Ok(bytes)
    }

    /// Checks every stored page of the raw run `run` against its crc32:
    /// what a VMM does before it maps the run as guest memory.
    ///
    /// # Errors
    /// [`ErrorKind::ChecksumMismatch`] naming the first damaged page;
    /// [`ErrorKind::InvalidInput`] for a run that is not raw pages of the
    /// image at those file offsets from end to end.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for run in image.raw_runs() {
    ///     image.check_run(&run)?; // then mmap it
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_run(&self, run: &RawRun) -> Result<()> {
        let ps = u64::from(self.page_size());
        let end = run.gfn.checked_add(run.pages).ok_or_else(|| Error::invalid("the run ends past 2^64"))?;
        // The run must be raw extents, one after the other in guest memory
        // and in the file, from its first page to its last: no byte of it
        // is mapped unchecked.
        let mut at = run.gfn;
        for e in self.extents_in(run.gfn..end) {
            let first = e.gfn.max(run.gfn);
            let last = (e.gfn + u64::from(e.count)).min(end);
            let in_file = e.data + (first - e.gfn) * ps == run.file_offset + (first - run.gfn) * ps;
            if e.encoding != PageEncoding::Raw || first != at || !in_file {
                return Err(Error::invalid(format!(
                    "pages {:#x}..{end:#x} at file offset {:#x} are not one raw run of the image (at gfn {first:#x})",
                    run.gfn, run.file_offset
                )));
            }
            self.raw_pages(&e, first..last)?;
            at = last;
        }
        if at != end {
            return Err(Error::invalid(format!("pages {at:#x}..{end:#x} of the run are in no raw extent")));
        }
        Ok(())
    }

    /// The content of page `gfn`: borrowed from the map for a raw page,
    /// otherwise decoded or zero-filled into `buf` (which must be exactly one
    /// page long).
    ///
    /// # Errors
    /// [`ErrorKind::NoSuchPage`] for a page outside every region; an error
    /// for a page stored in a base image (see [`Image::base`]); a corruption
    /// error when an lz4 page does not decode to exactly one page;
    /// [`ErrorKind::ChecksumMismatch`] when the page's bytes do not match
    /// the crc32 the index holds for them: no stored page is handed out
    /// unchecked.
    ///
    /// # Example
    /// ```no_run
    /// let image = pbr_format::Image::open("guest.pbr")?;
    /// let mut buf = vec![0u8; image.page_size() as usize];
    /// let page = image.read_page(0, &mut buf)?;
    /// assert_eq!(page.len(), image.page_size() as usize);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn read_page<'a>(&'a self, gfn: u64, buf: &'a mut [u8]) -> Result<&'a [u8]> {
        let e = self.extent_of(gfn)?;
        self.read_in_extent(&e, gfn, buf)
    }

    /// As [`Image::read_page`], for a `gfn` already known to be in `e`.
    ///
    /// # Errors
    /// As [`Image::read_page`].
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let mut buf = vec![0u8; 4096];
    /// for e in image.extents() {
    ///     for gfn in e.gfns() {
    ///         let page = image.read_in_extent(&e, gfn, &mut buf)?;
    ///         assert_eq!(page.len(), 4096);
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_in_extent<'a>(&'a self, e: &Extent, gfn: u64, buf: &'a mut [u8]) -> Result<&'a [u8]> {
        let page = self.decode_in_extent(e, gfn, buf)?;
        self.check_page(e, gfn, page)?;
        Ok(page)
    }

    /// Checks `content`, page `gfn` of extent `e` as read, against the
    /// crc32 the index holds for it. Zero and trimmed pages hold no bytes
    /// and pass, as do base pages (they are checked against their base).
    ///
    /// # Errors
    /// [`ErrorKind::ChecksumMismatch`] naming the page, with the `PAGE_DATA`
    /// offset of its stored bytes.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extents().find(|e| e.encoding.is_stored()).unwrap();
    /// let mut page = image.read_in_extent(&e, e.gfn, &mut vec![0; 4096])?.to_vec();
    /// image.check_page(&e, e.gfn, &page)?;
    /// page[7] ^= 1;
    /// assert!(image.check_page(&e, e.gfn, &page).unwrap_err().is_damage());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_page(&self, e: &Extent, gfn: u64, content: &[u8]) -> Result<()> {
        if !e.encoding.is_stored() && e.encoding != PageEncoding::Dup {
            return Ok(());
        }
        // A stored page without a crc32 is never handed out unchecked.
        let stored = self.expected_crc(e, gfn).ok_or_else(|| {
            Error::malformed("PAGE_CRCS", self.page_offset(e, gfn), format!("no crc32 for the page of gfn {gfn:#x}"))
        })?;
        let computed = crc32fast::hash(content);
        if computed == stored {
            return Ok(());
        }
        let (e, gfn) = match e.encoding {
            PageEncoding::Dup => (self.extent_of(e.data)?, e.data),
            _ => (*e, gfn),
        };
        Err(Error::new(ErrorKind::ChecksumMismatch {
            what: format!("{} page gfn {gfn:#x} (stored page {})", e.encoding, e.aux + (gfn - e.gfn)),
            stored,
            computed,
        })
        .at("PAGE_DATA", self.page_offset(&e, gfn)))
    }

    /// The file offset of the stored bytes of page `gfn` of extent `e`
    /// (for an lz4 extent, of the extent's length table).
    pub(crate) fn page_offset(&self, e: &Extent, gfn: u64) -> u64 {
        match e.encoding {
            PageEncoding::Raw => e.data + (gfn - e.gfn) * u64::from(self.page_size()),
            _ => e.data,
        }
    }

    /// The content of page `gfn` of `e`, not checked against its crc32.
    fn decode_in_extent<'a>(&'a self, e: &Extent, gfn: u64, buf: &'a mut [u8]) -> Result<&'a [u8]> {
        let ps = self.page_size() as usize;
        if buf.len() != ps {
            return Err(Error::invalid(format!("page buffer is {} bytes, not the page size {ps}", buf.len())));
        }
        if !e.gfns().contains(&gfn) {
            return Err(Error::invalid(format!("gfn {gfn:#x} is not in the extent at {:#x}", e.gfn)));
        }
        let i = (gfn - e.gfn) as usize;
        match e.encoding {
            PageEncoding::Raw => {
                let start = e.data as usize + i * ps;
                self.as_bytes()
                    .get(start..start + ps)
                    .ok_or_else(|| Error::malformed("PAGE_DATA", start as u64, "raw page lies outside the file"))
            }
            PageEncoding::Zero | PageEncoding::Trimmed => {
                buf.fill(0);
                Ok(buf)
            }
            PageEncoding::Lz4 => {
                let (stored, at) = self.lz4_page(e, i)?;
                if stored.len() == ps {
                    return Ok(stored);
                }
                match lz4_flex::block::decompress_into(stored, buf) {
                    Ok(n) if n == ps => Ok(buf),
                    Ok(n) => Err(Error::malformed(
                        "PAGE_DATA",
                        at,
                        format!("lz4 page of gfn {gfn:#x} decodes to {n} bytes, not {ps}"),
                    )),
                    Err(err) => Err(Error::malformed(
                        "PAGE_DATA",
                        at,
                        format!("lz4 page of gfn {gfn:#x} does not decode: {err}"),
                    )),
                }
            }
            PageEncoding::Dup => {
                let source = self.extent_of(e.data)?;
                if !source.encoding.is_stored() {
                    return Err(Error::malformed("PAGE_INDEX", 0, format!("dup source {:#x} is not stored", e.data)));
                }
                self.decode_in_extent(&source, e.data, buf)
            }
            PageEncoding::Base => Err(Error::invalid(format!(
                "page {gfn:#x} is in the base image; apply this diff to its base to read it"
            ))),
        }
    }

    /// The stored bytes of page `i` of an lz4 extent and their file offset.
    fn lz4_page(&self, e: &Extent, i: usize) -> Result<(&[u8], u64)> {
        let ps = self.page_size() as usize;
        let bytes = self.as_bytes();
        let pd = self.index.page_data();
        let table = e.data as usize;
        let count = e.count as usize;
        let end_at = |j: usize| -> Option<usize> {
            let o = table + 4 * j;
            bytes.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let bad = |msg: String| Error::malformed("PAGE_DATA", table as u64, msg);
        let start = if i == 0 { 0 } else { end_at(i - 1).ok_or_else(|| bad("lz4 table out of bounds".into()))? };
        let end = end_at(i).ok_or_else(|| bad("lz4 table out of bounds".into()))?;
        let data_start = table + 4 * count;
        if end <= start || end - start > ps {
            return Err(bad(format!("lz4 page {i} has length {} outside 1..={ps}", end.wrapping_sub(start) as isize)));
        }
        let (a, b) = (data_start + start, data_start + end);
        if b > pd.end {
            return Err(bad(format!("lz4 page {i} ends at {b:#x}, past PAGE_DATA")));
        }
        Ok((&bytes[a..b], a as u64))
    }

    /// The crc32 the index holds for page `gfn` of extent `e`: stored for
    /// raw and lz4 pages, the zero page's for zero and trimmed pages, the
    /// source's for dup pages, none for base pages.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extents().find(|e| e.encoding.is_stored()).unwrap();
    /// let mut buf = vec![0u8; 4096];
    /// let page = image.read_in_extent(&e, e.gfn, &mut buf)?.to_vec();
    /// assert_eq!(image.expected_crc(&e, e.gfn), Some(crc32fast::hash(&page)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expected_crc(&self, e: &Extent, gfn: u64) -> Option<u32> {
        match e.encoding {
            PageEncoding::Raw | PageEncoding::Lz4 => self.index.crc(self.as_bytes(), e.aux + (gfn - e.gfn)),
            PageEncoding::Zero | PageEncoding::Trimmed => Some(zero_page_crc(self.page_size())),
            PageEncoding::Dup => {
                let s = self.extent_of(e.data).ok()?;
                s.encoding.is_stored().then(|| self.expected_crc(&s, e.data)).flatten()
            }
            PageEncoding::Base => None,
        }
    }

    /// The blake3 the index holds for page `gfn` of stored extent `e`, when
    /// the image has `PAGE_HASHES`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let e = image.extents().find(|e| e.encoding.is_stored()).unwrap();
    /// let mut buf = vec![0u8; 4096];
    /// let page = image.read_in_extent(&e, e.gfn, &mut buf)?;
    /// assert_eq!(image.stored_hash(&e, e.gfn), Some(*blake3::hash(page).as_bytes()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stored_hash(&self, e: &Extent, gfn: u64) -> Option<[u8; 32]> {
        match e.encoding {
            PageEncoding::Raw | PageEncoding::Lz4 => self.index.hash(self.as_bytes(), e.aux + (gfn - e.gfn)),
            PageEncoding::Dup => {
                let s = self.extent_of(e.data).ok()?;
                self.stored_hash(&s, e.data)
            }
            _ => None,
        }
    }

    /// The disk references whose page a restore must read back from the
    /// guest's disk (`spec/format.md` §7.8): pages trimmed, or stored as
    /// zeros while the reference's crc32 is not a zero page's (flat
    /// images). A restore that does not refill them must refuse the image:
    /// the guest would find zeros where its page cache was.
    ///
    /// # Errors
    /// A reference to a page outside every region, or a damaged page.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert!(image.pages_to_refill()?.is_empty(), "an image with no disk references");
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn pages_to_refill(&self) -> Result<Vec<&DiskRef>> {
        let zero_crc = zero_page_crc(self.page_size());
        let mut buf = vec![0u8; self.page_size() as usize];
        let mut out = Vec::new();
        for r in &self.disk_refs().pages {
            let e = self.extent_of(r.gfn)?;
            let refill = match e.encoding {
                PageEncoding::Trimmed => true,
                PageEncoding::Raw | PageEncoding::Lz4 | PageEncoding::Dup => {
                    r.crc32 != zero_crc && is_zero(self.read_in_extent(&e, r.gfn, &mut buf)?)
                }
                PageEncoding::Zero | PageEncoding::Base => false,
            };
            if refill {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Page-cache pages trimmed with no disk reference: nothing can put
    /// them back, and a restore must refuse the image.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.orphaned_cache_pages(), 0);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn orphaned_cache_pages(&self) -> usize {
        let refs = self.disk_refs();
        self.extents()
            .filter(|e| e.encoding == PageEncoding::Trimmed && e.class == PageClass::Cache)
            .flat_map(|e| e.gfns())
            .filter(|&g| refs.get(g).is_none())
            .count()
    }

    /// Pages per class and encoding: `counts[class][encoding]`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// use pbr_format::{PageClass, PageEncoding};
    /// let counts = image.page_counts();
    /// let free_trimmed = counts[PageClass::Free as usize][PageEncoding::Trimmed as usize];
    /// assert_eq!(counts.iter().flatten().sum::<u64>(), image.page_count());
    /// println!("{free_trimmed} free pages were trimmed");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_counts(&self) -> [[u64; PageEncoding::ALL.len()]; PageClass::ALL.len()] {
        let mut counts = [[0u64; PageEncoding::ALL.len()]; PageClass::ALL.len()];
        for e in self.extents() {
            counts[e.class as usize][e.encoding as usize] += u64::from(e.count);
        }
        counts
    }
}
