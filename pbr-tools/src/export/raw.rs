//! `export --to raw`: guest-physical memory as one flat sparse file, the
//! byte at offset `A` being guest-physical address `A`. Zero and trimmed
//! pages, and addresses no region holds, are holes; page-cache pages that
//! were trimmed are read back from the guest's disks (`crate::refill`).

use std::os::unix::fs::FileExt;
use std::path::Path;

use pbr_format::{Image, PageEncoding};

use crate::error::{Error, Result};
use crate::output::AtomicFile;

/// What [`export_raw`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawExport {
    /// Length of the flat file: the end of the highest guest-physical region.
    pub file_len: u64,
    /// Pages written with content.
    pub data_pages: u64,
    /// Pages left as holes (zero or trimmed).
    pub hole_pages: u64,
    /// Regions not exported because their base is not guest-physical.
    pub skipped_regions: Vec<String>,
    /// Page-cache pages read back from the guest's disks (`crate::refill`)
    /// and written over their zeros.
    pub refilled_pages: u64,
}

/// Writes the guest-physical memory of `image` to `dest` atomically,
/// calling `progress` with bytes of guest memory done.
///
/// # Errors
/// A diff image (its pages live in the base: apply it first), a corrupt
/// page, page-cache pages that cannot be refilled from the guest's disks,
/// or I/O.
pub fn export_raw(image: &Image, dest: &Path, progress: &dyn Fn(u64)) -> Result<RawExport> {
    if image.base().is_some() {
        return Err(Error::Usage(
            "this is a diff image; its unchanged pages are in the base image, so apply it to its base before exporting"
                .into(),
        ));
    }
    let refill = crate::refill::Refill::load(image)?;
    let ps = u64::from(image.page_size());
    let mut report = RawExport::default();
    let physical: Vec<_> = image.regions().iter().filter(|r| !r.synthetic).collect();
    report.skipped_regions = image.regions().iter().filter(|r| r.synthetic).map(|r| r.name.to_string()).collect();
    report.file_len = physical.iter().map(|r| r.base + r.length).max().unwrap_or(0);
    let out = AtomicFile::create(dest)?;
    let f = out.file();
    f.set_len(report.file_len).map_err(|e| Error::io(format!("cannot size {}", dest.display()), e))?;
    let mut buf = vec![0u8; ps as usize];
    let write_err = |e| Error::io(format!("cannot write {}", dest.display()), e);
    for r in physical {
        let gfns = r.first_gfn(image.page_size())..r.first_gfn(image.page_size()) + r.pages(image.page_size());
        for e in image.extents_in(gfns) {
            match e.encoding {
                PageEncoding::Zero | PageEncoding::Trimmed => report.hole_pages += u64::from(e.count),
                PageEncoding::Raw => {
                    f.write_all_at(image.raw_bytes(&e)?, e.gfn * ps).map_err(write_err)?;
                    report.data_pages += u64::from(e.count);
                }
                PageEncoding::Lz4 | PageEncoding::Dup | PageEncoding::Base => {
                    for gfn in e.gfns() {
                        let page = image.read_in_extent(&e, gfn, &mut buf)?;
                        f.write_all_at(page, gfn * ps).map_err(write_err)?;
                    }
                    report.data_pages += u64::from(e.count);
                }
            }
            progress(u64::from(e.count) * ps);
        }
    }
    // Page-cache pages read back from the disks, over the zeros the image
    // holds for them.
    for (gfn, page) in refill.iter().flat_map(|r| r.pages()) {
        f.write_all_at(page, gfn * ps).map_err(write_err)?;
        report.refilled_pages += 1;
    }
    out.commit()?;
    Ok(report)
}
