//! Laying out a finished image after its page data: the page index, the
//! page crcs and hashes, then the small sections, each at an 8-aligned
//! offset; and the features and format version that the result needs.

use std::os::unix::fs::FileExt;

use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

use crate::error::{Error, Result};
use crate::page::PageEncoding;
use crate::pod;
use crate::section::SectionKind;

use super::{ImageWriter, encode};

/// Where each section was written (kind, offset, length), and what the
/// header must announce for them.
pub(super) struct Layout {
    /// The sections in file order.
    pub sections: Vec<(SectionKind, u64, u64)>,
    /// Required feature bits.
    pub required: u64,
    /// Optional feature bits.
    pub optional: u64,
    /// The format's minor version.
    pub minor: u16,
    /// Extents in the page index.
    pub extents: u64,
    /// Stored (raw and lz4) pages.
    pub stored: u64,
}

impl ImageWriter {
    /// Writes everything after the page data except the section table, and
    /// says where it went.
    pub(super) fn write_sections(&mut self) -> Result<Layout> {
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
        // Blob bytes go straight to the file: they may be a gigabyte.
        let processes = self.processes.take();
        if let Some(p) = &processes {
            self.section(SectionKind::Processes, &mut sections, |w| p.write_into(&mut |b| w.sink.write(b)))?;
        }
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
        Ok(Layout {
            sections,
            required,
            optional: if self.opts.page_hashes { pod::FEATURE_PAGE_HASHES } else { 0 },
            minor: if processes.is_some() {
                pod::VERSION_MINOR_PROCESSES
            } else if !self.disk_refs.is_empty() {
                pod::VERSION_MINOR_DISK_REFS
            } else {
                pod::VERSION_MINOR
            },
            extents,
            stored,
        })
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
}

fn prefix(count: u64, record_size: u32) -> pod::TablePrefix {
    pod::TablePrefix { count: U32::new(count as u32), record_size: U32::new(record_size) }
}
