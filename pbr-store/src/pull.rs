//! `pull`: an image out of a store, onto a host that may hold none of it.
//! The index is checked against its hash, its skeleton is opened as any
//! image is (hostile input), and every chunk, from the local cache or the
//! store, is checked against its name before its pages are written: a
//! missing or damaged chunk fails the pull, and nothing is left at the
//! destination.

use std::path::Path;
use std::time::Instant;

use pbr_format::{Image, PageEncoding};
use pbr_tools::rewrite;

use crate::cache::Cache;
use crate::chunk;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::push::index_key;
use crate::store::Store;

/// Bytes of pages fetched at once: bounds the memory a pull holds.
const BATCH_BYTES: u64 = 64 << 20;

/// What a pull did.
#[derive(Clone, Debug, PartialEq)]
pub struct PullReport {
    /// Pages written from chunks.
    pub data_pages: u64,
    /// Chunks the image needs.
    pub chunks: usize,
    /// Of those, chunks the cache held.
    pub cached: usize,
    /// Bytes downloaded: chunks the cache lacked, and the index.
    pub downloaded_bytes: u64,
    /// Seconds the pull took.
    pub seconds: f64,
}

/// The index of image `name`.
///
/// # Errors
/// It is not in the store, it is damaged, or the store failed.
pub fn index(store: &Store, name: &str) -> Result<Index> {
    index_and_size(store, name).map(|(index, _)| index)
}

/// The index of image `name`, and its object's size.
fn index_and_size(store: &Store, name: &str) -> Result<(Index, usize)> {
    let bytes = store.get(&index_key(name))?.ok_or_else(|| Error::Missing(store.location.image(name)))?;
    Ok((Index::decode(&bytes)?, bytes.len()))
}

/// Pulls image `name` from `store` into `dest` (written atomically),
/// through the chunk cache `cache`.
///
/// # Errors
/// The image or one of its chunks is missing or damaged, the store
/// failed, I/O.
pub fn pull(store: &Store, name: &str, dest: &Path, cache: &Cache) -> Result<PullReport> {
    let t = Instant::now();
    let (index, index_bytes) = index_and_size(store, name)?;
    let mut report =
        PullReport { data_pages: 0, chunks: 0, cached: 0, downloaded_bytes: index_bytes as u64, seconds: 0.0 };
    report.chunks = index.chunks.len();
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let skeleton = open_skeleton(&index, work.path(), &store.location.image(name))?;
    let mut w = rewrite::derived(&skeleton, dest, rewrite::options(&skeleton, PageEncoding::Zero))?;
    let ps = index.page_size as usize;
    // The data runs' pages, in order, come out of the chunks in order.
    let mut chunks = index.chunks.iter().peekable();
    let mut fetched: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut at = 0usize;
    for run in &index.runs {
        match run.kind.marked() {
            Some(enc) => w.mark_pages(run.gfn, u64::from(run.count), enc, run.class)?,
            None => {
                for gfn in run.gfn..run.gfn + u64::from(run.count) {
                    if fetched.front().is_some_and(|c| at == c.len()) {
                        fetched.pop_front();
                        at = 0;
                    }
                    if fetched.is_empty() {
                        // At most BATCH_BYTES of pages at once (one chunk,
                        // if it is larger).
                        let (mut batch, mut bytes) = (Vec::new(), 0u64);
                        while let Some(c) = chunks.peek() {
                            let b = u64::from(c.pages) * u64::from(index.page_size);
                            if !batch.is_empty() && bytes + b > BATCH_BYTES {
                                break;
                            }
                            bytes += b;
                            batch.extend(chunks.next().copied());
                        }
                        fetched = chunks_of(store, cache, &batch, index.page_size, &mut report)?.into();
                        at = 0;
                    }
                    let c = fetched
                        .front()
                        .ok_or_else(|| Error::Damaged("the chunks hold fewer pages than the runs".into()))?;
                    w.write_page(gfn, &c[at..at + ps], run.class)?;
                    at += ps;
                    report.data_pages += 1;
                }
            }
        }
    }
    w.finish()?;
    report.seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// The skeleton image of `index` (the index of image `what`), written
/// into `dir` and opened as any image is: hostile input.
///
/// # Errors
/// It does not open, or its page size is not the index's.
pub(crate) fn open_skeleton(index: &Index, dir: &Path, what: &str) -> Result<Image> {
    let path = dir.join("skeleton.pbr");
    std::fs::write(&path, &index.skeleton).map_err(|e| Error::io("cannot write the skeleton", e))?;
    let skeleton = Image::open(&path).map_err(|e| Error::Damaged(format!("{what}: its skeleton image: {e}")))?;
    if skeleton.page_size() != index.page_size {
        return Err(Error::Damaged(format!("{what}: the skeleton's page size is not the index's")));
    }
    Ok(skeleton)
}

/// The pages of `batch`'s chunks, each from the cache or the store, each
/// checked.
fn chunks_of(
    store: &Store,
    cache: &Cache,
    batch: &[crate::index::ChunkRef],
    page_size: u32,
    report: &mut PullReport,
) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Option<Vec<u8>>> = batch.iter().map(|c| cache.get(c, page_size)).collect();
    report.cached += out.iter().filter(|p| p.is_some()).count();
    let missing: Vec<usize> = (0..batch.len()).filter(|&i| out[i].is_none()).collect();
    let keys: Vec<String> = missing.iter().map(|&i| chunk::key(&batch[i].hash)).collect();
    let got = store.get_many(&keys)?;
    for ((i, key), object) in missing.into_iter().zip(&keys).zip(got) {
        let object = object.ok_or_else(|| Error::Missing(format!("chunk {key}")))?;
        report.downloaded_bytes += object.len() as u64;
        let pages = chunk::decode(&object, &batch[i], page_size)?;
        cache.put(&batch[i], &object)?;
        out[i] = Some(pages);
    }
    Ok(out.into_iter().flatten().collect())
}

/// The image at `url` (`s3://BUCKET[/PREFIX]/NAME`) as a local file in
/// `dir` (`BUCKET/PREFIX/NAME.pbr`), pulled through `cache` with the
/// credentials of the environment: what `recover` and `select` restore
/// from a store.
///
/// # Errors
/// As [`pull`], and an address or credentials that do not serve.
pub fn fetch(url: &str, dir: &Path, cache: &Cache) -> Result<std::path::PathBuf> {
    let store = Store::at(url, true)?;
    let location = &store.location;
    let name = location.name.clone().unwrap_or_default();
    let mut dest = dir.join(&location.bucket);
    if !location.prefix.is_empty() {
        dest = dest.join(&location.prefix);
    }
    std::fs::create_dir_all(&dest).map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
    let dest = dest.join(format!("{name}.pbr"));
    pull(&store, &name, &dest, cache)?;
    Ok(dest)
}
