//! `trim`: drop what a restore does not need. Free pages and clean page
//! cache become `trimmed` (reading as zero, class kept, so a restore knows
//! why); all-zero pages take no space. A cache page is dropped only when a
//! disk reference says where its bytes are and its crc32 matches the page
//! (`crate::refill`): a restore reads it back.

use std::path::Path;

use pbr_format::keys;
use pbr_format::{DiskRefs, Image, PageClass, PageEncoding, is_zero};

use crate::error::{Error, Result};
use crate::rewrite;

/// What to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drop {
    /// Free pages.
    pub free: bool,
    /// All-zero pages (stored as zero, taking no space).
    pub zero: bool,
    /// Clean page-cache pages that a disk reference lets a restore read
    /// back (`crate::refill`).
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
    /// An empty list, an empty item, an unknown word.
    pub fn parse(s: &str) -> Result<Drop> {
        if s.trim().is_empty() {
            return Err(Error::Usage("--drop is empty: give one or more of free, zero, cache".into()));
        }
        let mut d = Drop { free: false, zero: false, cache: false };
        for w in s.split(',').map(str::trim) {
            match w {
                "" => {
                    return Err(Error::Usage(format!(
                        "--drop {s:?} has an empty item: give free, zero or cache separated by commas"
                    )));
                }
                "free" => d.free = true,
                "zero" => d.zero = true,
                "cache" => d.cache = true,
                other => {
                    return Err(Error::Usage(format!("--drop {other}: expected free, zero or cache")));
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
    /// Cache pages dropped (each has a disk reference to refill it from).
    pub cache_pages: u64,
    /// Cache pages kept: no disk reference, or one whose crc32 does not
    /// match the page.
    pub cache_pages_kept: u64,
    /// Stored all-zero pages now recorded as zero.
    pub zero_pages: u64,
}

/// Writes `src` to `dest` without what `drop` names.
///
/// # Errors
/// A diff image, a corrupt page, I/O.
pub fn trim(src: &Image, dest: &Path, drop: Drop) -> Result<TrimReport> {
    trim_with(src, dest, drop, src.disk_refs(), &[])
}

/// [`trim`] with `refs` as the output's disk references (in place of
/// `src`'s) and `extra` metadata.
///
/// # Errors
/// As [`trim`]; references that name pages outside the image.
pub fn trim_with(
    src: &Image,
    dest: &Path,
    drop: Drop,
    refs: &DiskRefs,
    extra: &[(String, String)],
) -> Result<TrimReport> {
    if src.base().is_some() {
        return Err(Error::Usage("trim works on full images: apply the diff to its base first".into()));
    }
    let mut w = rewrite::derived(src, dest, rewrite::options(src, PageEncoding::Zero))?;
    let mut r = TrimReport { before_bytes: src.file_len(), ..Default::default() };
    if !refs.is_empty() {
        w.set_disk_refs(refs.clone())?;
    }
    for (k, v) in extra {
        w.set_metadata(k, v)?;
    }
    let mut buf = vec![0u8; src.page_size() as usize];
    // Pages packed in the source stay packed.
    let mut packer = crate::pack::Packer::new(src.page_size());
    let mut packed = crate::pack::PackReport::default();
    for e in src.extents() {
        let dropped = match e.class {
            PageClass::Free => drop.free,
            _ => false,
        };
        if dropped {
            if e.encoding != PageEncoding::Trimmed {
                r.free_pages += u64::from(e.count);
            }
            w.mark_pages(e.gfn, u64::from(e.count), PageEncoding::Trimmed, e.class)?;
            continue;
        }
        if drop.cache && e.class == PageClass::Cache {
            for gfn in e.gfns() {
                if e.encoding == PageEncoding::Trimmed {
                    w.mark_pages(gfn, 1, e.encoding, e.class)?;
                    continue;
                }
                let page = src.read_in_extent(&e, gfn, &mut buf)?;
                if refs.get(gfn).is_some_and(|d| d.crc32 == crc32fast::hash(page)) && !is_zero(page) {
                    r.cache_pages += 1;
                    w.mark_pages(gfn, 1, PageEncoding::Trimmed, e.class)?;
                } else {
                    r.cache_pages_kept += 1;
                    crate::rewrite::copy_page(src, &e, gfn, &mut w, e.class, &mut buf)?;
                }
            }
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
    w.set_metadata(keys::TRIM_DROPPED, &label)?;
    w.set_metadata(keys::TRIM_FREE_PAGES, &r.free_pages.to_string())?;
    w.set_metadata(keys::TRIM_CACHE_PAGES, &r.cache_pages.to_string())?;
    w.set_metadata(keys::TRIM_CACHE_PAGES_KEPT, &r.cache_pages_kept.to_string())?;
    r.after_bytes = w.finish()?.file_len;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_lists() {
        let d = Drop::parse("free, cache").unwrap();
        assert!(d.free && d.cache && !d.zero);
        assert_eq!(Drop::parse("zero,free").unwrap().label(), "free,zero");
        for bad in ["", "  ", "free,", ",zero", "free,,zero", "free, ,zero"] {
            let e = Drop::parse(bad).unwrap_err().to_string();
            assert!(e.contains("empty"), "{bad:?}: {e}");
        }
        assert!(Drop::parse("free,swap").unwrap_err().to_string().contains("--drop swap"));
        // A bad --drop is the caller's request, not the image's fault.
        for bad in ["", "free,,zero", "swap"] {
            assert!(matches!(Drop::parse(bad), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
