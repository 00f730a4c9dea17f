//! Chunks: runs of an image's stored pages, named by the blake3 of their
//! bytes and kept lz4-compressed. Where a chunk ends depends on its pages'
//! content (after a page whose blake3 has its low bits zero), not on its
//! position: two images that differ in one page mostly differ in that
//! page's chunk, and share the rest.

use crate::error::{Error, Result};
use crate::index::{ChunkRef, MAX_CHUNK_BYTES};

/// The largest average chunk, in pages.
pub const MAX_AVG: u32 = 1024;

/// Where chunks end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunker {
    mask: u64,
    max: u32,
}

impl Chunker {
    /// Chunks of `avg` pages on average (a power of two, 1 to
    /// [`MAX_AVG`]), and at most 4 × `avg`, and never over
    /// [`MAX_CHUNK_BYTES`] of pages of `page_size`.
    pub fn new(avg: u32, page_size: u32) -> Chunker {
        let avg = avg.clamp(1, MAX_AVG).next_power_of_two();
        let fit = (MAX_CHUNK_BYTES / u64::from(page_size.max(1))).max(1) as u32;
        Chunker { mask: u64::from(avg) - 1, max: avg.saturating_mul(4).min(fit) }
    }

    /// Whether the chunk ends after a page hashing to `hash`, which makes
    /// it `pages` long.
    pub fn ends_after(&self, hash: &[u8; 32], pages: u32) -> bool {
        let low = u64::from_le_bytes([hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7]]);
        pages >= self.max || low & self.mask == self.mask
    }
}

/// A chunk's name in the store: the hex of its hash.
pub fn name(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A chunk's object key under the store's prefix: `chunks/AB/ABCD...`.
pub fn key(hash: &[u8; 32]) -> String {
    let n = name(hash);
    format!("chunks/{}/{n}", &n[..2])
}

/// A chunk of `pages` (their bytes back to back): its reference and the
/// object to store.
pub fn encode(pages: &[u8], page_size: u32) -> (ChunkRef, Vec<u8>) {
    let hash = *blake3::hash(pages).as_bytes();
    let object = lz4_flex::block::compress_prepend_size(pages);
    let chunk = ChunkRef { hash, pages: (pages.len() / page_size as usize) as u32, stored: object.len() as u32 };
    (chunk, object)
}

/// The pages of chunk `c` from its stored `object`, checked: the object
/// must decompress to exactly the chunk's pages (nothing larger is ever
/// allocated), and they must hash to its name.
///
/// # Errors
/// [`Error::Damaged`] naming the chunk and what is wrong.
pub fn decode(object: &[u8], c: &ChunkRef, page_size: u32) -> Result<Vec<u8>> {
    let damaged = |what: String| Error::Damaged(format!("chunk {}: {what}", name(&c.hash)));
    let want = u64::from(c.pages) * u64::from(page_size);
    let (size, body) = object.split_at_checked(4).ok_or_else(|| damaged(format!("{} bytes", object.len())))?;
    let size = u64::from(u32::from_le_bytes([size[0], size[1], size[2], size[3]]));
    if size != want {
        return Err(damaged(format!("says {size} bytes, its {} pages are {want}", c.pages)));
    }
    let mut pages = vec![0u8; want as usize];
    match lz4_flex::block::decompress_into(body, &mut pages) {
        Ok(n) if n as u64 == want => {}
        Ok(n) => return Err(damaged(format!("decompresses to {n} bytes, not {want}"))),
        Err(e) => return Err(damaged(format!("does not decompress: {e}"))),
    }
    if blake3::hash(&pages).as_bytes() != &c.hash {
        return Err(damaged("its pages do not hash to its name".into()));
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_damage_is_caught() {
        let pages: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        let (c, object) = encode(&pages, 4096);
        assert_eq!(c.pages, 3);
        assert_eq!(decode(&object, &c, 4096).unwrap(), pages);
        assert!(key(&c.hash).starts_with(&format!("chunks/{}/{}", &name(&c.hash)[..2], &name(&c.hash)[..2])));
        let mut flipped = object.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        assert!(decode(&flipped, &c, 4096).is_err());
        let mut lying = object.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lying, &c, 4096).unwrap_err().to_string().contains("says 4294967295 bytes"));
        let other = ChunkRef { hash: [0; 32], ..c };
        assert!(decode(&object, &other, 4096).unwrap_err().to_string().contains("do not hash to its name"));
        assert!(decode(&object[..2], &c, 4096).is_err());
    }

    #[test]
    fn chunks_end_by_content_and_length() {
        let c = Chunker::new(4, 4096);
        let mut h = [0u8; 32];
        assert!(!c.ends_after(&h, 1));
        h[0] = 3;
        assert!(c.ends_after(&h, 1));
        assert!(c.ends_after(&[0; 32], 16), "at most 4 x the average");
        assert_eq!(Chunker::new(5, 4096), Chunker::new(8, 4096));
        assert_eq!(Chunker::new(u32::MAX, 4096), Chunker::new(MAX_AVG, 4096));
        assert!(Chunker::new(1024, 2 << 20).ends_after(&[0; 32], 8), "2 MiB pages: 16 MiB at most");
    }
}
