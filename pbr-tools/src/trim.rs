//! `trim`: drop what a restore does not need. Free pages and clean page
//! cache become `trimmed` (reading as zero, class kept, so a restore knows
//! why); all-zero pages take no space.

use std::path::Path;

use pbr_format::{Image, PageClass, PageEncoding, is_zero};

use crate::error::{Error, Result};
use crate::rewrite;

/// What to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drop {
    /// Free pages.
    pub free: bool,
    /// All-zero pages (stored as zero, taking no space).
    pub zero: bool,
    /// Clean page-cache pages (their back references are kept).
    pub cache: bool,
}

impl Default for Drop {
    fn default() -> Self {
        Drop { free: true, zero: true, cache: false }
    }
}

impl Drop {
    /// Parses `free,zero,cache` (any subset, at least one).
    ///
    /// # Errors
    /// An unknown word.
    pub fn parse(s: &str) -> Result<Drop> {
        let mut d = Drop { free: false, zero: false, cache: false };
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "free" => d.free = true,
                "zero" => d.zero = true,
                "cache" => d.cache = true,
                other => {
                    return Err(Error::Unsupported(format!("--drop {other}: expected free, zero or cache")));
                }
            }
        }
        Ok(d)
    }

    fn label(self) -> String {
        let mut v = Vec::new();
        if self.free {
            v.push("free");
        }
        if self.zero {
            v.push("zero");
        }
        if self.cache {
            v.push("cache");
        }
        v.join(",")
    }
}

/// What [`trim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrimReport {
    /// Input file size.
    pub before_bytes: u64,
    /// Output file size.
    pub after_bytes: u64,
    /// Free pages dropped.
    pub free_pages: u64,
    /// Cache pages dropped.
    pub cache_pages: u64,
    /// Of those, pages with a file back reference.
    pub cache_pages_with_refs: u64,
    /// Stored all-zero pages now recorded as zero.
    pub zero_pages: u64,
}

/// Writes `src` to `dest` without what `drop` names.
///
/// # Errors
/// A diff image, a corrupt page, I/O.
pub fn trim(src: &Image, dest: &Path, drop: Drop) -> Result<TrimReport> {
    if src.base().is_some() {
        return Err(Error::Unsupported("trim works on full images: apply the diff to its base first".into()));
    }
    let mut w = rewrite::derived(src, dest, rewrite::options(src, PageEncoding::Zero))?;
    let mut r = TrimReport { before_bytes: src.file_len(), ..Default::default() };
    let refs: std::collections::HashSet<u64> = src.cache_refs().iter().map(|c| c.gfn).collect();
    let mut buf = vec![0u8; src.page_size() as usize];
    // Pages packed in the source stay packed.
    let mut packer = crate::pack::Packer::new(src.page_size());
    let mut packed = crate::pack::PackReport::default();
    for e in src.extents() {
        let dropped = match e.class {
            PageClass::Free => drop.free,
            PageClass::Cache => drop.cache,
            _ => false,
        };
        if dropped {
            if e.encoding != PageEncoding::Trimmed {
                match e.class {
                    PageClass::Free => r.free_pages += u64::from(e.count),
                    _ => {
                        r.cache_pages += u64::from(e.count);
                        r.cache_pages_with_refs += e.gfns().filter(|g| refs.contains(g)).count() as u64;
                    }
                }
            }
            w.mark_pages(e.gfn, u64::from(e.count), PageEncoding::Trimmed, e.class)?;
            continue;
        }
        for gfn in e.gfns() {
            match e.encoding {
                PageEncoding::Lz4 | PageEncoding::Dup => {
                    let page = src.read_in_extent(&e, gfn, &mut buf)?;
                    if is_zero(page) {
                        r.zero_pages += 1;
                    }
                    packer.put(src, &mut w, &e, gfn, page, &mut packed)?;
                }
                PageEncoding::Raw => {
                    let page = src.read_in_extent(&e, gfn, &mut buf)?;
                    if !drop.zero {
                        w.write_page_raw(gfn, page, e.class)?;
                    } else {
                        if is_zero(page) {
                            r.zero_pages += 1;
                        }
                        w.write_page(gfn, page, e.class)?;
                    }
                }
                _ => w.mark_pages(gfn, 1, e.encoding, e.class)?,
            }
        }
    }
    let label = drop.label();
    w.set_metadata("trim.dropped", &label)?;
    w.set_metadata("trim.free_pages", &r.free_pages.to_string())?;
    w.set_metadata("trim.cache_pages", &r.cache_pages.to_string())?;
    w.set_metadata("trim.cache_pages_with_refs", &r.cache_pages_with_refs.to_string())?;
    r.after_bytes = w.finish()?.file_len;
    Ok(r)
}
