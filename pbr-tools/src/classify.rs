//! Page classes from a Linux guest's `/proc/kpageflags` (and
//! `/proc/kpagecount`), or from a plain per-page class map.

use std::io::Read;
use std::path::Path;

use pbr_format::keys;
use pbr_format::{Image, PageClass};

use crate::error::{Error, Result};
use crate::rewrite;

/// `/proc/kpageflags` bits (`include/uapi/linux/kernel-page-flags.h`).
pub mod kpf {
    /// Page is locked.
    pub const LOCKED: u32 = 0;
    /// Page is dirty.
    pub const DIRTY: u32 = 4;
    /// On an LRU list.
    pub const LRU: u32 = 5;
    /// Slab page.
    pub const SLAB: u32 = 7;
    /// Under writeback.
    pub const WRITEBACK: u32 = 8;
    /// Free in the buddy allocator.
    pub const BUDDY: u32 = 10;
    /// Anonymous memory.
    pub const ANON: u32 = 12;
    /// In the swap cache.
    pub const SWAPCACHE: u32 = 13;
    /// Swap-backed (anonymous or shmem).
    pub const SWAPBACKED: u32 = 14;
    /// Head of a compound page.
    pub const COMPOUND_HEAD: u32 = 15;
    /// Tail of a compound page.
    pub const COMPOUND_TAIL: u32 = 16;
    /// HugeTLB page.
    pub const HUGE: u32 = 17;
    /// Unevictable.
    pub const UNEVICTABLE: u32 = 18;
    /// No struct page (a hole).
    pub const NOPAGE: u32 = 20;
    /// Transparent huge page.
    pub const THP: u32 = 22;
    /// Offline (ballooned, hot-removed).
    pub const OFFLINE: u32 = 23;
    /// Page table.
    pub const PGTABLE: u32 = 26;
    /// Reserved.
    pub const RESERVED: u32 = 32;
    /// mlocked.
    pub const MLOCKED: u32 = 33;
}

fn bit(flags: u64, b: u32) -> bool {
    flags & (1 << b) != 0
}

/// The class of one page from its kpageflags word alone. Conservative:
/// only pages with a copy on disk are `cache`, only pages the allocator
/// owns are `free`.
pub fn class_of(flags: u64) -> PageClass {
    use kpf::*;
    if bit(flags, BUDDY) || bit(flags, OFFLINE) || bit(flags, NOPAGE) {
        return PageClass::Free;
    }
    // A page with no flags may be the tail of a free block (the allocator
    // flags only its head) or of a high-order allocation that is not
    // compound (a virtqueue's rings, for one): only [`classes`], which sees
    // the head and the counts, can tell.
    if bit(flags, ANON) || bit(flags, HUGE) || bit(flags, THP) || bit(flags, SWAPBACKED) || bit(flags, SWAPCACHE) {
        return PageClass::User;
    }
    if bit(flags, LRU) {
        let no_disk_copy = bit(flags, DIRTY) || bit(flags, WRITEBACK) || bit(flags, UNEVICTABLE) || bit(flags, MLOCKED);
        return if no_disk_copy { PageClass::User } else { PageClass::Cache };
    }
    PageClass::Kernel
}

/// Stored pages of class `kernel` by what kpageflags says they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelPages {
    /// Reserved: the kernel's image (text and data), firmware tables,
    /// early allocations.
    pub reserved: u64,
    /// Slab caches.
    pub slab: u64,
    /// Page tables.
    pub page_tables: u64,
    /// Everything else (vmalloc, per-CPU, buffers, compound tails).
    pub other: u64,
}

impl KernelPages {
    /// Counts the stored (not zero, not trimmed) `kernel` pages of `img`
    /// by their kpageflags word in `flags`.
    pub fn of(img: &Image, flags: &[u64], classes: &[PageClass]) -> KernelPages {
        let mut k = KernelPages::default();
        for e in img.extents().filter(|e| e.encoding.is_stored() || e.encoding == pbr_format::PageEncoding::Dup) {
            for g in e.gfns() {
                if classes.get(g as usize) != Some(&PageClass::Kernel) {
                    continue;
                }
                let f = flags.get(g as usize).copied().unwrap_or(0);
                let slot = if bit(f, kpf::RESERVED) {
                    &mut k.reserved
                } else if bit(f, kpf::SLAB) {
                    &mut k.slab
                } else if bit(f, kpf::PGTABLE) {
                    &mut k.page_tables
                } else {
                    &mut k.other
                };
                *slot += 1;
            }
        }
        k
    }
}

/// Demotes every page `classes` calls free whose content in `img` is not
/// zero to `unknown`. For a dump read while the guest ran, of a guest that
/// zeroes what it frees (`init_on_free=1`): a free page that is not zero
/// was taken after the dump, and dropping it would lose it.
///
/// # Errors
/// A corrupt page.
pub fn free_only_if_zero(img: &Image, classes: &mut [PageClass]) -> Result<()> {
    let mut buf = vec![0u8; img.page_size() as usize];
    for e in img.extents() {
        if matches!(e.encoding, pbr_format::PageEncoding::Zero | pbr_format::PageEncoding::Trimmed) {
            continue;
        }
        for gfn in e.gfns() {
            let Some(c) = classes.get_mut(gfn as usize).filter(|c| **c == PageClass::Free) else { continue };
            if !pbr_format::is_zero(img.read_in_extent(&e, gfn, &mut buf)?) {
                *c = PageClass::Unknown;
            }
        }
    }
    Ok(())
}

/// Page frames in one of Linux's memory sections on x86-64 (128 MiB of
/// 4 KiB pages). `/proc/kpageflags` and `/proc/kpagecount` run to the end
/// of the section holding the guest's highest frame: a 160 MiB guest's
/// dumps cover 65536 frames, the 24576 past its RAM "no page" (`NOPAGE`).
pub const SECTION_FRAMES: usize = 1 << 15;

/// The guest's frames in a kpageflags dump: all of them, less Linux's
/// padding. A dump that is a whole number of sections long ends with
/// "no page" frames after its highest frame that has a page; the last
/// section holds at least one such frame. A "no page" frame inside the
/// guest's RAM is a hole; an unflagged one is no padding (the pages of a
/// free block but its head carry no flags).
pub fn guest_frames(flags: &[u64]) -> usize {
    let n = flags.len();
    if !n.is_multiple_of(SECTION_FRAMES) {
        return n;
    }
    let end = flags.iter().rposition(|&f| !bit(f, kpf::NOPAGE)).map_or(0, |i| i + 1);
    if end + SECTION_FRAMES > n { end } else { n }
}

/// Classes by page frame number, for the guest's frames ([`guest_frames`]:
/// Linux's padding of the dump left out); compound tails take their head's
/// class.
///
/// A page with no flags and a count of 0 is the tail of a block whose
/// head is the nearest page before it that has flags or references: free
/// when that head is a free block's (`BUDDY`), else part of an allocation
/// that is not compound and kept (the kernel's). Without counts such pages
/// are kept.
pub fn classes(flags: &[u64], counts: Option<&[u64]>) -> Vec<PageClass> {
    let mut out = Vec::with_capacity(flags.len());
    let mut head = PageClass::Kernel;
    let mut in_free_block = false;
    for (pfn, &f) in flags[..guest_frames(flags)].iter().enumerate() {
        let count = counts.and_then(|c| c.get(pfn).copied());
        let c = if f == 0 && count == Some(0) {
            if in_free_block { PageClass::Free } else { PageClass::Kernel }
        } else if bit(f, kpf::COMPOUND_TAIL) && !bit(f, kpf::BUDDY) {
            in_free_block = false;
            head
        } else {
            in_free_block = bit(f, kpf::BUDDY);
            class_of(f)
        };
        if bit(f, kpf::COMPOUND_HEAD) {
            head = c;
        }
        out.push(c);
    }
    out
}

/// Reads a file of little-endian u64 words, gunzipping it when it starts
/// with the gzip magic. At most `max_words` words.
///
/// # Errors
/// I/O, a bad gzip stream, a length that is not a multiple of 8.
pub fn read_words(path: &Path, max_words: u64) -> Result<Vec<u64>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    parse_words(&raw, max_words).map_err(|e| match e {
        Error::BadInput(m) => Error::BadInput(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// [`read_words`] over bytes in memory.
///
/// # Errors
/// A bad gzip stream, a length that is not a multiple of 8 or too long.
pub fn parse_words(raw: &[u8], max_words: u64) -> Result<Vec<u64>> {
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw)
            .take(max_words * 8 + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io("cannot gunzip the dump", e))?;
        out
    } else {
        raw.to_vec()
    };
    if bytes.len() % 8 != 0 || bytes.len() as u64 > max_words * 8 {
        return Err(Error::BadInput(format!(
            "{} bytes is not a whole number of 8-byte words up to {max_words} pages",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
}

/// Reads a class map: one byte per page frame, the class value (0..=4).
///
/// # Errors
/// I/O, a byte that is not a class.
pub fn read_class_map(path: &Path, max_pages: u64) -> Result<Vec<PageClass>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    if raw.len() as u64 > max_pages {
        return Err(Error::BadInput(format!("{}: {} entries for {max_pages} pages", path.display(), raw.len())));
    }
    raw.iter()
        .enumerate()
        .map(|(i, &b)| {
            PageClass::from_u8(b).ok_or_else(|| Error::Parse {
                format: "class map",
                offset: i as u64,
                msg: format!("byte {b} is not a page class (0..=4)"),
            })
        })
        .collect()
}

/// What [`apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassifyReport {
    /// Pages per class afterwards, over the classified pages.
    pub pages: [u64; 5],
    /// Page frames the input covered.
    pub input_pages: u64,
}

/// The page frames a classification of `image` covers: every frame up to
/// the end of its last guest-physical region, as the guest's
/// `/proc/kpageflags` has one entry per frame up to its highest.
pub fn frames(image: &Image) -> u64 {
    let ps = image.page_size();
    image.regions().iter().filter(|r| !r.synthetic).map(|r| r.first_gfn(ps) + r.pages(ps)).max().unwrap_or(0)
}

/// Writes `src` to `dest` with the class of page frame `n` of the
/// guest-physical regions set to `classes[n]`; records `source` and the
/// guest kernel version.
///
/// # Errors
/// `classes` does not cover exactly the image's [`frames`] (the error names
/// the last frame of a kpageflags dump that runs past the image: one that is
/// not Linux's padding, see [`classes`]); I/O, a corrupt page.
pub fn apply(
    src: &Image,
    dest: &Path,
    classes: &[PageClass],
    source: &str,
    kernel: Option<&str>,
) -> Result<ClassifyReport> {
    let want = frames(src);
    let got = classes.len() as u64;
    if got != want {
        let what = if source == "bitmap" { "class map" } else { "kpageflags dump" };
        let why = if source == "bitmap" || got < want {
            String::new()
        } else {
            format!(
                ": page frame {}, past the image, is not Linux's padding (no-page frames to the end of a {} MiB memory section)",
                got - 1,
                SECTION_FRAMES >> 8
            )
        };
        return Err(Error::BadInput(format!(
            "the {what} covers {got} page frames and the image {want}{why}: it is from another guest or another moment"
        )));
    }
    let mut w = rewrite::derived(src, dest, rewrite::options(src, pbr_format::PageEncoding::Zero))?;
    w.set_metadata(keys::CLASSES_SOURCE, source)?;
    if let Some(k) = kernel {
        w.set_metadata(keys::GUEST_KERNEL, k)?;
    }
    let mut report = ClassifyReport { input_pages: classes.len() as u64, ..Default::default() };
    let mut buf = vec![0u8; src.page_size() as usize];
    for r in src.regions() {
        let first = r.first_gfn(src.page_size());
        for e in src.extents_in(first..first + r.pages(src.page_size())) {
            for gfn in e.gfns() {
                let class = match classes.get(gfn as usize) {
                    Some(&c) if !r.synthetic => {
                        report.pages[c as usize] += 1;
                        c
                    }
                    _ => e.class,
                };
                rewrite::copy_page(src, &e, gfn, &mut w, class, &mut buf)?;
            }
        }
    }
    w.finish()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(bits: &[u32]) -> u64 {
        bits.iter().fold(0, |a, b| a | (1 << b))
    }

    #[test]
    fn kernel_pages_by_kind_and_free_pages_that_are_not_zero() {
        use pbr_format::{ImageWriter, PageEncoding, Region, WriterOptions};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pbr");
        let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 8 * 4096)], WriterOptions::default()).unwrap();
        for g in 0..6 {
            w.write_page(g, &[g as u8 + 1; 4096], PageClass::Unknown).unwrap();
        }
        w.mark_pages(6, 2, PageEncoding::Zero, PageClass::Unknown).unwrap();
        w.finish().unwrap();
        let img = Image::open(&path).unwrap();
        use kpf::*;
        let flags = [f(&[RESERVED]), f(&[SLAB]), f(&[PGTABLE]), 0, f(&[RESERVED]), f(&[BUDDY]), f(&[RESERVED]), 0];
        let mut classes = vec![PageClass::Kernel; 8];
        classes[3] = PageClass::User;
        classes[5] = PageClass::Free;
        classes[7] = PageClass::Free;
        // Page 6 is a zero page: not stored, not counted.
        let k = KernelPages::of(&img, &flags, &classes);
        assert_eq!(k, KernelPages { reserved: 2, slab: 1, page_tables: 1, other: 0 });
        free_only_if_zero(&img, &mut classes).unwrap();
        assert_eq!(classes[5], PageClass::Unknown, "a free page with content was taken after the dump");
        assert_eq!(classes[7], PageClass::Free, "a zero page stays free");
    }

    /// An image of `frames` zero page frames.
    fn zero_image(dir: &Path, frames: u64) -> Image {
        use pbr_format::{ImageWriter, PageEncoding, Region, WriterOptions};
        let path = dir.join("z.pbr");
        let mut w =
            ImageWriter::create(&path, &[Region::ram("ram", 0, frames * 4096)], WriterOptions::default()).unwrap();
        w.mark_pages(0, frames, PageEncoding::Zero, PageClass::Unknown).unwrap();
        w.finish().unwrap();
        Image::open(&path).unwrap()
    }

    #[test]
    fn a_dump_padded_to_its_memory_section_covers_a_guest_of_160_mib() {
        use kpf::*;
        let dir = tempfile::tempdir().unwrap();
        let img = zero_image(dir.path(), 40960);
        let out = dir.path().join("out.pbr");
        // A 160 MiB guest: 40960 frames, its top ones reserved (firmware
        // tables), then Linux's padding to 65536.
        let mut flags = vec![f(&[BUDDY]); 40960];
        flags[40959] = f(&[RESERVED]);
        flags.resize(65536, f(&[NOPAGE]));
        let counts = vec![0u64; 65536];
        assert_eq!(guest_frames(&flags), 40960);
        let c = classes(&flags, Some(&counts));
        assert_eq!(c.len(), 40960);
        assert_eq!(c[40959], PageClass::Kernel);
        let r = apply(&img, &out, &c, "kpageflags", None).unwrap();
        assert_eq!(r.input_pages, 40960);

        // An extra frame that has a page (a larger guest's): refused, named.
        let mut other = flags.clone();
        other[50000] = f(&[SLAB]);
        let err = apply(&img, &out, &classes(&other, Some(&counts)), "kpageflags", None).unwrap_err().to_string();
        assert!(
            err.contains("covers 50001 page frames and the image 40960: page frame 50000, past the image"),
            "{err}"
        );
        // Unflagged frames are no padding: they may be a free block's.
        let mut unflagged = flags.clone();
        unflagged[65535] = 0;
        let err = apply(&img, &out, &classes(&unflagged, None), "kpageflags", None).unwrap_err().to_string();
        assert!(err.contains("page frame 65535, past the image"), "{err}");

        // Padding longer than the section: refused.
        let mut long = flags.clone();
        long.resize(98304, f(&[NOPAGE]));
        assert_eq!(guest_frames(&long), 98304);
        let err = apply(&img, &out, &classes(&long, None), "kpageflags", None).unwrap_err().to_string();
        assert!(err.contains("covers 98304 page frames and the image 40960: page frame 98303"), "{err}");
        // A dump that is not a whole number of sections has no padding.
        assert_eq!(guest_frames(&long[..65535]), 65535);
        // A class map has none either.
        let err = apply(&img, &out, &vec![PageClass::Free; 65536], "bitmap", None).unwrap_err().to_string();
        assert!(err.contains("the class map covers 65536 page frames and the image 40960: it is"), "{err}");
    }

    #[test]
    fn classes_follow_the_rules() {
        use kpf::*;
        assert_eq!(class_of(f(&[BUDDY])), PageClass::Free);
        assert_eq!(class_of(f(&[OFFLINE])), PageClass::Free);
        assert_eq!(class_of(0), PageClass::Kernel);
        assert_eq!(class_of(f(&[LRU, 3])), PageClass::Cache);
        assert_eq!(class_of(f(&[LRU, DIRTY])), PageClass::User);
        assert_eq!(class_of(f(&[LRU, WRITEBACK])), PageClass::User);
        assert_eq!(class_of(f(&[LRU, UNEVICTABLE])), PageClass::User);
        assert_eq!(class_of(f(&[LRU, SWAPBACKED])), PageClass::User);
        assert_eq!(class_of(f(&[LRU, ANON])), PageClass::User);
        assert_eq!(class_of(f(&[SLAB])), PageClass::Kernel);
        assert_eq!(class_of(f(&[PGTABLE])), PageClass::Kernel);
        assert_eq!(class_of(f(&[RESERVED])), PageClass::Kernel);
        let c = classes(&[f(&[COMPOUND_HEAD, ANON, LRU]), f(&[COMPOUND_TAIL]), f(&[COMPOUND_TAIL]), f(&[SLAB])], None);
        assert_eq!(c, [PageClass::User, PageClass::User, PageClass::User, PageClass::Kernel]);
        // Unflagged, unreferenced pages: free after a free block's head,
        // kept after an allocation's (a non-compound order-2 block).
        let flags = [f(&[BUDDY]), 0, 0, 0, 0, 0, 0, 0, f(&[SLAB]), 0];
        let counts = [0, 0, 0, 0, 1, 0, 0, 0, 1, 0];
        let c = classes(&flags, Some(&counts));
        let (fr, k) = (PageClass::Free, PageClass::Kernel);
        assert_eq!(c, [fr, fr, fr, fr, k, k, k, k, k, k]);
        assert_eq!(classes(&flags, None)[1], k);
    }

    /// A dump of the wrong size is a bad side input, named by its path,
    /// not a usage error nor an image's fault.
    #[test]
    fn a_dump_of_the_wrong_size_is_a_bad_input() {
        assert!(matches!(parse_words(&[0u8; 12], 4), Err(Error::BadInput(_))));
        assert!(matches!(parse_words(&[0u8; 40], 4), Err(Error::BadInput(_))));
        assert_eq!(parse_words(&[1, 0, 0, 0, 0, 0, 0, 0], 4).unwrap(), vec![1]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpageflags");
        std::fs::write(&path, [0u8; 7]).unwrap();
        match read_words(&path, 4) {
            Err(Error::BadInput(m)) => assert!(m.starts_with(&path.display().to_string()), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
