//! The content hash (`spec/format.md` §7.7) computed incrementally, from
//! pages given in address order.

use rayon::prelude::*;

use crate::region::Region;

/// Computes a content hash incrementally, for tools that produce an image's
/// pages in address order anyway.
///
/// # Example
/// ```
/// use pbr_format::{ContentHasher, Region};
/// let regions = [Region::ram("pc.ram", 0, 3 * 4096)];
/// let mut h = ContentHasher::new(&regions, 4096);
/// h.pages(&[1; 8192]);
/// h.zero_pages(1);
/// let _hash: [u8; 32] = h.finalize();
/// ```
pub struct ContentHasher {
    hasher: blake3::Hasher,
    page_size: usize,
    zero_digest: [u8; 32],
}

impl ContentHasher {
    /// Starts the hash of an image with `regions` and `page_size`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// use pbr_format::ContentHasher;
    /// let h = ContentHasher::new(image.regions(), image.page_size());
    /// let empty = h.finalize();
    /// assert_ne!(empty, image.content_hash()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(regions: &[Region<'_>], page_size: u32) -> Self {
        let mut h = blake3::Hasher::new();
        for r in regions {
            h.update(&r.base.to_le_bytes());
            h.update(&r.length.to_le_bytes());
            h.update(&(r.name.len() as u32).to_le_bytes());
            h.update(r.name.as_bytes());
        }
        let zero_digest = *blake3::hash(&vec![0u8; page_size as usize]).as_bytes();
        ContentHasher { hasher: h, page_size: page_size as usize, zero_digest }
    }

    /// Adds the next pages, `content` being a whole number of pages;
    /// their digests are computed in parallel.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ContentHasher, Region};
    /// let regions = [Region::ram("ram", 0, 2 * 4096)];
    /// let mut a = ContentHasher::new(&regions, 4096);
    /// a.pages(&[0u8; 8192]);
    /// let mut b = ContentHasher::new(&regions, 4096);
    /// b.zero_pages(2);
    /// assert_eq!(a.finalize(), b.finalize());
    /// ```
    pub fn pages(&mut self, content: &[u8]) {
        let digests = self.page_digests(content);
        self.digests(&digests);
    }

    /// The digests of the pages of `content`, computed in parallel, for
    /// feeding the same pages to several hashers.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ContentHasher, Region};
    /// let regions = [Region::ram("ram", 0, 2 * 4096)];
    /// let (mut a, mut b) = (ContentHasher::new(&regions, 4096), ContentHasher::new(&regions, 4096));
    /// let d = a.page_digests(&[7u8; 8192]);
    /// a.digests(&d);
    /// b.pages(&[7u8; 8192]);
    /// assert_eq!(a.finalize(), b.finalize());
    /// ```
    pub fn page_digests(&self, content: &[u8]) -> Vec<[u8; 32]> {
        content.par_chunks(self.page_size).map(|p| *blake3::hash(p).as_bytes()).collect()
    }

    /// Adds the next pages by their digests.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ContentHasher, Region};
    /// let regions = [Region::ram("ram", 0, 4096)];
    /// let mut h = ContentHasher::new(&regions, 4096);
    /// h.digests(&[*blake3::hash(&[1u8; 4096]).as_bytes()]);
    /// let mut g = ContentHasher::new(&regions, 4096);
    /// g.pages(&[1u8; 4096]);
    /// assert_eq!(h.finalize(), g.finalize());
    /// ```
    pub fn digests(&mut self, digests: &[[u8; 32]]) {
        for d in digests {
            self.hasher.update(d);
        }
    }

    /// Adds `count` all-zero pages.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ContentHasher, Region};
    /// let mut h = ContentHasher::new(&[Region::ram("ram", 0, 1 << 30)], 4096);
    /// h.zero_pages(262_144); // a guest of 1 GiB of zeros
    /// println!("{:02x?}", &h.finalize()[..4]);
    /// ```
    pub fn zero_pages(&mut self, count: u64) {
        for _ in 0..count {
            self.hasher.update(&self.zero_digest);
        }
    }

    /// The hash.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ContentHasher, Region};
    /// let h = ContentHasher::new(&[Region::ram("ram", 0, 4096)], 4096);
    /// assert_eq!(h.finalize(), h.finalize(), "finalize does not consume the hasher");
    /// ```
    pub fn finalize(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}
