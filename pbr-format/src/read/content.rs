//! The content hash (`spec/format.md` §7.7): names an image by what it holds.

use crate::error::{Error, Result};
use crate::page::PageEncoding;

use super::Image;

/// Zero bytes fed to the hasher for zero and trimmed pages.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

impl Image {
    /// The blake3 content hash: regions, then every page's content in
    /// address order. Equal for page-identical images, whatever their
    /// encodings or producer.
    ///
    /// # Errors
    /// A diff image (its base pages are elsewhere), or a corrupt lz4 page.
    pub fn content_hash(&self) -> Result<[u8; 32]> {
        if self.base().is_some() {
            return Err(Error::invalid("a diff image has no content hash of its own: apply it to its base first"));
        }
        let ps = self.page_size();
        let mut h = blake3::Hasher::new();
        for r in self.regions() {
            h.update(&r.base.to_le_bytes());
            h.update(&r.length.to_le_bytes());
            h.update(&(r.name.len() as u32).to_le_bytes());
            h.update(r.name.as_bytes());
        }
        let mut buf = vec![0u8; ps as usize];
        for r in self.regions() {
            let first = r.first_gfn(ps);
            for e in self.extents_in(first..first + r.pages(ps)) {
                match e.encoding {
                    PageEncoding::Raw => {
                        let bytes = self
                            .raw_bytes(&e)
                            .ok_or_else(|| Error::malformed("PAGE_DATA", e.data, "raw extent outside the file"))?;
                        h.update_rayon(bytes);
                    }
                    PageEncoding::Zero | PageEncoding::Trimmed => {
                        let mut left = u64::from(e.count) * u64::from(ps);
                        while left > 0 {
                            let n = left.min(ZEROS.len() as u64) as usize;
                            h.update(&ZEROS[..n]);
                            left -= n as u64;
                        }
                    }
                    PageEncoding::Lz4 | PageEncoding::Dup | PageEncoding::Base => {
                        for gfn in e.gfns() {
                            h.update(self.read_in_extent(&e, gfn, &mut buf)?);
                        }
                    }
                }
            }
        }
        Ok(*h.finalize().as_bytes())
    }
}
