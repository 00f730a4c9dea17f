//! QEMU migration streams (`QEVM` version 3, as QEMU 7.2 to 10.x write
//! them): import into `.pbr` and export back.
//!
//! Import reads forward only, so it works on pipes: RAM pages go straight to
//! the image writer; only the device sections after the RAM (a few hundred
//! KiB) and the trailing vmdescription are held in memory, so the JSON can
//! split the sections exactly.

pub mod compat;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod export;
pub mod plan;
pub mod ram;
pub mod reader;
pub mod vmdesc;

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use pbr_format::{DeviceBlob, DeviceOrigin, ImageWriter, PageClass, PageEncoding, Phase, Vcpu, WriteReport};

use crate::error::{Error, Result};
use config::Config;
use plan::{BlockInfo, RamSection};
use ram::{Layout, MappedBlock, PageSink, RamParser};
use reader::StreamReader;
use vmdesc::VmDesc;

/// First four bytes of a QEMU migration stream.
pub const MAGIC: [u8; 4] = *b"QEVM";
/// The only stream version QEMU still reads.
pub const VERSION: u32 = 3;
/// Device state after the RAM is held in memory up to this size.
const MAX_TAIL: u64 = 256 << 20;
/// x86 target page size.
const PAGE_SIZE: u64 = 4096;

/// Section type bytes (`migration/savevm.h`).
pub mod section {
    /// End of device state.
    pub const EOF: u8 = 0x00;
    /// First part of an iterative section.
    pub const START: u8 = 0x01;
    /// Middle part of an iterative section.
    pub const PART: u8 = 0x02;
    /// Last part of an iterative section.
    pub const END: u8 = 0x03;
    /// A whole device section.
    pub const FULL: u8 = 0x04;
    /// The JSON description after EOF.
    pub const VMDESCRIPTION: u8 = 0x06;
    /// The configuration section.
    pub const CONFIGURATION: u8 = 0x07;
    /// A command.
    pub const COMMAND: u8 = 0x08;
    /// The footer after each section.
    pub const FOOTER: u8 = 0x7e;
}

/// Names of the stream-level blobs kept in the image.
pub mod blob {
    /// The configuration section body.
    pub const CONFIGURATION: &str = "configuration";
    /// The shape of one RAM section ([`super::plan::RamSection`]).
    pub const RAM: &str = "ram";
    /// A command's payload; flags hold the command number.
    pub const COMMAND: &str = "command";
    /// The end of device state.
    pub const EOF: &str = "eof";
    /// Device sections that could not be split (no vmdescription, no
    /// footers), kept whole.
    pub const DEVICE_STATE: &str = "device-state";
    /// The vmdescription JSON.
    pub const VMDESCRIPTION: &str = "vmdescription";
    /// Flag of a ram blob: the section had a footer.
    pub const RAM_FOOTER: u32 = 1;
}

/// How to convert.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// The phase tag of the image.
    pub phase: Option<Phase<'static>>,
    /// Store a blake3 per page.
    pub page_hashes: bool,
    /// Version of the QEMU that wrote the stream, when known.
    pub qemu_version: Option<String>,
    /// The command line a restore must repeat, when known.
    pub restore_cmdline: Option<String>,
    /// Skip the fsync of the image (scratch outputs only).
    pub no_sync: bool,
    /// State of a container around the stream (a libvirt save file's
    /// header): kept as device blobs before the stream's own.
    pub container_blobs: Vec<DeviceBlob<'static>>,
    /// Metadata of that container.
    pub container_metadata: Vec<(String, String)>,
}

/// What a conversion read and wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Resolved machine type (empty for machine types up to 2.3, which send
    /// no configuration section).
    pub machine: String,
    /// Validated capabilities of the configuration section.
    pub capabilities: Vec<String>,
    /// RAM blocks in stream order.
    pub blocks: Vec<BlockInfo>,
    /// ZERO records read (QEMU's "duplicate" counter).
    pub zero_records: u64,
    /// PAGE records read (QEMU's "normal" counter).
    pub page_records: u64,
    /// Pages read from mapped-ram page areas.
    pub mapped_pages: u64,
    /// Bytes of stream read.
    pub stream_bytes: u64,
    /// Device sections kept.
    pub device_sections: usize,
    /// vCPUs decoded.
    pub vcpus: usize,
    /// Why vCPUs could not be decoded, if they could not.
    pub vcpu_note: Option<String>,
    /// Whether the stream carried a vmdescription.
    pub vmdescription: bool,
    /// What was accepted although unusual (bytes after the stream's end).
    pub notes: Vec<String>,
    /// The image written.
    pub image: WriteReport,
}

struct State<'a> {
    out: &'a Path,
    opts: &'a ConvertOptions,
    config: Option<Config>,
    ram: Option<RamParser>,
    ram_section_id: Option<u32>,
    layout: Option<Layout>,
    writer: Option<ImageWriter>,
    mapped: Vec<MappedBlock>,
    blobs: Vec<DeviceBlob<'static>>,
    zero_records: u64,
    page_records: u64,
    mapped_pages: u64,
    progress: &'a dyn Fn(u64),
    pos: u64,
    notes: Vec<String>,
}

impl PageSink for State<'_> {
    fn blocks(&mut self, blocks: &[BlockInfo], mapped: &[MappedBlock]) -> Result<()> {
        let machine = self.config.as_ref().map_or("", |c| c.machine.as_str());
        let layout = Layout::new(machine, blocks, PAGE_SIZE);
        let opts = crate::convert::writer_options(self.opts.page_hashes, !self.opts.no_sync);
        self.writer = Some(ImageWriter::create(self.out, &layout.regions, opts)?);
        self.layout = Some(layout);
        self.mapped = mapped.to_vec();
        Ok(())
    }

    fn page(&mut self, block: usize, offset: u64, fill: u8, data: Option<&[u8]>) -> Result<()> {
        match data {
            Some(_) => self.page_records += 1,
            None => self.zero_records += 1,
        }
        self.store(block, offset, fill, data)?;
        (self.progress)(self.pos);
        Ok(())
    }
}

impl State<'_> {
    /// Writes one page into the image: `data`, or `fill` repeated.
    fn store(&mut self, block: usize, offset: u64, fill: u8, data: Option<&[u8]>) -> Result<()> {
        let (Some(layout), Some(w)) = (&self.layout, &mut self.writer) else {
            return Err(Error::Unsupported("page record before the block list".into()));
        };
        let addr = layout.address(block, offset).ok_or_else(|| Error::Unsupported("page outside its block".into()))?;
        let gfn = addr / PAGE_SIZE;
        match data {
            Some(d) => w.write_page(gfn, d, PageClass::Unknown)?,
            None if fill == 0 => w.mark_pages(gfn, 1, PageEncoding::Zero, PageClass::Unknown)?,
            None => w.write_page(gfn, &[fill; PAGE_SIZE as usize], PageClass::Unknown)?,
        }
        Ok(())
    }
}

/// Whether `head` starts like a QEMU migration stream.
pub fn is_qemu_stream(head: &[u8]) -> bool {
    head.starts_with(&MAGIC)
}

/// Converts the QEMU stream read from `input` into a `.pbr` image at `out`.
/// `file` is the same input opened as a file, needed only for mapped-ram
/// streams (their pages are read by offset); `progress` gets the number of
/// stream bytes consumed.
///
/// # Errors
/// A malformed or truncated stream (named with its offset), a capability
/// pbr does not decode (named), I/O. Nothing is created at `out` on error.
pub fn convert<R: Read>(
    input: R,
    file: Option<&File>,
    out: &Path,
    opts: &ConvertOptions,
    progress: &dyn Fn(u64),
) -> Result<ConvertReport> {
    let mut r = StreamReader::new(input, 0);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic, "the stream magic")?;
    if magic != MAGIC {
        return Err(r.err_at(0, format!("not a QEMU migration stream (magic {magic:02x?}, expected QEVM)")));
    }
    match r.be32("the stream version")? {
        VERSION => {}
        2 => return Err(r.err_at(4, "stream version 2 is obsolete; QEMU itself no longer reads it")),
        v => return Err(r.err_at(4, format!("unsupported stream version {v}"))),
    }
    let mut st = State {
        out,
        opts,
        config: None,
        ram: None,
        ram_section_id: None,
        layout: None,
        writer: None,
        mapped: Vec::new(),
        blobs: Vec::new(),
        zero_records: 0,
        page_records: 0,
        mapped_pages: 0,
        progress,
        pos: 0,
        notes: Vec::new(),
    };
    let desc;
    loop {
        st.pos = r.pos();
        let at = r.pos();
        let Some(t) = r.peek()? else {
            return Err(r.err("truncated: the stream ends before QEMU_VM_EOF"));
        };
        match t {
            section::CONFIGURATION => {
                r.u8("section type")?;
                if st.config.is_some() {
                    return Err(r.err_at(at, "a second configuration section"));
                }
                let cfg = Config::read(&mut r)?;
                check_capabilities(&cfg).map_err(|m| r.err_at(at, m))?;
                st.ram = Some(RamParser::new(PAGE_SIZE, cfg.has("mapped-ram")));
                st.blobs.push(stream_blob(blob::CONFIGURATION, 0, cfg.raw.clone()));
                st.config = Some(cfg);
            }
            section::START | section::PART | section::END => ram_section(&mut r, &mut st, file)?,
            section::COMMAND => {
                r.u8("section type")?;
                let b = command(&mut r, at)?;
                st.blobs.push(b);
            }
            section::FULL => {
                let tail_start = r.pos();
                let tail = r.read_rest(MAX_TAIL, "device state after the RAM")?;
                desc = tail_sections(&tail, tail_start, &mut st)?;
                break;
            }
            section::EOF => {
                r.u8("section type")?;
                let rest = r.read_rest(MAX_TAIL, "the vmdescription")?;
                let mut all = vec![section::EOF];
                all.extend_from_slice(&rest);
                desc = tail_sections(&all, at, &mut st)?;
                break;
            }
            other => return Err(r.err_at(at, format!("unknown section type {other:#04x}"))),
        }
    }
    finish(st, desc, r.pos())
}

fn check_capabilities(cfg: &Config) -> std::result::Result<(), String> {
    if let Some(bits) = cfg.page_bits
        && bits != 12
    {
        return Err(format!("target page bits {bits}: only 4 KiB x86 pages are supported"));
    }
    if cfg.has("x-ignore-shared") {
        return Err("the stream uses the 'x-ignore-shared' capability: shared RAM is not in it, so it cannot become a complete image".into());
    }
    Ok(())
}

fn stream_blob(name: &str, flags: u32, data: Vec<u8>) -> DeviceBlob<'static> {
    DeviceBlob {
        origin: DeviceOrigin::QEMU_STREAM,
        name: Cow::Owned(name.to_owned()),
        instance: 0,
        version: 0,
        flags,
        data: Cow::Owned(data),
    }
}

/// A command after its type byte.
fn command<R: Read>(r: &mut StreamReader<R>, at: u64) -> Result<DeviceBlob<'static>> {
    let cmd = r.be16("command number")?;
    let len = r.be16("command length")?;
    let data = r.read_vec(u64::from(len), "command data")?;
    match cmd {
        3 => Err(
            r.err_at(at, "the stream uses the 'postcopy-ram' capability (POSTCOPY_ADVISE), which pbr does not decode")
        ),
        7 => Err(r.err_at(at, "the stream packages a nested postcopy stream (PACKAGED), which pbr does not decode")),
        8 => Err(r.err_at(at, "the stream uses the 'x-colo' capability, which pbr does not decode")),
        _ => Ok(stream_blob(blob::COMMAND, u32::from(cmd), data)),
    }
}

/// A START, PART or END section of `ram`.
fn ram_section<R: Read>(r: &mut StreamReader<R>, st: &mut State<'_>, file: Option<&File>) -> Result<()> {
    let at = r.pos();
    let t = r.u8("section type")?;
    let id = r.be32("section id")?;
    let mut plan = RamSection { section_type: t, section_id: id, start: None, runs: Vec::new() };
    if t == section::START {
        let name = r.counted_str("section name")?;
        let instance = r.be32("instance id")?;
        let version = r.be32("section version")?;
        if name != "ram" {
            return Err(r.err_at(
                at,
                format!("iterative section '{name}' (e.g. block migration) is not supported; only 'ram' is"),
            ));
        }
        if instance != 0 || version != 4 {
            return Err(
                r.err_at(at, format!("ram section instance {instance} version {version}: only 0 and 4 are known"))
            );
        }
        if st.ram_section_id.is_some() {
            return Err(r.err_at(at, "a second ram START section"));
        }
        st.ram_section_id = Some(id);
        plan.start = Some((version, Vec::new()));
    } else if st.ram_section_id != Some(id) {
        return Err(r.err_at(at, format!("section part for id {id}, which no START section opened")));
    }
    // Machine types up to 2.3 send no configuration section.
    let mut ram = st.ram.take().unwrap_or_else(|| RamParser::new(PAGE_SIZE, false));
    let res = ram.section(r, &mut plan, st);
    st.ram = Some(ram);
    res?;
    let footer = read_footer(r, id)?;
    if t == section::START && !st.mapped.is_empty() {
        read_mapped(st, file)?;
    }
    st.blobs.push(stream_blob(blob::RAM, if footer { blob::RAM_FOOTER } else { 0 }, plan.encode()));
    Ok(())
}

/// The optional footer; errors when it names another section.
fn read_footer<R: Read>(r: &mut StreamReader<R>, id: u32) -> Result<bool> {
    if r.peek()? != Some(section::FOOTER) {
        return Ok(false);
    }
    let at = r.pos();
    r.u8("footer")?;
    let got = r.be32("footer section id")?;
    if got != id {
        return Err(r.err_at(at, format!("footer names section {got}, expected {id}")));
    }
    Ok(true)
}

/// Reads the pages of mapped-ram blocks by file offset.
fn read_mapped(st: &mut State<'_>, file: Option<&File>) -> Result<()> {
    let file = file.ok_or_else(|| {
        Error::Unsupported("a mapped-ram stream keeps pages at file offsets: convert it from a file, not a pipe".into())
    })?;
    let len = file.metadata().map_err(|e| Error::io("cannot stat the stream", e))?.len();
    let blocks = st.ram.as_ref().map(|r| r.blocks.clone()).unwrap_or_default();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for m in std::mem::take(&mut st.mapped) {
        let b = &blocks[m.block];
        let pages = b.used_length.div_ceil(PAGE_SIZE);
        let bitmap_len = pages.div_ceil(8);
        if m.bitmap_offset + bitmap_len > len {
            return Err(Error::Parse {
                format: "qemu",
                offset: m.bitmap_offset,
                msg: format!("mapped-ram bitmap of block '{}' runs past the end of the file", b.name),
            });
        }
        let mut bitmap = vec![0u8; bitmap_len as usize];
        file.read_exact_at(&mut bitmap, m.bitmap_offset)
            .map_err(|e| Error::io("cannot read the mapped-ram bitmap", e))?;
        for i in 0..pages {
            if bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0 {
                continue;
            }
            let at = m.pages_offset + i * PAGE_SIZE;
            file.read_exact_at(&mut page, at).map_err(|e| Error::Parse {
                format: "qemu",
                offset: at,
                msg: format!("mapped-ram page {i} of block '{}' cannot be read: {e}", b.name),
            })?;
            st.mapped_pages += 1;
            st.store(m.block, i * PAGE_SIZE, 0, Some(&page))?;
        }
    }
    Ok(())
}

/// Parses the device sections, commands, EOF and vmdescription held in
/// `tail` (which starts at stream offset `base`).
fn tail_sections(tail: &[u8], base: u64, st: &mut State<'_>) -> Result<Option<VmDesc>> {
    let err = |off: usize, msg: String| Error::Parse { format: "qemu", offset: base + off as u64, msg };
    let (end, desc) = match find_vmdesc(tail) {
        Some((p, json_end)) => {
            let json = &tail[p + 5..json_end];
            let d = vmdesc::parse(json).map_err(|m| err(p, m))?;
            if json_end < tail.len() {
                st.notes.push(format!(
                    "{} bytes after the end of the stream (its vmdescription at offset {:#x}), ignored as QEMU ignores them",
                    tail.len() - json_end,
                    base + p as u64
                ));
            }
            (p, Some((d, json.to_vec())))
        }
        None => (tail.len(), None),
    };
    // Without a vmdescription nor footers (machine types up to 2.3) the
    // device sections cannot be told apart: they are kept as one blob.
    if desc.is_none() && tail.first() == Some(&section::FULL) {
        let split = full_header(tail, 1).and_then(|(id, _, _, _, body)| scan_footer(tail, body, id));
        if split.is_none() {
            if tail.last() != Some(&section::EOF) {
                return Err(err(tail.len(), "truncated: the stream ends before QEMU_VM_EOF".into()));
            }
            st.blobs.push(stream_blob(blob::DEVICE_STATE, 0, tail[..tail.len() - 1].to_vec()));
            st.blobs.push(stream_blob(blob::EOF, 0, Vec::new()));
            return Ok(None);
        }
    }
    let mut pos = 0usize;
    let mut full = 0usize;
    loop {
        let at = pos;
        let Some(&t) = tail.get(pos) else {
            return Err(err(pos, "truncated: the stream ends before QEMU_VM_EOF".into()));
        };
        pos += 1;
        match t {
            section::FULL => {
                let (id, name, instance, version, hdr_end) =
                    full_header(tail, pos).ok_or_else(|| err(at, "truncated section header".into()))?;
                let body_len = match &desc {
                    Some((d, _)) => {
                        let dd = d.devices.get(full).ok_or_else(|| {
                            err(
                                at,
                                format!(
                                    "section '{name}' has no entry in the vmdescription ({} entries)",
                                    d.devices.len()
                                ),
                            )
                        })?;
                        if dd.name != name || dd.instance != instance {
                            return Err(err(
                                at,
                                format!(
                                    "section '{name}' instance {instance} does not match vmdescription entry {full} ('{}' instance {})",
                                    dd.name, dd.instance
                                ),
                            ));
                        }
                        usize::try_from(dd.body_len).map_err(|_| err(at, "section length overflows".into()))?
                    }
                    None => scan_footer(&tail[..end], hdr_end, id).ok_or_else(|| {
                        err(at, format!("no footer found for section '{name}': the stream is truncated or corrupt (and has no vmdescription to size its sections)"))
                    })?,
                };
                let footer = hdr_end.checked_add(body_len).filter(|f| f + 5 <= end).ok_or_else(|| {
                    err(at, format!("section '{name}' of {body_len} bytes runs past the device state"))
                })?;
                if tail[footer] != section::FOOTER || tail[footer + 1..footer + 5] != id.to_be_bytes() {
                    return Err(err(
                        footer,
                        format!("section '{name}' is not followed by its footer (the vmdescription length disagrees)"),
                    ));
                }
                pos = footer + 5;
                full += 1;
                st.blobs.push(DeviceBlob {
                    origin: DeviceOrigin::QEMU_SECTION,
                    name: Cow::Owned(name),
                    instance,
                    version,
                    flags: u32::from(section::FULL),
                    data: Cow::Owned(tail[at..pos].to_vec()),
                });
            }
            section::COMMAND => {
                let mut r = StreamReader::new(&tail[pos..end], base + pos as u64);
                let b = command(&mut r, base + at as u64)?;
                pos = (r.pos() - base) as usize;
                st.blobs.push(b);
            }
            section::EOF => {
                st.blobs.push(stream_blob(blob::EOF, 0, Vec::new()));
                if pos != end {
                    return Err(err(pos, format!("{} unexpected bytes after QEMU_VM_EOF", end - pos)));
                }
                break;
            }
            section::START | section::PART | section::END => {
                return Err(err(
                    at,
                    "a ram section after device sections is not supported (postcopy or a resumed stream?)".into(),
                ));
            }
            other => return Err(err(at, format!("unknown section type {other:#04x}"))),
        }
    }
    Ok(desc.map(|(d, json)| {
        st.blobs.push(stream_blob(blob::VMDESCRIPTION, 0, json));
        d
    }))
}

/// `(section id, idstr, instance, version, offset after the header)` of a
/// FULL section whose type byte ends at `pos`.
fn full_header(b: &[u8], pos: usize) -> Option<(u32, String, u32, u32, usize)> {
    let id = u32::from_be_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
    let len = usize::from(*b.get(pos + 4)?);
    let name = String::from_utf8(b.get(pos + 5..pos + 5 + len)?.to_vec()).ok()?;
    let p = pos + 5 + len;
    let instance = u32::from_be_bytes(b.get(p..p + 4)?.try_into().ok()?);
    let version = u32::from_be_bytes(b.get(p + 4..p + 8)?.try_into().ok()?);
    Some((id, name, instance, version, p + 8))
}

/// Without a vmdescription: the body length up to the first footer for `id`
/// that is followed by something that starts a section.
fn scan_footer(b: &[u8], body: usize, id: u32) -> Option<usize> {
    let mut footer = [section::FOOTER; 5];
    footer[1..].copy_from_slice(&id.to_be_bytes());
    (body..b.len().saturating_sub(4))
        .find(|&p| {
            b[p..p + 5] == footer
                && match b.get(p + 5) {
                    Some(&section::FULL) => full_header(b, p + 6)
                        .is_some_and(|(_, n, ..)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_graphic())),
                    Some(&section::EOF) => p + 6 == b.len(),
                    Some(&section::COMMAND) => true,
                    _ => false,
                }
        })
        .map(|p| p - body)
}

/// Offset of the VMDESCRIPTION type byte in `tail` (`0x00 0x06 be32(len)
/// '{'`) and the end of its JSON: the JSON ending exactly at the end of
/// `tail`, else (bytes follow the stream, which QEMU does not read) the
/// last such section whose JSON fits and parses.
fn find_vmdesc(tail: &[u8]) -> Option<(usize, usize)> {
    let n = tail.len();
    let header = |p: usize| {
        (tail[p] == section::VMDESCRIPTION && tail[p - 1] == section::EOF && tail.get(p + 5) == Some(&b'{'))
            .then(|| u32::from_be_bytes(tail[p + 1..p + 5].try_into().unwrap_or_default()) as usize)
    };
    let candidates = || (1..n.saturating_sub(5)).rev();
    if let Some(p) = candidates().find(|&p| header(p) == Some(n - p - 5)) {
        return Some((p, n));
    }
    candidates().find_map(|p| {
        let json_end = (p + 5).checked_add(header(p)?).filter(|&e| e <= n)?;
        vmdesc::parse(&tail[p + 5..json_end]).is_ok().then_some((p, json_end))
    })
}

fn finish(mut st: State<'_>, desc: Option<VmDesc>, stream_bytes: u64) -> Result<ConvertReport> {
    let cfg = st.config.take();
    let mut w = st.writer.take().ok_or_else(|| Error::Parse {
        format: "qemu",
        offset: stream_bytes,
        msg: "the stream has no ram section".into(),
    })?;
    let blocks = st.ram.as_ref().map(|r| r.blocks.clone()).unwrap_or_default();
    let (vcpus, vcpu_note) = match &desc {
        Some(d) => match decode_vcpus(&st.blobs, d) {
            Ok(v) => (v, None),
            Err(m) => (Vec::new(), Some(m)),
        },
        None => (Vec::new(), Some("the stream has no vmdescription, so cpu sections cannot be decoded".into())),
    };
    let n_vcpus = vcpus.len();
    for v in vcpus {
        w.add_vcpu(Vcpu::X86_64(Box::new(v)))?;
    }
    let device_sections = st.blobs.iter().filter(|b| b.origin == DeviceOrigin::QEMU_SECTION).count();
    for b in st.opts.container_blobs.iter().cloned().chain(st.blobs.drain(..)) {
        w.add_device(b)?;
    }
    for (k, v) in &st.opts.container_metadata {
        w.set_metadata(k, v)?;
    }
    w.set_metadata("source.format", "qemu")?;
    let (machine, capabilities) = cfg.map(|c| (c.machine, c.capabilities)).unwrap_or_default();
    if !machine.is_empty() {
        w.set_metadata("qemu.machine", &machine)?;
    }
    if !capabilities.is_empty() {
        w.set_metadata("qemu.capabilities", &capabilities.join(","))?;
    }
    if let Some(ram) = blocks.iter().find(|b| b.name == "pc.ram") {
        w.set_metadata("guest.ram_size", &ram.used_length.to_string())?;
    }
    if let Some(v) = &st.opts.qemu_version {
        w.set_metadata("qemu.version", v)?;
    }
    if let Some(v) = min_version(&machine, &st.blobs) {
        w.set_metadata("qemu.version_at_least", &v)?;
    }
    if let Some(c) = &st.opts.restore_cmdline {
        w.set_metadata("restore.cmdline", c)?;
    }
    w.set_metadata("classes.source", "converter")?;
    if let Some(p) = &st.opts.phase {
        w.set_phase(p.clone())?;
    }
    let image = w.finish()?;
    Ok(ConvertReport {
        machine,
        capabilities,
        blocks,
        zero_records: st.zero_records,
        page_records: st.page_records,
        mapped_pages: st.mapped_pages,
        stream_bytes,
        device_sections,
        vcpus: n_vcpus,
        vcpu_note,
        vmdescription: desc.is_some(),
        notes: st.notes,
        image,
    })
}

/// The oldest QEMU that can have written a stream: from its machine type
/// version (a QEMU writes machine types up to its own version), a
/// SWITCHOVER_START command (10.0) and a `configuration` key in the
/// vmdescription (8.2).
fn min_version(machine: &str, blobs: &[DeviceBlob<'_>]) -> Option<String> {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let mut best = machine.rsplit('-').next().and_then(parse);
    let mut raise = |v: (u32, u32)| best = Some(best.map_or(v, |b| b.max(v)));
    if blobs.iter().any(|b| b.origin == DeviceOrigin::QEMU_STREAM && b.name == blob::COMMAND && b.flags == 0x0b) {
        raise((10, 0));
    }
    if let Some(j) = blobs.iter().find(|b| b.origin == DeviceOrigin::QEMU_STREAM && b.name == blob::VMDESCRIPTION)
        && serde_json::from_slice::<serde_json::Value>(&j.data).is_ok_and(|v| v.get("configuration").is_some())
    {
        raise((8, 2));
    }
    best.map(|(a, b)| format!("{a}.{b}"))
}

/// The idstrs of the device sections of a device-state-only QEMU stream
/// (what Xen's device model saves for `EMULATOR_CONTEXT`): header,
/// optional configuration, FULL sections with footers, commands, EOF.
///
/// # Errors
/// A message naming the byte offset where the stream stops making sense.
pub fn device_section_names(b: &[u8]) -> std::result::Result<Vec<String>, String> {
    if !b.starts_with(&MAGIC) {
        return Err("not a QEMU stream (no QEVM magic)".into());
    }
    if b.get(4..8) != Some(&VERSION.to_be_bytes()[..]) {
        return Err("not a version 3 QEMU stream".into());
    }
    let be = |p: usize, n: usize| b.get(p..p + n).map(|s| s.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)));
    let mut names = Vec::new();
    let mut p = 8;
    loop {
        match b.get(p) {
            Some(&section::CONFIGURATION) => p += 5 + be(p + 1, 4).ok_or("truncated configuration")?,
            Some(&section::COMMAND) => p += 5 + be(p + 3, 2).ok_or("truncated command")?,
            Some(&section::FULL) => {
                let (id, name, _, _, body) = full_header(b, p + 1).ok_or(format!("truncated section at byte {p}"))?;
                let len = scan_footer(b, body, id).ok_or(format!("section '{name}' at byte {p} has no footer"))?;
                names.push(name);
                p = body + len + 5;
            }
            Some(&section::EOF) => return Ok(names),
            Some(t) => return Err(format!("section type {t:#04x} at byte {p} in device state")),
            None => return Err("the stream ends before QEMU_VM_EOF".into()),
        }
    }
}

/// Length of the FULL section header for an idstr of `name_len` bytes.
pub fn full_header_len(name_len: usize) -> usize {
    1 + 4 + 1 + name_len + 4 + 4
}

/// The body of a FULL device section blob: its fields, without the section
/// header and footer.
pub fn section_body<'a>(b: &'a DeviceBlob<'_>) -> &'a [u8] {
    let start = full_header_len(b.name.len());
    b.data.get(start..b.data.len().saturating_sub(5)).unwrap_or_default()
}

fn decode_vcpus(blobs: &[DeviceBlob<'static>], desc: &VmDesc) -> std::result::Result<Vec<pbr_format::X86Vcpu>, String> {
    let sections: Vec<&DeviceBlob<'static>> = blobs.iter().filter(|b| b.origin == DeviceOrigin::QEMU_SECTION).collect();
    let mut out = Vec::new();
    for (i, s) in sections.iter().enumerate().filter(|(_, s)| s.name == "cpu") {
        let d = desc.devices.get(i).ok_or("cpu section without a description")?;
        let apic = sections
            .iter()
            .enumerate()
            .find(|(_, a)| a.name == "apic" && a.instance == s.instance)
            .and_then(|(j, a)| desc.devices.get(j).map(|d| (section_body(a), d)));
        out.push(cpu::decode(s.instance, (section_body(s), d), apic).map_err(|m| format!("cpu {}: {m}", s.instance))?);
    }
    Ok(out)
}
