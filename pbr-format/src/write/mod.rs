//! Writing `.pbr` images: a streaming writer that takes pages in any order,
//! keeps 9 bytes of state a page, and creates its output atomically.
//!
//! [`ImageWriter`] is the face; its parts live beside it: `pages` (page
//! content and encodings), `lz4_block` (the lz4 block being filled),
//! `records` (the records beside the pages), `sections` (laying out the
//! finished image), `publish` (the temporary file, checksums, fsync and
//! rename; [`destination`]), `options` (the options and the header they
//! make), `check` (regions and names), `encode` (small sections as bytes),
//! `processes` (the `PROCESSES` section, [`ProcessesBuilder`]),
//! `page_table` (the state of every page) and `sink` (the output file).

mod check;
mod encode;
mod lz4_block;
mod options;
mod page_table;
mod pages;
mod processes;
mod publish;
mod records;
mod sections;
mod sink;

use std::fs::File;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;
use zerocopy::IntoBytes;

use crate::base::BaseRef;
use crate::device::DeviceBlob;
use crate::error::{Error, Result};
use crate::manifest::{CacheRef, FileEntry};
use crate::phase::Phase;
use crate::pod;
use crate::refill::DiskRefs;
use crate::region::Region;
use crate::vcpu::Vcpu;

use check::check_regions;
use lz4_block::Lz4Block;
use page_table::PageTable;
use sink::Sink;

pub use crate::page::is_zero;
pub use options::WriterOptions;
pub use processes::ProcessesBuilder;
pub use publish::destination;

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
    pending: Option<Lz4Block>,
    hash_spill: Option<File>,
    phase: Option<Phase<'static>>,
    vcpus: Vec<Vcpu>,
    devices: Vec<DeviceBlob<'static>>,
    metadata: Vec<(String, String)>,
    manifest: Vec<FileEntry<'static>>,
    cache_refs: Vec<CacheRef>,
    disk_refs: DiskRefs,
    base: Option<BaseRef<'static>>,
    processes: Option<ProcessesBuilder>,
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
        opts.check()?;
        check_regions(regions, opts.page_size)?;
        let tmp = publish::temp_beside(&dest)?;
        let file = tmp.reopen().map_err(|e| Error::io("cannot reopen the temporary file", e))?;
        let mut sink = Sink::new(file);
        sink.write(opts.header(0, 0, pod::VERSION_MINOR).as_bytes())?;
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
            processes: None,
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
        let layout = self.write_sections()?;
        let ImageWriter { tmp, dest, sink, opts, .. } = self;
        let header = opts.header(layout.required, layout.optional, layout.minor);
        let (file_len, image_blake3) = publish::publish(tmp, &dest, sink, &header, &layout.sections, opts.sync)?;
        Ok(WriteReport { path: dest, file_len, image_blake3, extents: layout.extents, stored_pages: layout.stored })
    }
}
