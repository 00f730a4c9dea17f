//! The libxc stream inside an `xl save` file's LIBXC_CONTEXT: its image and
//! domain headers and its records, pages going straight to the writer.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Read;

use pbr_format::{DeviceBlob, DeviceOrigin, PageClass};

use super::super::format::{DOMAIN_HVM, DOMAIN_PV, LIBXC_IDENT, LIBXC_MARKER, PAGE, REC_LENGTH_MAX, blob};
use super::super::pages::{self, Shape};
use super::super::record::{self, libxc};
use super::super::{hvm, pv};
use super::{Conv, LibxcEnd, config_str, libxc_blob};
use crate::error::{Error, Result};

impl<R: Read> Conv<'_, R> {
    pub(super) fn libxc_headers(&mut self) -> Result<()> {
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

    pub(super) fn flush_shape(&mut self) {
        if let Some(s) = self.shape.take() {
            self.blobs.push(libxc_blob(
                record::libxc_name(libxc::PAGE_DATA).unwrap_or_default().into(),
                libxc::PAGE_DATA,
                s.encode(),
            ));
        }
    }

    pub(super) fn libxc_records(&mut self) -> Result<LibxcEnd> {
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
                let w = self.writer.as_mut().ok_or_else(|| Error::Internal("no image writer".into()))?;
                let class = if ty == pages::page_type::NOTAB { PageClass::Unknown } else { PageClass::Kernel };
                w.write_page(pfn, &self.page, class)?;
            }
            self.data_pages += 1;
        }
        self.page_records += 1;
        Ok(())
    }
}
