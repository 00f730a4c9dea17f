//! `export --to qemu`: an image converted from a QEMU stream, back into a
//! stream that QEMU restores with `-incoming`.
//!
//! The stream is rebuilt in the order it was captured: the configuration,
//! each RAM section with the same records (ZERO or PAGE, CONTINUE as QEMU
//! sets it) but the image's current page content, commands, the device
//! sections verbatim, EOF and the vmdescription. An unchanged image gives
//! back the original bytes. Pages the recorded RAM sections do not cover
//! (a mapped-ram source, or pages a diff added) go into the last RAM section.
//! Page-cache pages that were trimmed are read back from the guest's disks
//! first (`crate::refill`) and sent with their captured content.

use std::io::{BufWriter, Write};
use std::path::Path;

use pbr_format::{DeviceOrigin, Image, is_zero};

use super::config::Config;
use super::format::{MAGIC, VERSION, blob, section};
use super::plan::{BlockInfo, RamSection, RunKind};
use super::ram::{Layout, flags};
use crate::error::{Error, Result};
use crate::refill::Refill;
use crate::stream::StreamReader;

/// What [`export_qemu`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QemuExport {
    /// Bytes written.
    pub stream_bytes: u64,
    /// ZERO records written.
    pub zero_records: u64,
    /// PAGE records written.
    pub page_records: u64,
    /// Whether a mapped-ram source was rewritten as a plain stream.
    pub dropped_mapped_ram: bool,
    /// Zero and trimmed pages left out (see [`ExportOptions::omit_zero_pages`]).
    pub omitted_pages: u64,
    /// Page-cache pages read back from the guest's disks (`crate::refill`).
    pub refilled_pages: u64,
    /// Time spent reading them back and checking them, before the first
    /// byte of the stream.
    pub refill_time: std::time::Duration,
}

/// How [`export_qemu_to`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Leave zero and trimmed pages out of the stream. A destination QEMU
    /// starts with zeroed RAM, so the guest state is the same and the load
    /// does not touch those pages; the stream is then no longer byte for
    /// byte the one captured.
    pub omit_zero_pages: bool,
    /// Leave every page of the `pc.ram` block out: the destination QEMU
    /// maps that RAM from a flat image (`memory-backend-file`), so the
    /// stream carries only the block list, the other blocks' pages and the
    /// device state.
    pub mapped_ram: bool,
}

/// The RAM block a flat image's mapping stands for.
pub const MAIN_RAM: &str = "pc.ram";

struct Emitter<'a, W: Write> {
    out: W,
    img: &'a Image,
    refill: Option<&'a Refill>,
    layout: Layout,
    blocks: Vec<BlockInfo>,
    last_block: Option<u16>,
    buf: Vec<u8>,
    report: QemuExport,
    omit_zero: bool,
    mapped_ram: bool,
}

impl<W: Write> Emitter<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.report.stream_bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| Error::io("cannot write the stream", e))
    }

    /// One page record for page `page` of block `block`.
    fn page(&mut self, block: u16, page: u64, kind: RunKind) -> Result<()> {
        let ps = u64::from(self.img.page_size());
        let addr = self
            .layout
            .address(usize::from(block), page * ps)
            .ok_or_else(|| Error::Inconsistent(format!("page {page} of block {block} has no place in the image")))?;
        // A refilled page differs from the image's (trimmed) bytes: it is
        // sent even where the rest of the RAM is mapped from the image.
        if let Some(content) = self.refill.and_then(|r| r.page(addr / ps)) {
            self.report.refilled_pages += 1;
            return self.record(block, page, RunKind::Page, content);
        }
        if self.mapped_ram && self.blocks[usize::from(block)].name == MAIN_RAM {
            self.report.omitted_pages += 1;
            return Ok(());
        }
        let e = self.img.extent_of(addr / ps)?;
        if self.omit_zero && matches!(e.encoding, pbr_format::PageEncoding::Zero | pbr_format::PageEncoding::Trimmed) {
            self.report.omitted_pages += 1;
            return Ok(());
        }
        // Raw pages are borrowed from the mapped image, others decoded into
        // the reused buffer: no copy of a page before the stream's buffer.
        let img = self.img;
        let mut buf = std::mem::take(&mut self.buf);
        let written = match img.read_in_extent(&e, addr / ps, &mut buf) {
            Ok(content) => self.record(block, page, kind, content),
            Err(e) => Err(e.into()),
        };
        self.buf = buf;
        written
    }

    /// The record of page `page` of block `block` holding `content`.
    fn record(&mut self, block: u16, page: u64, kind: RunKind, content: &[u8]) -> Result<()> {
        let ps = u64::from(self.img.page_size());
        let zero = kind == RunKind::Zero && is_zero(content);
        let mut header = (page * ps) | if zero { flags::ZERO } else { flags::PAGE };
        let continues = self.last_block == Some(block);
        if continues {
            header |= flags::CONTINUE;
        }
        self.put(&header.to_be_bytes())?;
        if !continues {
            let name = self.blocks[usize::from(block)].name.clone();
            self.put(&[name.len() as u8])?;
            self.put(name.as_bytes())?;
        }
        self.last_block = Some(block);
        if zero {
            self.report.zero_records += 1;
            self.put(&[0])
        } else {
            self.report.page_records += 1;
            self.put(content)
        }
    }

    fn ram_section(&mut self, s: &RamSection, footer: bool, extra: &[(u16, u64)]) -> Result<()> {
        self.put(&[s.section_type])?;
        self.put(&s.section_id.to_be_bytes())?;
        if let Some((version, blocks)) = &s.start {
            self.put(&[3])?;
            self.put(b"ram")?;
            self.put(&0u32.to_be_bytes())?;
            self.put(&version.to_be_bytes())?;
            let total: u64 = blocks.iter().map(|b| b.used_length).sum();
            self.put(&(total | flags::MEM_SIZE).to_be_bytes())?;
            for b in blocks {
                self.put(&[b.name.len() as u8])?;
                self.put(b.name.as_bytes())?;
                self.put(&b.used_length.to_be_bytes())?;
            }
        }
        for r in &s.runs {
            for p in r.first..r.first + u64::from(r.count) {
                self.page(r.block, p, r.kind)?;
            }
        }
        for &(block, page) in extra {
            self.page(block, page, RunKind::Page)?;
        }
        self.put(&flags::EOS.to_be_bytes())?;
        if footer {
            self.put(&[section::FOOTER])?;
            self.put(&s.section_id.to_be_bytes())?;
        }
        Ok(())
    }
}

/// Writes `image` as a QEMU migration stream to `dest`, atomically.
///
/// # Errors
/// As [`export_qemu_to`].
pub fn export_qemu(image: &Image, dest: &Path) -> Result<QemuExport> {
    crate::output::write_stream(image, dest, |f| export_qemu_to(image, f, ExportOptions::default()))
}

/// Writes `image` as a QEMU migration stream into `out` (a file, or a pipe
/// QEMU reads while it is written).
///
/// # Errors
/// An image that was not converted from a QEMU stream, a diff image (apply
/// it first), a region layout that no longer matches the stream's blocks,
/// a corrupt page, page-cache pages that cannot be refilled from the
/// guest's disks ([`Error::Refill`]), I/O.
pub fn export_qemu_to<W: Write>(image: &Image, out: W, opts: ExportOptions) -> Result<QemuExport> {
    let t = std::time::Instant::now();
    let refill = Refill::load(image)?;
    let refill_time = t.elapsed();
    let mut report = export_qemu_refilled(image, out, opts, refill.as_ref())?;
    report.refill_time = refill_time;
    Ok(report)
}

/// [`export_qemu_to`] with the image's page-cache pages already read back
/// ([`Refill::load`], `None` when it has none): a restore reads them while
/// QEMU starts.
///
/// # Errors
/// As [`export_qemu_to`]; an image that needs a refill and got none.
pub fn export_qemu_refilled<W: Write>(
    image: &Image,
    out: W,
    opts: ExportOptions,
    refill: Option<&Refill>,
) -> Result<QemuExport> {
    if refill.is_none() {
        crate::refill::refuse_refill(image, "this export")?;
    }
    if image.base().is_some() {
        return Err(Error::Usage("this is a diff image: apply it to its base before exporting".into()));
    }
    let blobs: Vec<_> = image
        .devices()
        .filter(|b| b.origin == DeviceOrigin::QEMU_STREAM || b.origin == DeviceOrigin::QEMU_SECTION)
        .collect();
    if blobs.is_empty() {
        return Err(Error::Usage(
            "the image holds no QEMU device state: it was not converted from a QEMU stream".into(),
        ));
    }
    // Machine types up to 2.3 send no configuration section.
    let config = match blobs.iter().find(|b| b.origin == DeviceOrigin::QEMU_STREAM && b.name == blob::CONFIGURATION) {
        Some(b) => Some(Config::read(&mut StreamReader::new("qemu", &b.data[..], 0))?),
        None => None,
    };
    let machine = config.as_ref().map_or("", |c| c.machine.as_str());
    let mut sections = Vec::new();
    for b in blobs.iter().filter(|b| b.origin == DeviceOrigin::QEMU_STREAM && b.name == blob::RAM) {
        let s = RamSection::decode(&b.data)
            .map_err(|m| Error::Inconsistent(format!("the image's ram section record is corrupt: {m}")))?;
        sections.push((s, b.flags & blob::RAM_FOOTER != 0));
    }
    let blocks = sections
        .iter()
        .find_map(|(s, _)| s.start.as_ref().map(|(_, b)| b.clone()))
        .ok_or_else(|| Error::Inconsistent("the image has no ram START section record".into()))?;
    let ps = u64::from(image.page_size());
    let layout = Layout::new(machine, &blocks, ps);
    if layout.regions != image.regions() {
        return Err(Error::Inconsistent(
            "the image's regions no longer match the QEMU ram blocks it was converted from".into(),
        ));
    }
    let extra = uncovered_pages(image, &layout, &blocks, &sections, refill)?;

    let report = {
        let mut e = Emitter {
            out: BufWriter::with_capacity(1 << 20, out),
            img: image,
            refill,
            layout,
            blocks,
            last_block: None,
            buf: vec![0; ps as usize],
            report: QemuExport::default(),
            omit_zero: opts.omit_zero_pages,
            mapped_ram: opts.mapped_ram,
        };
        e.report.dropped_mapped_ram = config.as_ref().is_some_and(|c| c.has("mapped-ram"));
        e.put(&MAGIC)?;
        e.put(&VERSION.to_be_bytes())?;
        let mut ram = 0;
        for b in &blobs {
            match (b.origin, b.name.as_ref()) {
                (DeviceOrigin::QEMU_STREAM, blob::CONFIGURATION) => {
                    e.put(&[section::CONFIGURATION])?;
                    e.put(&config.as_ref().map(|c| c.without_capability("mapped-ram")).unwrap_or_default())?;
                }
                (DeviceOrigin::QEMU_STREAM, blob::RAM) => {
                    let (s, footer) = &sections[ram];
                    ram += 1;
                    let extra: &[(u16, u64)] = if ram == sections.len() { &extra } else { &[] };
                    e.ram_section(s, *footer, extra)?;
                }
                (DeviceOrigin::QEMU_STREAM, blob::COMMAND) => {
                    e.put(&[section::COMMAND])?;
                    e.put(&(b.flags as u16).to_be_bytes())?;
                    e.put(&(b.data.len() as u16).to_be_bytes())?;
                    e.put(&b.data)?;
                }
                (DeviceOrigin::QEMU_STREAM, blob::EOF) => e.put(&[section::EOF])?,
                (DeviceOrigin::QEMU_STREAM, blob::VMDESCRIPTION) => {
                    e.put(&[section::VMDESCRIPTION])?;
                    e.put(&(b.data.len() as u32).to_be_bytes())?;
                    e.put(&b.data)?;
                }
                (DeviceOrigin::QEMU_SECTION, _) | (DeviceOrigin::QEMU_STREAM, blob::DEVICE_STATE) => e.put(&b.data)?,
                (_, other) => {
                    return Err(Error::Inconsistent(format!("unknown QEMU stream record '{other}' in the image")));
                }
            }
        }
        e.out.flush().map_err(|err| Error::io("cannot write the stream", err))?;
        e.report
    };
    Ok(report)
}

/// Pages with content that no recorded RAM section sends: `(block, page)`.
fn uncovered_pages(
    image: &Image,
    layout: &Layout,
    blocks: &[BlockInfo],
    sections: &[(RamSection, bool)],
    refill: Option<&Refill>,
) -> Result<Vec<(u16, u64)>> {
    let ps = u64::from(image.page_size());
    let mut covered: Vec<Vec<bool>> = blocks.iter().map(|b| vec![false; b.used_length.div_ceil(ps) as usize]).collect();
    for (s, _) in sections {
        for r in &s.runs {
            let c = covered.get_mut(usize::from(r.block)).ok_or_else(|| {
                Error::Inconsistent(format!("ram record names block {} of {}", r.block, blocks.len()))
            })?;
            for p in r.first..r.first + u64::from(r.count) {
                if let Some(x) = c.get_mut(p as usize) {
                    *x = true;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (bi, c) in covered.iter().enumerate() {
        for (p, done) in c.iter().enumerate() {
            if *done {
                continue;
            }
            let addr = layout
                .address(bi, p as u64 * ps)
                .ok_or_else(|| Error::Inconsistent("block page outside the layout".into()))?;
            let e = image.extent_of(addr / ps)?;
            let empty = matches!(e.encoding, pbr_format::PageEncoding::Zero | pbr_format::PageEncoding::Trimmed);
            if !empty || refill.is_some_and(|r| r.page(addr / ps).is_some()) {
                out.push((bi as u16, p as u64));
            }
        }
    }
    Ok(out)
}
