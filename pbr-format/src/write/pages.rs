//! Page content: checking, storing raw pages in place, packing lz4 blocks,
//! spilling page hashes, and the encodings of pages with no content (zero,
//! trimmed, base, dup). Also the narrowing of the regions, which moves the
//! spilled hashes with the pages.

use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::page::{PageClass, PageEncoding, is_zero};
use crate::region::Region;

use super::ImageWriter;
use super::check::check_regions;
use super::lz4_block::Lz4Block;

impl ImageWriter {
    /// Replaces the regions the image covers, for producers that learn the
    /// guest's memory layout only from the pages themselves (an `xl save`
    /// stream names no layout before its pages): create the writer over a
    /// region that holds every possible page, then narrow it here before
    /// [`ImageWriter::finish`]. Pages of the new regions nobody wrote get
    /// the unwritten encoding.
    ///
    /// # Errors
    /// Invalid regions (as [`ImageWriter::create`]), or a page already
    /// written (content, encoding or class) outside them.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("guest.pbr");
    /// let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 1 << 40)], WriterOptions::default())?;
    /// w.write_page(0x100, &[1; 4096], PageClass::Unknown)?;
    /// w.set_regions(&[Region::ram("ram", 0x100 * 4096, 4096)])?;
    /// w.finish()?;
    /// assert_eq!(pbr_format::Image::open(&path)?.page_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_regions(&mut self, regions: &[Region<'_>]) -> Result<()> {
        check_regions(regions, self.opts.page_size)?;
        self.flush_lz4()?;
        let spill = match &self.hash_spill {
            Some(_) => Some(tempfile::tempfile().map_err(|e| Error::io("cannot create the page-hash spill file", e))?),
            None => None,
        };
        let old = &self.hash_spill;
        let pages = self.pages.reshape(regions, &mut |from, to| {
            if let (Some(old), Some(new)) = (old, &spill) {
                let mut h = [0u8; 32];
                old.read_exact_at(&mut h, from * 32)
                    .map_err(|e| Error::io("cannot read the page-hash spill file", e))?;
                new.write_all_at(&h, to * 32).map_err(|e| Error::io("cannot write the page-hash spill file", e))?;
            }
            Ok(())
        })?;
        self.pages = pages;
        if spill.is_some() {
            self.hash_spill = spill;
        }
        self.regions = regions.iter().cloned().map(Region::into_owned).collect();
        Ok(())
    }

    fn check_page(&self, gfn: u64, data: &[u8]) -> Result<u64> {
        if data.len() != self.opts.page_size as usize {
            return Err(Error::invalid(format!(
                "page {gfn:#x} is {} bytes, not the page size {}",
                data.len(),
                self.opts.page_size
            )));
        }
        let d = self.pages.dense(gfn)?;
        if self.pages.encoding(d) == Some(PageEncoding::Lz4) {
            return Err(Error::invalid(format!("page {gfn:#x} was already written lz4-compressed")));
        }
        Ok(d)
    }

    /// Writes page `gfn` with content `data`: an all-zero page is recorded
    /// as zero, any other is stored raw.
    ///
    /// # Errors
    /// A page outside every region, a buffer that is not one page, I/O.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.write_page(0, &[0; 4096], PageClass::Free)?; // recorded as zero, no bytes stored
    /// w.write_page(1, &[0xab; 4096], PageClass::Kernel)?;
    /// assert_eq!(w.finish()?.stored_pages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_page(&mut self, gfn: u64, data: &[u8], class: PageClass) -> Result<()> {
        let d = self.check_page(gfn, data)?;
        if is_zero(data) {
            self.pages.set_empty(d, PageEncoding::Zero, class, self.opts.unwritten);
            return Ok(());
        }
        self.store_raw(d, data, class)
    }

    /// Writes page `gfn` raw even when it is all zero.
    ///
    /// # Errors
    /// As [`ImageWriter::write_page`].
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// // A zero page stored anyway: its bytes can be mapped as guest memory.
    /// w.write_page_raw(0, &[0; 4096], PageClass::Kernel)?;
    /// assert_eq!(w.finish()?.stored_pages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_page_raw(&mut self, gfn: u64, data: &[u8], class: PageClass) -> Result<()> {
        let d = self.check_page(gfn, data)?;
        self.store_raw(d, data, class)
    }

    fn store_raw(&mut self, d: u64, data: &[u8], class: PageClass) -> Result<()> {
        let crc = crc32fast::hash(data);
        let ps = u64::from(self.opts.page_size);
        let slot = if self.pages.encoding(d) == Some(PageEncoding::Raw) {
            let slot = self.pages.state(d);
            self.sink.rewrite(u64::from(slot) * ps, data)?;
            slot
        } else {
            self.sink.pad_to(ps)?;
            let slot =
                u32::try_from(self.sink.pos() / ps).map_err(|_| Error::invalid("page data exceeds 2^32 pages"))?;
            // A stored zero page is a hole: the same bytes, no disk space.
            if is_zero(data) {
                self.sink.skip(ps)
            } else {
                self.sink.write(data)?
            }
            slot
        };
        self.pages.set(d, PageEncoding::Raw, class, slot, crc);
        self.spill_hash(d, data)
    }

    /// Writes page `gfn` lz4-compressed (stored verbatim where lz4 does not
    /// win). Pages written this way are packed into blocks of consecutive
    /// pages; each page can be written so only once.
    ///
    /// # Errors
    /// As [`ImageWriter::write_page`], and a page already written.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// for gfn in 0..4 {
    ///     w.write_page_lz4(gfn, &[gfn as u8 + 1; 4096], PageClass::User)?;
    /// }
    /// let report = w.finish()?;
    /// assert!(report.file_len < 4 * 4096, "four compressible pages take less than a page each");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_page_lz4(&mut self, gfn: u64, data: &[u8], class: PageClass) -> Result<()> {
        let d = self.check_page(gfn, data)?;
        if is_zero(data) {
            self.pages.set_empty(d, PageEncoding::Zero, class, self.opts.unwritten);
            return Ok(());
        }
        let continues = self
            .pending
            .as_ref()
            .is_some_and(|p| p.takes(d, class) && self.pages.region_of(p.first()) == self.pages.region_of(d));
        if !continues {
            self.flush_lz4()?;
            self.pending = Some(Lz4Block::new(d, class));
        }
        let block = self.lz4_blocks.len() as u32;
        let p = self.pending.as_mut().ok_or_else(|| Error::invalid("no lz4 block"))?;
        p.push(data)?;
        self.pages.set(d, PageEncoding::Lz4, class, block, crc32fast::hash(data));
        self.spill_hash(d, data)
    }

    /// Writes the pending lz4 block, if any, and records where it starts.
    pub(super) fn flush_lz4(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        let offset = p.write(&mut self.sink)?;
        self.lz4_blocks.push(offset);
        Ok(())
    }

    fn spill_hash(&mut self, d: u64, data: &[u8]) -> Result<()> {
        if let Some(f) = &self.hash_spill {
            f.write_all_at(blake3::hash(data).as_bytes(), d * 32)
                .map_err(|e| Error::io("cannot write the page-hash spill file", e))?;
        }
        Ok(())
    }

    /// Records `count` pages from `gfn` as `encoding` (zero, trimmed or
    /// base) with `class`, dropping any content written for them.
    ///
    /// # Errors
    /// A page outside every region, or an encoding with content.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::PageEncoding;
    /// // Pages 8..16 were free in the guest: dropped, read back as zero.
    /// w.mark_pages(8, 8, PageEncoding::Trimmed, PageClass::Free)?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_pages(&mut self, gfn: u64, count: u64, encoding: PageEncoding, class: PageClass) -> Result<()> {
        if encoding.is_stored() || encoding == PageEncoding::Dup {
            return Err(Error::invalid(format!("mark_pages cannot record {encoding} pages")));
        }
        let end = gfn.checked_add(count).ok_or_else(|| Error::invalid("page range overflows"))?;
        let mut g = gfn;
        while g < end {
            let d = self.pages.dense(g)?;
            let n = self.pages.run_in_region(d).min(end - g);
            self.pages.set_empty_run(d, n, encoding, class, self.opts.unwritten)?;
            g += n;
        }
        Ok(())
    }

    /// Records page `gfn` as equal to page `source`, which must hold stored
    /// (raw or lz4) content when the image is finished.
    ///
    /// # Errors
    /// A page outside every region.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.write_page(0, &[5; 4096], PageClass::Kernel)?;
    /// w.write_dup(1, 0, PageClass::Kernel)?; // page 1 holds the same bytes as page 0
    /// assert_eq!(w.finish()?.stored_pages, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_dup(&mut self, gfn: u64, source: u64, class: PageClass) -> Result<()> {
        let d = self.pages.dense(gfn)?;
        let s = self.pages.dense(source)?;
        if s == d {
            return Err(Error::invalid(format!("page {gfn:#x} cannot be a duplicate of itself")));
        }
        let s = u32::try_from(s).map_err(|_| Error::invalid("dup source beyond 2^32 pages"))?;
        self.pages.set(d, PageEncoding::Dup, class, s, 0);
        Ok(())
    }

    /// Sets the class of page `gfn`, keeping its content.
    ///
    /// # Errors
    /// A page outside every region.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.write_page(2, &[1; 4096], PageClass::Unknown)?;
    /// w.set_class(2, PageClass::Cache)?; // classified later, from kpageflags
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_class(&mut self, gfn: u64, class: PageClass) -> Result<()> {
        let d = self.pages.dense(gfn)?;
        self.pages.set_class(d, class);
        Ok(())
    }
}
