//! `export --to xl`: an image converted from an `xl save` file, back into
//! an `xl save` file that `xl restore` (and Xen's stream verifier) reads.
//!
//! The blobs are walked in capture order: headers verbatim, each record
//! framed again, `PAGE_DATA` records rebuilt from their shape with the
//! image's current page content, and the HVM context reassembled from its
//! entries, the last context's `CPU` and `LAPIC_REGS` entries written from
//! the image's vCPU records when those were changed. An unchanged image
//! gives back the original bytes. Pages holding data that no recorded
//! `PAGE_DATA` record covers (added by a tool) follow the last one, in
//! records of at most 1024 pages as Xen writes them.

use std::io::{BufWriter, Write};
use std::path::Path;

use pbr_format::keys;
use pbr_format::{DeviceBlob, DeviceOrigin, Image, PageEncoding, Vcpu, X86Vcpu};

use super::format::blob;
use super::hvm;
use super::pages::{self, SAVER_BATCH, Shape};
use super::record::{self, libxc};
use crate::error::{Error, Result};

/// What [`export_xl`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XlExport {
    /// Bytes written.
    pub stream_bytes: u64,
    /// `PAGE_DATA` records written.
    pub page_records: u64,
    /// Pages with data written.
    pub data_pages: u64,
    /// Pages added after the recorded records.
    pub added_pages: u64,
    /// `CPU`/`LAPIC_REGS` entries written from changed vCPU records.
    pub patched_entries: u64,
}

struct Emitter<'a, W: Write> {
    out: W,
    img: &'a Image,
    buf: Vec<u8>,
    report: XlExport,
}

impl<W: Write> Emitter<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.report.stream_bytes += b.len() as u64;
        self.out.write_all(b).map_err(|e| Error::io("cannot write the xl file", e))
    }

    fn record(&mut self, t: u32, body: &[u8]) -> Result<()> {
        let len = u32::try_from(body.len()).map_err(|_| Error::Inconsistent("a record body exceeds 4 GiB".into()))?;
        let mut h = [0u8; 8];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[4..].copy_from_slice(&len.to_le_bytes());
        self.put(&h)?;
        self.put(body)?;
        self.put(&[0u8; 8][..record::padding(len)])
    }

    /// One `PAGE_DATA` record of `entries` (`(pfn, type)`).
    fn page_record(&mut self, entries: &[(u64, u8)]) -> Result<()> {
        let data = entries.iter().filter(|e| pages::has_data(e.1)).count() as u64;
        let len = 8 + 8 * entries.len() as u64 + 4096 * data;
        let len = u32::try_from(len).map_err(|_| Error::Inconsistent("a PAGE_DATA record exceeds 4 GiB".into()))?;
        let mut head = Vec::with_capacity(16 + 8 * entries.len());
        head.extend_from_slice(&libxc::PAGE_DATA.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        for &(pfn, ty) in entries {
            head.extend_from_slice(&((u64::from(ty) << 60) | pfn).to_le_bytes());
        }
        self.put(&head)?;
        for &(pfn, _) in entries.iter().filter(|e| pages::has_data(e.1)) {
            let mut buf = std::mem::take(&mut self.buf);
            let r = match self.img.read_page(pfn, &mut buf) {
                Ok(p) => self.out.write_all(p).map_err(|e| Error::io("cannot write the xl file", e)),
                // The page's own error: damage stays damage.
                Err(e) => Err(e.into()),
            };
            self.buf = buf;
            r?;
            self.report.stream_bytes += 4096;
            self.report.data_pages += 1;
        }
        self.report.page_records += 1;
        Ok(())
    }

    fn shape(&mut self, shape: &Shape) -> Result<()> {
        for rec in &shape.records {
            let entries: Vec<(u64, u8)> =
                rec.iter().flat_map(|r| (0..u64::from(r.count)).map(move |i| (r.pfn + i, r.ty))).collect();
            self.page_record(&entries)?;
        }
        Ok(())
    }
}

fn shape_of(b: &DeviceBlob<'_>) -> Result<Shape> {
    Shape::decode(&b.data).map_err(|m| Error::Inconsistent(format!("device blob '{}': {m}", b.name)))
}

/// Pages of `img` holding data that no shape covers, in order.
fn uncovered(img: &Image, shapes: &[Shape]) -> Vec<u64> {
    let runs: Vec<(u64, u64)> = shapes
        .iter()
        .flat_map(|s| s.records.iter().flatten())
        .filter(|r| pages::has_data(r.ty))
        .map(|r| (r.pfn, u64::from(r.count)))
        .collect();
    let (covered, _) = pages::layout(runs, 0);
    let mut out = Vec::new();
    for e in img.extents() {
        if !matches!(e.encoding, PageEncoding::Raw | PageEncoding::Lz4 | PageEncoding::Dup) {
            continue;
        }
        for gfn in e.gfns() {
            let i = covered.partition_point(|r| r.0 <= gfn);
            if i == 0 || gfn >= covered[i - 1].0 + covered[i - 1].1 {
                out.push(gfn);
            }
        }
    }
    out
}

/// Writes `img` (converted from an `xl save` file) as an `xl save` file at
/// `out`, atomically.
///
/// # Errors
/// An image not converted from an xl file, a damaged shape or page, I/O.
/// Nothing is created at `out` on error.
pub fn export_xl(img: &Image, out: &Path) -> Result<XlExport> {
    crate::output::write_stream(img, out, |f| export_xl_to(img, f))
}

/// Writes `img` (converted from an `xl save` file) as an `xl save` file
/// into `out` (a file or a pipe).
///
/// # Errors
/// As [`export_xl`].
pub fn export_xl_to<W: Write>(img: &Image, out: W) -> Result<XlExport> {
    if img.metadata_value(keys::SOURCE_FORMAT) != Some("xl") {
        return Err(Error::Usage(format!(
            "the image was converted from {}, not from an xl save file: export --to xl needs its Xen records",
            img.metadata_value(keys::SOURCE_FORMAT).unwrap_or("an unknown source")
        )));
    }
    crate::refill::refuse_refill(img, "export --to xl")?;
    let mut em =
        Emitter { out: BufWriter::with_capacity(1 << 20, out), img, buf: vec![0u8; 4096], report: XlExport::default() };
    let blobs: Vec<DeviceBlob<'_>> = img.devices().filter(|b| b.origin.name().starts_with("xen")).collect();
    let shapes: Vec<Shape> = blobs
        .iter()
        .filter(|b| b.origin == DeviceOrigin::XEN_LIBXC && b.flags == libxc::PAGE_DATA)
        .map(shape_of)
        .collect::<Result<_>>()?;
    let extra = uncovered(img, &shapes);
    let last_shape = blobs.iter().rposition(|b| b.origin == DeviceOrigin::XEN_LIBXC && b.flags == libxc::PAGE_DATA);
    let last_context = blobs.iter().rposition(|b| b.origin == DeviceOrigin::XEN_LIBXC && b.flags == libxc::HVM_CONTEXT);
    let mut i = 0;
    while i < blobs.len() {
        let b = &blobs[i];
        match (b.origin, b.name.as_ref()) {
            (DeviceOrigin::XEN_LIBXL, blob::XL_HEADER | blob::LIBXL_HEADER | blob::TRAILING)
            | (DeviceOrigin::XEN_LIBXC, blob::LIBXC_HEADER) => em.put(&b.data)?,
            (DeviceOrigin::XEN_LIBXC, _) if b.flags == libxc::PAGE_DATA => {
                em.shape(&shape_of(b)?)?;
                if Some(i) == last_shape {
                    for batch in extra.chunks(SAVER_BATCH as usize) {
                        let entries: Vec<(u64, u8)> = batch.iter().map(|&p| (p, pages::page_type::NOTAB)).collect();
                        em.page_record(&entries)?;
                        em.report.added_pages += batch.len() as u64;
                    }
                }
            }
            (DeviceOrigin::XEN_LIBXC, _) if b.flags == libxc::HVM_CONTEXT => {
                let n = blobs[i + 1..].iter().take_while(|e| e.origin == DeviceOrigin::XEN_HVM).count();
                let entries = &blobs[i + 1..i + 1 + n];
                let body = context(img, entries, Some(i) == last_context, &mut em.report)?;
                em.record(libxc::HVM_CONTEXT, &body)?;
                i += n;
            }
            (DeviceOrigin::XEN_HVM, _) => {
                return Err(Error::Inconsistent(format!(
                    "HVM context entry '{}' outside an hvm-context record",
                    b.name
                )));
            }
            _ => em.record(b.flags, &b.data)?,
        }
        i += 1;
    }
    if last_shape.is_none() && !extra.is_empty() {
        return Err(Error::Inconsistent("the image has pages but no PAGE_DATA records to place them after".into()));
    }
    em.out.flush().map_err(|e| Error::io("cannot write the xl file", e))?;
    Ok(em.report)
}

/// The body of an `HVM_CONTEXT` record from its entries; for the last
/// context, the `CPU` and `LAPIC_REGS` entries of each vCPU whose record
/// differs from what the saved entries decode to are written from it.
fn context(img: &Image, blobs: &[DeviceBlob<'_>], last: bool, report: &mut XlExport) -> Result<Vec<u8>> {
    let mut entries: Vec<hvm::Entry<'_>> = Vec::with_capacity(blobs.len());
    for e in blobs {
        let (Ok(code), Ok(instance)) = (u16::try_from(e.flags), u16::try_from(e.instance)) else {
            return Err(Error::Inconsistent(format!(
                "HVM context entry '{}' has an impossible type or instance",
                e.name
            )));
        };
        entries.push(hvm::Entry { code, instance, data: &e.data });
    }
    let changed: Vec<&X86Vcpu> = if last {
        let saved = hvm::decode_vcpus(&entries, 0).unwrap_or_default();
        img.vcpus()
            .iter()
            .filter_map(|v| match v {
                Vcpu::X86_64(x) => Some(&**x),
                Vcpu::Other { .. } => None,
            })
            .filter(|x| {
                saved.iter().find(|s| s.id == x.id).is_some_and(|s| X86Vcpu { tsc_khz: x.tsc_khz, ..s.clone() } != **x)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut parts: Vec<(u16, u16, Vec<u8>)> = Vec::with_capacity(entries.len());
    for e in &entries {
        let mut data = e.data.to_vec();
        if let Some(v) = changed.iter().find(|v| v.id == u32::from(e.instance)) {
            match e.code {
                hvm::code::CPU if hvm::CPU_SIZES.contains(&data.len()) => hvm::encode_cpu(&mut data, v),
                hvm::code::LAPIC_REGS if data.len() == 1024 => {
                    if let Some(l) = &v.lapic {
                        data.copy_from_slice(&l[..]);
                    }
                }
                _ => {}
            }
        }
        if data[..] != e.data[..] {
            report.patched_entries += 1;
        }
        parts.push((e.code, e.instance, data));
    }
    Ok(hvm::assemble(parts.iter().map(|(c, i, d)| (*c, *i, d.as_slice()))))
}
