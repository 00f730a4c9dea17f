//! An image's index object: everything of the image but its pages (a
//! "skeleton" image: regions, phase, vCPUs, devices, metadata, processes,
//! manifest), the chunks its pages are in, and its page runs. Read from a
//! store, it is hostile input: every count is bounded by the bytes
//! present before anything is allocated, and the whole object is checked
//! against its blake3 first.
//!
//! Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PBRSIDX1` |
//! | 8 | 4 | page size |
//! | 12 | 4 | chunk count C |
//! | 16 | 8 | run count R |
//! | 24 | 8 | skeleton length S |
//! | 32 | S | the skeleton image |
//! | | 40 × C | per chunk: blake3 of its pages (32), pages (4), stored bytes (4) |
//! | | 16 × R | per run: first frame (8), pages (4), kind (1), class (1), zero (2) |
//! | | 32 | blake3 of every byte before |
//!
//! The stored pages of the `data` runs, in run order, fill the chunks in
//! chunk order.

use pbr_format::PageClass;

use crate::error::{Error, Result};

/// The object's first bytes.
pub const MAGIC: &[u8; 8] = b"PBRSIDX1";
/// Bytes before the skeleton.
const HEAD: usize = 32;
/// Bytes of one chunk's entry.
const CHUNK: usize = 40;
/// Bytes of one run's entry.
const RUN: usize = 16;
/// The most bytes of pages one chunk holds (`spec/store.md` §2): a forged
/// index cannot make a reader allocate more for a chunk.
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// One chunk of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// blake3 of its pages' bytes: its name in the store.
    pub hash: [u8; 32],
    /// How many pages it holds.
    pub pages: u32,
    /// Its object's size (lz4-compressed).
    pub stored: u32,
}

/// How a run's pages are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Their bytes are in the chunks.
    Data = 0,
    /// All zero.
    Zero = 1,
    /// Dropped (they read as zero; a refill may bring them back).
    Trimmed = 2,
}

impl RunKind {
    /// How a writer marks a run of this kind without its bytes: `None` for
    /// a data run, whose pages are written.
    pub fn marked(self) -> Option<pbr_format::PageEncoding> {
        match self {
            RunKind::Data => None,
            RunKind::Zero => Some(pbr_format::PageEncoding::Zero),
            RunKind::Trimmed => Some(pbr_format::PageEncoding::Trimmed),
        }
    }
}

/// A run of pages with one kind and class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Its first guest frame.
    pub gfn: u64,
    /// How many pages.
    pub count: u32,
    /// How they are kept.
    pub kind: RunKind,
    /// What they are.
    pub class: PageClass,
}

/// An image's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The image's page size.
    pub page_size: u32,
    /// The skeleton image's bytes.
    pub skeleton: Vec<u8>,
    /// The chunks, in page order.
    pub chunks: Vec<ChunkRef>,
    /// The page runs, in frame order.
    pub runs: Vec<Run>,
}

fn damaged(at: usize, what: impl std::fmt::Display) -> Error {
    Error::Damaged(format!("index: {what} (at byte {at:#x})"))
}

impl Index {
    /// The pages the chunks hold.
    pub fn data_pages(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.pages)).sum()
    }

    /// The object's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(HEAD + self.skeleton.len() + CHUNK * self.chunks.len() + RUN * self.runs.len() + 32);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&self.page_size.to_le_bytes());
        v.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        v.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        v.extend_from_slice(&(self.skeleton.len() as u64).to_le_bytes());
        v.extend_from_slice(&self.skeleton);
        for c in &self.chunks {
            v.extend_from_slice(&c.hash);
            v.extend_from_slice(&c.pages.to_le_bytes());
            v.extend_from_slice(&c.stored.to_le_bytes());
        }
        for r in &self.runs {
            v.extend_from_slice(&r.gfn.to_le_bytes());
            v.extend_from_slice(&r.count.to_le_bytes());
            v.push(r.kind as u8);
            v.push(r.class as u8);
            v.extend_from_slice(&[0, 0]);
        }
        let hash = blake3::hash(&v);
        v.extend_from_slice(hash.as_bytes());
        v
    }

    /// Reads an index object.
    ///
    /// # Errors
    /// [`Error::Damaged`] naming what is wrong and where: a wrong magic or
    /// hash, a count the bytes do not hold, a kind or class out of range,
    /// runs out of order or overlapping, or data runs and chunks that do
    /// not hold the same number of pages.
    pub fn decode(b: &[u8]) -> Result<Index> {
        if b.len() < HEAD + 32 {
            return Err(damaged(0, format!("{} bytes, shorter than the smallest index", b.len())));
        }
        let (body, hash) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != hash {
            return Err(damaged(body.len(), "its bytes do not match its blake3"));
        }
        if &body[..8] != MAGIC {
            return Err(damaged(0, "not a pbr store index (magic)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let page_size = u32_at(8);
        if !page_size.is_power_of_two() || !(4096..=(1 << 21)).contains(&page_size) {
            return Err(damaged(8, format!("page size {page_size}")));
        }
        let chunk_count = u64::from(u32_at(12));
        let run_count = u64_at(16);
        let skeleton_len = u64_at(24);
        let need = (HEAD as u128)
            + u128::from(skeleton_len)
            + u128::from(chunk_count) * CHUNK as u128
            + u128::from(run_count) * RUN as u128;
        if need != body.len() as u128 {
            return Err(damaged(
                12,
                format!(
                    "{chunk_count} chunks, {run_count} runs and a {skeleton_len}-byte skeleton need {need} bytes, the \
                     index has {}",
                    body.len()
                ),
            ));
        }
        let mut at = HEAD;
        let skeleton = body[at..at + skeleton_len as usize].to_vec();
        at += skeleton_len as usize;
        let mut chunks = Vec::with_capacity(chunk_count as usize);
        for i in 0..chunk_count {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&body[at..at + 32]);
            let (pages, stored) = (u32_at(at + 32), u32_at(at + 36));
            if pages == 0 || u64::from(pages) * u64::from(page_size) > MAX_CHUNK_BYTES {
                return Err(damaged(
                    at + 32,
                    format!("chunk {i} holds {pages} pages, not 1 to {MAX_CHUNK_BYTES} bytes"),
                ));
            }
            chunks.push(ChunkRef { hash, pages, stored });
            at += CHUNK;
        }
        let mut runs = Vec::with_capacity(run_count as usize);
        let mut next = 0u64;
        let mut data = 0u64;
        for i in 0..run_count {
            let (gfn, count) = (u64_at(at), u32_at(at + 8));
            let kind = match body[at + 12] {
                0 => RunKind::Data,
                1 => RunKind::Zero,
                2 => RunKind::Trimmed,
                k => return Err(damaged(at + 12, format!("run {i} has kind {k}"))),
            };
            let class = PageClass::from_u8(body[at + 13])
                .ok_or_else(|| damaged(at + 13, format!("run {i} has class {}", body[at + 13])))?;
            if count == 0 || gfn < next || body[at + 14..at + 16] != [0, 0] {
                return Err(damaged(at, format!("run {i} is empty, out of order, overlapping, or not zero-padded")));
            }
            next = gfn.checked_add(u64::from(count)).ok_or_else(|| damaged(at, format!("run {i} wraps")))?;
            if kind == RunKind::Data {
                data += u64::from(count);
            }
            runs.push(Run { gfn, count, kind, class });
            at += RUN;
        }
        let index = Index { page_size, skeleton, chunks, runs };
        if index.data_pages() != data {
            return Err(damaged(12, format!("the data runs hold {data} pages, the chunks {}", index.data_pages())));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        Index {
            page_size: 4096,
            skeleton: b"a skeleton".to_vec(),
            chunks: vec![
                ChunkRef { hash: [1; 32], pages: 3, stored: 100 },
                ChunkRef { hash: [2; 32], pages: 1, stored: 50 },
            ],
            runs: vec![
                Run { gfn: 0, count: 2, kind: RunKind::Data, class: PageClass::Kernel },
                Run { gfn: 2, count: 10, kind: RunKind::Zero, class: PageClass::Free },
                Run { gfn: 20, count: 2, kind: RunKind::Data, class: PageClass::User },
                Run { gfn: 22, count: 1, kind: RunKind::Trimmed, class: PageClass::Cache },
            ],
        }
    }

    /// Re-signs `b` after it was changed, so that the check behind the
    /// hash is reached.
    fn resign(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - 32;
        let h = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(h.as_bytes());
        b
    }

    #[test]
    fn an_index_round_trips() {
        let i = index();
        assert_eq!(Index::decode(&i.encode()).unwrap(), i);
        assert_eq!(i.data_pages(), 4);
    }

    #[test]
    fn damage_is_named_never_a_panic() {
        let good = index().encode();
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert!(Index::decode(&flipped).unwrap_err().to_string().contains("do not match its blake3"));
        let runs_at = 32 + 10 + 2 * CHUNK;
        type Change = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|b| b[0] = b'X'), "magic"),
            (Box::new(|b| b[8] = 1), "page size"),
            (Box::new(|b| b[12] = 9), "9 chunks"),
            (Box::new(|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())), "runs"),
            (Box::new(|b| b[24..32].copy_from_slice(&u64::MAX.to_le_bytes())), "skeleton"),
            (Box::new(move |b| b[runs_at + 12] = 7), "run 0 has kind 7"),
            (Box::new(move |b| b[runs_at + 13] = 9), "run 0 has class 9"),
            (
                Box::new(move |b| b[runs_at + RUN..runs_at + RUN + 8].copy_from_slice(&0u64.to_le_bytes())),
                "out of order",
            ),
            (Box::new(|b| b[32 + 10 + CHUNK + 32] = 2), "the data runs hold 4 pages, the chunks 5"),
            (Box::new(|b| b[32 + 10 + 32..32 + 10 + 36].copy_from_slice(&0u32.to_le_bytes())), "chunk 0 holds 0 pages"),
            (Box::new(|b| b[32 + 10 + 32..32 + 10 + 36].copy_from_slice(&4097u32.to_le_bytes())), "chunk 0 holds 4097"),
        ];
        for (change, want) in cases {
            let mut b = good.clone();
            change(&mut b);
            let e = Index::decode(&resign(b)).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        for n in 0..good.len() {
            assert!(Index::decode(&good[..n]).is_err());
        }
    }
}
