//! Import of a QEMU migration stream: the header, the configuration,
//! RAM sections and commands here; the device state after the RAM in
//! [`tail`].

mod tail;

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use pbr_format::keys;
use pbr_format::{DeviceBlob, DeviceOrigin, ImageWriter, PageClass, PageEncoding, Phase, Vcpu, WriteReport};

use super::config::Config;
use super::cpu;
use super::format::{MAGIC, PAGE_SIZE, VERSION, blob, section};
use super::plan::{BlockInfo, RamSection};
use super::ram::{Layout, MappedBlock, PageSink, RamParser};
use super::sections::section_body;
use super::vmdesc::VmDesc;
use crate::error::{Error, Result};
use crate::stream::StreamReader;
use tail::tail_sections;

/// Device state after the RAM is held in memory up to this size.
const MAX_TAIL: u64 = 256 << 20;

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
        let opts = crate::writer::options(self.opts.page_hashes, !self.opts.no_sync);
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
            return Err(Error::Internal("page record before the block list".into()));
        };
        let addr = layout.address(block, offset).ok_or_else(|| Error::Internal("page outside its block".into()))?;
        let gfn = addr / PAGE_SIZE;
        match data {
            Some(d) => w.write_page(gfn, d, PageClass::Unknown)?,
            None if fill == 0 => w.mark_pages(gfn, 1, PageEncoding::Zero, PageClass::Unknown)?,
            None => w.write_page(gfn, &[fill; PAGE_SIZE as usize], PageClass::Unknown)?,
        }
        Ok(())
    }
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
    let mut r = StreamReader::new("qemu", input, 0);
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
        Error::Usage("a mapped-ram stream keeps pages at file offsets: convert it from a file, not a pipe".into())
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
    w.set_metadata(keys::SOURCE_FORMAT, "qemu")?;
    let (machine, capabilities) = cfg.map(|c| (c.machine, c.capabilities)).unwrap_or_default();
    if !machine.is_empty() {
        w.set_metadata(keys::QEMU_MACHINE, &machine)?;
    }
    if !capabilities.is_empty() {
        w.set_metadata(keys::QEMU_CAPABILITIES, &capabilities.join(","))?;
    }
    if let Some(ram) = blocks.iter().find(|b| b.name == "pc.ram") {
        w.set_metadata(keys::GUEST_RAM_SIZE, &ram.used_length.to_string())?;
    }
    if let Some(v) = &st.opts.qemu_version {
        w.set_metadata(keys::QEMU_VERSION, v)?;
    }
    if let Some(v) = min_version(&machine, &st.blobs) {
        w.set_metadata(keys::QEMU_VERSION_AT_LEAST, &v)?;
    }
    if let Some(c) = &st.opts.restore_cmdline {
        w.set_metadata(keys::RESTORE_CMDLINE, c)?;
    }
    w.set_metadata(keys::CLASSES_SOURCE, "converter")?;
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
