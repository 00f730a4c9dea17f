//! Xen `xl save` files (the xl header, the libxl v2 stream and the libxc
//! v2/v3 stream inside it): import into `.pbr` and export back
//! (`spec/xen.md`).
//!
//! Import reads forward only, so it works on pipes. Pages go straight to
//! the image writer; every other record is kept as a device blob in stream
//! order, `PAGE_DATA` records as their pfn/type *shape*, so export writes
//! the same stream again. A stream names no memory layout before its
//! pages, so the image's regions are the runs of pages the stream
//! populated, set when it ends.

pub mod export;
pub mod hvm;
pub mod pages;
pub mod pv;
pub mod record;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use pbr_format::limits::MAX_REGIONS;
use pbr_format::{
    DeviceBlob, DeviceOrigin, Image, ImageWriter, PageClass, PageEncoding, Phase, Region, Vcpu, WriteReport, X86Vcpu,
};

use crate::convert::XL_MAGIC;
use crate::error::{Error, Result};
use crate::qemu::reader::StreamReader;
use pages::Shape;
use record::{libxc, libxl};

/// `LibxlFmt`, the libxl stream header's ident (big-endian).
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
/// The libxc image header's marker.
pub const LIBXC_MARKER: u64 = u64::MAX;
/// `XENF`, the libxc image header's id (big-endian).
pub const LIBXC_IDENT: u32 = 0x5845_4e46;
/// The xl header's byte-order marker, as a little-endian host writes it.
pub const BYTE_ORDER_LE: [u8; 4] = [4, 3, 2, 1];
/// libxc's cap on a record body (`REC_LENGTH_MAX`).
pub const REC_LENGTH_MAX: u32 = 128 << 20;
/// Cap on a libxl record body (libxl itself has none).
pub const LIBXL_RECORD_MAX: u32 = 256 << 20;
/// Cap on the xl header's optional data (the domain configuration).
pub const OPTIONAL_DATA_MAX: u32 = 16 << 20;
/// libxc domain types.
pub const DOMAIN_PV: u32 = 1;
/// libxc domain type of HVM and PVH guests.
pub const DOMAIN_HVM: u32 = 2;
/// The xl mandatory flags: JSON config, libxl v2 stream.
pub const XL_FLAG_JSON: u32 = 1;
/// A libxl v2 stream follows the header.
pub const XL_FLAG_STREAM_V2: u32 = 2;
const PAGE: usize = 4096;

/// Names of the blobs that are not records.
pub mod blob {
    /// The xl header and its optional data, verbatim (origin xen-libxl).
    pub const XL_HEADER: &str = "xl-header";
    /// The 16-byte libxl stream header (origin xen-libxl).
    pub const LIBXL_HEADER: &str = "libxl-header";
    /// The libxc image and domain headers, 40 bytes (origin xen-libxc).
    pub const LIBXC_HEADER: &str = "libxc-header";
    /// Bytes after the libxl END record (origin xen-libxl).
    pub const TRAILING: &str = "trailing-bytes";
}

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

/// Whether `head` starts like an `xl save` file.
pub fn is_xl_file(head: &[u8]) -> bool {
    head.starts_with(XL_MAGIC)
}

/// Converts the `xl save` file read from `input` into a `.pbr` image at
/// `out`; `progress` gets the number of bytes consumed.
///
/// # Errors
/// A malformed or truncated file (named with its record and offset), a
/// legacy stream, I/O. Nothing is created at `out` on error.
pub fn convert<R: Read>(input: R, out: &Path, opts: &ConvertOptions, progress: &dyn Fn(u64)) -> Result<ConvertReport> {
    let mut c = Conv {
        r: StreamReader::for_format("xl", input, 0),
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
        let opts = crate::convert::writer_options(self.opts.page_hashes, !self.opts.no_sync);
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

    fn libxc_headers(&mut self) -> Result<()> {
        let at = self.r.pos();
        let mut h = [0u8; 40];
        self.r.read_exact(&mut h, "the libxc image and domain headers")?;
        let be64 = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
        let be32 = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap_or_default());
        let le32 = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap_or_default());
        if be64 != LIBXC_MARKER {
            return Err(self.err_at(
                at,
                "libxc image marker is not all ones: a legacy (pre-Xen-4.6) libxc image; convert it with Xen's convert-legacy-stream first",
            ));
        }
        if be32(8) != LIBXC_IDENT {
            return Err(self.err_at(at + 8, format!("libxc image id {:#x}, expected 'XENF'", be32(8))));
        }
        self.version = be32(12);
        if !(2..=3).contains(&self.version) {
            return Err(
                self.err_at(at + 12, format!("libxc stream version {}; versions 2 and 3 are read", self.version))
            );
        }
        let options = u16::from_be_bytes([h[16], h[17]]);
        if options & 1 != 0 {
            return Err(self.err_at(at + 16, "a big-endian libxc stream; only little-endian streams are read"));
        }
        if options != 0 || h[18..24] != [0; 6] {
            return Err(self.err_at(at + 16, "libxc image header has reserved bits set"));
        }
        self.domain = le32(24);
        let page_shift = u16::from_le_bytes([h[28], h[29]]);
        if self.domain != DOMAIN_PV && self.domain != DOMAIN_HVM {
            return Err(
                self.err_at(at + 24, format!("libxc domain type {}; 1 (x86 PV) and 2 (x86 HVM) exist", self.domain))
            );
        }
        if page_shift != 12 {
            return Err(self.err_at(at + 28, format!("page shift {page_shift}; only 12 (4 KiB pages) exists")));
        }
        if h[30..32] != [0; 2] {
            return Err(self.err_at(at + 30, "libxc domain header has reserved bits set"));
        }
        self.xen_version = format!("{}.{}", le32(32), le32(36));
        if let Some((json, true)) = &self.config
            && let Some(ty) = config_str(json, &["c_info", "type"])
            && (ty == "pv") != (self.domain == DOMAIN_PV)
        {
            self.notes
                .push(format!("the xl config says type '{ty}' but the libxc stream is of domain type {}", self.domain));
        }
        self.blobs.push(libxc_blob(blob::LIBXC_HEADER.into(), 0, h.to_vec()));
        Ok(())
    }

    fn flush_shape(&mut self) {
        if let Some(s) = self.shape.take() {
            self.blobs.push(libxc_blob(
                record::libxc_name(libxc::PAGE_DATA).unwrap_or_default().into(),
                libxc::PAGE_DATA,
                s.encode(),
            ));
        }
    }

    fn libxc_records(&mut self) -> Result<LibxcEnd> {
        loop {
            (self.progress)(self.r.pos());
            let (at, t, len) = self.record_header("a libxc record header")?;
            if len > REC_LENGTH_MAX {
                return Err(
                    self.err_at(at, format!("libxc record type {t:#x} of {len} bytes exceeds libxc's 128 MiB cap"))
                );
            }
            if t == libxc::PAGE_DATA {
                self.page_data(at, len)?;
                continue;
            }
            self.flush_shape();
            let name = match record::libxc_name(t) {
                Some(n) => n.to_owned(),
                None if t & libxc::OPTIONAL != 0 => {
                    self.notes.push(format!("optional libxc record type {t:#x} at {at:#x} is not known; kept"));
                    format!("optional-{t:#x}")
                }
                None => return Err(self.err_at(at, format!("unknown mandatory libxc record type {t:#x}"))),
            };
            let body = self.body(len, &format!("libxc record {name} at {at:#x}"))?;
            let end = self.libxc_record(at, t, &name, &body)?;
            if t != libxc::HVM_CONTEXT {
                self.blobs.push(libxc_blob(name, t, body));
            }
            if let Some(e) = end {
                return Ok(e);
            }
        }
    }

    /// Checks and takes in one libxc record other than `PAGE_DATA`.
    fn libxc_record(&mut self, at: u64, t: u32, name: &str, body: &[u8]) -> Result<Option<LibxcEnd>> {
        let len = body.len();
        let pv = self.domain == DOMAIN_PV;
        let le32 = |i: usize| body.get(i..i + 4).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        let bad = |s: &Self, what: String| Err(s.err_at(at, format!("libxc {name} record of {len} bytes: {what}")));
        let pv_only = matches!(
            t,
            libxc::X86_PV_INFO
                | libxc::X86_PV_P2M_FRAMES
                | libxc::X86_PV_VCPU_BASIC
                | libxc::X86_PV_VCPU_EXTENDED
                | libxc::X86_PV_VCPU_XSAVE
                | libxc::X86_PV_VCPU_MSRS
                | libxc::SHARED_INFO
        );
        if pv_only && !pv {
            return bad(self, "a PV record in an HVM stream".into());
        }
        if matches!(t, libxc::HVM_CONTEXT | libxc::HVM_PARAMS) && pv {
            return bad(self, "an HVM record in a PV stream".into());
        }
        if matches!(t, libxc::STATIC_DATA_END | libxc::X86_CPUID_POLICY | libxc::X86_MSR_POLICY) && self.version < 3 {
            return bad(self, "exists only in version 3 streams".into());
        }
        let must_be_empty = matches!(t, libxc::END | libxc::VERIFY | libxc::CHECKPOINT | libxc::STATIC_DATA_END);
        if must_be_empty && len != 0 {
            return bad(self, "must be empty".into());
        }
        match t {
            libxc::END => return Ok(Some(LibxcEnd::End)),
            libxc::CHECKPOINT => {
                self.checkpoints += 1;
                return Ok(Some(LibxcEnd::Checkpoint));
            }
            libxc::VERIFY => self.verify = true,
            libxc::STATIC_DATA_END => {
                if self.static_data_end {
                    return bad(self, "a second STATIC_DATA_END".into());
                }
                self.static_data_end = true;
            }
            libxc::TOOLSTACK => {
                return bad(self, "the deprecated TOOLSTACK record (Xen 4.6 development streams), which Xen's restore does not handle".into());
            }
            libxc::CHECKPOINT_DIRTY_PFN_LIST => {
                return bad(self, "belongs to COLO's back channel, not to a saved stream".into());
            }
            libxc::X86_CPUID_POLICY if len == 0 || !len.is_multiple_of(24) => {
                return bad(self, "not a non-empty list of 24-byte leaves".into());
            }
            libxc::X86_MSR_POLICY if len == 0 || !len.is_multiple_of(16) => {
                return bad(self, "not a non-empty list of 16-byte entries".into());
            }
            libxc::X86_TSC_INFO => {
                if len != 24 || le32(20) != 0 {
                    return bad(self, "not 24 bytes with a zero reserved word".into());
                }
                self.tsc_khz = le32(4);
            }
            libxc::HVM_PARAMS if len != 0 => {
                let count = le32(0) as usize;
                if len < 8 || le32(4) != 0 || (len - 8) / 16 != count || !(len - 8).is_multiple_of(16) {
                    return bad(self, format!("not 8 + 16 x its count {count} with a zero reserved word"));
                }
            }
            libxc::HVM_CONTEXT => self.hvm_context(at, body)?,
            libxc::X86_PV_INFO => {
                if len != 8 || ![4, 8].contains(&body[0]) || ![3, 4].contains(&body[1]) {
                    return bad(self, "not 8 bytes of guest width 4 or 8 and 3 or 4 paging levels".into());
                }
                self.pv_width = body[0];
            }
            libxc::X86_PV_P2M_FRAMES => {
                if len < 8 || !len.is_multiple_of(8) {
                    return bad(self, "not 8 bytes and a list of frames".into());
                }
                if self.version >= 3 && !self.static_data_end {
                    return bad(self, "comes before STATIC_DATA_END".into());
                }
                self.p2m_seen = true;
            }
            libxc::SHARED_INFO if len != PAGE => return bad(self, "not one page".into()),
            libxc::X86_PV_VCPU_BASIC
            | libxc::X86_PV_VCPU_EXTENDED
            | libxc::X86_PV_VCPU_XSAVE
            | libxc::X86_PV_VCPU_MSRS => {
                if len != 0 && len < 8 {
                    return bad(self, "shorter than its vCPU header".into());
                }
                // Errata 1: Xen 4.6-4.8 wrote empty records; they mean nothing.
                if len > 8 {
                    self.pv_vcpu(at, t, le32(0), &body[8..])?;
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn pv_vcpu(&mut self, at: u64, t: u32, id: u32, b: &[u8]) -> Result<()> {
        if self.pv_width != 8 {
            if t == libxc::X86_PV_VCPU_BASIC {
                self.notes
                    .push(format!("vCPU {id}: contexts of {}-bit PV guests are kept, not decoded", self.pv_width * 8));
            }
            return Ok(());
        }
        let r = match t {
            libxc::X86_PV_VCPU_BASIC => pv::decode_basic(id, b).map(|v| {
                self.pv_vcpus.insert(id, v);
            }),
            libxc::X86_PV_VCPU_XSAVE | libxc::X86_PV_VCPU_MSRS => match self.pv_vcpus.get_mut(&id) {
                Some(v) if t == libxc::X86_PV_VCPU_XSAVE => pv::add_xsave(v, b),
                Some(v) => pv::add_msrs(v, b),
                None => Err(format!("vCPU {id}: a record before its X86_PV_VCPU_BASIC")),
            },
            _ => Ok(()),
        };
        r.map_err(|m| self.err_at(at, m))
    }

    fn hvm_context(&mut self, at: u64, body: &[u8]) -> Result<()> {
        if body.is_empty() {
            return Err(self.err_at(at, "libxc hvm-context record is empty"));
        }
        let entries = hvm::entries(body).map_err(|m| self.err_at(at + 8, format!("HVM context: {m}")))?;
        self.hvm_vcpus =
            hvm::decode_vcpus(&entries, self.tsc_khz).map_err(|m| self.err_at(at + 8, format!("HVM context: {m}")))?;
        self.blobs.push(libxc_blob(
            record::libxc_name(libxc::HVM_CONTEXT).unwrap_or_default().into(),
            libxc::HVM_CONTEXT,
            Vec::new(),
        ));
        self.hvm_entries = entries.len();
        for e in entries {
            self.blobs.push(DeviceBlob {
                origin: DeviceOrigin::XEN_HVM,
                name: Cow::Owned(hvm::name(e.code)),
                instance: u32::from(e.instance),
                version: 0,
                flags: u32::from(e.code),
                data: Cow::Owned(e.data.to_vec()),
            });
        }
        Ok(())
    }

    fn page_data(&mut self, at: u64, len: u32) -> Result<()> {
        let err = |s: &Self, m: String| Err(s.err_at(at, format!("PAGE_DATA record: {m}")));
        if self.version >= 3 && !self.static_data_end {
            return err(self, "comes before STATIC_DATA_END (Xen's restore fails: 'No STATIC_DATA_END seen')".into());
        }
        if self.domain == DOMAIN_PV && !self.p2m_seen {
            return err(self, "a PV stream sends X86_PV_P2M_FRAMES before its pages".into());
        }
        if len <= 8 {
            return err(self, format!("{len} bytes cannot hold a count and a pfn"));
        }
        let count = self.r.le32("the PAGE_DATA count")?;
        let reserved = self.r.le32("the PAGE_DATA reserved word")?;
        if reserved != 0 {
            return Err(self.err_at(at + 12, "PAGE_DATA record: the reserved word is not zero"));
        }
        if count == 0 || u64::from(len - 8) / 8 < u64::from(count) {
            return err(self, format!("count {count} does not fit in its {len} bytes"));
        }
        let pfns_at = self.r.pos();
        let raw = self.r.read_vec(8 * u64::from(count), "the PAGE_DATA pfns")?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut with_data = 0u64;
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let (ty, res, pfn) = pages::split_entry(u64::from_le_bytes(e.try_into().unwrap_or_default()));
            let here = pfns_at + 8 * i as u64;
            if res != 0 {
                return Err(self.err_at(here, format!("PAGE_DATA entry {i}: reserved bits 59..52 are set")));
            }
            if !pages::known_type(ty) {
                return Err(self.err_at(here, format!("PAGE_DATA entry {i}: page type {ty:#x} does not exist")));
            }
            if pfn >= pages::PFN_LIMIT {
                return Err(self.err_at(
                    here,
                    format!("PAGE_DATA entry {i}: pfn {pfn:#x} lies beyond a 52-bit physical address space"),
                ));
            }
            if self.domain == DOMAIN_HVM && pages::is_page_table(ty) {
                return Err(self.err_at(here, format!("PAGE_DATA entry {i}: a PV page-table type in an HVM stream")));
            }
            with_data += u64::from(pages::has_data(ty));
            entries.push((pfn, ty));
        }
        let expect = 8 + 8 * u64::from(count) + PAGE as u64 * with_data;
        if u64::from(len) != expect {
            return err(self, format!("{len} bytes, but {count} pfns with {with_data} data pages need {expect}"));
        }
        let mut seen: HashSet<u64> = HashSet::with_capacity(entries.len());
        if let Some(i) = entries.iter().position(|&(pfn, _)| !seen.insert(pfn)) {
            return Err(self.err_at(
                pfns_at + 8 * i as u64,
                format!("PAGE_DATA entry {i}: pfn {:#x} appears twice in one record", entries[i].0),
            ));
        }
        let shape = self.shape.get_or_insert_with(Shape::default);
        shape.begin_record();
        for &(pfn, ty) in &entries {
            shape.push(pfn, ty);
        }
        for run in shape.records.last().into_iter().flatten() {
            if pages::populated(run.ty) {
                self.populated.push((run.pfn, u64::from(run.count)));
            } else {
                self.hole_entries += u64::from(run.count);
            }
        }
        if self.populated.len() > 1 << 20 {
            self.populated = pages::layout(std::mem::take(&mut self.populated), 0).0;
        }
        for &(pfn, ty) in &entries {
            if !pages::has_data(ty) {
                continue;
            }
            self.r.read_exact(&mut self.page, "a page of a PAGE_DATA record")?;
            // After VERIFY, pages are copies to compare, not to apply.
            if !self.verify {
                let w = self.writer.as_mut().ok_or_else(|| Error::Unsupported("no image writer".into()))?;
                let class = if ty == pages::page_type::NOTAB { PageClass::Unknown } else { PageClass::Kernel };
                w.write_page(pfn, &self.page, class)?;
            }
            self.data_pages += 1;
        }
        self.page_records += 1;
        Ok(())
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
        let mut w = self.writer.take().ok_or_else(|| Error::Unsupported("no image writer".into()))?;
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
        w.set_metadata("source.format", "xl")?;
        w.set_metadata("xen.guest_type", if self.domain == DOMAIN_PV { "pv" } else { "hvm" })?;
        w.set_metadata("xen.libxc_version", &self.version.to_string())?;
        w.set_metadata("xen.version", &self.xen_version)?;
        let populated: u64 = runs.iter().map(|r| r.1).sum();
        w.set_metadata("guest.ram_size", &(populated * ps).to_string())?;
        if let Some((cfg, _)) = &self.config {
            w.set_metadata("xl.config", cfg)?;
        }
        if let Some(k) = checkpoint {
            w.set_metadata("xen.checkpoint", &k.to_string())?;
        }
        w.set_metadata("classes.source", "converter")?;
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

/// What an image converted from an `xl save` file holds of Xen's records,
/// for `inspect`: the guest type and versions from metadata, record counts,
/// and the device model's state (`EMULATOR_CONTEXT`) summarised.
pub fn summary(img: &Image) -> Option<serde_json::Value> {
    if img.metadata_value("source.format") != Some("xl") {
        return None;
    }
    let blobs: Vec<DeviceBlob<'_>> = img.devices().collect();
    let count = |o: DeviceOrigin, f: u32| blobs.iter().filter(|b| b.origin == o && b.flags == f).count();
    let shapes: usize = blobs
        .iter()
        .filter(|b| b.origin == DeviceOrigin::XEN_LIBXC && b.flags == libxc::PAGE_DATA)
        .filter_map(|b| Shape::decode(&b.data).ok())
        .map(|s| s.records.len())
        .sum();
    let emulator = blobs
        .iter()
        .rev()
        .find(|b| b.origin == DeviceOrigin::XEN_LIBXL && b.flags == libxl::EMULATOR_CONTEXT)
        .map(|b| {
            let state = b.data.get(8..).unwrap_or_default();
            let kind =
                ["unknown", "qemu-traditional", "qemu-upstream"].get(b.version as usize).copied().unwrap_or("unknown");
            let sections = crate::qemu::device_section_names(state);
            serde_json::json!({
                "emulator": kind, "index": b.instance, "bytes": state.len(),
                "qemu_stream": sections.is_ok(),
                "sections": sections.as_ref().ok(),
                "note": sections.err(),
            })
        });
    Some(serde_json::json!({
        "guest_type": img.metadata_value("xen.guest_type"),
        "libxc_version": img.metadata_value("xen.libxc_version"),
        "xen_version": img.metadata_value("xen.version"),
        "page_data_records": shapes,
        "hvm_context_entries": blobs.iter().filter(|b| b.origin == DeviceOrigin::XEN_HVM).count(),
        "checkpoints": count(DeviceOrigin::XEN_LIBXC, libxc::CHECKPOINT),
        "emulator_context": emulator,
    }))
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
