//! An image restored from a store as it runs, on a host that holds none
//! of it: only its index and the few pages outside its RAM block are
//! fetched before the restore. They make a local *shell* (the image with
//! every `pc.ram` page left out, marked `store.ram` = `served` so that it
//! is never restored on its own), and the RAM block is a file of a FUSE
//! mount ([`RamMount`]) that fetches each page from its chunk when QEMU
//! first reads it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pbr_format::{PageEncoding, keys};
use pbr_tools::rewrite;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::index::RunKind;
use crate::mount::{MAIN_RAM, RamBlock, RamMount};
use crate::pages::{ChunkReader, Page, PageMap};
use crate::pull::{index, open_skeleton};
use crate::store::Store;

/// The most stored pages outside the RAM block a shell holds (256 MiB of
/// 4 KiB pages: ROMs and video memory are a few MiB).
const MAX_OUTSIDE: usize = 1 << 16;

/// An image of a store, ready to be restored as it runs.
#[derive(Debug)]
pub struct Lazy {
    /// The mounted RAM block (unmounted before the work directory goes).
    pub ram: RamMount,
    /// The shell: the image without its `pc.ram` pages.
    pub shell: PathBuf,
    /// Seconds it took to make ready (the index, the pages outside the RAM
    /// block, the mount).
    pub seconds: f64,
    _work: tempfile::TempDir,
    /// Removes the work directory if the tool is interrupted (the mount
    /// is detached first).
    _interrupt: pbr_tools::cleanup::Registration,
}

/// The image at `url` (`s3://BUCKET[/PREFIX]/NAME`) made ready to restore
/// as it runs, its chunks read through `cache`, with the credentials of
/// the environment.
///
/// # Errors
/// The image is not in the store, or is damaged; it has no `pc.ram` block;
/// the store failed; the mount failed.
pub fn open(url: &str, cache: &Cache) -> Result<Lazy> {
    let t = Instant::now();
    let store = Arc::new(Store::at(url, true)?);
    let location = store.location.clone();
    let name = location.name.clone().unwrap_or_default();
    let index = index(&store, &name)?;
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let skeleton = open_skeleton(&index, work.path(), &location.image(&name))?;
    if skeleton.metadata_value(keys::SOURCE_FORMAT) == Some("vmm") {
        return Err(Error::Unsupported(format!(
            "{} is the project's own VMM's image: only a QEMU guest's is restored from the store as it runs",
            location.image(&name)
        )));
    }
    let map = PageMap::new(&index)?;
    let reader = ChunkReader::new(store, cache.clone(), &index);
    let ps = skeleton.page_size();
    // The RAM block's layout is checked before anything is fetched.
    let block = RamBlock::of(&skeleton)?;
    let shell = work.path().join(format!("{}.pbr", name.rsplit('/').next().unwrap_or("image")));
    let mut w = rewrite::derived(&skeleton, &shell, rewrite::options(&skeleton, PageEncoding::Zero))?;
    w.set_metadata(keys::STORE_RAM, "served")?;
    // The pages outside the RAM block, their chunks fetched at once.
    let outside: Vec<(u64, pbr_format::PageClass, Page)> = index
        .runs
        .iter()
        .filter(|r| r.kind == RunKind::Data)
        .flat_map(|r| (r.gfn..r.gfn + u64::from(r.count)).map(move |g| (g, r.class)))
        .filter(|&(g, _)| !block.holds(g, ps))
        .take(MAX_OUTSIDE + 1)
        .map(|(g, class)| match map.locate(g) {
            Page::Zero => Err(Error::Damaged(format!("index: frame {g:#x} of a data run is in no chunk"))),
            data => Ok((g, class, data)),
        })
        .collect::<Result<_>>()?;
    if outside.len() > MAX_OUTSIDE {
        return Err(Error::Unsupported(format!(
            "the image stores more than {} MiB outside its {MAIN_RAM} block: pull it instead",
            (MAX_OUTSIDE * ps as usize) >> 20
        )));
    }
    let places: Vec<Page> = outside.iter().map(|&(_, _, p)| p).collect();
    let bytes = reader.gather(&places)?;
    let mut pages = outside.iter().zip(bytes.chunks_exact(ps as usize)).peekable();
    for run in &index.runs {
        match run.kind.marked() {
            Some(enc) => w.mark_pages(run.gfn, u64::from(run.count), enc, run.class)?,
            None => {
                let end = run.gfn + u64::from(run.count);
                while let Some((&(gfn, class, _), page)) = pages.next_if(|(p, _)| p.0 < end) {
                    w.write_page(gfn, page, class)?;
                }
            }
        }
    }
    w.finish()?;
    let dir = work.path().join("ram");
    std::fs::create_dir(&dir).map_err(|e| Error::io("cannot create the mount point", e))?;
    let ram = RamMount::mount(&skeleton, map, reader, &dir)?;
    Ok(Lazy { ram, shell, seconds: t.elapsed().as_secs_f64(), _work: work, _interrupt: interrupt })
}
