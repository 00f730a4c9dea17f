//! Where a stored image's pages are, page by page: the chunk a guest
//! frame's bytes are in ([`PageMap`]), and a reader of chunks that keeps
//! the latest ones it decoded ([`ChunkReader`]), for the restores that
//! fetch pages as the guest needs them (`crate::mount`).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::cache::Cache;
use crate::chunk;
use crate::error::{Error, Result};
use crate::index::{ChunkRef, Index, RunKind};
use crate::store::Store;
use pbr_format::PageClass;

/// Where one page's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// In chunk `chunk` (its place in the index), page `at` of it.
    Data {
        /// The chunk's place in the index.
        chunk: usize,
        /// The page's place in the chunk.
        at: u32,
    },
    /// Zero (stored as zero, trimmed, or in no run).
    Zero,
}

/// An index's runs and chunks, searchable by guest frame.
#[derive(Clone, Debug)]
pub struct PageMap {
    /// Per run: its first frame, pages, and (data runs) the place of its
    /// first page among the data pages.
    runs: Vec<(u64, u32, Option<u64>)>,
    /// Per data run: its first frame, pages, and class.
    classes: Vec<(u64, u32, PageClass)>,
    /// Per chunk: the place of its first page among the data pages.
    chunk_start: Vec<u64>,
}

impl PageMap {
    /// The map of `index`.
    ///
    /// # Errors
    /// The runs are not in frame order, overlap, or hold another number of
    /// data pages than the chunks.
    pub fn new(index: &Index) -> Result<PageMap> {
        let mut runs = Vec::with_capacity(index.runs.len());
        let mut classes = Vec::new();
        let (mut data, mut end) = (0u64, 0u64);
        for (i, r) in index.runs.iter().enumerate() {
            if r.gfn < end {
                return Err(Error::Damaged(format!("index: run {i} starts inside the run before it")));
            }
            end = r
                .gfn
                .checked_add(u64::from(r.count))
                .ok_or_else(|| Error::Damaged(format!("index: run {i} ends past the last frame")))?;
            let first = (r.kind == RunKind::Data).then_some(data);
            if first.is_some() {
                classes.push((r.gfn, r.count, r.class));
                data += u64::from(r.count);
            }
            runs.push((r.gfn, r.count, first));
        }
        let mut chunk_start = Vec::with_capacity(index.chunks.len());
        let mut at = 0u64;
        for c in &index.chunks {
            chunk_start.push(at);
            at += u64::from(c.pages);
        }
        if at != data {
            return Err(Error::Damaged(format!("index: the chunks hold {at} pages, the data runs {data}")));
        }
        Ok(PageMap { runs, classes, chunk_start })
    }

    /// Where frame `gfn`'s bytes are.
    pub fn locate(&self, gfn: u64) -> Page {
        let i = self.runs.partition_point(|&(first, _, _)| first <= gfn);
        let Some(&(first, count, Some(data))) = i.checked_sub(1).and_then(|i| self.runs.get(i)) else {
            return Page::Zero;
        };
        if gfn - first >= u64::from(count) {
            return Page::Zero;
        }
        let n = data + (gfn - first);
        let chunk = self.chunk_start.partition_point(|&s| s <= n) - 1;
        Page::Data { chunk, at: (n - self.chunk_start[chunk]) as u32 }
    }

    /// The data runs: first frame, pages, class.
    pub fn data_runs(&self) -> impl Iterator<Item = (u64, u32, PageClass)> + '_ {
        self.classes.iter().copied()
    }
}

/// Bytes of decoded chunks a reader keeps, the latest ones.
const KEPT_BYTES: usize = 64 << 20;

/// Chunks a caller fetches, in flight until it is dropped: then the
/// callers waiting for them are woken.
struct Claim<'a>(Vec<usize>, &'a ChunkReader);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut inflight = self.1.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for i in &self.0 {
            inflight.remove(i);
        }
        self.1.landed.notify_all();
    }
}

/// What a [`ChunkReader`] has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Chunks fetched from the store.
    pub from_store: u64,
    /// Chunks read from the local cache.
    pub from_cache: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Reads an index's chunks: each from the latest decoded, else the local
/// cache, else the store (and then kept in the cache); every one checked
/// against its name before its pages are handed out.
#[derive(Debug)]
pub struct ChunkReader {
    store: Arc<Store>,
    cache: Cache,
    chunks: Vec<ChunkRef>,
    page_size: u32,
    recent: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    /// Chunks being fetched, and the signal that one landed.
    inflight: Mutex<HashSet<usize>>,
    landed: Condvar,
    from_store: AtomicU64,
    from_cache: AtomicU64,
    bytes: AtomicU64,
}

impl ChunkReader {
    /// A reader of `index`'s chunks in `store`, through `cache`.
    pub fn new(store: Arc<Store>, cache: Cache, index: &Index) -> ChunkReader {
        ChunkReader {
            store,
            cache,
            chunks: index.chunks.clone(),
            page_size: index.page_size,
            recent: Mutex::new(VecDeque::new()),
            inflight: Mutex::new(HashSet::new()),
            landed: Condvar::new(),
            from_store: AtomicU64::new(0),
            from_cache: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// What it has done so far.
    pub fn fetched(&self) -> Fetched {
        Fetched {
            from_store: self.from_store.load(Ordering::Relaxed),
            from_cache: self.from_cache.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The pages of chunks `wanted` (places in the index), in that order:
    /// the ones neither kept nor cached fetched from the store at once. A
    /// chunk another caller is fetching is waited for, not fetched twice.
    ///
    /// # Errors
    /// A chunk is missing or damaged, the store failed.
    pub fn pages(&self, wanted: &[usize]) -> Result<Vec<Arc<Vec<u8>>>> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; wanted.len()];
        // A chunk whose fetcher failed is fetched here, in a later round.
        for _ in 0..3 {
            let missing = self.fill_known(wanted, &mut out)?;
            if missing.is_empty() {
                break;
            }
            let (mine, theirs) = self.claim(&missing);
            let fetched = self.fetch(&mine.0);
            // Released (and the waiters woken) whatever the fetch did, a
            // panic included.
            drop(mine);
            for (i, pages) in fetched? {
                for (slot, _) in out.iter_mut().zip(wanted).filter(|&(_, &w)| w == i) {
                    *slot = Some(pages.clone());
                }
            }
            self.wait_for(&theirs);
        }
        // What the last round waited for.
        self.fill_known(wanted, &mut out)?;
        out.into_iter().map(|p| p.ok_or_else(|| Error::Damaged("a chunk was not read".into()))).collect()
    }

    /// Fills the empty slots of `out` from the kept chunks and the cache;
    /// returns the chunks still missing, each once.
    fn fill_known(&self, wanted: &[usize], out: &mut [Option<Arc<Vec<u8>>>]) -> Result<Vec<usize>> {
        let mut missing = Vec::new();
        for (slot, &i) in out.iter_mut().zip(wanted).filter(|(s, _)| s.is_none()) {
            if let Some(p) = self.kept(i) {
                *slot = Some(p);
                continue;
            }
            match self.cache.get(self.chunk(i)?, self.page_size) {
                Some(p) => {
                    self.from_cache.fetch_add(1, Ordering::Relaxed);
                    *slot = Some(self.keep(i, p));
                }
                None => missing.push(i),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        Ok(missing)
    }

    /// Of `missing`, the chunks this caller is to fetch (marked in flight
    /// until the claim is dropped) and those another caller is fetching.
    fn claim(&self, missing: &[usize]) -> (Claim<'_>, Vec<usize>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mine, theirs) = missing.iter().partition(|&&i| inflight.insert(i));
        (Claim(mine, self), theirs)
    }

    /// Waits until none of `theirs` is in flight.
    fn wait_for(&self, theirs: &[usize]) {
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while theirs.iter().any(|i| inflight.contains(i)) {
            inflight = self.landed.wait(inflight).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Fetches chunks `mine` from the store at once, each checked, kept,
    /// and written to the cache.
    fn fetch(&self, mine: &[usize]) -> Result<Vec<(usize, Arc<Vec<u8>>)>> {
        let keys: Vec<String> = mine.iter().map(|&i| chunk::key(&self.chunks[i].hash)).collect();
        let mut out = Vec::with_capacity(mine.len());
        for ((&i, key), object) in mine.iter().zip(&keys).zip(self.store.get_many(&keys)?) {
            let object = object.ok_or_else(|| Error::Missing(format!("chunk {key}")))?;
            let c = &self.chunks[i];
            let pages = chunk::decode(&object, c, self.page_size)?;
            // The pages are checked: a cache that cannot keep them (a full
            // disk) only costs a later fetch.
            let _ = self.cache.put(c, &object);
            self.from_store.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(object.len() as u64, Ordering::Relaxed);
            out.push((i, self.keep(i, pages)));
        }
        Ok(out)
    }

    /// The bytes of the pages at `places`, back to back (a zero page as
    /// zeros): their chunks read at once, as [`ChunkReader::pages`] does.
    ///
    /// # Errors
    /// As [`ChunkReader::pages`]; a chunk that holds no such page.
    pub fn gather(&self, places: &[Page]) -> Result<Vec<u8>> {
        let mut wanted: Vec<usize> = Vec::new();
        for p in places {
            if let Page::Data { chunk, .. } = *p
                && wanted.last() != Some(&chunk)
            {
                wanted.push(chunk);
            }
        }
        let chunks = self.pages(&wanted)?;
        let ps = self.page_size as usize;
        let mut buf = vec![0u8; places.len() * ps];
        for (k, p) in places.iter().enumerate() {
            if let Page::Data { chunk, at } = *p {
                let c = wanted.iter().rposition(|&w| w == chunk).map(|i| &chunks[i]);
                let from = at as usize * ps;
                let src = c
                    .and_then(|c| c.get(from..from + ps))
                    .ok_or_else(|| Error::Damaged(format!("chunk {chunk} holds no page {at}")))?;
                buf[k * ps..(k + 1) * ps].copy_from_slice(src);
            }
        }
        Ok(buf)
    }

    fn chunk(&self, i: usize) -> Result<&ChunkRef> {
        self.chunks.get(i).ok_or_else(|| Error::Damaged(format!("index: no chunk {i}")))
    }

    fn kept(&self, i: usize) -> Option<Arc<Vec<u8>>> {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().find(|(k, _)| *k == i).map(|(_, p)| p.clone())
    }

    fn keep(&self, i: usize, pages: Vec<u8>) -> Arc<Vec<u8>> {
        let pages = Arc::new(pages);
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !recent.is_empty() && recent.iter().map(|(_, p)| p.len()).sum::<usize>() + pages.len() > KEPT_BYTES {
            recent.pop_front();
        }
        recent.push_back((i, pages.clone()));
        pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Run;

    fn index(runs: &[(u64, u32, RunKind)], chunks: &[u32]) -> Index {
        Index {
            page_size: 4096,
            skeleton: Vec::new(),
            chunks: chunks.iter().map(|&pages| ChunkRef { hash: [0; 32], pages, stored: 0 }).collect(),
            runs: runs.iter().map(|&(gfn, count, kind)| Run { gfn, count, kind, class: PageClass::Unknown }).collect(),
        }
    }

    #[test]
    fn frames_are_found_in_their_chunks() {
        let i = index(&[(0, 4, RunKind::Data), (4, 2, RunKind::Zero), (10, 3, RunKind::Data)], &[3, 2, 2]);
        let m = PageMap::new(&i).unwrap();
        assert_eq!(m.locate(0), Page::Data { chunk: 0, at: 0 });
        assert_eq!(m.locate(2), Page::Data { chunk: 0, at: 2 });
        assert_eq!(m.locate(3), Page::Data { chunk: 1, at: 0 });
        assert_eq!(m.locate(4), Page::Zero);
        assert_eq!(m.locate(7), Page::Zero, "in no run");
        assert_eq!(m.locate(10), Page::Data { chunk: 1, at: 1 });
        assert_eq!(m.locate(11), Page::Data { chunk: 2, at: 0 });
        assert_eq!(m.locate(12), Page::Data { chunk: 2, at: 1 });
        assert_eq!(m.locate(13), Page::Zero);
        assert_eq!(m.locate(u64::MAX), Page::Zero);
    }

    #[test]
    fn an_index_that_does_not_add_up_is_refused() {
        let e = PageMap::new(&index(&[(0, 4, RunKind::Data)], &[3])).unwrap_err();
        assert!(e.to_string().contains("the chunks hold 3 pages, the data runs 4"), "{e}");
        let e = PageMap::new(&index(&[(0, 4, RunKind::Zero), (2, 1, RunKind::Zero)], &[])).unwrap_err();
        assert!(e.to_string().contains("run 1 starts inside"), "{e}");
        let e = PageMap::new(&index(&[(u64::MAX, 2, RunKind::Zero)], &[])).unwrap_err();
        assert!(e.to_string().contains("past the last frame"), "{e}");
    }
}
