//! Reading `.pbr` images: [`Image::open`] checks the structure in time
//! proportional to the index; [`Image::verify`] checks every byte.

mod content;
mod content_hasher;
mod header;
mod page_index;
mod pages;
mod records;
mod report;
mod sections;
mod table;
mod vcpus;
mod verify;

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use memmap2::Mmap;

use crate::base::BaseRef;
use crate::device::DeviceBlob;
use crate::error::{Error, Result};
use crate::manifest::{CacheRef, FileEntry};
use crate::page::PageEncoding;
use crate::phase::Phase;
use crate::pod::{self, HEADER_SIZE, TRAILER_SIZE};
use crate::refill::DiskRefs;
use crate::region::Region;
use crate::section::SectionKind;
use crate::vcpu::Vcpu;

pub use crate::page::zero_page_crc;
pub use content_hasher::ContentHasher;
pub use header::HeaderInfo;
pub use page_index::{Extent, RawRun};
pub use report::{CheckReport, VerifyReport};
pub use sections::SectionInfo;

use header::parse_header;
use page_index::PageIndex;
use records::Records;

/// The bytes an image is read from.
enum Backing {
    Map(Mmap),
    Bytes(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Bytes(b) => b,
        }
    }
}

/// An open, structurally checked `.pbr` image.
///
/// Opening maps the file and checks the header, trailer, section table,
/// every metadata section's crc32 and the page index; it does not read page
/// data. Raw pages are handed out as slices of the map, with no copy.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// println!("{} pages in {} regions", image.page_count(), image.regions().len());
/// image.verify()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Image {
    backing: Backing,
    header: HeaderInfo,
    sections: Vec<SectionInfo>,
    page_data: Range<usize>,
    index: PageIndex,
    records: Records,
    image_blake3: [u8; 32],
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("header", &self.header)
            .field("file_len", &self.file_len())
            .field("extents", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Maps the file at `path` and checks its structure.
    ///
    /// The file is mapped read-only and private; it is never written.
    ///
    /// # Errors
    /// Any I/O error, and any structural problem, named with its section and
    /// offset. A file with no valid trailer is reported as
    /// [`ErrorKind::Incomplete`](crate::error::ErrorKind::Incomplete). Only a
    /// regular file or a block device is read (a character device or a pipe
    /// may never end): anything else is refused as
    /// [`ErrorKind::InvalidInput`](crate::error::ErrorKind::InvalidInput).
    ///
    /// # Example
    /// ```no_run
    /// let image = pbr_format::Image::open("guest.pbr")?;
    /// println!("{} pages", image.page_count());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        // Only a file of a known length is read: a character device or a
        // pipe could be endless (and opening a pipe waits for a writer).
        let kind =
            std::fs::metadata(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(Error::invalid(format!(
                "{} is {}, not an image file",
                path.display(),
                crate::file_kind::describe(kind)
            )));
        }
        let mut file = File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let len = file.seek(SeekFrom::End(0)).map_err(|e| Error::io(format!("cannot size {}", path.display()), e))?;
        if len < (HEADER_SIZE + TRAILER_SIZE) as u64 {
            // Too short to map meaningfully; read what is there for the error.
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| (&mut file).take(len).read_to_end(&mut bytes))
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            return Image::from_bytes(bytes);
        }
        let len =
            usize::try_from(len).map_err(|_| Error::invalid(format!("{} is too large to map", path.display())))?;
        #[allow(unsafe_code)]
        // SAFETY: the map is read-only and private. The file could still be
        // changed by another process while mapped; every access through the
        // map is bounds-checked against the length taken at map time, and
        // content changes can only make checks fail, never read out of
        // bounds. A truncation by another process would raise SIGBUS, which
        // is the documented hazard of `memmap2::Mmap::map`.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }
            .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
        Image::from_backing(Backing::Map(map))
    }

    /// Checks the structure of an image held in memory.
    ///
    /// # Errors
    /// As [`Image::open`].
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::from_bytes(std::fs::read(path)?)?;
    /// image.verify()?;
    /// assert!(pbr_format::Image::from_bytes(b"not an image".to_vec()).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Image> {
        Image::from_backing(Backing::Bytes(bytes))
    }

    fn from_backing(backing: Backing) -> Result<Image> {
        let bytes = backing.bytes();
        let header = parse_header(bytes)?;
        let (table, image_blake3) = sections::parse_trailer(bytes)?;
        let sections = sections::parse_table(bytes, &table, header.page_size)?;
        let find = |k: SectionKind| sections.iter().find(|s| s.kind == Some(k)).map(|s| s.range());
        let required = |k: SectionKind| {
            find(k).ok_or_else(|| {
                Error::malformed("section table", table.offset, format!("required section {} is missing", k.name()))
            })
        };
        let page_data = required(SectionKind::PageData)?;
        let records = Records::parse(bytes, &header, &find)?;
        let index = PageIndex::parse(
            bytes,
            &header,
            &records.regions,
            required(SectionKind::PageIndex)?,
            required(SectionKind::PageCrcs)?,
            find(SectionKind::PageHashes),
            page_data.clone(),
        )?;
        check_features(&header, &index, &records, table.offset)?;
        Ok(Image { header, sections, page_data, index, records, image_blake3, backing })
    }

    /// The whole file.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(&image.as_bytes()[..8], &pbr_format::pod::MAGIC);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// File length in bytes.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.file_len(), std::fs::metadata(path)?.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.as_bytes().len() as u64
    }

    /// Header fields.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.header().page_size, image.page_size());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn header(&self) -> &HeaderInfo {
        &self.header
    }

    /// Page size in bytes.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.page_size(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_size(&self) -> u32 {
        self.header.page_size
    }

    /// The trailer hash: the identity a diff uses to name its base.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let whole = image.as_bytes();
    /// let mut h = blake3::Hasher::new();
    /// h.update(&whole[..whole.len() - 32]);
    /// assert_eq!(image.image_blake3(), *h.finalize().as_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn image_blake3(&self) -> [u8; 32] {
        self.image_blake3
    }

    /// Every entry of the section table, in table order.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for s in image.sections() {
    ///     println!("{:<12} {:>8} bytes at {:#x}", s.name(), s.length, s.offset);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// File range of `PAGE_DATA`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let r = image.page_data_range();
    /// assert_eq!(r.start % u64::from(image.page_size()), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_data_range(&self) -> Range<u64> {
        self.page_data.start as u64..self.page_data.end as u64
    }

    /// Guest memory regions, sorted by base.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for r in image.regions() {
    ///     println!("{} at {:#x}, {} bytes{}", r.name, r.base, r.length, if r.synthetic { " (synthetic)" } else { "" });
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn regions(&self) -> &[Region<'static>] {
        &self.records.regions
    }

    /// Total pages over all regions.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.page_count(), image.regions().iter().map(|r| r.pages(4096)).sum::<u64>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn page_count(&self) -> u64 {
        let ps = self.page_size();
        self.regions().iter().map(|r| r.pages(ps)).sum()
    }

    /// Total bytes of guest memory over all regions.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.guest_size(), image.page_count() * 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn guest_size(&self) -> u64 {
        self.regions().iter().map(|r| r.length).sum()
    }

    /// The phase tag, if the image has one.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let p = image.phase().unwrap();
    /// assert_eq!((p.name.as_ref(), p.sequence), ("daemons", 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn phase(&self) -> Option<&Phase<'static>> {
        self.records.phase.as_ref()
    }

    /// vCPU records, sorted by id.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for v in image.vcpus() {
    ///     if let pbr_format::Vcpu::X86_64(x) = v {
    ///         println!("vCPU {} at rip {:#x}", x.id, x.regs.rip.get());
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn vcpus(&self) -> &[Vcpu] {
        &self.records.vcpus
    }

    /// Device-state blobs in capture order, borrowed from the map.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for d in image.devices() {
    ///     println!("{} {} ({} bytes)", d.origin, d.name, d.data.len());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn devices(&self) -> impl ExactSizeIterator<Item = DeviceBlob<'_>> {
        self.records.devices(self.as_bytes())
    }

    /// Metadata pairs in file order.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// for (k, v) in image.metadata() {
    ///     println!("{k} = {v}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metadata(&self) -> &[(String, String)] {
        &self.records.metadata
    }

    /// The value of metadata `key`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.metadata_value(pbr_format::keys::SOURCE_FORMAT), Some("vmm"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.records.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Files read up to this phase.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let f = &image.manifest()[0];
    /// assert_eq!(f.path, "etc/hostname");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn manifest(&self) -> &[FileEntry<'static>] {
        &self.records.manifest
    }

    /// Page-cache back references, sorted by guest frame number.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let c = image.cache_refs()[0];
    /// assert_eq!(image.manifest()[c.file_index as usize].path, "etc/hostname");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cache_refs(&self) -> &[CacheRef] {
        &self.records.cache_refs
    }

    /// Disk references (`spec/format.md` §7.8): pages whose content sits on
    /// a guest disk; the `TRIMMED` ones are refilled from it at restore.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert!(image.disk_refs().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn disk_refs(&self) -> &DiskRefs {
        &self.records.disk_refs
    }

    /// The base image of a diff image.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/diff.pbr");
    /// let diff = pbr_format::Image::open(path)?;
    /// let base = diff.base().unwrap();
    /// assert_eq!(base.name, "sample.pbr");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn base(&self) -> Option<&BaseRef<'static>> {
        self.records.base.as_ref()
    }

    /// Whether `PAGE_HASHES` is present.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert!(image.has_page_hashes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has_page_hashes(&self) -> bool {
        self.index.has_hashes()
    }
}

fn check_features(header: &HeaderInfo, index: &PageIndex, records: &Records, table_offset: u64) -> Result<()> {
    let mut want = 0;
    if index.has_encoding(PageEncoding::Lz4) {
        want |= pod::FEATURE_LZ4;
    }
    if index.has_encoding(PageEncoding::Base) {
        want |= pod::FEATURE_DIFF;
    }
    if index.has_encoding(PageEncoding::Dup) {
        want |= pod::FEATURE_DUP;
    }
    if want != header.required_features {
        return Err(Error::malformed(
            "header",
            24,
            format!(
                "required_features {:#x} do not describe the page index, which needs {want:#x}",
                header.required_features
            ),
        ));
    }
    let hashes = header.optional_features & pod::FEATURE_PAGE_HASHES != 0;
    if hashes != index.has_hashes() {
        return Err(Error::malformed("header", 32, "optional feature PAGE_HASHES disagrees with the sections present"));
    }
    if (want & pod::FEATURE_DIFF != 0) != records.base.is_some() {
        return Err(Error::malformed(
            "section table",
            table_offset,
            "a BASE section must be present exactly when the index has base extents",
        ));
    }
    Ok(())
}
