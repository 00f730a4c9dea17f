//! Replaying an image into a hypervisor: the [`HypervisorAdapter`] trait,
//! the driver that calls any adapter in the same order, and the adapters.
//!
//! Order: guest memory region by region, then vCPUs, then device-state
//! blobs, then resume. Raw page runs are offered as file-backed runs an
//! adapter can map `MAP_PRIVATE` with no copy; lz4 and duplicate pages must
//! be copied; zero and trimmed pages need nothing (fresh memory is zero).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod error;
pub mod kvm;
pub mod qemu;
pub mod recording;

pub use error::{Error, Result};

use std::fs::File;

use pbr_format::{DeviceBlob, Image, PageEncoding, Region, Vcpu};

/// Raw pages contiguous in guest memory and in the image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRun {
    /// Offset of the first page from the region's base.
    pub region_offset: u64,
    /// File offset of the first page (page aligned).
    pub file_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// How one region's memory is made up.
#[derive(Clone, Debug)]
pub struct RegionPlan {
    /// The region.
    pub region: Region<'static>,
    /// Raw runs to map from the image file.
    pub mapped: Vec<MappedRun>,
    /// Guest frame numbers of pages to copy (lz4, dup).
    pub copied: Vec<u64>,
    /// Zero and trimmed pages (nothing to do).
    pub zero_pages: u64,
}

impl RegionPlan {
    /// Checks every page of the runs to map against its crc32: an adapter
    /// that maps them calls this first, so that no damaged page reaches the
    /// guest.
    ///
    /// # Errors
    /// The first damaged page, named with its offset.
    pub fn check_mapped(&self, image: &Image) -> Result<()> {
        let ps = u64::from(image.page_size());
        let first = self.region.first_gfn(image.page_size());
        for m in &self.mapped {
            let gfn = first + m.region_offset / ps;
            image.check_run(&pbr_format::RawRun { gfn, pages: m.len / ps, file_offset: m.file_offset })?;
        }
        Ok(())
    }
}

/// Whether an adapter took what it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Taken.
    Yes,
    /// Not taken, and why.
    No(String),
}

/// What a hypervisor must offer to receive an image.
pub trait HypervisorAdapter {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Sets up the guest memory of one region: map `plan.mapped` from
    /// `file` (the image, opened read-only) and copy `plan.copied` from
    /// `image`.
    ///
    /// # Errors
    /// The hypervisor refused the memory.
    fn memory(&mut self, image: &Image, file: &File, plan: &RegionPlan) -> Result<Taken>;
    /// Loads one vCPU's state.
    ///
    /// # Errors
    /// The hypervisor refused the state.
    fn vcpu(&mut self, vcpu: &Vcpu) -> Result<Taken>;
    /// Offers one device-state blob.
    ///
    /// # Errors
    /// The hypervisor refused a blob it understands.
    fn device(&mut self, blob: &DeviceBlob<'_>) -> Result<Taken>;
    /// Starts the guest.
    ///
    /// # Errors
    /// The guest could not be started.
    fn resume(&mut self, image: &Image) -> Result<()>;
}

/// What [`replay`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Bytes of guest memory offered as file-backed runs.
    pub mapped_bytes: u64,
    /// Pages offered for copying.
    pub copied_pages: u64,
    /// Zero and trimmed pages.
    pub zero_pages: u64,
    /// vCPUs taken.
    pub vcpus: usize,
    /// Device blobs taken.
    pub devices: usize,
    /// What the adapter did not take, one line each.
    pub not_taken: Vec<String>,
}

/// The memory plan of each region of `image`.
///
/// # Errors
/// A diff image (its base pages live elsewhere: apply it first).
pub fn plan(image: &Image) -> Result<Vec<RegionPlan>> {
    if image.base().is_some() {
        return Err(Error::Image("this is a diff image: apply it to its base before replaying".into()));
    }
    let ps = u64::from(image.page_size());
    let runs = image.raw_runs();
    let mut out = Vec::new();
    for r in image.regions() {
        let (first, end) =
            (r.first_gfn(image.page_size()), r.first_gfn(image.page_size()) + r.pages(image.page_size()));
        let mut plan = RegionPlan { region: r.clone(), mapped: Vec::new(), copied: Vec::new(), zero_pages: 0 };
        for run in runs.iter().filter(|x| x.gfn < end && x.gfn + x.pages > first) {
            let start = run.gfn.max(first);
            let stop = (run.gfn + run.pages).min(end);
            plan.mapped.push(MappedRun {
                region_offset: (start - first) * ps,
                file_offset: run.file_offset + (start - run.gfn) * ps,
                len: (stop - start) * ps,
            });
        }
        for e in image.extents_in(first..end) {
            match e.encoding {
                PageEncoding::Lz4 | PageEncoding::Dup => plan.copied.extend(e.gfns()),
                PageEncoding::Zero | PageEncoding::Trimmed => plan.zero_pages += u64::from(e.count),
                PageEncoding::Raw | PageEncoding::Base => {}
            }
        }
        out.push(plan);
    }
    Ok(out)
}

/// Replays `image` (opened from `file`) into `adapter`.
///
/// # Errors
/// A diff image, or an adapter error.
pub fn replay(image: &Image, file: &File, adapter: &mut dyn HypervisorAdapter) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let name = adapter.name();
    // A store image's shell holds no RAM: only QEMU, mapping it from the
    // store's mount, restores it (and refuses it without one).
    if name != "qemu" && image.metadata_value(pbr_format::keys::STORE_RAM) == Some("served") {
        return Err(Error::Image("a store image's shell holds no guest RAM: restore it from the store".into()));
    }
    for p in plan(image)? {
        report.mapped_bytes += p.mapped.iter().map(|m| m.len).sum::<u64>();
        report.copied_pages += p.copied.len() as u64;
        report.zero_pages += p.zero_pages;
        if let Taken::No(why) = adapter.memory(image, file, &p)? {
            report.not_taken.push(format!("{name}: region '{}': {why}", p.region.name));
        }
    }
    for v in image.vcpus() {
        match adapter.vcpu(v)? {
            Taken::Yes => report.vcpus += 1,
            Taken::No(why) => report.not_taken.push(format!("{name}: vcpu{}: {why}", v.id())),
        }
    }
    for d in image.devices() {
        match adapter.device(&d)? {
            Taken::Yes => report.devices += 1,
            Taken::No(why) => {
                report.not_taken.push(format!("{name}: device {}/{}.{}: {why}", d.origin, d.name, d.instance))
            }
        }
    }
    adapter.resume(image)?;
    Ok(report)
}
