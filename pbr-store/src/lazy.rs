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
use crate::mount::{MAIN_RAM, RamMount};
use crate::pages::{ChunkReader, Page, PageMap};
use crate::pull::{index, open_skeleton};
use crate::store::Store;

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
    let location = crate::Location::parse(url, true)?;
    let store = Arc::new(Store::open(&location, &crate::Config::from_env()?)?);
    let name = location.name.clone().unwrap_or_default();
    let index = index(&store, &name)?;
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let skeleton = open_skeleton(&index, work.path(), &location.image(&name))?;
    let map = PageMap::new(&index)?;
    let reader = ChunkReader::new(store, cache.clone(), &index);
    let ps = skeleton.page_size();
    let in_ram: Vec<(u64, u64)> = skeleton
        .regions()
        .iter()
        .filter(|r| r.name == MAIN_RAM)
        .map(|r| (r.first_gfn(ps), r.first_gfn(ps) + r.pages(ps)))
        .collect();
    let shell = work.path().join(format!("{}.pbr", name.rsplit('/').next().unwrap_or("image")));
    let mut w = rewrite::derived(&skeleton, &shell, rewrite::options(&skeleton, PageEncoding::Zero))?;
    w.set_metadata(keys::STORE_RAM, "served")?;
    let size = ps as usize;
    for run in &index.runs {
        match run.kind {
            RunKind::Zero => w.mark_pages(run.gfn, u64::from(run.count), PageEncoding::Zero, run.class)?,
            RunKind::Trimmed => w.mark_pages(run.gfn, u64::from(run.count), PageEncoding::Trimmed, run.class)?,
            RunKind::Data => {
                for gfn in run.gfn..run.gfn + u64::from(run.count) {
                    if in_ram.iter().any(|&(a, b)| (a..b).contains(&gfn)) {
                        continue;
                    }
                    let Page::Data { chunk, at } = map.locate(gfn) else {
                        return Err(Error::Damaged(format!("index: frame {gfn:#x} of a data run is in no chunk")));
                    };
                    let pages = reader.pages(&[chunk])?;
                    let from = at as usize * size;
                    let page = pages[0]
                        .get(from..from + size)
                        .ok_or_else(|| Error::Damaged(format!("index: chunk {chunk} holds no page {at}")))?;
                    w.write_page(gfn, page, run.class)?;
                }
            }
        }
    }
    w.finish()?;
    let dir = work.path().join("ram");
    std::fs::create_dir(&dir).map_err(|e| Error::io("cannot create the mount point", e))?;
    let ram = RamMount::mount(&skeleton, map, reader, &dir)?;
    Ok(Lazy { ram, shell, seconds: t.elapsed().as_secs_f64(), _work: work })
}
