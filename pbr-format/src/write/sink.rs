//! The output file: buffered sequential appends, holes (runs of zero
//! bytes that take no disk space), plus in-place rewrites of bytes already
//! written (a page sent again by a converter).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};

/// Appending writer that knows its position.
pub(crate) struct Sink {
    out: BufWriter<File>,
    pos: u64,
    /// Zero bytes skipped over since the last write, not yet sought past.
    hole: u64,
}

impl Sink {
    pub fn new(file: File) -> Sink {
        Sink { out: BufWriter::with_capacity(1 << 20, file), pos: 0, hole: 0 }
    }

    /// Leaves `n` zero bytes as a hole: nothing is written for them.
    pub fn skip(&mut self, n: u64) {
        self.hole += n;
        self.pos += n;
    }

    /// Moves the file position past a pending hole.
    fn seek_hole(&mut self) -> Result<()> {
        if self.hole > 0 {
            let n = i64::try_from(self.hole).map_err(|_| Error::invalid("hole beyond 2^63 bytes"))?;
            self.out.seek(SeekFrom::Current(n)).map_err(|e| Error::io("cannot write the image", e))?;
            self.hole = 0;
        }
        Ok(())
    }

    /// Bytes written so far: the offset of the next byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    pub fn write(&mut self, b: &[u8]) -> Result<()> {
        self.seek_hole()?;
        self.out.write_all(b).map_err(|e| Error::io("cannot write the image", e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes zeros up to the next multiple of `align`.
    pub fn pad_to(&mut self, align: u64) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut n = self.pos.next_multiple_of(align) - self.pos;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.write(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }

    /// Replaces bytes at `offset`, which must lie before [`Sink::pos`].
    pub fn rewrite(&mut self, offset: u64, b: &[u8]) -> Result<()> {
        debug_assert!(offset + b.len() as u64 <= self.pos);
        self.out.flush().map_err(|e| Error::io("cannot write the image", e))?;
        self.out.get_ref().write_all_at(b, offset).map_err(|e| Error::io("cannot write the image", e))
    }

    /// Flushes buffered bytes and returns the file (as long as
    /// [`Sink::pos`], a trailing hole included).
    pub fn into_file(self) -> Result<File> {
        let (pos, hole) = (self.pos, self.hole);
        let file = self.out.into_inner().map_err(|e| Error::io("cannot flush the image", e.into_error()))?;
        if hole > 0 {
            file.set_len(pos).map_err(|e| Error::io("cannot write the image", e))?;
        }
        Ok(file)
    }
}
