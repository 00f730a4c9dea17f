//! Import of an `xl save` file: the xl header and the libxl stream here,
//! the libxc stream inside it in [`libxc_stream`].

mod libxc_stream;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use pbr_format::keys;
use pbr_format::limits::MAX_REGIONS;
use pbr_format::{
    DeviceBlob, DeviceOrigin, Image, ImageWriter, PageClass, PageEncoding, Phase, Region, Vcpu, WriteReport, X86Vcpu,
};

use super::format::{
    BYTE_ORDER_LE, DOMAIN_PV, LIBXL_IDENT, LIBXL_RECORD_MAX, OPTIONAL_DATA_MAX, PAGE, XL_FLAG_JSON, XL_FLAG_STREAM_V2,
    XL_MAGIC, blob,
};
use super::pages::{self, Shape};
use super::record::{self, libxl};
use crate::error::{Error, Result};
use crate::stream::StreamReader;

/// What becomes of a checkpointed (Remus/COLO) stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checkpoints {
    /// One image of the state after the last checkpoint.
    #[default]
    Last,
    /// Also one image per checkpoint, `OUT` with `.cpN` before its
    /// extension.
    Each,
}

/// How to convert.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// The phase tag of the image.
    pub phase: Option<Phase<'static>>,
    /// Store a blake3 per page.
    pub page_hashes: bool,
    /// Skip the fsync of the image (scratch outputs only).
    pub no_sync: bool,
    /// Images of a checkpointed stream.
    pub checkpoints: Checkpoints,
}

/// What a conversion read and wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// `hvm` or `pv`.
    pub guest_type: &'static str,
    /// libxc stream version (2 or 3).
    pub libxc_version: u32,
    /// Xen version of the saver, `major.minor` (0.x: converted legacy).
    pub xen_version: String,
    /// The domain name from the xl config, when present.
    pub domain_name: Option<String>,
    /// `PAGE_DATA` records read.
    pub page_records: u64,
    /// Pages with data read.
    pub data_pages: u64,
    /// Entries without data that leave a pfn unpopulated (`XTAB`, `BROKEN`).
    pub hole_entries: u64,
    /// vCPU records written.
    pub vcpus: usize,
    /// HVM context entries kept.
    pub hvm_entries: usize,
    /// Bytes of the device model's state (`EMULATOR_CONTEXT`), if any.
    pub emulator_bytes: Option<u64>,
    /// Checkpoints (`CHECKPOINT` records) read.
    pub checkpoints: u32,
    /// Bytes of stream read.
    pub stream_bytes: u64,
    /// Things worth telling that are not errors.
    pub notes: Vec<String>,
    /// The image of the final state.
    pub image: WriteReport,
    /// With [`Checkpoints::Each`]: one image per checkpoint.
    pub checkpoint_images: Vec<WriteReport>,
}

/// What `libxc_records` stopped at.
enum LibxcEnd {
    End,
    Checkpoint,
}

struct Conv<'a, R: Read> {
    r: StreamReader<R>,
    out: &'a Path,
    opts: &'a ConvertOptions,
    progress: &'a dyn Fn(u64),
    writer: Option<ImageWriter>,
    blobs: Vec<DeviceBlob<'static>>,
    shape: Option<Shape>,
    populated: Vec<(u64, u64)>,
    domain: u32,
    version: u32,
    xen_version: String,
    static_data_end: bool,
    verify: bool,
    tsc_khz: u32,
    hvm_vcpus: Vec<X86Vcpu>,
    pv_vcpus: BTreeMap<u32, X86Vcpu>,
    pv_width: u8,
    p2m_seen: bool,
    config: Option<(String, bool)>,
    libxc_started: bool,
    page_records: u64,
    data_pages: u64,
    hole_entries: u64,
    hvm_entries: usize,
    emulator_bytes: Option<u64>,
    checkpoints: u32,
    checkpoint_images: Vec<WriteReport>,
    notes: Vec<String>,
    page: Vec<u8>,
}

/// Converts the `xl save` file read from `input` into a `.pbr` image at
/// `out`; `progress` gets the number of bytes consumed.
///
/// # Errors
/// A malformed or truncated file (named with its record and offset), a
/// legacy stream, I/O. Nothing is created at `out` on error.
pub fn convert<R: Read>(input: R, out: &Path, opts: &ConvertOptions, progress: &dyn Fn(u64)) -> Result<ConvertReport> {
    let mut c = Conv {
        r: StreamReader::new("xl", input, 0),
        out,
        opts,
        progress,
        writer: None,
        blobs: Vec::new(),
        shape: None,
        populated: Vec::new(),
        domain: 0,
        version: 0,
        xen_version: String::new(),
        static_data_end: false,
        verify: false,
        tsc_khz: 0,
        hvm_vcpus: Vec::new(),
        pv_vcpus: BTreeMap::new(),
        pv_width: 0,
        p2m_seen: false,
        config: None,
        libxc_started: false,
        page_records: 0,
        data_pages: 0,
        hole_entries: 0,
        hvm_entries: 0,
        emulator_bytes: None,
        checkpoints: 0,
        checkpoint_images: Vec::new(),
        notes: Vec::new(),
        page: vec![0u8; PAGE],
    };
    c.writer = Some(c.new_writer()?);
    c.xl_header()?;
    c.libxl_stream()?;
    let image = c.finish_image(out.to_path_buf(), None)?;
    Ok(ConvertReport {
        guest_type: if c.domain == DOMAIN_PV { "pv" } else { "hvm" },
        libxc_version: c.version,
        xen_version: c.xen_version,
        domain_name: c.config.as_ref().and_then(|(j, _)| config_str(j, &["c_info", "name"])),
        page_records: c.page_records,
        data_pages: c.data_pages,
        hole_entries: c.hole_entries,
        vcpus: if c.domain == DOMAIN_PV { c.pv_vcpus.len() } else { c.hvm_vcpus.len() },
        hvm_entries: c.hvm_entries,
        emulator_bytes: c.emulator_bytes,
        checkpoints: c.checkpoints,
        stream_bytes: c.r.pos(),
        notes: c.notes,
        image,
        checkpoint_images: c.checkpoint_images,
    })
}

/// A string at `path` in the JSON text `json`.
fn config_str(json: &str, path: &[&str]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    path.iter().try_fold(&v, |v, k| v.get(k))?.as_str().map(str::to_owned)
}

fn libxl_blob(name: &str, flags: u32, instance: u32, version: u32, data: Vec<u8>) -> DeviceBlob<'static> {
    DeviceBlob {
        origin: DeviceOrigin::XEN_LIBXL,
        name: Cow::Owned(name.to_owned()),
        instance,
        version,
        flags,
        data: Cow::Owned(data),
    }
}

fn libxc_blob(name: String, flags: u32, data: Vec<u8>) -> DeviceBlob<'static> {
    DeviceBlob {
        origin: DeviceOrigin::XEN_LIBXC,
        name: Cow::Owned(name),
        instance: 0,
        version: 0,
        flags,
        data: Cow::Owned(data),
    }
}

impl<R: Read> Conv<'_, R> {
    fn new_writer(&self) -> Result<ImageWriter> {
        let opts = crate::writer::options(self.opts.page_hashes, !self.opts.no_sync);
        // Every pfn a stream can name; narrowed to what it populated at the end.
        let all = Region::ram("ram", 0, pages::PFN_LIMIT * PAGE as u64);
        Ok(ImageWriter::create(self.out, &[all], opts)?)
    }

    fn err_at(&self, at: u64, msg: impl Into<String>) -> Error {
        self.r.err_at(at, msg)
    }

    fn xl_header(&mut self) -> Result<()> {
        let mut head = [0u8; 48];
        self.r.read_exact(&mut head, "the xl header")?;
        if &head[..32] != XL_MAGIC {
            return Err(self.err_at(0, "not an xl save file (bad magic)"));
        }
        let le = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap_or_default());
        match &head[32..36] {
            b if b == BYTE_ORDER_LE => {}
            [1, 2, 3, 4] => {
                return Err(self.err_at(
                    32,
                    "byte-order marker 01 02 03 04: the file was saved by a big-endian host; only little-endian files are read",
                ));
            }
            b => return Err(self.err_at(32, format!("bad byte-order marker {b:02x?}, expected 04 03 02 01"))),
        }
        let (mandatory, optlen) = (le(36), le(44));
        if mandatory & !(XL_FLAG_JSON | XL_FLAG_STREAM_V2) != 0 {
            return Err(self.err_at(
                36,
                format!(
                    "mandatory flags {mandatory:#x} set bits this xl format does not define: the file needs a newer xl"
                ),
            ));
        }
        if mandatory & XL_FLAG_STREAM_V2 == 0 {
            return Err(self.err_at(
                36,
                "a legacy (Xen 4.5 or older) stream: convert it first with Xen's convert-legacy-stream \
                 (/usr/lib/xen-*/bin/convert-legacy-stream --in IN --out OUT --width 64 --guest hvm|pv --format libxl --xl)",
            ));
        }
        if optlen > OPTIONAL_DATA_MAX {
            return Err(self.err_at(44, format!("optional data of {optlen} bytes exceeds {OPTIONAL_DATA_MAX}")));
        }
        let opt = self.r.read_vec(u64::from(optlen), "the xl header's optional data")?;
        if !opt.is_empty() {
            let len = opt.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
            let cfg = len.and_then(|n| opt.get(4..4 + n)).ok_or_else(|| {
                self.err_at(48, format!("optional data of {optlen} bytes cannot hold the config length it gives"))
            })?;
            let text = cfg.strip_suffix(&[0]).unwrap_or(cfg);
            let text = String::from_utf8(text.to_vec())
                .map_err(|_| self.err_at(52, "the domain configuration is not UTF-8"))?;
            let json = mandatory & XL_FLAG_JSON != 0;
            if json && serde_json::from_str::<serde_json::Value>(&text).is_err() {
                return Err(self.err_at(52, "the domain configuration is flagged JSON but is not valid JSON"));
            }
            self.config = Some((text, json));
        }
        let mut blob = head.to_vec();
        blob.extend_from_slice(&opt);
        self.blobs.push(libxl_blob(blob::XL_HEADER, 0, 0, 0, blob));
        Ok(())
    }

    /// A record header: `(offset, type, body length)`.
    fn record_header(&mut self, what: &str) -> Result<(u64, u32, u32)> {
        let at = self.r.pos();
        let t = self.r.le32(what)?;
        let len = self.r.le32(what)?;
        Ok((at, t, len))
    }

    /// The zero padding after a body of `len` bytes.
    fn padding(&mut self, len: u32, name: &str) -> Result<()> {
        let n = record::padding(len);
        let mut pad = [0u8; 8];
        let at = self.r.pos();
        self.r.read_exact(&mut pad[..n], &format!("the padding of {name}"))?;
        if pad.iter().any(|&b| b != 0) {
            return Err(self.err_at(at, format!("the padding of {name} holds non-zero bytes")));
        }
        Ok(())
    }

    fn body(&mut self, len: u32, name: &str) -> Result<Vec<u8>> {
        let v = self.r.read_vec(u64::from(len), name)?;
        self.padding(len, name)?;
        Ok(v)
    }

    fn libxl_stream(&mut self) -> Result<()> {
        let at = self.r.pos();
        let mut h = [0u8; 16];
        self.r.read_exact(&mut h, "the libxl header")?;
        let ident = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
        let version = u32::from_be_bytes(h[8..12].try_into().unwrap_or_default());
        let options = u32::from_be_bytes(h[12..16].try_into().unwrap_or_default());
        if ident != LIBXL_IDENT {
            return Err(self.err_at(at, format!("libxl header ident {ident:#x}, expected 'LibxlFmt'")));
        }
        if version != 2 {
            return Err(self.err_at(at + 8, format!("libxl stream version {version}; only 2 exists")));
        }
        if options & 1 != 0 {
            return Err(self.err_at(at + 12, "a big-endian libxl stream; only little-endian streams are read"));
        }
        if options & !3 != 0 {
            return Err(self.err_at(at + 12, format!("libxl header options {options:#x} set reserved bits")));
        }
        if options & 2 != 0 {
            self.notes.push("the stream was converted from a legacy stream by convert-legacy-stream".into());
        }
        self.blobs.push(libxl_blob(blob::LIBXL_HEADER, 0, 0, 0, h.to_vec()));
        let mut in_checkpoint = false;
        loop {
            (self.progress)(self.r.pos());
            let (at, t, len) = self.record_header("a libxl record header")?;
            let name =
                record::libxl_name(t).ok_or_else(|| self.err_at(at, format!("unknown libxl record type {t:#x}")))?;
            let empty = matches!(t, libxl::END | libxl::LIBXC_CONTEXT | libxl::CHECKPOINT_END);
            if empty && len != 0 {
                return Err(self.err_at(at, format!("libxl {name} record has length {len}, not 0")));
            }
            if len > LIBXL_RECORD_MAX {
                return Err(self.err_at(at, format!("libxl {name} record of {len} bytes exceeds {LIBXL_RECORD_MAX}")));
            }
            let body = self.body(len, &format!("libxl record {name} at {at:#x}"))?;
            let (mut instance, mut version) = (0, 0);
            match t {
                libxl::END => {
                    if in_checkpoint {
                        return Err(self.err_at(at, "libxl END inside a checkpoint (no CHECKPOINT_END)"));
                    }
                    if !self.libxc_started {
                        return Err(self.err_at(at, "the stream ends without a LIBXC_CONTEXT record"));
                    }
                    self.blobs.push(libxl_blob(name, t, 0, 0, body));
                    let trailing = self.r.read_rest(u64::from(LIBXL_RECORD_MAX), "bytes after the libxl END")?;
                    if !trailing.is_empty() {
                        self.notes.push(format!("{} bytes after the libxl END record, kept", trailing.len()));
                        self.blobs.push(libxl_blob(blob::TRAILING, 0, 0, 0, trailing));
                    }
                    return Ok(());
                }
                libxl::LIBXC_CONTEXT => {
                    if self.libxc_started {
                        return Err(self.err_at(at, "a second LIBXC_CONTEXT record"));
                    }
                    self.libxc_started = true;
                    self.blobs.push(libxl_blob(name, t, 0, 0, body));
                    self.libxc_headers()?;
                    in_checkpoint = matches!(self.libxc_records()?, LibxcEnd::Checkpoint);
                    continue;
                }
                libxl::EMULATOR_XENSTORE_DATA | libxl::EMULATOR_CONTEXT => {
                    if body.len() < 8 {
                        return Err(
                            self.err_at(at, format!("libxl {name} record of {len} bytes has no emulator header"))
                        );
                    }
                    version = u32::from_le_bytes(body[..4].try_into().unwrap_or_default());
                    instance = u32::from_le_bytes(body[4..8].try_into().unwrap_or_default());
                    if version > 2 {
                        return Err(self.err_at(at + 8, format!("libxl {name}: unknown emulator id {version}")));
                    }
                    if t == libxl::EMULATOR_CONTEXT {
                        self.emulator_bytes = Some(body.len() as u64 - 8);
                    }
                }
                libxl::CHECKPOINT_END => {
                    if !in_checkpoint {
                        return Err(self.err_at(at, "CHECKPOINT_END without a libxc CHECKPOINT before it"));
                    }
                    self.blobs.push(libxl_blob(name, t, 0, 0, body));
                    self.checkpoint_done()?;
                    if self.r.at_end()? {
                        self.notes.push(format!(
                            "the stream ends after checkpoint {}, as a Remus/COLO stream does at failover",
                            self.checkpoints
                        ));
                        return Ok(());
                    }
                    in_checkpoint = matches!(self.libxc_records()?, LibxcEnd::Checkpoint);
                    continue;
                }
                libxl::CHECKPOINT_STATE if body.is_empty() => {
                    return Err(self.err_at(at, "libxl CHECKPOINT_STATE record is empty"));
                }
                _ => {}
            }
            self.blobs.push(libxl_blob(name, t, instance, version, body));
        }
    }

    /// After a checkpoint's CHECKPOINT_END: with [`Checkpoints::Each`], the
    /// state so far becomes its own image and a new writer carries on from
    /// it.
    fn checkpoint_done(&mut self) -> Result<()> {
        if self.opts.checkpoints != Checkpoints::Each {
            return Ok(());
        }
        let path = checkpoint_path(self.out, self.checkpoints);
        let report = self.finish_image(path.clone(), Some(self.checkpoints))?;
        let img = Image::open(&path)?;
        let mut w = self.new_writer()?;
        let mut buf = vec![0u8; PAGE];
        for e in img.extents() {
            // Closed gaps and plain zero pages are what a new writer has anyway.
            if e.encoding == PageEncoding::Trimmed
                || (e.encoding == PageEncoding::Zero && e.class == PageClass::Unknown)
            {
                continue;
            }
            for gfn in e.gfns() {
                crate::rewrite::copy_page(&img, &e, gfn, &mut w, e.class, &mut buf)?;
            }
        }
        self.writer = Some(w);
        self.checkpoint_images.push(report);
        Ok(())
    }

    /// Narrows the writer to the populated pages, adds the machine state
    /// and publishes the image at `path`.
    fn finish_image(&mut self, path: PathBuf, checkpoint: Option<u32>) -> Result<WriteReport> {
        self.flush_shape();
        let mut w = self.writer.take().ok_or_else(|| Error::Internal("no image writer".into()))?;
        let (runs, closed) = pages::layout(self.populated.clone(), MAX_REGIONS as usize);
        if runs.is_empty() {
            return Err(self.err_at(self.r.pos(), "the stream populates no guest page"));
        }
        if !closed.is_empty() {
            self.notes.push(format!(
                "{} unpopulated gaps were closed to stay within {MAX_REGIONS} regions; their pages are trimmed and free",
                closed.len()
            ));
        }
        let ps = PAGE as u64;
        let regions: Vec<Region<'static>> =
            runs.iter().map(|&(s, n)| Region { source_offset: s * ps, ..Region::ram("ram", s * ps, n * ps) }).collect();
        w.set_regions(&regions)?;
        for &(s, n) in &closed {
            w.mark_pages(s, n, PageEncoding::Trimmed, PageClass::Free)?;
        }
        let vcpus: Vec<X86Vcpu> =
            if self.domain == DOMAIN_PV { self.pv_vcpus.values().cloned().collect() } else { self.hvm_vcpus.clone() };
        for v in vcpus {
            w.add_vcpu(Vcpu::X86_64(Box::new(v)))?;
        }
        for b in &self.blobs {
            w.add_device(b.clone())?;
        }
        w.set_metadata(keys::SOURCE_FORMAT, "xl")?;
        w.set_metadata(keys::XEN_GUEST_TYPE, if self.domain == DOMAIN_PV { "pv" } else { "hvm" })?;
        w.set_metadata(keys::XEN_LIBXC_VERSION, &self.version.to_string())?;
        w.set_metadata(keys::XEN_VERSION, &self.xen_version)?;
        let populated: u64 = runs.iter().map(|r| r.1).sum();
        w.set_metadata(keys::GUEST_RAM_SIZE, &(populated * ps).to_string())?;
        if let Some((cfg, _)) = &self.config {
            w.set_metadata(keys::XL_CONFIG, cfg)?;
        }
        if let Some(k) = checkpoint {
            w.set_metadata(keys::XEN_CHECKPOINT, &k.to_string())?;
        }
        w.set_metadata(keys::CLASSES_SOURCE, "converter")?;
        if let Some(p) = &self.opts.phase {
            w.set_phase(p.clone())?;
        }
        let mut report = w.finish()?;
        if path != report.path {
            let path = pbr_format::write::destination(&path)?;
            std::fs::rename(&report.path, &path)
                .map_err(|e| Error::io(format!("cannot rename the checkpoint image to {}", path.display()), e))?;
            report.path = path;
        }
        Ok(report)
    }
}

/// Where checkpoint `k`'s image goes: `OUT` with `.cpK` before its
/// extension (`guest.pbr` -> `guest.cp1.pbr`).
pub fn checkpoint_path(out: &Path, k: u32) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match out.extension() {
        Some(e) => format!("{stem}.cp{k}.{}", e.to_string_lossy()),
        None => format!("{stem}.cp{k}"),
    };
    out.with_file_name(name)
}
