//! The content hash of an open image (`spec/format.md` §7.7): names an
//! image by what it holds.

use crate::error::{Error, Result};
use crate::page::PageEncoding;

use super::Image;
use super::content_hasher::ContentHasher;

impl Image {
    /// The blake3 content hash: regions, then every page's content in
    /// address order. Equal for page-identical images, whatever their
    /// encodings or producer.
    ///
    /// # Errors
    /// A diff image (its base pages are elsewhere), a corrupt lz4 page, or
    /// a page whose crc32 does not match.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// let hash = image.content_hash()?;
    /// // The same guest content written any other way has the same hash.
    /// assert_eq!(hash, image.content_hash()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn content_hash(&self) -> Result<[u8; 32]> {
        if self.base().is_some() {
            return Err(Error::invalid("a diff image has no content hash of its own: apply it to its base first"));
        }
        let ps = self.page_size();
        let mut h = ContentHasher::new(self.regions(), ps);
        let mut buf = vec![0u8; ps as usize];
        for r in self.regions() {
            let first = r.first_gfn(ps);
            for e in self.extents_in(first..first + r.pages(ps)) {
                match e.encoding {
                    PageEncoding::Zero | PageEncoding::Trimmed => h.zero_pages(u64::from(e.count)),
                    _ if self.has_page_hashes() && e.encoding != PageEncoding::Base => {
                        for gfn in e.gfns() {
                            let d = self.stored_hash(&e, gfn).ok_or_else(|| {
                                Error::malformed("PAGE_HASHES", 0, format!("no hash for page {gfn:#x}"))
                            })?;
                            h.digests(&[d]);
                        }
                    }
                    PageEncoding::Raw => {
                        h.pages(self.raw_bytes(&e)?);
                    }
                    PageEncoding::Lz4 | PageEncoding::Dup | PageEncoding::Base => {
                        for gfn in e.gfns() {
                            h.pages(self.read_in_extent(&e, gfn, &mut buf)?);
                        }
                    }
                }
            }
        }
        Ok(h.finalize())
    }
}
