//! The lz4 block being filled (`spec/format.md` §6.4): consecutive pages
//! of one class, each compressed on its own (stored verbatim where lz4
//! does not win), written as the table of where each page's bytes end,
//! then the bytes.

use zerocopy::IntoBytes;

use crate::error::{Error, Result};
use crate::page::PageClass;

use super::sink::Sink;

/// Pages per lz4 block at most.
const LZ4_BLOCK_PAGES: usize = 1024;

/// An lz4 block that has not been written yet.
pub(super) struct Lz4Block {
    first: u64,
    class: PageClass,
    ends: Vec<u32>,
    data: Vec<u8>,
}

impl Lz4Block {
    /// An empty block whose first page will be dense index `first`.
    pub fn new(first: u64, class: PageClass) -> Lz4Block {
        Lz4Block { first, class, ends: Vec::new(), data: Vec::new() }
    }

    /// The dense index of the block's first page.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Whether page `d` of `class` can come next: it follows the block's
    /// last page, has its class, and the block is not full. (Whether it is
    /// in the same region is for the caller, who knows the regions.)
    pub fn takes(&self, d: u64, class: PageClass) -> bool {
        self.first + self.ends.len() as u64 == d && self.class == class && self.ends.len() < LZ4_BLOCK_PAGES
    }

    /// Appends one page's content, compressed where that makes it smaller.
    ///
    /// # Errors
    /// The block's data passing 4 GiB.
    pub fn push(&mut self, page: &[u8]) -> Result<()> {
        let packed = lz4_flex::block::compress(page);
        if packed.len() < page.len() {
            self.data.extend_from_slice(&packed);
        } else {
            self.data.extend_from_slice(page);
        }
        let end = u32::try_from(self.data.len()).map_err(|_| Error::invalid("lz4 block exceeds 4 GiB"))?;
        self.ends.push(end);
        Ok(())
    }

    /// Writes the block at the next 4-aligned offset of `sink` and returns
    /// that offset.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write(self, sink: &mut Sink) -> Result<u64> {
        sink.pad_to(4)?;
        let offset = sink.pos();
        sink.write(self.ends.as_bytes())?;
        sink.write(&self.data)?;
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_takes_only_the_next_page_of_its_class_until_full() {
        let mut b = Lz4Block::new(10, PageClass::User);
        assert!(b.takes(10, PageClass::User));
        assert!(!b.takes(11, PageClass::User), "a gap");
        assert!(!b.takes(10, PageClass::Kernel), "another class");
        for i in 0..LZ4_BLOCK_PAGES {
            assert!(b.takes(10 + i as u64, PageClass::User));
            b.push(&[i as u8; 4096]).unwrap();
        }
        assert!(!b.takes(10 + LZ4_BLOCK_PAGES as u64, PageClass::User), "full");
    }

    #[test]
    fn incompressible_pages_are_stored_verbatim() {
        let mut b = Lz4Block::new(0, PageClass::User);
        b.push(&[7; 4096]).unwrap();
        let mut noise = [0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        b.push(&noise).unwrap();
        let first = b.ends[0] as usize;
        assert!(first < 4096, "a run of one byte compresses");
        assert_eq!(b.ends[1] as usize - first, 4096);
        assert_eq!(&b.data[first..], &noise[..]);
    }
}
