//! Writing `.pbr` images: a streaming writer that takes pages in any order,
//! keeps 9 bytes of state a page, and creates its output atomically.

mod encode;
mod page_table;
mod sink;

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use tempfile::NamedTempFile;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::base::BaseRef;
use crate::device::DeviceBlob;
use crate::error::{Error, Result};
use crate::limits::{MAX_MSRS, MAX_NAME, MAX_PATH, MAX_REGIONS, MAX_VCPUS, MAX_XSAVE, PAGE_SIZES};
use crate::manifest::{CacheRef, FileEntry, check_path};
use crate::metadata::check_key;
use crate::page::{PageClass, PageEncoding};
use crate::phase::Phase;
use crate::pod::{self, HEADER_SIZE, Header, SectionEntry, TRAILER_MAGIC, Trailer};
use crate::refill::DiskRefs;
use crate::region::Region;
use crate::section::SectionKind;
use crate::vcpu::Vcpu;

use page_table::PageTable;
use sink::Sink;

/// Pages per lz4 block at most.
const LZ4_BLOCK_PAGES: usize = 1024;

/// How an [`ImageWriter`] writes.
///
/// # Example
/// ```
/// use pbr_format::{PageEncoding, WriterOptions};
/// // A diff image with page hashes, from my-vmm 2.1.
/// let opts = WriterOptions {
///     producer_name: "my-vmm".into(),
///     producer_version: "2.1".into(),
///     page_hashes: true,
///     unwritten: PageEncoding::Base,
///     ..WriterOptions::default()
/// };
/// assert_eq!(opts.page_size, 4096);
/// ```
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Page size: 4096 or 2 MiB.
    pub page_size: u32,
    /// Producer name for the header (at most 32 bytes).
    pub producer_name: String,
    /// Producer version for the header (at most 32 bytes).
    pub producer_version: String,
    /// Store a blake3 per stored page (`PAGE_HASHES`).
    pub page_hashes: bool,
    /// Encoding of pages nobody wrote: `Zero` for a full image, `Base` for a
    /// diff (then [`ImageWriter::set_base`] is required), or `Trimmed`.
    pub unwritten: PageEncoding,
    /// fsync the image before publishing it (default). Off only for
    /// scratch images whose loss on a crash does not matter.
    pub sync: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            page_size: 4096,
            producer_name: "pbr-format".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            page_hashes: false,
            unwritten: PageEncoding::Zero,
            sync: true,
        }
    }
}

/// What [`ImageWriter::finish`] wrote.
///
/// # Example
/// ```
/// # let dir = tempfile::tempdir()?;
/// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
/// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
/// w.write_page(1, &[9; 4096], PageClass::User)?;
/// let report = w.finish()?;
/// assert_eq!(report.stored_pages, 1);
/// assert_eq!(report.file_len, std::fs::metadata(&report.path)?.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// The final path.
    pub path: PathBuf,
    /// File length in bytes.
    pub file_len: u64,
    /// The trailer hash.
    pub image_blake3: [u8; 32],
    /// Extents in the page index.
    pub extents: u64,
    /// Stored (raw and lz4) pages.
    pub stored_pages: u64,
}

struct PendingLz4 {
    first: u64,
    class: PageClass,
    ends: Vec<u32>,
    data: Vec<u8>,
}

/// Streams an image into a temporary file beside `path`, then publishes it
/// with fsync and rename. Dropping an unfinished writer leaves nothing
/// under `path`.
///
/// Pages may come in any order and more than once (the last copy wins);
/// raw pages land page-aligned in arrival order, so pages sent in guest
/// order form contiguous, mmap-able runs.
///
/// # Example
/// ```
/// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("guest.pbr");
/// let regions = [Region::ram("pc.ram", 0, 16 * 4096)];
/// let mut w = ImageWriter::create(&path, &regions, WriterOptions::default())?;
/// w.write_page(3, &[0xAB; 4096], PageClass::Kernel)?;
/// w.finish()?;
/// let image = pbr_format::Image::open(&path)?;
/// image.verify()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ImageWriter {
    tmp: NamedTempFile,
    dest: PathBuf,
    sink: Sink,
    opts: WriterOptions,
    regions: Vec<Region<'static>>,
    pages: PageTable,
    data_start: u64,
    lz4_blocks: Vec<u64>,
    pending: Option<PendingLz4>,
    hash_spill: Option<File>,
    phase: Option<Phase<'static>>,
    vcpus: Vec<Vcpu>,
    devices: Vec<DeviceBlob<'static>>,
    metadata: Vec<(String, String)>,
    manifest: Vec<FileEntry<'static>>,
    cache_refs: Vec<CacheRef>,
    disk_refs: DiskRefs,
    base: Option<BaseRef<'static>>,
}

impl ImageWriter {
    /// Starts an image of guest memory `regions` to be published at `path`.
    /// Until [`ImageWriter::finish`], the image is a temporary file beside
    /// `path` named `.pbr-<process ID>-<random>.tmp`.
    ///
    /// # Errors
    /// Invalid options or regions (unsorted, overlapping, unaligned, bad
    /// names), and I/O errors creating the temporary file.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, Region, WriterOptions};
    /// // 3 GiB below the PCI hole and 1 GiB above 4 GiB.
    /// let regions = [Region::ram("pc.ram", 0, 3 << 30), Region { source_offset: 3 << 30, ..Region::ram("pc.ram", 1 << 32, 1 << 30) }];
    /// let w = ImageWriter::create(dir.path().join("guest.pbr"), &regions, WriterOptions::default())?;
    /// assert_eq!(w.regions().len(), 2);
    /// // Nothing appears at the path until finish.
    /// assert!(!dir.path().join("guest.pbr").exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(path: impl AsRef<Path>, regions: &[Region<'_>], opts: WriterOptions) -> Result<ImageWriter> {
        let dest = destination(path.as_ref())?;
        check_options(&opts)?;
        check_regions(regions, opts.page_size)?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // The process ID in the name lets a tool that is interrupted remove
        // its own temporary files, and only those.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".pbr-{}-", std::process::id()))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(|e| Error::io(format!("cannot create a temporary file in {}", dir.display()), e))?;
        let file = tmp.reopen().map_err(|e| Error::io("cannot reopen the temporary file", e))?;
        let mut sink = Sink::new(file);
        sink.write(header(&opts, 0, 0, pod::VERSION_MINOR).as_bytes())?;
        sink.pad_to(u64::from(opts.page_size))?;
        let data_start = sink.pos();
        let pages = PageTable::new(regions, opts.page_size)?;
        let hash_spill = if opts.page_hashes {
            Some(tempfile::tempfile().map_err(|e| Error::io("cannot create the page-hash spill file", e))?)
        } else {
            None
        };
        Ok(ImageWriter {
            tmp,
            dest,
            sink,
            opts,
            regions: regions.iter().cloned().map(Region::into_owned).collect(),
            pages,
            data_start,
            lz4_blocks: Vec::new(),
            pending: None,
            hash_spill,
            phase: None,
            vcpus: Vec::new(),
            devices: Vec::new(),
            metadata: Vec::new(),
            manifest: Vec::new(),
            cache_refs: Vec::new(),
            disk_refs: DiskRefs::default(),
            base: None,
        })
    }

    /// Page size.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// assert_eq!(w.page_size(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_size(&self) -> u32 {
        self.opts.page_size
    }

    /// The regions the image covers.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// assert_eq!(w.regions()[0].length, 16 * 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn regions(&self) -> &[Region<'static>] {
        &self.regions
    }

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
        let continues = self.pending.as_ref().is_some_and(|p| {
            p.first + p.ends.len() as u64 == d
                && p.class == class
                && p.ends.len() < LZ4_BLOCK_PAGES
                && self.pages.region_of(p.first) == self.pages.region_of(d)
        });
        if !continues {
            self.flush_lz4()?;
            self.pending = Some(PendingLz4 { first: d, class, ends: Vec::new(), data: Vec::new() });
        }
        let block = self.lz4_blocks.len() as u32;
        let p = self.pending.as_mut().ok_or_else(|| Error::invalid("no lz4 block"))?;
        let packed = lz4_flex::block::compress(data);
        if packed.len() < data.len() {
            p.data.extend_from_slice(&packed);
        } else {
            p.data.extend_from_slice(data);
        }
        let end = u32::try_from(p.data.len()).map_err(|_| Error::invalid("lz4 block exceeds 4 GiB"))?;
        p.ends.push(end);
        self.pages.set(d, PageEncoding::Lz4, class, block, crc32fast::hash(data));
        self.spill_hash(d, data)
    }

    fn flush_lz4(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else { return Ok(()) };
        self.sink.pad_to(4)?;
        self.lz4_blocks.push(self.sink.pos());
        self.sink.write(p.ends.as_bytes())?;
        self.sink.write(&p.data)
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

    /// Sets the phase tag.
    ///
    /// # Errors
    /// A name that is empty or longer than 255 bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.set_phase(pbr_format::Phase::named("kernel", 1))?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_phase(&mut self, phase: Phase<'_>) -> Result<()> {
        check_name(&phase.name, "phase name")?;
        self.phase = Some(phase.into_owned());
        Ok(())
    }

    /// Adds a vCPU record; records are written sorted by id.
    ///
    /// # Errors
    /// A duplicate id, too many vCPUs, MSRs or XSAVE bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// let mut v = pbr_format::X86Vcpu::new(0);
    /// v.regs.rip.set(0x7c00);
    /// w.add_vcpu(pbr_format::Vcpu::X86_64(Box::new(v)))?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_vcpu(&mut self, vcpu: Vcpu) -> Result<()> {
        if self.vcpus.len() >= MAX_VCPUS as usize {
            return Err(Error::invalid(format!("more than {MAX_VCPUS} vCPUs")));
        }
        if self.vcpus.iter().any(|v| v.id() == vcpu.id()) {
            return Err(Error::invalid(format!("vCPU {} added twice", vcpu.id())));
        }
        if let Vcpu::X86_64(x) = &vcpu
            && (x.msrs.len() > MAX_MSRS as usize || x.xsave.len() > MAX_XSAVE as usize || x.xsave.len() % 4 != 0)
        {
            return Err(Error::invalid(format!(
                "vCPU {}: {} MSRs / {} XSAVE bytes exceed the limits ({MAX_MSRS}, {MAX_XSAVE}, multiple of 4)",
                x.id,
                x.msrs.len(),
                x.xsave.len()
            )));
        }
        self.vcpus.push(vcpu);
        self.vcpus.sort_by_key(Vcpu::id);
        Ok(())
    }

    /// Adds a device-state blob; blobs keep the order they are added in.
    ///
    /// # Errors
    /// A name longer than 4096 bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::{DeviceBlob, DeviceOrigin};
    /// w.add_device(DeviceBlob {
    ///     origin: DeviceOrigin::VMM,
    ///     name: "serial0".into(),
    ///     instance: 0,
    ///     version: 1,
    ///     flags: 0,
    ///     data: (&[0x60u8, 0x00][..]).into(),
    /// })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_device(&mut self, blob: DeviceBlob<'_>) -> Result<()> {
        if blob.name.len() > MAX_PATH as usize {
            return Err(Error::invalid(format!("device name of {} bytes exceeds {MAX_PATH}", blob.name.len())));
        }
        self.devices.push(DeviceBlob {
            name: blob.name.into_owned().into(),
            data: blob.data.into_owned().into(),
            ..blob
        });
        Ok(())
    }

    /// Sets metadata `key` to `value`, replacing an earlier value.
    ///
    /// # Errors
    /// A key outside `[a-z0-9._-]{1,255}`.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.set_metadata("guest.kernel", "6.1.0-28-cloud-amd64")?;
    /// assert!(w.set_metadata("Not A Key", "x").is_err());
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        check_key(key).map_err(Error::invalid)?;
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.metadata.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    /// Adds a file to the manifest and returns its index.
    ///
    /// # Errors
    /// A path that is absolute or has an empty, `.` or `..` component.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::FileEntry;
    /// let i = w.add_file(FileEntry { path: "etc/hostname".into(), size: 4, mtime_ns: 0, inode: 42, blake3: *blake3::hash(b"lab\n").as_bytes(), cache_only: false })?;
    /// assert_eq!(i, 0);
    /// assert!(w.add_file(FileEntry { path: "../etc/passwd".into(), size: 0, mtime_ns: 0, inode: 0, blake3: [0; 32], cache_only: false }).is_err());
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_file(&mut self, file: FileEntry<'_>) -> Result<u32> {
        check_path(&file.path).map_err(Error::invalid)?;
        self.manifest.push(FileEntry { path: file.path.into_owned().into(), ..file });
        Ok((self.manifest.len() - 1) as u32)
    }

    /// Adds a page-cache back reference.
    ///
    /// # Errors
    /// A file index not in the manifest, a page outside every region, or a
    /// page that already has one.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::{CacheRef, FileEntry};
    /// let file = w.add_file(FileEntry { path: "usr/bin/app".into(), size: 8192, mtime_ns: 0, inode: 7, blake3: [0; 32], cache_only: false })?;
    /// w.write_page(3, &[1; 4096], PageClass::Cache)?;
    /// // Page 3 caches the second page of usr/bin/app.
    /// w.add_cache_ref(CacheRef { gfn: 3, file_index: file, offset: 4096 })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_cache_ref(&mut self, r: CacheRef) -> Result<()> {
        if r.file_index as usize >= self.manifest.len() {
            return Err(Error::invalid(format!("cache ref names file {} of {}", r.file_index, self.manifest.len())));
        }
        self.pages.dense(r.gfn)?;
        match self.cache_refs.binary_search_by_key(&r.gfn, |c| c.gfn) {
            Ok(_) => Err(Error::invalid(format!("page {:#x} has two cache refs", r.gfn))),
            Err(i) => {
                self.cache_refs.insert(i, r);
                Ok(())
            }
        }
    }

    /// Sets the image's disk references (`spec/format.md` §7.8), replacing
    /// any set before. An image with them is written as format 1.1.
    ///
    /// # Errors
    /// References that break §7.8's rules, or name a page outside every
    /// region.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{DiskRef, DiskRefs, ImageWriter, PageClass, PageEncoding, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.mark_pages(3, 1, PageEncoding::Trimmed, PageClass::Cache)?;
    /// let page = DiskRef { gfn: 3, disk: 0, disk_offset: 8192, length: 4096, crc32: 0, file: 0, file_offset: 0 };
    /// w.set_disk_refs(DiskRefs { files: vec!["usr/bin/app".into()], pages: vec![page] })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_disk_refs(&mut self, refs: DiskRefs) -> Result<()> {
        refs.check(self.opts.page_size).map_err(|(i, m)| {
            Error::invalid(format!("disk reference {}: {m}", i.map_or("files".into(), |i| i.to_string())))
        })?;
        for r in &refs.pages {
            self.pages.dense(r.gfn)?;
        }
        self.disk_refs = refs;
        Ok(())
    }

    /// Names the base image of a diff.
    ///
    /// # Errors
    /// A base page size that differs from this image's.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// use pbr_format::{BaseRef, Image, ImageWriter, PageClass, PageEncoding, WriterOptions};
    /// let base = Image::open(path)?;
    /// # let dir = tempfile::tempdir()?;
    /// let opts = WriterOptions { unwritten: PageEncoding::Base, ..WriterOptions::default() };
    /// let mut w = ImageWriter::create(dir.path().join("d.pbr"), base.regions(), opts)?;
    /// w.set_base(BaseRef { blake3: base.image_blake3(), result_blake3: None, page_size: base.page_size(), name: "sample.pbr".into() })?;
    /// w.write_page(5, &[0xee; 4096], PageClass::Kernel)?; // the one page that changed
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_base(&mut self, base: BaseRef<'_>) -> Result<()> {
        if base.page_size != self.opts.page_size {
            return Err(Error::invalid("the base image has another page size"));
        }
        self.base = Some(BaseRef { name: base.name.into_owned().into(), ..base });
        Ok(())
    }

    /// Writes the index and metadata, the section table and the trailer,
    /// syncs the file and renames it to its final path.
    ///
    /// # Errors
    /// I/O errors, a dup page whose source holds no stored content, or base
    /// pages without a base.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.write_page(0, &[1; 4096], PageClass::Kernel)?;
    /// let report = w.finish()?; // synced and renamed into place
    /// pbr_format::Image::open(&report.path)?.verify()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish(mut self) -> Result<WriteReport> {
        self.flush_lz4()?;
        let ps = u64::from(self.opts.page_size);
        self.sink.pad_to(ps)?;
        let data_end = self.sink.pos();
        let mut sections: Vec<(SectionKind, u64, u64)> =
            vec![(SectionKind::PageData, self.data_start, data_end - self.data_start)];

        let (extents, stored, encodings) = self.count_extents()?;
        if encodings & (1 << PageEncoding::Base as u8) != 0 && self.base.is_none() {
            return Err(Error::invalid("the image has base pages but no base image was set"));
        }
        let index = self.section(SectionKind::PageIndex, &mut sections, |w| {
            w.sink.write(prefix(extents, 32).as_bytes())?;
            let blocks = std::mem::take(&mut w.lz4_blocks);
            let block_of = |b: u32| blocks.get(b as usize).copied().unwrap_or(0);
            let sink = &mut w.sink;
            let r = w.pages.for_each_extent(w.opts.unwritten, &block_of, &mut |rec| sink.write(rec.as_bytes()));
            w.lz4_blocks = blocks;
            r
        });
        index?;
        self.section(SectionKind::PageCrcs, &mut sections, |w| {
            w.sink.write(prefix(stored, 4).as_bytes())?;
            w.for_each_stored(&mut |w, d| {
                let crc = w.pages.crc(d);
                w.sink.write(&crc.to_le_bytes())
            })
        })?;
        if self.hash_spill.is_some() {
            self.section(SectionKind::PageHashes, &mut sections, |w| {
                w.sink.write(prefix(stored, 32).as_bytes())?;
                w.for_each_stored(&mut |w, d| {
                    let mut h = [0u8; 32];
                    if let Some(f) = &w.hash_spill {
                        f.read_exact_at(&mut h, d * 32)
                            .map_err(|e| Error::io("cannot read the page-hash spill file", e))?;
                    }
                    w.sink.write(&h)
                })
            })?;
        }
        let mut small: Vec<(SectionKind, Vec<u8>)> = vec![(SectionKind::Regions, encode::regions(&self.regions)?)];
        if let Some(p) = &self.phase {
            small.push((SectionKind::Phase, encode::phase(p)?));
        }
        if !self.vcpus.is_empty() {
            small.push((SectionKind::Vcpus, encode::vcpus(&self.vcpus)));
        }
        if !self.devices.is_empty() {
            small.push((SectionKind::Devices, encode::devices(&self.devices)?));
        }
        if !self.metadata.is_empty() {
            small.push((SectionKind::Metadata, encode::metadata(&self.metadata)?));
        }
        if !self.manifest.is_empty() {
            small.push((SectionKind::Manifest, encode::manifest(&self.manifest)?));
        }
        if !self.cache_refs.is_empty() {
            small.push((SectionKind::CacheRefs, encode::cache_refs(&self.cache_refs)));
        }
        if let Some(b) = &self.base {
            small.push((SectionKind::Base, encode::base(b)?));
        }
        if !self.disk_refs.is_empty() {
            small.push((SectionKind::DiskRefs, encode::disk_refs(&self.disk_refs)?));
        }
        for (kind, bytes) in small {
            self.section(kind, &mut sections, |w| w.sink.write(&bytes))?;
        }
        self.publish(sections, encodings, extents, stored)
    }

    /// Writes one section at an 8-aligned offset and records where it is.
    fn section(
        &mut self,
        kind: SectionKind,
        sections: &mut Vec<(SectionKind, u64, u64)>,
        body: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        self.sink.pad_to(8)?;
        let start = self.sink.pos();
        body(self)?;
        sections.push((kind, start, self.sink.pos() - start));
        Ok(())
    }

    fn count_extents(&self) -> Result<(u64, u64, u8)> {
        let (mut extents, mut stored, mut encodings) = (0u64, 0u64, 0u8);
        let pages = &self.pages;
        pages.for_each_extent(self.opts.unwritten, &|_| 0, &mut |rec| {
            extents += 1;
            encodings |= 1 << rec.encoding;
            if PageEncoding::from_u8(rec.encoding).is_some_and(PageEncoding::is_stored) {
                stored += u64::from(rec.count.get());
            }
            if rec.encoding == PageEncoding::Dup as u8 {
                let source = pages.dense(rec.data.get())?;
                if !pages.encoding(source).is_some_and(PageEncoding::is_stored) {
                    return Err(Error::invalid(format!(
                        "page {:#x} duplicates page {:#x}, which holds no stored content",
                        rec.gfn.get(),
                        rec.data.get()
                    )));
                }
            }
            Ok(())
        })?;
        Ok((extents, stored, encodings))
    }

    /// Calls `f` with the dense index of every stored page, in index order.
    fn for_each_stored(&mut self, f: &mut dyn FnMut(&mut Self, u64) -> Result<()>) -> Result<()> {
        let stored: Vec<u64> = self.pages.stored().collect();
        for d in stored {
            f(self, d)?;
        }
        Ok(())
    }

    /// Writes the section table and trailer, fixes the header, checksums,
    /// syncs and renames.
    fn publish(
        self,
        sections: Vec<(SectionKind, u64, u64)>,
        encodings: u8,
        extents: u64,
        stored: u64,
    ) -> Result<WriteReport> {
        let minor = if self.disk_refs.is_empty() { pod::VERSION_MINOR } else { pod::VERSION_MINOR_DISK_REFS };
        let ImageWriter { tmp, dest, mut sink, opts, .. } = self;
        sink.pad_to(8)?;
        let table_offset = sink.pos();
        // Placeholder table: the crcs are computed from the file below.
        sink.write(&vec![0u8; sections.len() * pod::SECTION_ENTRY_SIZE])?;
        let file = sink.into_file()?;
        let mut required = 0;
        if encodings & (1 << PageEncoding::Lz4 as u8) != 0 {
            required |= pod::FEATURE_LZ4;
        }
        if encodings & (1 << PageEncoding::Base as u8) != 0 {
            required |= pod::FEATURE_DIFF;
        }
        if encodings & (1 << PageEncoding::Dup as u8) != 0 {
            required |= pod::FEATURE_DUP;
        }
        let optional = if opts.page_hashes { pod::FEATURE_PAGE_HASHES } else { 0 };
        file.write_all_at(header(&opts, required, optional, minor).as_bytes(), 0)
            .map_err(|e| Error::io("cannot write the header", e))?;
        #[allow(unsafe_code)]
        // SAFETY: the temporary file is private to this writer (created
        // with a random name, not yet published) and is not resized while
        // the read-only map lives.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot map the image to checksum it", e))?;
        let table: Vec<SectionEntry> = sections
            .iter()
            .map(|&(kind, offset, length)| SectionEntry {
                kind: U32::new(kind.raw()),
                flags: U32::new(0),
                offset: U64::new(offset),
                length: U64::new(length),
                crc32: U32::new(parallel_crc(&map[offset as usize..(offset + length) as usize])),
                reserved: U32::new(0),
            })
            .collect();
        file.write_all_at(table.as_bytes(), table_offset)
            .map_err(|e| Error::io("cannot write the section table", e))?;
        let mut trailer = Trailer {
            magic: TRAILER_MAGIC,
            section_table_offset: U64::new(table_offset),
            section_count: U32::new(table.len() as u32),
            section_table_crc32: U32::new(crc32fast::hash(table.as_bytes())),
            trailer_crc32: U32::new(0),
            reserved: U32::new(0),
            image_blake3: [0; 32],
        };
        trailer.trailer_crc32 = U32::new(crc32fast::hash(&trailer.as_bytes()[..24]));
        let mut hasher = blake3::Hasher::new();
        hasher.update_rayon(&map);
        hasher.update(&trailer.as_bytes()[..32]);
        trailer.image_blake3 = *hasher.finalize().as_bytes();
        drop(map);
        let file_len = table_offset + (table.len() * pod::SECTION_ENTRY_SIZE + pod::TRAILER_SIZE) as u64;
        file.write_all_at(trailer.as_bytes(), file_len - pod::TRAILER_SIZE as u64)
            .map_err(|e| Error::io("cannot write the trailer", e))?;
        if opts.sync {
            file.sync_all().map_err(|e| Error::io("cannot sync the image", e))?;
        }
        tmp.persist(&dest).map_err(|e| Error::io(format!("cannot rename the image to {}", dest.display()), e.error))?;
        if let Some(dir) = dest.parent().filter(|p| opts.sync && !p.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            // Best effort: makes the rename durable on file systems that need it.
            let _ = d.sync_all();
        }
        Ok(WriteReport { path: dest, file_len, image_blake3: trailer.image_blake3, extents, stored_pages: stored })
    }
}

fn prefix(count: u64, record_size: u32) -> pod::TablePrefix {
    pod::TablePrefix { count: U32::new(count as u32), record_size: U32::new(record_size) }
}

fn header(opts: &WriterOptions, required: u64, optional: u64, minor: u16) -> Header {
    let mut h = Header {
        magic: pod::MAGIC,
        version_major: U16::new(pod::VERSION_MAJOR),
        version_minor: U16::new(minor),
        header_size: U32::new(HEADER_SIZE as u32),
        page_size: U32::new(opts.page_size),
        reserved0: U32::new(0),
        required_features: U64::new(required),
        optional_features: U64::new(optional),
        producer_name: padded(&opts.producer_name),
        producer_version: padded(&opts.producer_version),
        reserved1: [0; 20],
        header_crc32: U32::new(0),
    };
    h.header_crc32 = U32::new(crc32fast::hash(&h.as_bytes()[..124]));
    h
}

fn padded(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut n = s.len().min(32);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// crc32 of `b`, computed on several threads and combined.
fn parallel_crc(b: &[u8]) -> u32 {
    const CHUNK: usize = 8 << 20;
    if b.len() <= CHUNK {
        return crc32fast::hash(b);
    }
    b.par_chunks(CHUNK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            a.combine(&b);
            a
        })
        .map_or(0, crc32fast::Hasher::finalize)
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

fn check_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME as usize {
        return Err(Error::invalid(format!("{what} '{name}' is not 1..={MAX_NAME} bytes")));
    }
    Ok(())
}

fn check_options(opts: &WriterOptions) -> Result<()> {
    if !PAGE_SIZES.contains(&opts.page_size) {
        return Err(Error::invalid(format!("page size {} is neither 4096 nor 2097152", opts.page_size)));
    }
    if !matches!(opts.unwritten, PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base) {
        return Err(Error::invalid(format!("unwritten pages cannot be {}", opts.unwritten)));
    }
    Ok(())
}

fn check_regions(regions: &[Region<'_>], page_size: u32) -> Result<()> {
    if regions.len() > MAX_REGIONS as usize {
        return Err(Error::invalid(format!("{} regions exceed {MAX_REGIONS}", regions.len())));
    }
    let ps = u64::from(page_size);
    let mut prev_end = 0u64;
    for (i, r) in regions.iter().enumerate() {
        check_name(&r.name, "region name")?;
        if r.base % ps != 0 || r.length % ps != 0 || r.length == 0 {
            return Err(Error::invalid(format!(
                "region '{}' base {:#x} length {:#x} is not a non-empty multiple of the page size",
                r.name, r.base, r.length
            )));
        }
        let end = r
            .base
            .checked_add(r.length)
            .ok_or_else(|| Error::invalid(format!("region '{}' ends beyond 2^64", r.name)))?;
        if i > 0 && r.base < prev_end {
            return Err(Error::invalid(format!("region '{}' overlaps or precedes the region before it", r.name)));
        }
        prev_end = end;
    }
    Ok(())
}

/// The path an atomically written output is renamed to: `path`, or the
/// file a symbolic link at `path` points to (the link is kept). Only a
/// regular file is ever replaced: anything else already at `path` (a
/// device, a named pipe, a directory, a socket) is refused.
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] naming what is at `path`.
///
/// # Example
/// ```
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("guest.pbr");
/// assert_eq!(pbr_format::write::destination(&out)?, out);
/// assert!(pbr_format::write::destination("/dev/null".as_ref()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn destination(path: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        // Nothing there: the rename creates the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(path).is_err() => {
            return Ok(path.to_path_buf());
        }
        // A link to nothing would be replaced by a file: refused, as is
        // a path that cannot be looked at.
        Err(e) => return Err(Error::io(format!("the output {} cannot be replaced", path.display()), e)),
    };
    if meta.is_file() {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !link {
            return Ok(path.to_path_buf());
        }
        return std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("cannot resolve the link {}", path.display()), e));
    }
    let what = crate::file_kind::describe(meta.file_type());
    Err(Error::invalid(format!(
        "the output {} is {what}: this output is written to a regular file (a temporary file renamed over it), never over {what}",
        path.display()
    )))
}
