//! Just enough of protobuf's wire format to read CRIU's small messages:
//! keys, varints, and skipping the fields a reader does not want. Every
//! read is bounded by the bytes present; hostile bytes give an
//! [`ImageError`] naming the byte, never a panic.

use super::ImageError;

/// How a field's value is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wire {
    /// A varint.
    Varint,
    /// 8 bytes.
    Fixed64,
    /// A varint length, then that many bytes (strings, messages, packed
    /// repeated fields).
    Len,
    /// 4 bytes.
    Fixed32,
}

/// Reads one message's bytes; offsets in errors are `base` plus the
/// position in them.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which start at byte `base` of the image file.
    pub fn new(bytes: &'a [u8], base: u64) -> Reader<'a> {
        Reader { bytes, pos: 0, base }
    }

    /// Byte offset of the next byte in the image file.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn error(&self, what: String) -> ImageError {
        ImageError { offset: self.offset(), what }
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// One varint of at most 10 bytes.
    pub fn varint(&mut self) -> Result<u64, ImageError> {
        let start = self.offset();
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(ImageError { offset: start, what: "the message ends inside a varint".into() });
            };
            self.pos += 1;
            // The tenth byte holds bit 63 only.
            if shift == 63 && b > 1 {
                return Err(ImageError { offset: start, what: "a varint overflows 64 bits".into() });
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// The next field's number and wire type, or `None` at the end.
    pub fn key(&mut self) -> Result<Option<(u32, Wire)>, ImageError> {
        if self.is_done() {
            return Ok(None);
        }
        let at = self.offset();
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            w => return Err(ImageError { offset: at, what: format!("wire type {w} is not one a message holds") }),
        };
        let field = u32::try_from(key >> 3).ok().filter(|&f| f > 0).ok_or_else(|| ImageError {
            offset: at,
            what: format!("field number {} is not in 1..=2^29-1", key >> 3),
        })?;
        Ok(Some((field, wire)))
    }

    /// The bytes of a length-delimited value, and the offset they start at.
    pub fn bytes(&mut self) -> Result<(&'a [u8], u64), ImageError> {
        let len = self.varint()?;
        let left = self.bytes.len() - self.pos;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| self.error(format!("a value of {len} bytes runs past the message's end ({left} left)")))?;
        let at = self.offset();
        let b = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok((b, at))
    }

    /// Skips a value of type `wire`.
    pub fn skip(&mut self, wire: Wire) -> Result<(), ImageError> {
        let n = match wire {
            Wire::Varint => return self.varint().map(drop),
            Wire::Len => return self.bytes().map(drop),
            Wire::Fixed64 => 8,
            Wire::Fixed32 => 4,
        };
        if self.bytes.len() - self.pos < n {
            return Err(self.error(format!("a {n}-byte value runs past the message's end")));
        }
        self.pos += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_their_bounds() {
        let mut r = Reader::new(&[0x96, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 100);
        assert_eq!(r.varint().unwrap(), 150);
        assert_eq!(r.varint().unwrap(), 0);
        assert_eq!(r.varint().unwrap(), u64::MAX);
        assert!(r.is_done());
        let e = Reader::new(&[0x80, 0x80], 100).varint().unwrap_err();
        assert_eq!((e.offset, e.what.as_str()), (100, "the message ends inside a varint"));
        let e = Reader::new(&[0xff; 10], 0).varint().unwrap_err();
        assert!(e.what.contains("overflows"), "{e}");
        let e = Reader::new(&[0x80; 11], 0).varint().unwrap_err();
        assert!(e.what.contains("overflows"), "{e}");
    }

    #[test]
    fn keys_lengths_and_skips() {
        // field 1 varint 5, field 2 bytes "ab", field 3 fixed32, field 4 fixed64
        let msg = [0x08, 5, 0x12, 2, b'a', b'b', 0x1d, 1, 2, 3, 4, 0x21, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut r = Reader::new(&msg, 0);
        assert_eq!(r.key().unwrap(), Some((1, Wire::Varint)));
        r.skip(Wire::Varint).unwrap();
        assert_eq!(r.key().unwrap(), Some((2, Wire::Len)));
        assert_eq!(r.bytes().unwrap(), (&b"ab"[..], 4));
        assert_eq!(r.key().unwrap(), Some((3, Wire::Fixed32)));
        r.skip(Wire::Fixed32).unwrap();
        assert_eq!(r.key().unwrap(), Some((4, Wire::Fixed64)));
        r.skip(Wire::Fixed64).unwrap();
        assert_eq!(r.key().unwrap(), None);
        for (bytes, want) in [
            (&[0x0b][..], "wire type 3"),
            (&[0x07][..], "wire type 7"),
            (&[0x00][..], "field number 0"),
            (&[0x12, 5, b'a'][..], "a value of 5 bytes runs past"),
            (&[0x1d, 1, 2][..], "a 4-byte value runs past"),
            (&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..], "runs past"),
        ] {
            let mut r = Reader::new(bytes, 0);
            let e = r.key().and_then(|k| r.skip(k.unwrap().1)).unwrap_err();
            assert!(e.what.contains(want), "{e}");
        }
    }
}
