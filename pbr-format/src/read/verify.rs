//! Full verification: every checksum, every page, the trailer hash
//! (`spec/format.md` §9).

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{Error, ErrorKind, Result};
use crate::page::{PageEncoding, zero_page_crc};
use crate::section::SectionKind;

use super::Image;
use super::page_index::Extent;
use super::report::{CheckReport, VerifyReport};
use super::sections::{SectionInfo, check_crc};

/// How stored pages are checked.
struct Check<'a> {
    /// Against their blake3 too, when the image has page hashes.
    hashes: bool,
    /// File ranges known to read as zeros (sorted).
    zeros: &'a [Range<u64>],
}

/// Pages checked per parallel work item.
const CHUNK_PAGES: u32 = 256;

impl Image {
    /// Checks every section crc32, the `PROCESSES` index and blobs, every
    /// stored page against its crc32 (and blake3 when the image has page
    /// hashes), and the trailer hash, in parallel.
    ///
    /// # Errors
    /// The first failure in file order, named with its section and offset.
    ///
    /// # Example
    /// ```no_run
    /// let image = pbr_format::Image::open("guest.pbr")?;
    /// let report = image.verify()?;
    /// println!("{} pages checked", report.pages);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with_progress(&|_| {})
    }

    /// As [`Image::verify`], calling `progress` with the number of bytes
    /// each finished piece of work covered (from several threads).
    ///
    /// # Errors
    /// As [`Image::verify`].
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let done = std::sync::atomic::AtomicU64::new(0);
    /// let report = image.verify_with_progress(&|n| {
    ///     done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    /// })?;
    /// println!("{report:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify_with_progress(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        let r = self.check(1, progress);
        match r.damage.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(VerifyReport { sections: r.sections, pages: r.pages, hashed_bytes: r.hashed_bytes }),
        }
    }

    /// Checks every stored page against its crc32 (and blake3 when the
    /// image has page hashes), in parallel, without the whole-file hash:
    /// what a restore does before any page reaches a guest, and a command
    /// before it writes a page where a half-written output cannot be taken
    /// back (a pipe, a device). Returns how many pages were checked.
    ///
    /// # Errors
    /// The first damaged page in file order, named with its offset.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.verify_pages()?, image.stored_page_count());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn verify_pages(&self) -> Result<u64> {
        self.first_damage(Check { hashes: true, zeros: &[] })
    }

    /// Checks every stored page against its crc32 only, in parallel: the
    /// check a restore makes before any page reaches a guest (the blake3
    /// page hashes, when present, are left to [`Image::verify_pages`]).
    /// Returns how many pages were checked.
    ///
    /// # Errors
    /// The first damaged page in file order, named with its offset.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.check_page_crcs()?, image.stored_page_count());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn check_page_crcs(&self) -> Result<u64> {
        self.check_page_crcs_outside(&[])
    }

    /// As [`Image::check_page_crcs`], where `zeros` are byte ranges of the
    /// file the caller knows read as zeros (the holes of a sparse file, as
    /// `lseek(SEEK_HOLE)` reports them; sorted, not overlapping): a raw page
    /// wholly inside one is checked against the crc32 of a zero page without
    /// being read. A flat image keeps its zero pages as holes, which would
    /// otherwise be read (and allocated in the page cache) only to be found
    /// zero.
    ///
    /// # Errors
    /// As [`Image::check_page_crcs`]; a page in a hole whose crc32 is not a
    /// zero page's is damaged.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// // A "hole" over the whole file: the stored pages are not zero pages.
    /// assert!(image.check_page_crcs_outside(&[0..image.file_len()]).is_err());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn check_page_crcs_outside(&self, zeros: &[Range<u64>]) -> Result<u64> {
        self.first_damage(Check { hashes: false, zeros })
    }

    /// Checks every stored page as `how` says: how many there are, or the
    /// first damaged one in file order.
    fn first_damage(&self, how: Check<'_>) -> Result<u64> {
        let (good, _, errors) = self.check_pages(1, how, &|_| {});
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(good),
        }
    }

    /// Checks everything [`Image::verify`] checks without stopping at the
    /// first failure, as `qemu-img check` does: every damaged section,
    /// every damaged page and the trailer hash, in file order. At most
    /// `max_listed` failures are kept; [`CheckReport::damaged`] counts them
    /// all.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let report = image.check(100, &|_| {});
    /// assert_eq!(report.damaged, 0);
    /// assert!(report.damage.is_empty());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn check(&self, max_listed: usize, progress: &(dyn Fn(u64) + Sync)) -> CheckReport {
        let bytes = self.as_bytes();
        let mut r = CheckReport { sections: 0, pages: 0, hashed_bytes: 0, damage: Vec::new(), damaged: 0 };
        let note = |r: &mut CheckReport, e: Error| {
            r.damaged += 1;
            if r.damage.len() < max_listed {
                r.damage.push(e);
            }
        };
        let is_data = |s: &&SectionInfo| s.kind == Some(SectionKind::PageData);
        for s in self.sections().iter().filter(|s| s.kind.is_some() && !is_data(s)) {
            match check_crc(bytes, s) {
                Ok(()) => r.sections += 1,
                Err(e) => note(&mut r, e),
            }
            progress(s.length);
        }
        // The PROCESSES index and every blob: a failure names the blob.
        match self.processes() {
            Ok(p) => {
                for e in p.iter().flat_map(|p| p.blobs()).filter_map(|b| b.bytes().err()) {
                    note(&mut r, e);
                }
            }
            Err(e) => note(&mut r, e),
        }
        // Pages before the PAGE_DATA crc: a page error names the page.
        let (pages, bad, errors) = self.check_pages(max_listed, Check { hashes: true, zeros: &[] }, progress);
        r.pages = pages;
        r.damaged += bad;
        for e in errors {
            if r.damage.len() < max_listed {
                r.damage.push(e);
            }
        }
        for s in self.sections().iter().filter(is_data) {
            match check_crc(bytes, s) {
                Ok(()) => r.sections += 1,
                Err(e) => note(&mut r, e),
            }
        }
        let hashed = bytes.len() - 32;
        let mut hasher = blake3::Hasher::new();
        hasher.update_rayon(&bytes[..hashed]);
        if *hasher.finalize().as_bytes() != self.image_blake3() {
            let e = Error::new(ErrorKind::HashMismatch { what: "the whole image (trailer image_blake3)".into() })
                .at("trailer", hashed as u64);
            note(&mut r, e);
        }
        progress(hashed as u64);
        r.hashed_bytes = hashed as u64;
        r
    }

    /// Checks every stored page as `how` says: the good ones counted, the
    /// bad ones counted and the first `max_listed` of them (in file order)
    /// kept.
    fn check_pages(
        &self,
        max_listed: usize,
        how: Check<'_>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> (u64, u64, Vec<Error>) {
        let work: Vec<(Extent, u64, u32)> = self
            .extents()
            .filter(|e| e.encoding.is_stored())
            .flat_map(|e| {
                (0..e.count.div_ceil(CHUNK_PAGES)).map(move |c| {
                    let first = e.gfn + u64::from(c * CHUNK_PAGES);
                    (e, first, CHUNK_PAGES.min(e.count - c * CHUNK_PAGES))
                })
            })
            .collect();
        let ps = self.page_size() as usize;
        let results: Vec<(u64, u64, Vec<Error>)> = work
            .par_iter()
            .map_init(
                || vec![0u8; ps],
                |buf, (e, first, n)| {
                    let (mut good, mut bad, mut errors) = (0, 0, Vec::new());
                    for gfn in *first..*first + u64::from(*n) {
                        match self.verify_page(e, gfn, buf, &how) {
                            Ok(()) => good += 1,
                            Err(err) => {
                                bad += 1;
                                if errors.len() < max_listed {
                                    errors.push(err);
                                }
                            }
                        }
                    }
                    progress(u64::from(*n) * ps as u64);
                    (good, bad, errors)
                },
            )
            .collect();
        let (mut good, mut bad, mut errors) = (0, 0, Vec::new());
        for (g, b, e) in results {
            good += g;
            bad += b;
            errors.extend(e.into_iter().take(max_listed.saturating_sub(errors.len())));
        }
        (good, bad, errors)
    }

    fn verify_page(&self, e: &Extent, gfn: u64, buf: &mut [u8], how: &Check<'_>) -> Result<()> {
        if e.encoding == PageEncoding::Raw {
            let at = self.page_offset(e, gfn);
            let end = at + u64::from(self.page_size());
            let i = how.zeros.partition_point(|r| r.end <= at);
            if how.zeros.get(i).is_some_and(|r| r.start <= at && end <= r.end) {
                let stored = self.expected_crc(e, gfn).unwrap_or(0);
                let computed = zero_page_crc(self.page_size());
                if stored != computed {
                    return Err(Error::new(ErrorKind::ChecksumMismatch {
                        what: format!(
                            "raw page gfn {gfn:#x} (stored page {}, a hole of the file)",
                            e.aux + (gfn - e.gfn)
                        ),
                        stored,
                        computed,
                    })
                    .at("PAGE_DATA", at));
                }
                return Ok(());
            }
        }
        // The read checks the crc32.
        let content = self.read_in_extent(e, gfn, buf)?;
        if let Some(h) = self.stored_hash(e, gfn).filter(|_| how.hashes)
            && *blake3::hash(content).as_bytes() != h
        {
            let k = e.aux + (gfn - e.gfn);
            return Err(Error::new(ErrorKind::HashMismatch {
                what: format!("{} page gfn {gfn:#x} (stored page {k})", e.encoding),
            })
            .at("PAGE_DATA", self.page_offset(e, gfn)));
        }
        Ok(())
    }
}
