//! `pack`: lz4 pages (raw where lz4 does not win) and identical pages stored
//! once; `unpack`: back to the mmap-able raw layout. Both lossless.

use std::collections::HashMap;
use std::path::Path;

use pbr_format::{Extent, Image, ImageWriter, PageEncoding};

use crate::error::Result;
use crate::rewrite;

/// What [`pack`] or [`unpack`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackReport {
    /// Input file size.
    pub before_bytes: u64,
    /// Output file size.
    pub after_bytes: u64,
    /// Pages stored (compressed or raw).
    pub stored_pages: u64,
    /// Pages stored once for several guest pages.
    pub dup_pages: u64,
}

/// Writes pages packed: zero pages as zero, a page seen before as a
/// duplicate of its first copy, the rest lz4 (raw where lz4 does not win).
pub(crate) struct Packer {
    /// First 8 bytes of a page's blake3 -> the gfn first stored with it.
    seen: HashMap<u64, u64>,
    other: Vec<u8>,
}

impl Packer {
    pub(crate) fn new(page_size: u32) -> Packer {
        Packer { seen: HashMap::new(), other: vec![0u8; page_size as usize] }
    }

    /// Writes `page`, page `gfn` of `src` (in extent `e`), into `w`.
    pub(crate) fn put(
        &mut self,
        src: &Image,
        w: &mut ImageWriter,
        e: &Extent,
        gfn: u64,
        page: &[u8],
        r: &mut PackReport,
    ) -> Result<()> {
        if pbr_format::is_zero(page) {
            w.write_page(gfn, page, e.class)?;
            return Ok(());
        }
        let hash = src.stored_hash(e, gfn).unwrap_or_else(|| *blake3::hash(page).as_bytes());
        let key = u64::from_le_bytes(hash[..8].try_into().unwrap_or_default());
        match self.seen.get(&key) {
            Some(&first) if src.read_page(first, &mut self.other)? == page => {
                w.write_dup(gfn, first, e.class)?;
                r.dup_pages += 1;
            }
            _ => {
                self.seen.entry(key).or_insert(gfn);
                w.write_page_lz4(gfn, page, e.class)?;
                r.stored_pages += 1;
            }
        }
        Ok(())
    }
}

/// Writes `src` to `dest` lz4-compressed and deduplicated; `progress` gets
/// the bytes of guest memory done as it goes (all of
/// [`Image::guest_size`] in the end).
///
/// # Errors
/// A corrupt page, I/O.
pub fn pack(src: &Image, dest: &Path, progress: &dyn Fn(u64)) -> Result<PackReport> {
    let unwritten = if src.base().is_some() { PageEncoding::Base } else { PageEncoding::Zero };
    let mut w = rewrite::derived(src, dest, rewrite::options(src, unwritten))?;
    if let Some(b) = src.base() {
        w.set_base(b.clone())?;
    }
    let mut r = PackReport { before_bytes: src.file_len(), ..Default::default() };
    let mut packer = Packer::new(src.page_size());
    let mut buf = vec![0u8; src.page_size() as usize];
    for e in src.extents() {
        if !matches!(e.encoding, PageEncoding::Raw | PageEncoding::Lz4 | PageEncoding::Dup) {
            w.mark_pages(e.gfn, u64::from(e.count), e.encoding, e.class)?;
            progress(u64::from(e.count) * u64::from(src.page_size()));
            continue;
        }
        for gfn in e.gfns() {
            let page = src.read_in_extent(&e, gfn, &mut buf)?;
            packer.put(src, &mut w, &e, gfn, page, &mut r)?;
            progress(u64::from(src.page_size()));
        }
    }
    r.after_bytes = w.finish()?.file_len;
    Ok(r)
}

/// Writes `src` to `dest` with every stored page raw and page-aligned;
/// `progress` as for [`pack`].
///
/// # Errors
/// A corrupt page, I/O.
pub fn unpack(src: &Image, dest: &Path, progress: &dyn Fn(u64)) -> Result<PackReport> {
    let unwritten = if src.base().is_some() { PageEncoding::Base } else { PageEncoding::Zero };
    let mut w = rewrite::derived(src, dest, rewrite::options(src, unwritten))?;
    if let Some(b) = src.base() {
        w.set_base(b.clone())?;
    }
    let mut r = PackReport { before_bytes: src.file_len(), ..Default::default() };
    let mut buf = vec![0u8; src.page_size() as usize];
    for e in src.extents() {
        for gfn in e.gfns() {
            if e.encoding.is_stored() || e.encoding == PageEncoding::Dup {
                r.stored_pages += 1;
            }
            match e.encoding {
                PageEncoding::Lz4 | PageEncoding::Dup => {
                    let page = src.read_in_extent(&e, gfn, &mut buf)?;
                    w.write_page(gfn, page, e.class)?;
                }
                _ => rewrite::copy_page(src, &e, gfn, &mut w, e.class, &mut buf)?,
            }
            progress(u64::from(src.page_size()));
        }
    }
    r.after_bytes = w.finish()?.file_len;
    Ok(r)
}
