//! `diff`: what changed between two images, and diff images that store only
//! the changed pages and name their base by its content hash.

use std::collections::BTreeMap;
use std::path::Path;

use pbr_format::{BaseRef, Extent, Image, PageEncoding, Vcpu, X86Vcpu};

use crate::error::{Error, Result};
use crate::rewrite;

/// Page counts of one kind of change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// In B only.
    pub added: u64,
    /// In A only.
    pub removed: u64,
    /// In both, different content.
    pub changed: u64,
    /// In both, same content.
    pub unchanged: u64,
}

/// Everything [`diff`] found.
#[derive(Clone, Debug, Default)]
pub struct DiffReport {
    /// All pages.
    pub pages: Counts,
    /// By class (B's class; A's for removed pages).
    pub by_class: BTreeMap<String, Counts>,
    /// By region name.
    pub by_region: BTreeMap<String, Counts>,
    /// Pages whose content is equal but whose class changed.
    pub reclassified: u64,
    /// vCPU differences, one line each.
    pub vcpus: Vec<String>,
    /// Device blobs `origin/name.instance` added, removed, changed.
    pub devices: (Vec<String>, Vec<String>, Vec<String>),
    /// Manifest paths added, removed, changed.
    pub manifest: (Vec<String>, Vec<String>, Vec<String>),
    /// Metadata keys whose values differ: `(key, a, b)`.
    pub metadata: Vec<(String, Option<String>, Option<String>)>,
    /// Phase names of A and B.
    pub phases: (Option<String>, Option<String>),
}

impl DiffReport {
    /// Whether the two images differ in anything the report covers
    /// (pages, classes, vCPUs, devices, manifest, metadata, phase).
    pub fn differs(&self) -> bool {
        let p = &self.pages;
        p.added + p.removed + p.changed + self.reclassified > 0
            || !self.vcpus.is_empty()
            || !(self.devices.0.is_empty() && self.devices.1.is_empty() && self.devices.2.is_empty())
            || !(self.manifest.0.is_empty() && self.manifest.1.is_empty() && self.manifest.2.is_empty())
            || !self.metadata.is_empty()
            || self.phases.0 != self.phases.1
    }
}

/// Whether page `gfn` has the same content in `a` (extent `ea`) and `b`.
fn same_page(a: &Image, ea: &Extent, b: &Image, eb: &Extent, gfn: u64, bufs: &mut (Vec<u8>, Vec<u8>)) -> Result<bool> {
    let zero_like = |e: &Extent| matches!(e.encoding, PageEncoding::Zero | PageEncoding::Trimmed);
    if zero_like(ea) && zero_like(eb) {
        return Ok(true);
    }
    if !zero_like(ea)
        && !zero_like(eb)
        && let (Some(x), Some(y)) = (a.expected_crc(ea, gfn), b.expected_crc(eb, gfn))
        && x != y
    {
        return Ok(false);
    }
    let pa = a.read_in_extent(ea, gfn, &mut bufs.0)?;
    let pb = b.read_in_extent(eb, gfn, &mut bufs.1)?;
    Ok(pa == pb)
}

fn check_full(img: &Image, what: &str) -> Result<()> {
    if img.base().is_some() {
        return Err(Error::Usage(format!("{what} is a diff image: apply it to its base first")));
    }
    Ok(())
}

/// Compares page `gfn` of `b` (extent `eb`) against `a`: `None` when `a`
/// has no such page.
fn compare(
    a: &Image,
    b: &Image,
    eb: &Extent,
    gfn: u64,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Option<(bool, Extent)>> {
    match a.extent_of(gfn) {
        Ok(ea) => Ok(Some((same_page(a, &ea, b, eb, gfn, bufs)?, ea))),
        Err(_) => Ok(None),
    }
}

/// Compares two full images page by page and record by record.
///
/// # Errors
/// A diff image, page sizes that differ, a corrupt page.
pub fn diff(a: &Image, b: &Image) -> Result<DiffReport> {
    check_full(a, "the first image")?;
    check_full(b, "the second image")?;
    if a.page_size() != b.page_size() {
        return Err(Error::Usage("the images have different page sizes".into()));
    }
    let ps = a.page_size() as usize;
    let mut bufs = (vec![0u8; ps], vec![0u8; ps]);
    let mut r = DiffReport::default();
    let bump = |r: &mut DiffReport, class: &str, region: &str, f: &dyn Fn(&mut Counts)| {
        f(&mut r.pages);
        f(r.by_class.entry(class.to_owned()).or_default());
        f(r.by_region.entry(region.to_owned()).or_default());
    };
    for reg in b.regions() {
        let first = reg.first_gfn(b.page_size());
        for eb in b.extents_in(first..first + reg.pages(b.page_size())) {
            for gfn in eb.gfns() {
                match compare(a, b, &eb, gfn, &mut bufs)? {
                    None => bump(&mut r, eb.class.name(), &reg.name, &|c| c.added += 1),
                    Some((true, ea)) => {
                        if ea.class != eb.class {
                            r.reclassified += 1;
                        }
                        bump(&mut r, eb.class.name(), &reg.name, &|c| c.unchanged += 1);
                    }
                    Some((false, _)) => bump(&mut r, eb.class.name(), &reg.name, &|c| c.changed += 1),
                }
            }
        }
    }
    for reg in a.regions() {
        let first = reg.first_gfn(a.page_size());
        for ea in a.extents_in(first..first + reg.pages(a.page_size())) {
            for gfn in ea.gfns() {
                if b.extent_of(gfn).is_err() {
                    bump(&mut r, ea.class.name(), &reg.name, &|c| c.removed += 1);
                }
            }
        }
    }
    r.vcpus = vcpu_diffs(a.vcpus(), b.vcpus());
    let key = |d: &pbr_format::DeviceBlob<'_>| format!("{}/{}.{}", d.origin, d.name, d.instance);
    let da: BTreeMap<String, Vec<u8>> = a.devices().map(|d| (key(&d), d.data.to_vec())).collect();
    let db: BTreeMap<String, Vec<u8>> = b.devices().map(|d| (key(&d), d.data.to_vec())).collect();
    r.devices = keyed_changes(&da, &db);
    let fa: BTreeMap<String, _> =
        a.manifest().iter().map(|f| (f.path.to_string(), (f.size, f.mtime_ns, f.blake3))).collect();
    let fb: BTreeMap<String, _> =
        b.manifest().iter().map(|f| (f.path.to_string(), (f.size, f.mtime_ns, f.blake3))).collect();
    r.manifest = keyed_changes(&fa, &fb);
    let ma: BTreeMap<&str, &str> = a.metadata().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mb: BTreeMap<&str, &str> = b.metadata().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for k in ma.keys().chain(mb.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (x, y) = (ma.get(k).copied(), mb.get(k).copied());
        if x != y {
            r.metadata.push((k.to_string(), x.map(str::to_owned), y.map(str::to_owned)));
        }
    }
    r.phases = (a.phase().map(|p| p.name.to_string()), b.phase().map(|p| p.name.to_string()));
    Ok(r)
}

fn keyed_changes<V: PartialEq>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = b.iter().filter(|(k, v)| a.get(*k).is_some_and(|x| x != *v)).map(|(k, _)| k.clone()).collect();
    (added, removed, changed)
}

fn vcpu_diffs(a: &[Vcpu], b: &[Vcpu]) -> Vec<String> {
    let mut out = Vec::new();
    for vb in b {
        match a.iter().find(|va| va.id() == vb.id()) {
            None => out.push(format!("vcpu{}: added", vb.id())),
            Some(va) if va == vb => {}
            Some(Vcpu::X86_64(x)) => match vb {
                Vcpu::X86_64(y) => out.extend(x86_diffs(x, y)),
                _ => out.push(format!("vcpu{}: architecture changed", vb.id())),
            },
            Some(_) => out.push(format!("vcpu{}: changed", vb.id())),
        }
    }
    for va in a {
        if !b.iter().any(|vb| vb.id() == va.id()) {
            out.push(format!("vcpu{}: removed", va.id()));
        }
    }
    out
}

fn x86_diffs(x: &X86Vcpu, y: &X86Vcpu) -> Vec<String> {
    const GPR: [&str; 16] =
        ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let mut out = Vec::new();
    let mut cmp = |name: &str, p: u64, q: u64| {
        if p != q {
            out.push(format!("vcpu{}: {name} {p:#x} -> {q:#x}", y.id));
        }
    };
    for (i, n) in GPR.iter().enumerate() {
        cmp(n, x.regs.gpr[i].get(), y.regs.gpr[i].get());
    }
    cmp("rip", x.regs.rip.get(), y.regs.rip.get());
    cmp("rflags", x.regs.rflags.get(), y.regs.rflags.get());
    let (s, t) = (&x.sregs, &y.sregs);
    for (n, p, q) in [
        ("cr0", s.cr0, t.cr0),
        ("cr2", s.cr2, t.cr2),
        ("cr3", s.cr3, t.cr3),
        ("cr4", s.cr4, t.cr4),
        ("cr8", s.cr8, t.cr8),
        ("efer", s.efer, t.efer),
        ("apic_base", s.apic_base, t.apic_base),
    ] {
        cmp(n, p.get(), q.get());
    }
    for (n, p, q) in
        [("cs", s.cs, t.cs), ("ss", s.ss, t.ss), ("ds", s.ds, t.ds), ("fs", s.fs, t.fs), ("gs", s.gs, t.gs)]
    {
        cmp(&format!("{n}.selector"), u64::from(p.selector.get()), u64::from(q.selector.get()));
        cmp(&format!("{n}.base"), p.base.get(), q.base.get());
    }
    cmp("tsc", x.tsc.unwrap_or(0), y.tsc.unwrap_or(0));
    let msrs = y.msrs.iter().filter(|m| x.msr(m.index.get()) != Some(m.data.get())).count();
    if msrs > 0 {
        out.push(format!("vcpu{}: {msrs} MSRs differ", y.id));
    }
    if x.xsave != y.xsave {
        out.push(format!("vcpu{}: FPU/SSE/AVX state differs", y.id));
    }
    if x.lapic != y.lapic {
        out.push(format!("vcpu{}: local APIC differs", y.id));
    }
    out
}

/// What [`write_diff`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffImage {
    /// Pages stored in the diff (changed or added).
    pub stored: u64,
    /// Pages left in the base.
    pub in_base: u64,
    /// File size of the diff image.
    pub file_len: u64,
}

/// Writes a diff image at `dest` rebuilding `b` from `a`: unchanged pages
/// are `base` pages, the rest are stored. `a_name` is recorded as a hint.
///
/// # Errors
/// A diff image as input, page sizes that differ, a corrupt page, I/O.
pub fn write_diff(a: &Image, b: &Image, a_name: &str, dest: &Path) -> Result<DiffImage> {
    check_full(a, "the base image")?;
    check_full(b, "the target image")?;
    if a.page_size() != b.page_size() {
        return Err(Error::Usage("the images have different page sizes".into()));
    }
    let mut w = rewrite::derived(b, dest, rewrite::options(b, PageEncoding::Base))?;
    w.set_base(BaseRef {
        blake3: a.content_hash()?,
        result_blake3: Some(b.content_hash()?),
        page_size: a.page_size(),
        name: a_name.to_owned().into(),
    })?;
    let ps = a.page_size() as usize;
    let mut bufs = (vec![0u8; ps], vec![0u8; ps]);
    let mut out = DiffImage::default();
    for eb in b.extents() {
        for gfn in eb.gfns() {
            if let Some((true, _)) = compare(a, b, &eb, gfn, &mut bufs)? {
                w.mark_pages(gfn, 1, PageEncoding::Base, eb.class)?;
                out.in_base += 1;
            } else {
                rewrite::copy_page(b, &eb, gfn, &mut w, eb.class, &mut bufs.1)?;
                out.stored += 1;
            }
        }
    }
    out.file_len = w.finish()?.file_len;
    Ok(out)
}
