//! The flat layout (`spec/format.md` §11): every page of every region
//! stored raw, in region order, so that each region is one page-aligned
//! range of the file (a RAM block QEMU can map with `memory-backend-file`),
//! zero and trimmed pages as holes of a sparse file. A flat image is a
//! normal image: every reader takes it.

use std::path::Path;

use pbr_format::keys;
use pbr_format::{Image, PageEncoding};

use crate::error::{Error, Result};
use crate::pack::PackReport;
use crate::rewrite;

/// The metadata key a flat image carries, with value `flat`.
pub const LAYOUT_KEY: &str = keys::LAYOUT;

/// Writes `src` to `dest` in the flat layout; `progress` gets the bytes of
/// guest memory written as it goes (all of [`Image::guest_size`] in the
/// end).
///
/// # Errors
/// A diff image (apply it first), a corrupt page, I/O.
pub fn unpack_flat(src: &Image, dest: &Path, progress: &dyn Fn(u64)) -> Result<PackReport> {
    if src.base().is_some() {
        return Err(Error::Usage("a diff image cannot be flat: apply it to its base first".into()));
    }
    // A trimmed cache page becomes a zero page here: its disk reference
    // (whose crc32 is not a zero page's) is what still marks it a refill.
    crate::refill::refuse_orphans(src)?;
    let mut w = rewrite::derived(src, dest, rewrite::options(src, PageEncoding::Zero))?;
    w.set_metadata(LAYOUT_KEY, "flat")?;
    let mut r = PackReport { before_bytes: src.file_len(), ..Default::default() };
    let ps = src.page_size();
    let mut buf = vec![0u8; ps as usize];
    // Regions in the order of the page index (by guest frame), each page
    // once, in order: page n of the image lands at data start + n pages.
    for region in src.regions() {
        let first = region.first_gfn(ps);
        for e in src.extents_in(first..first + region.pages(ps)) {
            for gfn in e.gfns() {
                let page = src.read_in_extent(&e, gfn, &mut buf)?;
                w.write_page_raw(gfn, page, e.class)?;
                if e.encoding.is_stored() || e.encoding == PageEncoding::Dup {
                    r.stored_pages += 1;
                }
                progress(u64::from(ps));
            }
        }
    }
    r.after_bytes = w.finish()?.file_len;
    Ok(r)
}

/// Where region `index` of `image` lies in the file when the image is flat
/// (its pages raw and consecutive from this offset): `None` otherwise.
pub fn region_offset(image: &Image, index: usize) -> Option<u64> {
    let region = image.regions().get(index)?;
    let ps = image.page_size();
    let first = region.first_gfn(ps);
    let end = first + region.pages(ps);
    let mut expect: Option<u64> = None;
    let mut next_gfn = first;
    for e in image.extents_in(first..end) {
        if e.encoding != PageEncoding::Raw || e.gfn != next_gfn {
            return None;
        }
        let start = *expect.get_or_insert(e.data);
        if e.data != start + (e.gfn - first) * u64::from(ps) {
            return None;
        }
        next_gfn = e.gfn + u64::from(e.count);
    }
    (next_gfn == end).then_some(expect?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};

    #[test]
    fn flat_regions_are_contiguous_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("s.pbr");
        let regions = [Region::ram("low", 0, 64 * 4096), Region::ram("high", 1 << 20, 64 * 4096)];
        let mut w = ImageWriter::create(&src_path, &regions, WriterOptions::default()).unwrap();
        // Out of order, some zero, some lz4: nothing contiguous.
        for gfn in [(1 << 20 >> 12) + 3, 5, 1, 63] {
            w.write_page_lz4(gfn, &[gfn as u8 | 1; 4096], PageClass::User).unwrap();
        }
        w.finish().unwrap();
        let src = Image::open(&src_path).unwrap();
        assert_eq!(region_offset(&src, 0), None);
        let flat_path = dir.path().join("f.pbr");
        let done = std::cell::Cell::new(0);
        unpack_flat(&src, &flat_path, &|n| done.set(done.get() + n)).unwrap();
        assert_eq!(done.get(), src.guest_size(), "the progress ends at the guest's size");
        let flat = Image::open(&flat_path).unwrap();
        flat.verify().unwrap();
        assert_eq!(flat.metadata_value(LAYOUT_KEY), Some("flat"));
        let low = region_offset(&flat, 0).unwrap();
        let high = region_offset(&flat, 1).unwrap();
        assert_eq!(high, low + 64 * 4096, "regions follow each other");
        let bytes = std::fs::read(&flat_path).unwrap();
        let mut buf = vec![0u8; 4096];
        for (gfn, off) in [(5u64, low + 5 * 4096), ((1 << 20 >> 12) + 3, high + 3 * 4096), (7, low + 7 * 4096)] {
            assert_eq!(&bytes[off as usize..off as usize + 4096], src.read_page(gfn, &mut buf).unwrap());
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&flat_path).unwrap();
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "zero pages are holes: {} of {} bytes allocated",
            m.blocks() * 512,
            m.len()
        );
    }
}
