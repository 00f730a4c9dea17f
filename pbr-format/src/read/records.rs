//! The small table sections: regions, phase, metadata, devices, manifest,
//! cache references, base (`spec/format.md` §5, §7).

use std::borrow::Cow;
use std::ops::Range;

use crate::base::BaseRef;
use crate::device::{DeviceBlob, DeviceOrigin};
use crate::error::{Error, Result};
use crate::limits::{MAX_NAME, MAX_PATH, MAX_REGIONS};
use crate::manifest::{CacheRef, FileEntry, check_path};
use crate::metadata::check_key;
use crate::phase::Phase;
use crate::pod::{
    BaseRecord, CacheRefRecord, DeviceRecord, DiskRefRecord, FILE_CACHE_ONLY, FileRecord, KNOWN_REGION_FLAGS,
    MetadataRecord, PhaseRecord, REGION_READ_ONLY, REGION_SYNTHETIC, RegionRecord,
};
use crate::refill::{DiskRef, DiskRefs};
use crate::region::Region;
use crate::section::SectionKind;
use crate::vcpu::Vcpu;

use super::header::HeaderInfo;
use super::table::{StrSpec, Table};

/// Region and phase names.
const NAME: StrSpec = StrSpec { field: "name", max: MAX_NAME, allow_empty: false };
/// Metadata keys.
const KEY: StrSpec = StrSpec { field: "key", max: MAX_NAME, allow_empty: false };
/// Metadata values.
const VALUE: StrSpec = StrSpec { field: "value", max: u32::MAX, allow_empty: true };
/// Manifest paths.
const PATH: StrSpec = StrSpec { field: "path", max: MAX_PATH, allow_empty: false };
/// Device names and base-image hints.
const LONG_NAME: StrSpec = StrSpec { field: "name", max: MAX_PATH, allow_empty: true };

struct DeviceLoc {
    origin: u32,
    instance: u32,
    version: u32,
    flags: u32,
    name: Range<usize>,
    data: Range<usize>,
}

/// Everything but the page index, checked and decoded at open.
pub(crate) struct Records {
    pub regions: Vec<Region<'static>>,
    pub phase: Option<Phase<'static>>,
    pub metadata: Vec<(String, String)>,
    pub manifest: Vec<FileEntry<'static>>,
    pub cache_refs: Vec<CacheRef>,
    pub disk_refs: DiskRefs,
    pub base: Option<BaseRef<'static>>,
    pub vcpus: Vec<Vcpu>,
    devices: Vec<DeviceLoc>,
}

impl Records {
    pub fn parse(
        bytes: &[u8],
        header: &HeaderInfo,
        find: &dyn Fn(SectionKind) -> Option<Range<usize>>,
    ) -> Result<Records> {
        let regions_range = find(SectionKind::Regions)
            .ok_or_else(|| Error::malformed("section table", 0, "required section REGIONS is missing"))?;
        let regions = parse_regions(bytes, regions_range, header.page_size)?;
        let table = |k: SectionKind, min: usize, max: Option<u32>| -> Result<Option<Table>> {
            find(k).map(|r| Table::parse(bytes, r, k.name(), min, max)).transpose()
        };
        let phase = match table(SectionKind::Phase, size_of::<PhaseRecord>(), Some(1))? {
            Some(t) => Some(parse_phase(bytes, &t)?),
            None => None,
        };
        let metadata = match table(SectionKind::Metadata, size_of::<MetadataRecord>(), None)? {
            Some(t) => parse_metadata(bytes, &t)?,
            None => Vec::new(),
        };
        let manifest = match table(SectionKind::Manifest, size_of::<FileRecord>(), None)? {
            Some(t) => parse_manifest(bytes, &t)?,
            None => Vec::new(),
        };
        let cache_refs = match table(SectionKind::CacheRefs, size_of::<CacheRefRecord>(), None)? {
            Some(t) => parse_cache_refs(bytes, &t, manifest.len())?,
            None => Vec::new(),
        };
        let disk_refs = match table(SectionKind::DiskRefs, size_of::<DiskRefRecord>(), None)? {
            Some(t) => parse_disk_refs(bytes, &t, &regions, header.page_size)?,
            None => DiskRefs::default(),
        };
        let base = match table(SectionKind::Base, size_of::<BaseRecord>(), Some(1))? {
            Some(t) => Some(parse_base(bytes, &t, header.page_size)?),
            None => None,
        };
        let devices = match table(SectionKind::Devices, size_of::<DeviceRecord>(), None)? {
            Some(t) => parse_devices(bytes, &t)?,
            None => Vec::new(),
        };
        let vcpus = match find(SectionKind::Vcpus) {
            Some(r) => super::vcpus::parse(bytes, r)?,
            None => Vec::new(),
        };
        Ok(Records { regions, phase, metadata, manifest, cache_refs, disk_refs, base, vcpus, devices })
    }

    pub fn devices<'a>(&'a self, bytes: &'a [u8]) -> impl ExactSizeIterator<Item = DeviceBlob<'a>> + 'a {
        self.devices.iter().map(move |d| DeviceBlob {
            origin: DeviceOrigin(d.origin),
            name: Cow::Borrowed(std::str::from_utf8(&bytes[d.name.clone()]).unwrap_or_default()),
            instance: d.instance,
            version: d.version,
            flags: d.flags,
            data: Cow::Borrowed(&bytes[d.data.clone()]),
        })
    }
}

fn parse_regions(bytes: &[u8], range: Range<usize>, page_size: u32) -> Result<Vec<Region<'static>>> {
    let t = Table::parse(bytes, range, "REGIONS", size_of::<RegionRecord>(), Some(MAX_REGIONS))?;
    let ps = u64::from(page_size);
    let mut out: Vec<Region<'static>> = Vec::with_capacity(t.count);
    for i in 0..t.count {
        let r: RegionRecord = t.record(bytes, i)?;
        let at = t.offset_of(i);
        let (base, length, flags) = (r.base.get(), r.length.get(), r.flags.get());
        let name = t.heap_str(bytes, i, r.name_off.get(), r.name_len.get(), &NAME)?;
        if base % ps != 0 || length % ps != 0 || length == 0 {
            return Err(Error::malformed(
                "REGIONS",
                at,
                format!(
                    "region {i} '{name}' base {base:#x} length {length:#x} is not a non-empty multiple of the page size"
                ),
            ));
        }
        if base.checked_add(length).is_none() {
            return Err(Error::malformed("REGIONS", at, format!("region {i} '{name}' ends beyond 2^64")));
        }
        if flags & !KNOWN_REGION_FLAGS != 0 {
            return Err(Error::malformed("REGIONS", at, format!("region {i} '{name}' has unknown flags {flags:#x}")));
        }
        if let Some(prev) = out.last()
            && prev.base + prev.length > base
        {
            return Err(Error::malformed(
                "REGIONS",
                at,
                format!("region {i} '{name}' at {base:#x} overlaps or precedes region '{}'", prev.name),
            ));
        }
        out.push(Region {
            base,
            length,
            source_offset: r.source_offset.get(),
            read_only: flags & REGION_READ_ONLY != 0,
            synthetic: flags & REGION_SYNTHETIC != 0,
            name: Cow::Owned(name.to_owned()),
        });
    }
    Ok(out)
}

fn parse_phase(bytes: &[u8], t: &Table) -> Result<Phase<'static>> {
    if t.count != 1 {
        return Err(Error::malformed("PHASE", t.offset_of(0), format!("count is {}, not 1", t.count)));
    }
    let r: PhaseRecord = t.record(bytes, 0)?;
    let name = t.heap_str(bytes, 0, r.name_off.get(), r.name_len.get(), &NAME)?;
    Ok(Phase {
        name: Cow::Owned(name.to_owned()),
        sequence: r.sequence.get(),
        since_boot_ns: r.since_boot_ns.get(),
        captured_unix_ns: r.captured_unix_ns.get(),
    })
}

fn parse_metadata(bytes: &[u8], t: &Table) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for i in 0..t.count {
        let r: MetadataRecord = t.record(bytes, i)?;
        let key = t.heap_str(bytes, i, r.key_off.get(), r.key_len.get(), &KEY)?;
        check_key(key).map_err(|m| Error::malformed("METADATA", t.offset_of(i), m))?;
        let value = t.heap_str(bytes, i, r.value_off.get(), r.value_len.get(), &VALUE)?;
        if out.iter().any(|(k, _)| k == key) {
            return Err(Error::malformed("METADATA", t.offset_of(i), format!("key '{key}' appears twice")));
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn parse_manifest(bytes: &[u8], t: &Table) -> Result<Vec<FileEntry<'static>>> {
    let mut out = Vec::new();
    for i in 0..t.count {
        let r: FileRecord = t.record(bytes, i)?;
        let path = t.heap_str(bytes, i, r.path_off.get(), r.path_len.get(), &PATH)?;
        check_path(path).map_err(|m| Error::malformed("MANIFEST", t.offset_of(i), format!("record {i}: {m}")))?;
        out.push(FileEntry {
            path: Cow::Owned(path.to_owned()),
            size: r.size.get(),
            mtime_ns: r.mtime_ns.get() as i64,
            inode: r.inode.get(),
            blake3: r.blake3,
            cache_only: r.flags.get() & FILE_CACHE_ONLY != 0,
        });
    }
    Ok(out)
}

fn parse_cache_refs(bytes: &[u8], t: &Table, files: usize) -> Result<Vec<CacheRef>> {
    let mut out: Vec<CacheRef> = Vec::new();
    for i in 0..t.count {
        let r: CacheRefRecord = t.record(bytes, i)?;
        let c = CacheRef { gfn: r.gfn.get(), file_index: r.file_index.get(), offset: r.offset.get() };
        if c.file_index as usize >= files {
            return Err(Error::malformed(
                "CACHE_REFS",
                t.offset_of(i),
                format!("record {i} names file {} of a {files}-entry manifest", c.file_index),
            ));
        }
        if out.last().is_some_and(|p| p.gfn >= c.gfn) {
            return Err(Error::malformed("CACHE_REFS", t.offset_of(i), format!("record {i} is not sorted by gfn")));
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_disk_refs(bytes: &[u8], t: &Table, regions: &[Region<'_>], page_size: u32) -> Result<DiskRefs> {
    let mut out = DiskRefs::default();
    // Records of one file share its heap string: each path is one file.
    let mut files: std::collections::HashMap<(u32, u32), u32> = std::collections::HashMap::new();
    let ps = u64::from(page_size);
    for i in 0..t.count {
        let r: DiskRefRecord = t.record(bytes, i)?;
        let key = (r.path_off.get(), r.path_len.get());
        let file = match files.get(&key) {
            Some(&f) => f,
            None => {
                let path = t.heap_str(bytes, i, key.0, key.1, &PATH)?;
                let f = out.files.len() as u32;
                out.files.push(path.to_owned());
                files.insert(key, f);
                f
            }
        };
        let gfn = r.gfn.get();
        let addr = gfn.checked_mul(ps);
        if !addr.is_some_and(|a| regions.iter().any(|g| a >= g.base && a - g.base < g.length)) {
            return Err(Error::malformed(
                "DISK_REFS",
                t.offset_of(i),
                format!("record {i}: page {gfn:#x} is in no region"),
            ));
        }
        out.pages.push(DiskRef {
            gfn,
            disk: r.disk.get(),
            disk_offset: r.disk_offset.get(),
            length: r.length.get(),
            crc32: r.crc32.get(),
            file,
            file_offset: r.file_offset.get(),
        });
    }
    out.check(page_size).map_err(|(i, m)| match i {
        Some(i) => Error::malformed("DISK_REFS", t.offset_of(i), format!("record {i}: {m}")),
        None => Error::malformed("DISK_REFS", t.offset_of(0), m),
    })?;
    Ok(out)
}

fn parse_base(bytes: &[u8], t: &Table, page_size: u32) -> Result<BaseRef<'static>> {
    if t.count != 1 {
        return Err(Error::malformed("BASE", t.offset_of(0), format!("count is {}, not 1", t.count)));
    }
    let r: BaseRecord = t.record(bytes, 0)?;
    if r.page_size.get() != page_size {
        return Err(Error::malformed(
            "BASE",
            t.offset_of(0),
            format!("base page size {} differs from this image's {page_size}", r.page_size.get()),
        ));
    }
    let name = t.heap_str(bytes, 0, r.name_off.get(), r.name_len.get(), &LONG_NAME)?;
    Ok(BaseRef {
        blake3: r.base_blake3,
        result_blake3: (r.result_blake3 != [0; 32]).then_some(r.result_blake3),
        page_size,
        name: Cow::Owned(name.to_owned()),
    })
}

fn parse_devices(bytes: &[u8], t: &Table) -> Result<Vec<DeviceLoc>> {
    let mut out = Vec::new();
    for i in 0..t.count {
        let r: DeviceRecord = t.record(bytes, i)?;
        t.heap_str(bytes, i, r.name_off.get(), r.name_len.get(), &LONG_NAME)?;
        let name_start = t.heap.start + r.name_off.get() as usize;
        t.heap_bytes(bytes, i, r.data_off.get(), r.data_len.get())?;
        let data_start = t.heap.start + r.data_off.get() as usize;
        out.push(DeviceLoc {
            origin: r.origin.get(),
            instance: r.instance.get(),
            version: r.version.get(),
            flags: r.flags.get(),
            name: name_start..name_start + r.name_len.get() as usize,
            data: data_start..data_start + r.data_len.get() as usize,
        });
    }
    Ok(out)
}
