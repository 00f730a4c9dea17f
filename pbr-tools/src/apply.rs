//! `apply`: rebuild a full image from a base and a chain of diffs;
//! `rebase`: flatten a chain of diffs into one.

use std::path::Path;

use pbr_format::{BaseRef, Extent, Image, PageEncoding};

use crate::error::{Error, Result};
use crate::rewrite;

fn hex(b: &[u8; 32]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect()
}

/// Checks that each diff names the image the previous one rebuilds.
fn check_chain(diffs: &[&Image]) -> Result<()> {
    let mut prev: Option<[u8; 32]> = None;
    for (i, d) in diffs.iter().enumerate() {
        let b = d.base().ok_or_else(|| Error::Unsupported(format!("diff {} is not a diff image", i + 1)))?;
        if let Some(p) = prev
            && b.blake3 != p
        {
            return Err(Error::Unsupported(format!(
                "diff {} is based on an image with content hash {}..., but diff {} rebuilds {}...: not a chain",
                i + 1,
                hex(&b.blake3),
                i,
                hex(&p)
            )));
        }
        prev = Some(b.result_blake3.ok_or_else(|| {
            Error::Unsupported(format!("diff {} does not record what it rebuilds, so a chain cannot be checked", i + 1))
        })?);
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
    let top = *diffs.last().ok_or_else(|| Error::Unsupported("no diff to apply".into()))?;
    check_chain(diffs)?;
    let want = diffs[0].base().map(|b| b.blake3).unwrap_or_default();
    let have = base.content_hash()?;
    if have != want {
        return Err(Error::Unsupported(format!(
            "wrong base: the diff was made against content {}..., this image holds {}...",
            hex(&want),
            hex(&have)
        )));
    }
    let mut w = rewrite::derived(top, dest, rewrite::options(top, PageEncoding::Zero))?;
    let mut layers: Vec<&Image> = diffs.iter().rev().copied().collect();
    layers.push(base);
    let mut buf = vec![0u8; top.page_size() as usize];
    for e in top.extents() {
        for gfn in e.gfns() {
            let (img, src) = resolve(&layers, gfn)?
                .ok_or_else(|| Error::Unsupported(format!("page {gfn:#x} is a base page all the way down")))?;
            rewrite::copy_page(img, &src, gfn, &mut w, e.class, &mut buf)?;
        }
    }
    w.finish()?;
    let out = Image::open(dest)?;
    let got = out.content_hash()?;
    if let Some(expected) = top.base().and_then(|b| b.result_blake3)
        && got != expected
    {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(Error::Unsupported(format!(
            "the rebuilt image hashes to {}... but the diff records {}...; nothing was written",
            hex(&got),
            hex(&expected)
        )));
    }
    Ok(Applied { file_len: out.file_len(), content_hash: got })
}

/// Writes one diff at `dest` equivalent to applying `diffs` in order: based
/// on the first one's base, rebuilding what the last one rebuilds.
///
/// # Errors
/// Diffs that do not form a chain, I/O.
pub fn rebase(diffs: &[&Image], dest: &Path) -> Result<u64> {
    let top = *diffs.last().ok_or_else(|| Error::Unsupported("no diff to flatten".into()))?;
    check_chain(diffs)?;
    let first = diffs[0].base().cloned().ok_or_else(|| Error::Unsupported("diff 1 is not a diff image".into()))?;
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
