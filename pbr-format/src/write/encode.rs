//! Serialising the small sections into bytes.

use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::base::BaseRef;
use crate::device::DeviceBlob;
use crate::error::{Error, Result};
use crate::manifest::{CacheRef, FileEntry};
use crate::phase::Phase;
use crate::pod::{
    ARCH_X86_64, BaseRecord, CacheRefRecord, DeviceRecord, DiskRefRecord, FILE_CACHE_ONLY, FileRecord, MetadataRecord,
    PhaseRecord, REGION_READ_ONLY, REGION_SYNTHETIC, RegionRecord, TablePrefix, VCPU_DEBUGREGS, VCPU_EVENTS,
    VCPU_LAPIC, VCPU_TSC, VcpuHeader, X86VcpuFixed,
};
use crate::refill::DiskRefs;
use crate::region::Region;
use crate::vcpu::{Vcpu, X86Vcpu};

/// A table section being built: records, then a heap.
pub(crate) struct TableBuf {
    records: Vec<u8>,
    heap: Vec<u8>,
    count: u32,
    record_size: u32,
}

impl TableBuf {
    pub fn new(record_size: usize) -> TableBuf {
        TableBuf { records: Vec::new(), heap: Vec::new(), count: 0, record_size: record_size as u32 }
    }

    /// Appends `b` to the heap and returns its offset.
    pub fn heap(&mut self, b: &[u8]) -> Result<u64> {
        let off = self.heap.len() as u64;
        self.heap.extend_from_slice(b);
        Ok(off)
    }

    /// Appends a string to the heap: `(offset, length)` as u32.
    pub fn string(&mut self, s: &str) -> Result<(U32, U32)> {
        let off = u32::try_from(self.heap(s.as_bytes())?).map_err(|_| Error::invalid("section heap exceeds 4 GiB"))?;
        Ok((U32::new(off), U32::new(s.len() as u32)))
    }

    pub fn push<T: IntoBytes + zerocopy::Immutable>(&mut self, r: &T) {
        debug_assert_eq!(size_of::<T>(), self.record_size as usize);
        self.records.extend_from_slice(r.as_bytes());
        self.count += 1;
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let prefix = TablePrefix { count: U32::new(self.count), record_size: U32::new(self.record_size) };
        let mut out = Vec::with_capacity(8 + self.records.len() + self.heap.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&self.records);
        out.extend_from_slice(&self.heap);
        out
    }
}

pub(crate) fn regions(regions: &[Region<'_>]) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<RegionRecord>());
    for r in regions {
        let (name_off, name_len) = t.string(&r.name)?;
        let flags = if r.read_only { REGION_READ_ONLY } else { 0 } | if r.synthetic { REGION_SYNTHETIC } else { 0 };
        t.push(&RegionRecord {
            base: U64::new(r.base),
            length: U64::new(r.length),
            source_offset: U64::new(r.source_offset),
            flags: U32::new(flags),
            name_off,
            name_len,
            reserved: U32::new(0),
        });
    }
    Ok(t.into_bytes())
}

pub(crate) fn phase(p: &Phase<'_>) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<PhaseRecord>());
    let (name_off, name_len) = t.string(&p.name)?;
    t.push(&PhaseRecord {
        sequence: U32::new(p.sequence),
        reserved: U32::new(0),
        since_boot_ns: U64::new(p.since_boot_ns),
        captured_unix_ns: U64::new(p.captured_unix_ns),
        name_off,
        name_len,
    });
    Ok(t.into_bytes())
}

pub(crate) fn metadata(pairs: &[(String, String)]) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<MetadataRecord>());
    for (k, v) in pairs {
        let (key_off, key_len) = t.string(k)?;
        let (value_off, value_len) = t.string(v)?;
        t.push(&MetadataRecord { key_off, key_len, value_off, value_len });
    }
    Ok(t.into_bytes())
}

pub(crate) fn devices(blobs: &[DeviceBlob<'_>]) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<DeviceRecord>());
    for b in blobs {
        let (name_off, name_len) = t.string(&b.name)?;
        let data_off = t.heap(&b.data)?;
        t.push(&DeviceRecord {
            origin: U32::new(b.origin.0),
            instance: U32::new(b.instance),
            version: U32::new(b.version),
            flags: U32::new(b.flags),
            name_off,
            name_len,
            data_off: U64::new(data_off),
            data_len: U64::new(b.data.len() as u64),
        });
    }
    Ok(t.into_bytes())
}

pub(crate) fn manifest(files: &[FileEntry<'_>]) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<FileRecord>());
    for f in files {
        let (path_off, path_len) = t.string(&f.path)?;
        t.push(&FileRecord {
            size: U64::new(f.size),
            mtime_ns: U64::new(f.mtime_ns as u64),
            inode: U64::new(f.inode),
            blake3: f.blake3,
            path_off,
            path_len,
            flags: U32::new(if f.cache_only { FILE_CACHE_ONLY } else { 0 }),
            reserved: U32::new(0),
        });
    }
    Ok(t.into_bytes())
}

pub(crate) fn cache_refs(refs: &[CacheRef]) -> Vec<u8> {
    let mut t = TableBuf::new(size_of::<CacheRefRecord>());
    for c in refs {
        t.push(&CacheRefRecord {
            gfn: U64::new(c.gfn),
            file_index: U32::new(c.file_index),
            flags: U32::new(0),
            offset: U64::new(c.offset),
        });
    }
    t.into_bytes()
}

pub(crate) fn disk_refs(refs: &DiskRefs) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<DiskRefRecord>());
    let paths = refs.files.iter().map(|f| t.string(f)).collect::<Result<Vec<_>>>()?;
    for r in &refs.pages {
        let (path_off, path_len) = paths[r.file as usize];
        t.push(&DiskRefRecord {
            gfn: U64::new(r.gfn),
            disk_offset: U64::new(r.disk_offset),
            file_offset: U64::new(r.file_offset),
            disk: U32::new(r.disk),
            length: U32::new(r.length),
            crc32: U32::new(r.crc32),
            path_off,
            path_len,
            reserved: U32::new(0),
        });
    }
    Ok(t.into_bytes())
}

pub(crate) fn base(b: &BaseRef<'_>) -> Result<Vec<u8>> {
    let mut t = TableBuf::new(size_of::<BaseRecord>());
    let (name_off, name_len) = t.string(&b.name)?;
    t.push(&BaseRecord {
        base_blake3: b.blake3,
        result_blake3: b.result_blake3.unwrap_or([0; 32]),
        page_size: U32::new(b.page_size),
        reserved: U32::new(0),
        name_off,
        name_len,
    });
    Ok(t.into_bytes())
}

pub(crate) fn vcpus(vcpus: &[Vcpu]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(TablePrefix { count: U32::new(vcpus.len() as u32), record_size: U32::new(0) }.as_bytes());
    for v in vcpus {
        let (arch, id, flags, body) = match v {
            Vcpu::X86_64(x) => {
                let (flags, body) = x86_body(x);
                (ARCH_X86_64, x.id, flags, body)
            }
            Vcpu::Other { arch, id, flags, body } => (*arch, *id, *flags, body.clone()),
        };
        let length = (16 + body.len()).next_multiple_of(8);
        out.extend_from_slice(
            VcpuHeader {
                arch: U32::new(arch),
                id: U32::new(id),
                length: U32::new(length as u32),
                flags: U32::new(flags),
            }
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        out.resize(out.len() + (length - 16 - body.len()), 0);
    }
    out
}

fn x86_body(x: &X86Vcpu) -> (u32, Vec<u8>) {
    let mut flags = 0;
    let mut lapic = [0u8; 1024];
    if let Some(l) = &x.lapic {
        lapic.copy_from_slice(&l[..]);
        flags |= VCPU_LAPIC;
    }
    if x.events.is_some() {
        flags |= VCPU_EVENTS;
    }
    if x.debugregs.is_some() {
        flags |= VCPU_DEBUGREGS;
    }
    if x.tsc.is_some() {
        flags |= VCPU_TSC;
    }
    let fixed = X86VcpuFixed {
        regs: x.regs,
        sregs: x.sregs,
        debugregs: x.debugregs.unwrap_or_default(),
        events: x.events.unwrap_or([0; 64]),
        lapic,
        tsc: U64::new(x.tsc.unwrap_or(0)),
        tsc_khz: U32::new(x.tsc_khz),
        mp_state: U32::new(x.mp_state),
        xcr0: U64::new(x.xcr0),
        msr_count: U32::new(x.msrs.len() as u32),
        xsave_len: U32::new(x.xsave.len() as u32),
    };
    let mut body = fixed.as_bytes().to_vec();
    body.extend_from_slice(x.msrs.as_bytes());
    body.extend_from_slice(&x.xsave);
    (flags, body)
}
