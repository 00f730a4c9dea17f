//! `push`: an image into a store. Its pages are cut into chunks by
//! content; each chunk's pages are read from the image and checked
//! against their crc32 first (a damaged image is never passed on); the
//! chunks the store lacks are uploaded, then the index, so that an index
//! in the store always has its chunks.

use std::path::Path;
use std::time::Instant;

use pbr_format::{Image, PageEncoding};
use pbr_tools::rewrite;

use crate::chunk::{self, Chunker};
use crate::error::{Error, Result};
use crate::index::{ChunkRef, Index, Run, RunKind};
use crate::store::Store;

/// How an image is pushed.
#[derive(Clone, Copy, Debug)]
pub struct PushOptions {
    /// Chunks hold this many pages on average (a power of two).
    pub chunk_pages: u32,
    /// A chunk the store holds already is written again when it is older
    /// than this: a `gc` (whose grace period is longer) cannot take it
    /// while this push, which names it, runs.
    pub renew_after: std::time::Duration,
}

impl Default for PushOptions {
    fn default() -> PushOptions {
        PushOptions { chunk_pages: 16, renew_after: std::time::Duration::from_secs(1800) }
    }
}

/// What a push did.
#[derive(Clone, Debug, PartialEq)]
pub struct PushReport {
    /// Pages the image stores (their bytes in chunks).
    pub data_pages: u64,
    /// Chunks the image's pages are in.
    pub chunks: usize,
    /// Of those, chunks the store did not hold yet, or held from longer
    /// ago than [`PushOptions::renew_after`].
    pub uploaded: usize,
    /// Bytes uploaded: new chunks and the index.
    pub uploaded_bytes: u64,
    /// The index object's size.
    pub index_bytes: u64,
    /// Seconds the push took.
    pub seconds: f64,
}

/// Bytes of chunks checked and uploaded at once: bounds the memory a push
/// holds.
const BATCH_BYTES: usize = 64 << 20;

/// The key of image `name`'s index.
pub fn index_key(name: &str) -> String {
    format!("images/{name}.idx")
}

/// Pushes the image at `path` into `store` as `name`.
///
/// # Errors
/// The image is damaged (a page fails its crc32) or a diff over a base
/// (apply it first), the store failed.
pub fn push(path: &Path, store: &Store, name: &str, opts: PushOptions) -> Result<PushReport> {
    let t = Instant::now();
    let img = Image::open(path).map_err(pbr_tools::Error::from)?;
    let page_size = img.page_size();
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let skeleton = work.path().join("skeleton.pbr");
    rewrite::derived(&img, &skeleton, rewrite::options(&img, PageEncoding::Zero))?.finish()?;
    let skeleton = std::fs::read(&skeleton).map_err(|e| Error::io("cannot read the skeleton", e))?;

    let chunker = Chunker::new(opts.chunk_pages, page_size);
    let mut runs: Vec<Run> = Vec::new();
    let mut chunks: Vec<ChunkRef> = Vec::new();
    let mut pending: Vec<(ChunkRef, Vec<u8>)> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; page_size as usize];
    let mut report =
        PushReport { data_pages: 0, chunks: 0, uploaded: 0, uploaded_bytes: 0, index_bytes: 0, seconds: 0.0 };
    let cut = |current: &mut Vec<u8>, pending: &mut Vec<(ChunkRef, Vec<u8>)>, chunks: &mut Vec<ChunkRef>| {
        if !current.is_empty() {
            let (c, object) = chunk::encode(current, page_size);
            chunks.push(c);
            pending.push((c, object));
            current.clear();
        }
    };
    for e in img.extents() {
        let kind = match e.encoding {
            PageEncoding::Raw | PageEncoding::Lz4 | PageEncoding::Dup => RunKind::Data,
            PageEncoding::Zero => RunKind::Zero,
            PageEncoding::Trimmed => RunKind::Trimmed,
            PageEncoding::Base => {
                return Err(Error::Unsupported(format!(
                    "{} is a diff over a base image: apply it first (pbr-img apply)",
                    path.display()
                )));
            }
        };
        match runs.last_mut() {
            Some(r) if r.kind == kind && r.class == e.class && r.gfn + u64::from(r.count) == e.gfn => {
                r.count += e.count
            }
            _ => runs.push(Run { gfn: e.gfn, count: e.count, kind, class: e.class }),
        }
        if kind != RunKind::Data {
            continue;
        }
        for gfn in e.gfns() {
            let page = img.read_in_extent(&e, gfn, &mut buf).map_err(pbr_tools::Error::from)?;
            let hash = img.stored_hash(&e, gfn).unwrap_or_else(|| *blake3::hash(page).as_bytes());
            current.extend_from_slice(page);
            report.data_pages += 1;
            if chunker.ends_after(&hash, (current.len() / page_size as usize) as u32) {
                cut(&mut current, &mut pending, &mut chunks);
                if pending.iter().map(|(_, o)| o.len()).sum::<usize>() >= BATCH_BYTES {
                    upload(store, &mut pending, opts.renew_after, &mut report)?;
                }
            }
        }
    }
    cut(&mut current, &mut pending, &mut chunks);
    upload(store, &mut pending, opts.renew_after, &mut report)?;
    report.chunks = chunks.len();
    let index = Index { page_size, skeleton, chunks, runs }.encode();
    report.index_bytes = index.len() as u64;
    report.uploaded_bytes += index.len() as u64;
    store.put(&index_key(name), index)?;
    report.seconds = t.elapsed().as_secs_f64();
    Ok(report)
}

/// Uploads the chunks of `pending` the store lacks, or holds from longer
/// ago than `renew_after` (a chunk cut twice in one batch goes once).
fn upload(
    store: &Store,
    pending: &mut Vec<(ChunkRef, Vec<u8>)>,
    renew_after: std::time::Duration,
    report: &mut PushReport,
) -> Result<()> {
    let mut batch = std::mem::take(pending);
    batch.sort_by_key(|(c, _)| c.hash);
    batch.dedup_by_key(|(c, _)| c.hash);
    let keys: Vec<String> = batch.iter().map(|(c, _)| chunk::key(&c.hash)).collect();
    let written = store.written(&keys)?;
    let now = std::time::SystemTime::now();
    let stale =
        |w: Option<std::time::SystemTime>| w.is_none_or(|w| now.duration_since(w).unwrap_or_default() >= renew_after);
    let new: Vec<(String, Vec<u8>)> =
        batch.into_iter().zip(keys).zip(written).filter(|(_, w)| stale(*w)).map(|(((_, o), k), _)| (k, o)).collect();
    report.uploaded += new.len();
    report.uploaded_bytes += new.iter().map(|(_, o)| o.len() as u64).sum::<u64>();
    store.put_many(new)
}
