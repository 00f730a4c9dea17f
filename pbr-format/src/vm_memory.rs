//! A `vm-memory` guest memory built straight from an image (feature
//! `vm-memory`), for rust-vmm style VMMs.
//!
//! Raw page runs become file-backed regions mapped `MAP_PRIVATE |
//! MAP_NORESERVE` from the image (copy on write: the guest's writes never
//! reach the file); the rest of each region is anonymous memory, with lz4
//! and duplicate pages copied in. Only guest-physical regions are mapped.

use std::fs::File;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::error::{Error, Result};
use crate::page::PageEncoding;
use crate::read::Image;

fn region(len: u64, gpa: u64, file: Option<(&File, u64)>) -> Result<GuestRegionMmap> {
    let len = usize::try_from(len).map_err(|_| Error::invalid("region too large for this machine"))?;
    let mut b = MmapRegionBuilder::new(len).with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE).with_mmap_flags(
        libc::MAP_PRIVATE | libc::MAP_NORESERVE | if file.is_none() { libc::MAP_ANONYMOUS } else { 0 },
    );
    if let Some((f, off)) = file {
        let f = f.try_clone().map_err(|e| Error::io("cannot duplicate the image file handle", e))?;
        b = b.with_file_offset(FileOffset::new(f, off));
    }
    let m = b.build().map_err(|e| Error::invalid(format!("cannot map guest memory at {gpa:#x}: {e}")))?;
    GuestRegionMmap::new(m, GuestAddress(gpa))
        .ok_or_else(|| Error::invalid(format!("guest region at {gpa:#x} overflows")))
}

/// Builds the guest memory of `image`, whose file is `file` (opened
/// read-only; it is never written).
///
/// # Errors
/// A diff image (its base pages are elsewhere), a raw run that does not lie
/// inside the file (checked before mapping: no SIGBUS on a truncated
/// image), mmap refusing, a corrupt lz4 page, a page whose crc32 does not
/// match (every page is checked before it is mapped or copied), an image
/// whose page-cache pages must be read back from the guest's disks.
///
/// # Example
/// ```no_run
/// use vm_memory::{Bytes, GuestAddress};
/// let image = pbr_format::Image::open("guest.pbr")?;
/// let file = std::fs::File::open("guest.pbr").map_err(|e| pbr_format::Error::io("open", e))?;
/// let mem = pbr_format::vm_memory::guest_memory(&image, &file)?;
/// let first: u32 = mem.read_obj(GuestAddress(0x500)).expect("mapped");
/// # Ok::<(), pbr_format::Error>(())
/// ```
pub fn guest_memory(image: &Image, file: &File) -> Result<GuestMemoryMmap> {
    if image.base().is_some() {
        return Err(Error::invalid("a diff image cannot be mapped: apply it to its base first"));
    }
    // The guest would find zeros where its page cache was.
    let (refill, orphans) = (image.pages_to_refill()?.len(), image.orphaned_cache_pages());
    if refill + orphans > 0 {
        return Err(Error::invalid(format!(
            "{refill} page-cache pages must be read back from the guest's disks and {orphans} cannot be: guest_memory does not refill, restore the image with a tool that does"
        )));
    }
    let file_len = file.metadata().map_err(|e| Error::io("cannot stat the image", e))?.len();
    let ps = u64::from(image.page_size());
    let runs = image.raw_runs();
    let mut regions = Vec::new();
    for r in image.regions().iter().filter(|r| !r.synthetic) {
        let (first, end) =
            (r.first_gfn(image.page_size()), r.first_gfn(image.page_size()) + r.pages(image.page_size()));
        let mut at = first;
        for run in runs.iter().filter(|x| x.gfn < end && x.gfn + x.pages > first) {
            let (s, e) = (run.gfn.max(first), (run.gfn + run.pages).min(end));
            if s > at {
                regions.push(region((s - at) * ps, at * ps, None)?);
            }
            let off = run.file_offset + (s - run.gfn) * ps;
            // Checked before it is mapped: no damaged page reaches a guest.
            image.check_run(run)?;
            if off + (e - s) * ps > file_len {
                return Err(Error::malformed("PAGE_DATA", off, "raw pages lie past the end of the file"));
            }
            regions.push(region((e - s) * ps, s * ps, Some((file, off)))?);
            at = e;
        }
        if end > at {
            regions.push(region((end - at) * ps, at * ps, None)?);
        }
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| Error::invalid(format!("guest memory layout: {e}")))?;
    let mut buf = vec![0u8; ps as usize];
    for r in image.regions().iter().filter(|r| !r.synthetic) {
        let first = r.first_gfn(image.page_size());
        for e in image.extents_in(first..first + r.pages(image.page_size())) {
            if matches!(e.encoding, PageEncoding::Lz4 | PageEncoding::Dup) {
                for gfn in e.gfns() {
                    let page = image.read_in_extent(&e, gfn, &mut buf)?;
                    mem.write_slice(page, GuestAddress(gfn * ps))
                        .map_err(|err| Error::invalid(format!("cannot fill page {gfn:#x}: {err}")))?;
                }
            }
        }
    }
    Ok(mem)
}

/// Writes guest memory `mem` as an image at `path`.
///
/// Without `diff`, every page of every region of `mem` is written (regions
/// named `ram0`, `ram1`, ... in address order). With `diff = (base,
/// dirty)`, the image is a diff against `base`: it has `base`'s regions,
/// stores only the pages for which `dirty(gfn)` is true (a VMM's dirty
/// bitmap) and leaves the rest in the base, which it names by content hash.
///
/// # Errors
/// A page of the regions that `mem` does not hold, I/O, or a base that has
/// no content hash of its own (a diff itself).
///
/// # Example
/// ```no_run
/// # let image = pbr_format::Image::open("base.pbr")?;
/// # let file = std::fs::File::open("base.pbr").map_err(|e| pbr_format::Error::io("open", e))?;
/// let mem = pbr_format::vm_memory::guest_memory(&image, &file)?;
/// // ... the guest runs; the VMM tracks dirty pages ...
/// let dirty = |gfn: u64| gfn == 5;
/// pbr_format::vm_memory::write_image(&mem, "diff.pbr".as_ref(), Default::default(), Some((&image, &dirty)))?;
/// # Ok::<(), pbr_format::Error>(())
/// ```
pub fn write_image(
    mem: &GuestMemoryMmap,
    path: &std::path::Path,
    mut opts: crate::WriterOptions,
    diff: Option<(&Image, &dyn Fn(u64) -> bool)>,
) -> Result<crate::WriteReport> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let ps = u64::from(opts.page_size);
    let regions: Vec<crate::Region<'static>> = match diff {
        Some((base, _)) => base.regions().to_vec(),
        None => mem
            .iter()
            .enumerate()
            .map(|(i, r)| crate::Region::ram(&format!("ram{i}"), r.start_addr().0, r.len()))
            .collect(),
    };
    if diff.is_some() {
        opts.unwritten = PageEncoding::Base;
    }
    let mut w = crate::ImageWriter::create(path, &regions, opts)?;
    if let Some((base, _)) = diff {
        w.set_base(crate::BaseRef {
            blake3: base.content_hash()?,
            result_blake3: None,
            page_size: base.page_size(),
            name: path.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()).into(),
        })?;
    }
    let mut page = vec![0u8; ps as usize];
    for r in regions.iter().filter(|r| !r.synthetic) {
        for gfn in r.first_gfn(ps as u32)..r.first_gfn(ps as u32) + r.pages(ps as u32) {
            if let Some((_, dirty)) = diff
                && !dirty(gfn)
            {
                continue;
            }
            mem.read_slice(&mut page, GuestAddress(gfn * ps))
                .map_err(|e| Error::invalid(format!("guest memory does not hold page {gfn:#x}: {e}")))?;
            w.write_page(gfn, &page, crate::PageClass::Unknown)?;
        }
    }
    w.finish()
}
