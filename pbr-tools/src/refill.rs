//! Page-cache pages left out of an image and read back from the guest's
//! disks before it runs (`spec/format.md` §7.8, `spec/agent.md` §3.1).
//!
//! - At capture, [`verify`] turns what the agent says is cached (file,
//!   offset, frame, place on the disk) into disk references, keeping only
//!   pages whose saved bytes equal the disk's, each with its crc32.
//! - `trim --drop cache` drops only cache pages with such a reference.
//! - Before a restore, [`Refill::load`] proves every disk unchanged by its
//!   seal, reads each dropped page back and checks its crc32; one that
//!   differs refuses the image, naming the page and the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use pbr_agent::CachedFile;
use pbr_format::{DiskRef, DiskRefs, Image};

use crate::error::{Error, Result};
use crate::seal::{SEALS_KEY, Seals};

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Pages the agent named.
    pub offered: u64,
    /// Pages kept: the saved page equals the disk's bytes.
    pub kept: u64,
    /// Pages whose saved bytes differ from the disk's (changed between the
    /// agent's look and the save, or not what the agent said).
    pub differ: u64,
    /// Pages that name no page of the image, no sealed disk, or a place
    /// past the disk's end, and zero pages (which need no reference).
    pub unusable: u64,
}

/// Disk references for the pages of `img` that `files` name, checked
/// against `img`'s saved content and the disks of `seals`.
///
/// # Errors
/// A disk cannot be read, or a page of the image is corrupt.
pub fn verify(img: &Image, files: &[CachedFile], seals: &Seals) -> Result<(DiskRefs, VerifyReport)> {
    let ps = img.page_size() as usize;
    let mut disks: HashMap<usize, (File, u64)> = HashMap::new();
    let mut report = VerifyReport::default();
    let mut refs = DiskRefs::default();
    let mut page = vec![0u8; ps];
    let mut disk = vec![0u8; ps];
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let Some(d) = seals.disks.iter().position(|d| d.guest == f.disk) else {
            report.offered += f.pages.len() as u64;
            report.unusable += f.pages.len() as u64;
            continue;
        };
        if pbr_format::check_path(rel).is_err() {
            report.offered += f.pages.len() as u64;
            report.unusable += f.pages.len() as u64;
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = disks.entry(d) {
            let path = &seals.disks[d].file.path;
            let file = File::open(path).map_err(|e| Error::io(format!("cannot read disk {}", path.display()), e))?;
            let len = file.metadata().map_err(|e| Error::io("disk", e))?.len();
            slot.insert((file, len));
        }
        let (file, disk_len) = &disks[&d];
        let file_index = refs.files.len() as u32;
        let mut used = false;
        for p in &f.pages {
            report.offered += 1;
            let length = f.size.saturating_sub(p.file_offset).min(ps as u64) as usize;
            let end = p.disk_offset.checked_add(length as u64);
            let Ok(extent) = img.extent_of(p.pfn) else {
                report.unusable += 1;
                continue;
            };
            if length == 0 || end.is_none_or(|e| e > *disk_len) {
                report.unusable += 1;
                continue;
            }
            let saved = img.read_in_extent(&extent, p.pfn, &mut page)?;
            if pbr_format::is_zero(saved) {
                report.unusable += 1;
                continue;
            }
            file.read_exact_at(&mut disk[..length], p.disk_offset)
                .map_err(|e| Error::io(format!("cannot read disk {}", seals.disks[d].file.path.display()), e))?;
            disk[length..].fill(0);
            if saved != &disk[..] {
                report.differ += 1;
                continue;
            }
            report.kept += 1;
            used = true;
            refs.pages.push(DiskRef {
                gfn: p.pfn,
                disk: d as u32,
                disk_offset: p.disk_offset,
                length: length as u32,
                crc32: crc32fast::hash(saved),
                file: file_index,
                file_offset: p.file_offset,
            });
        }
        if used {
            refs.files.push(rel.to_owned());
        }
    }
    // One reference per page: the first file that named it.
    refs.pages.sort_by_key(|r| r.gfn);
    refs.pages.dedup_by_key(|r| r.gfn);
    Ok((refs, report))
}

/// The dropped pages of an image, read back from the disks.
#[derive(Debug)]
pub struct Refill {
    gfns: Vec<u64>,
    data: Vec<u8>,
    page_size: usize,
}

impl Refill {
    /// Reads back every page of `img` that [`Image::pages_to_refill`] names, after proving
    /// each disk unchanged since capture; `None` when the image has none.
    ///
    /// # Errors
    /// [`Error::Refill`]: cache pages trimmed with no reference, no seals,
    /// a disk that changed or cannot be read, a page whose crc32 differs
    /// (named with its file).
    pub fn load(img: &Image) -> Result<Option<Refill>> {
        let ps = img.page_size() as usize;
        refuse_orphans(img)?;
        let trimmed = img.pages_to_refill()?;
        if trimmed.is_empty() {
            return Ok(None);
        }
        let seals = img
            .metadata_value(SEALS_KEY)
            .ok_or_else(|| Error::Refill(format!("the image has disk references but no {SEALS_KEY}")))
            .and_then(|s| Seals::from_json(s).map_err(|e| Error::Refill(e.to_string())))?;
        let mut files: HashMap<u32, File> = HashMap::new();
        for r in &trimmed {
            if files.contains_key(&r.disk) {
                continue;
            }
            let d = seals.disks.get(r.disk as usize).ok_or_else(|| {
                Error::Refill(format!("page {:#x} names disk {} of {}", r.gfn, r.disk, seals.disks.len()))
            })?;
            d.check().map_err(|why| Error::Refill(why.0))?;
            let f = File::open(&d.file.path)
                .map_err(|e| Error::Refill(format!("disk {} ({}): {e}", d.guest, d.file.path.display())))?;
            files.insert(r.disk, f);
        }
        let mut data = vec![0u8; trimmed.len() * ps];
        // Read in disk order, a run of adjacent whole pages at once.
        let mut order: Vec<usize> = (0..trimmed.len()).collect();
        order.sort_by_key(|&i| (trimmed[i].disk, trimmed[i].disk_offset));
        let mut run: Vec<usize> = Vec::new();
        let mut buf = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            run.push(i);
            let next = order.get(n + 1).map(|&j| trimmed[j]);
            let r = trimmed[i];
            let joins = next.is_some_and(|x| {
                x.disk == r.disk && r.length as usize == ps && x.disk_offset == r.disk_offset + ps as u64
            });
            if joins && run.len() < 256 {
                continue;
            }
            let first = trimmed[run[0]];
            let len = (run.len() - 1) * ps + r.length as usize;
            buf.resize(len, 0);
            files[&first.disk].read_exact_at(&mut buf, first.disk_offset).map_err(|e| {
                Error::Refill(format!(
                    "page {:#x}: {} at disk byte {}: {e}",
                    first.gfn,
                    file_of(img, first),
                    first.disk_offset
                ))
            })?;
            for (k, &idx) in run.iter().enumerate() {
                let want = trimmed[idx];
                let dest = &mut data[idx * ps..(idx + 1) * ps];
                let from = &buf[k * ps..(k * ps + want.length as usize).min(len)];
                dest[..from.len()].copy_from_slice(from);
                dest[from.len()..].fill(0);
                if crc32fast::hash(dest) != want.crc32 {
                    return Err(Error::Refill(format!(
                        "page {:#x} ({} at byte {}) reads differently from the disk than it was captured",
                        want.gfn,
                        file_of(img, want),
                        want.file_offset
                    )));
                }
            }
            run.clear();
        }
        Ok(Some(Refill { gfns: trimmed.iter().map(|r| r.gfn).collect(), data, page_size: ps }))
    }

    /// The refilled content of page `gfn`, if it is one.
    pub fn page(&self, gfn: u64) -> Option<&[u8]> {
        let i = self.gfns.binary_search(&gfn).ok()?;
        Some(&self.data[i * self.page_size..(i + 1) * self.page_size])
    }

    /// Every refilled page: `(gfn, content)`, by frame.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.gfns.iter().copied().zip(self.data.chunks_exact(self.page_size))
    }

    /// Pages refilled.
    pub fn len(&self) -> usize {
        self.gfns.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.gfns.is_empty()
    }
}

/// `path` of the file a reference names, for messages.
fn file_of(img: &Image, r: &DiskRef) -> String {
    img.disk_refs().files.get(r.file as usize).map_or_else(|| "?".into(), |f| format!("/{f}"))
}

/// Refuses `img` when it has orphaned cache pages
/// ([`Image::orphaned_cache_pages`]).
///
/// # Errors
/// [`Error::Refill`] with the count.
pub fn refuse_orphans(img: &Image) -> Result<()> {
    let orphans = img.orphaned_cache_pages();
    if orphans > 0 {
        return Err(Error::Refill(format!(
            "{orphans} page-cache pages were trimmed with no disk reference to read them from: \
             the guest would find zeros where it expects file data"
        )));
    }
    Ok(())
}

/// Refuses `img` when a restore by `what` would need pages refilled, which
/// `what` does not do.
///
/// # Errors
/// [`Error::Refill`] naming `what`; a corrupt page.
pub fn refuse_refill(img: &Image, what: &str) -> Result<()> {
    refuse_orphans(img)?;
    let n = img.pages_to_refill()?.len();
    if n > 0 {
        return Err(Error::Refill(format!("{what} does not refill page-cache pages, and {n} were trimmed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{DiskSeal, FileSeal};
    use pbr_agent::CachedPage;
    use pbr_format::{ImageWriter, PageClass, PageEncoding, Region, WriterOptions};

    /// An image of 8 pages (page `g` filled with `g + 1`, page 7 zero)
    /// and a disk holding page 2 at byte 8192 and page 3's first 100
    /// bytes at 16384.
    fn lab(dir: &std::path::Path) -> (Image, Seals) {
        let disk = dir.join("root.raw");
        let mut bytes = vec![0xeeu8; 8 * 4096];
        bytes[8192..12288].fill(3);
        bytes[16384..16484].fill(4);
        std::fs::write(&disk, &bytes).unwrap();
        let path = dir.join("img.pbr");
        let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 8 * 4096)], WriterOptions::default()).unwrap();
        for g in 0..7u64 {
            let mut page = vec![g as u8 + 1; 4096];
            if g == 3 {
                page[100..].fill(0);
            }
            w.write_page(g, &page, PageClass::Cache).unwrap();
        }
        w.mark_pages(7, 1, PageEncoding::Zero, PageClass::Cache).unwrap();
        w.finish().unwrap();
        let seals = Seals {
            disks: vec![DiskSeal {
                drive: "root".into(),
                guest: "vda".into(),
                mounts: vec!["/ ro".into()],
                file: FileSeal::of(&disk, false).unwrap(),
            }],
            ..Default::default()
        };
        (Image::open(&path).unwrap(), seals)
    }

    fn page(file_offset: u64, pfn: u64, disk_offset: u64) -> CachedPage {
        CachedPage { file_offset, pfn, disk_offset }
    }

    #[test]
    fn only_pages_equal_to_the_disk_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (img, seals) = lab(dir.path());
        let files = vec![
            CachedFile {
                path: "/usr/lib/a.so".into(),
                disk: "vda".into(),
                size: 4096 + 100,
                pages: vec![
                    page(0, 2, 8192),         // equal: kept
                    page(4096, 3, 16384),     // the file's last 100 bytes, then zeros: kept
                    page(0, 1, 8192),         // another page's bytes: differ
                    page(0, 7, 0),            // a zero page: no reference needed
                    page(0, 99, 0),           // no such page
                    page(0, 2, u64::MAX - 5), // past the disk
                    page(8192, 4, 0),         // past the file's end
                ],
            },
            CachedFile { path: "/x".into(), disk: "vdz".into(), size: 4096, pages: vec![page(0, 2, 8192)] },
            CachedFile { path: "/../etc".into(), disk: "vda".into(), size: 4096, pages: vec![page(0, 2, 8192)] },
        ];
        let (refs, r) = verify(&img, &files, &seals).unwrap();
        assert_eq!(r, VerifyReport { offered: 9, kept: 2, differ: 1, unusable: 6 });
        assert_eq!(refs.files, ["usr/lib/a.so"]);
        let gfns: Vec<u64> = refs.pages.iter().map(|p| p.gfn).collect();
        assert_eq!(gfns, [2, 3]);
        assert_eq!(refs.pages[1].length, 100);
        assert_eq!(refs.pages[0].crc32, crc32fast::hash(&[3u8; 4096]));
    }
}
