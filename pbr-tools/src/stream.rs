//! A forward-only reader of the primitives of an input stream (QEMU's
//! big-endian fields, Xen's little-endian records) that knows its offset,
//! for files and pipes alike. Nothing is read ahead of need except
//! by the buffer, and no length from the input is trusted before the bytes
//! are there.

use std::io::{BufRead, BufReader, Read};

use crate::error::{Error, Result};

/// Reads stream primitives, tracking the byte offset.
pub struct StreamReader<R> {
    inner: BufReader<R>,
    pos: u64,
    format: &'static str,
}

impl<R: Read> StreamReader<R> {
    /// Wraps `inner` of `format` (named in errors: `qemu`, `xl`), whose
    /// first byte is at offset `base`.
    pub fn new(format: &'static str, inner: R, base: u64) -> Self {
        StreamReader { inner: BufReader::with_capacity(1 << 20, inner), pos: base, format }
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// An error at the current offset.
    #[cold]
    pub fn err(&self, msg: impl Into<String>) -> Error {
        Error::Parse { format: self.format, offset: self.pos, msg: msg.into() }
    }

    /// An error at `offset`.
    #[cold]
    pub fn err_at(&self, offset: u64, msg: impl Into<String>) -> Error {
        Error::Parse { format: self.format, offset, msg: msg.into() }
    }

    /// Fills `buf` completely, or fails naming what was being read.
    pub fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(self.err(format!(
                        "truncated: the stream ends inside {what} ({} of {} bytes present)",
                        done,
                        buf.len()
                    )));
                }
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("cannot read the stream at offset {:#x}", self.pos), e)),
            }
        }
        Ok(())
    }

    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        Ok(b[0])
    }

    /// A big-endian u16.
    pub fn be16(&mut self, what: &str) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, what)?;
        Ok(u16::from_be_bytes(b))
    }

    /// A big-endian u32.
    pub fn be32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    /// A big-endian u64.
    pub fn be64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    /// A little-endian u32.
    pub fn le32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Whether the input has no byte left.
    pub fn at_end(&mut self) -> Result<bool> {
        Ok(self.peek()?.is_none())
    }

    /// A counted string: `u8 len` then `len` bytes.
    pub fn counted_str(&mut self, what: &str) -> Result<String> {
        let len = self.u8(what)?;
        let mut b = vec![0u8; usize::from(len)];
        self.read_exact(&mut b, what)?;
        String::from_utf8(b).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    /// The next byte without consuming it, or `None` at the end.
    pub fn peek(&mut self) -> Result<Option<u8>> {
        let buf = self.inner.fill_buf().map_err(|e| Error::io("cannot read the stream", e))?;
        Ok(buf.first().copied())
    }

    /// Skips forward to `offset`, reading and discarding (works on pipes).
    pub fn skip_to(&mut self, offset: u64, what: &str) -> Result<()> {
        if offset < self.pos {
            return Err(self.err(format!("{what} at {offset:#x} lies behind the current offset")));
        }
        let n = offset - self.pos;
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| Error::io("cannot read the stream", e))?;
        self.pos += copied;
        if copied < n {
            return Err(self.err(format!("truncated: the stream ends before {what} at {offset:#x}")));
        }
        Ok(())
    }

    /// Reads everything left, at most `cap` bytes.
    pub fn read_rest(&mut self, cap: u64, what: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        let n =
            (&mut self.inner).take(cap + 1).read_to_end(&mut v).map_err(|e| Error::io("cannot read the stream", e))?;
        if n as u64 > cap {
            return Err(self.err(format!("{what} is larger than {cap} bytes")));
        }
        self.pos += n as u64;
        Ok(v)
    }

    /// Reads `n` bytes, growing the buffer only as bytes arrive, so a lying
    /// length cannot make it allocate more than the input holds.
    pub fn read_vec(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        const CHUNK: u64 = 1 << 16;
        let mut v = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(CHUNK) as usize;
            let start = v.len();
            v.resize(start + k, 0);
            self.read_exact(&mut v[start..], what)?;
            left -= k as u64;
        }
        Ok(v)
    }
}
