//! `apply`: rebuild a full image from a base and a chain of diffs;
//! `rebase`: flatten a chain of diffs into one.

use std::ops::Range;
use std::path::Path;

use pbr_format::{BaseRef, ContentHasher, Extent, Image, PageEncoding};

use crate::error::{Error, Result};
use crate::rewrite;

fn hex(b: &[u8; 32]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// Checks that each diff names the image the previous one rebuilds.
fn check_chain(diffs: &[&Image]) -> Result<()> {
    let mut prev: Option<[u8; 32]> = None;
    for (i, d) in diffs.iter().enumerate() {
        let b = d.base().ok_or_else(|| Error::Usage(format!("diff {} is not a diff image", i + 1)))?;
        if let Some(p) = prev
            && b.blake3 != p
        {
            return Err(Error::Usage(format!(
                "diff {} is based on an image with content hash {}..., but diff {} rebuilds {}...: not a chain",
                i + 1,
                hex(&b.blake3),
                i,
                hex(&p)
            )));
        }
        prev = match (b.result_blake3, i + 1 < diffs.len()) {
            (Some(r), _) => Some(r),
            // The last diff need not say what it rebuilds; a link must.
            (None, false) => None,
            (None, true) => {
                return Err(Error::Usage(format!(
                    "diff {} does not record what it rebuilds, so the chain to diff {} cannot be checked",
                    i + 1,
                    i + 2
                )));
            }
        };
    }
    Ok(())
}

/// The image and extent that hold page `gfn` after applying `layers`
/// (topmost first): the first whose page is not a base page.
fn resolve<'a>(layers: &[&'a Image], gfn: u64) -> Result<Option<(&'a Image, Extent)>> {
    for img in layers {
        let e = img.extent_of(gfn)?;
        if e.encoding != PageEncoding::Base {
            return Ok(Some((img, e)));
        }
    }
    Ok(None)
}

/// The pieces of `gfns` after applying `layers` (topmost first): for each,
/// the image and extent holding its pages and the guest frames it covers.
fn resolve_runs<'a>(layers: &[&'a Image], gfns: Range<u64>) -> Result<Vec<(&'a Image, Extent, Range<u64>)>> {
    let Some((img, rest)) = layers.split_first() else {
        return Err(Error::Usage(format!("pages from {:#x} are base pages all the way down", gfns.start)));
    };
    let mut out = Vec::new();
    let mut g = gfns.start;
    while g < gfns.end {
        let e = img.extent_of(g)?;
        let end = e.end_gfn().min(gfns.end);
        if e.encoding == PageEncoding::Base {
            out.extend(resolve_runs(rest, g..end)?);
        } else {
            out.push((*img, e, g..end));
        }
        g = end;
    }
    Ok(out)
}

fn check_base(want: [u8; 32], have: [u8; 32]) -> Result<()> {
    if have != want {
        return Err(Error::Usage(format!(
            "wrong base: the diff was made against content {}..., this image holds {}...",
            hex(&want),
            hex(&have)
        )));
    }
    Ok(())
}

/// The content of pages `gfns` of extent `e`: borrowed for raw pages.
fn run_bytes<'a>(img: &'a Image, e: &Extent, gfns: Range<u64>, buf: &mut [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    let ps = u64::from(img.page_size());
    if e.encoding == PageEncoding::Raw {
        return Ok(std::borrow::Cow::Borrowed(img.raw_pages(e, gfns)?));
    }
    let mut out = Vec::with_capacity(((gfns.end - gfns.start) * ps) as usize);
    for gfn in gfns {
        out.extend_from_slice(img.read_in_extent(e, gfn, buf)?);
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Feeds the base's own pages `gfns` to its content hash.
fn hash_base_pages(base: &Image, gfns: Range<u64>, h: &mut ContentHasher, buf: &mut [u8]) -> Result<()> {
    for e in base.extents_in(gfns.clone()) {
        let part = e.gfn.max(gfns.start)..e.end_gfn().min(gfns.end);
        match e.encoding {
            PageEncoding::Zero | PageEncoding::Trimmed => h.zero_pages(part.end - part.start),
            PageEncoding::Base => return Err(Error::Usage("the base image is itself a diff".into())),
            _ => {
                let bytes = run_bytes(base, &e, part, buf)?;
                h.pages(&bytes);
            }
        }
    }
    Ok(())
}

/// What [`apply`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// File size of the output.
    pub file_len: u64,
    /// Content hash of the output, equal to what the last diff records.
    pub content_hash: [u8; 32],
}

/// Writes `base` with `diffs` applied in order to `dest`, and checks the
/// result's content hash against what the last diff records.
///
/// # Errors
/// A base whose content hash is not the one the first diff names ("wrong
/// base"), diffs that do not form a chain, a result that does not hash as
/// recorded (nothing is left at `dest` then), I/O.
pub fn apply(base: &Image, diffs: &[&Image], dest: &Path) -> Result<Applied> {
    let top = *diffs.last().ok_or_else(|| Error::Usage("no diff to apply".into()))?;
    check_chain(diffs)?;
    let want = diffs[0].base().map(|b| b.blake3).unwrap_or_default();
    let ps = top.page_size();
    // With one diff over the same layout, the base's content hash is
    // computed in the same pass as the result's, sharing page digests.
    let mut base_hash =
        (diffs.len() == 1 && base.regions() == top.regions()).then(|| ContentHasher::new(base.regions(), ps));
    if base_hash.is_none() {
        check_base(want, base.content_hash()?)?;
    }
    let mut w = rewrite::derived(top, dest, rewrite::options(top, PageEncoding::Zero))?;
    let mut layers: Vec<&Image> = diffs.iter().rev().copied().collect();
    layers.push(base);
    let mut buf = vec![0u8; ps as usize];
    let mut hash = ContentHasher::new(top.regions(), ps);
    for e in top.extents() {
        for (img, src, gfns) in resolve_runs(&layers, e.gfns())? {
            let from_base = std::ptr::eq(img, base);
            if let Some(h) = base_hash.as_mut().filter(|_| !from_base) {
                hash_base_pages(base, gfns.clone(), h, &mut buf)?;
            }
            let n = gfns.end - gfns.start;
            match src.encoding {
                PageEncoding::Zero | PageEncoding::Trimmed => {
                    w.mark_pages(gfns.start, n, src.encoding, e.class)?;
                    hash.zero_pages(n);
                    if let Some(h) = base_hash.as_mut().filter(|_| from_base) {
                        h.zero_pages(n);
                    }
                }
                _ => {
                    let bytes = run_bytes(img, &src, gfns.clone(), &mut buf)?;
                    let digests = hash.page_digests(&bytes);
                    hash.digests(&digests);
                    if let Some(h) = base_hash.as_mut().filter(|_| from_base) {
                        h.digests(&digests);
                    }
                    for (i, page) in bytes.chunks_exact(ps as usize).enumerate() {
                        w.write_page(gfns.start + i as u64, page, e.class)?;
                    }
                }
            }
        }
    }
    if let Some(h) = base_hash {
        check_base(want, h.finalize())?;
    }
    let got = hash.finalize();
    if let Some(expected) = top.base().and_then(|b| b.result_blake3)
        && got != expected
    {
        return Err(Error::Inconsistent(format!(
            "the rebuilt image would hash to {}... but the diff records {}...; nothing was written",
            hex(&got),
            hex(&expected)
        )));
    }
    let file_len = w.finish()?.file_len;
    Ok(Applied { file_len, content_hash: got })
}

/// Writes one diff at `dest` equivalent to applying `diffs` in order: based
/// on the first one's base, rebuilding what the last one rebuilds.
///
/// # Errors
/// Diffs that do not form a chain, I/O.
pub fn rebase(diffs: &[&Image], dest: &Path) -> Result<u64> {
    let top = *diffs.last().ok_or_else(|| Error::Usage("no diff to flatten".into()))?;
    check_chain(diffs)?;
    let first = diffs[0].base().cloned().ok_or_else(|| Error::Usage("diff 1 is not a diff image".into()))?;
    let mut w = rewrite::derived(top, dest, rewrite::options(top, PageEncoding::Base))?;
    w.set_base(BaseRef { result_blake3: top.base().and_then(|b| b.result_blake3), ..first })?;
    let layers: Vec<&Image> = diffs.iter().rev().copied().collect();
    let mut buf = vec![0u8; top.page_size() as usize];
    for e in top.extents() {
        for gfn in e.gfns() {
            match resolve(&layers, gfn)? {
                Some((img, src)) => rewrite::copy_page(img, &src, gfn, &mut w, e.class, &mut buf)?,
                None => w.mark_pages(gfn, 1, PageEncoding::Base, e.class)?,
            }
        }
    }
    Ok(w.finish()?.file_len)
}
