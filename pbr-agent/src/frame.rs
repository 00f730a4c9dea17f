//! Frames: a 12-byte header (`PBRA`, kind, flags, length) and a payload.
//!
//! A reader never trusts the length: each kind has its own limit, checked
//! before anything is allocated, and the payload buffer grows only as bytes
//! arrive.

use std::io::{self, Read, Write};

use crate::limits::MAX_ENTROPY;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"PBRA";
/// Header size in bytes.
pub const HEADER_LEN: usize = 12;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// Guest: a restartable point is reached; save now (JSON).
    Point = 0x0001,
    /// Guest: `/proc/kpageflags` at the coming point (gzip).
    Kpageflags = 0x0002,
    /// Guest: `/proc/kpagecount` at the coming point (gzip).
    Kpagecount = 0x0003,
    /// Guest: files the boot read up to the coming point (NUL-separated).
    Files = 0x0004,
    /// Guest: a restored guest did what [`Kind::Resume`] asked (JSON).
    Resumed = 0x0005,
    /// Guest: the guest's service is ready (JSON).
    Ready = 0x0006,
    /// Guest: page-cache pages of files on its disks at the coming point
    /// (binary, `cache`).
    Cache = 0x0007,
    /// The guest is alive: sent every 200 ms once it is ready, so that
    /// the host notices a hang (`spec/agent.md` §6).
    Alive = 0x0008,
    /// Host: carry on (the point was saved, or nobody saves).
    Continue = 0x0081,
    /// Host: this is a restored copy: the host's time and entropy.
    Resume = 0x0082,
}

impl Kind {
    /// The kind with this number.
    pub fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            0x0001 => Kind::Point,
            0x0002 => Kind::Kpageflags,
            0x0003 => Kind::Kpagecount,
            0x0004 => Kind::Files,
            0x0005 => Kind::Resumed,
            0x0006 => Kind::Ready,
            0x0007 => Kind::Cache,
            0x0008 => Kind::Alive,
            0x0081 => Kind::Continue,
            0x0082 => Kind::Resume,
            _ => return None,
        })
    }

    /// Whether the guest sends it (else the host does).
    pub fn from_guest(self) -> bool {
        (self as u16) < 0x80
    }

    /// The largest payload a reader accepts for this kind.
    pub fn max_len(self) -> u32 {
        match self {
            Kind::Point | Kind::Resumed | Kind::Ready => 64 << 10,
            // 8 bytes a page, 1 TiB of guest memory, before gzip.
            Kind::Kpageflags | Kind::Kpagecount => 64 << 20,
            Kind::Files => 16 << 20,
            // 24 bytes a page: 2.7 million pages, 10 GiB of page cache.
            Kind::Cache => 64 << 20,
            Kind::Continue | Kind::Alive => 0,
            Kind::Resume => 8 + MAX_ENTROPY as u32,
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended between frames.
    #[error("the peer closed the port")]
    Closed,
    /// The stream ended inside a frame.
    #[error("frame at byte {offset}: the stream ends inside it ({got} of {want} bytes)")]
    Truncated {
        /// Where the frame starts in the stream.
        offset: u64,
        /// Bytes of it that arrived.
        got: u64,
        /// Bytes it should have.
        want: u64,
    },
    /// The header does not start with `PBRA`.
    #[error("frame at byte {offset}: bad magic {found:02x?}")]
    Magic {
        /// Where the frame starts.
        offset: u64,
        /// What was there.
        found: [u8; 4],
    },
    /// An unknown kind, or one the reader's side never receives.
    #[error("frame at byte {offset}: kind {kind:#06x} is not expected here")]
    Kind {
        /// Where the frame starts.
        offset: u64,
        /// The kind number.
        kind: u16,
    },
    /// Flags are reserved and must be zero.
    #[error("frame at byte {offset}: reserved flags {flags:#06x} are set")]
    Flags {
        /// Where the frame starts.
        offset: u64,
        /// The flags.
        flags: u16,
    },
    /// The length is over the kind's limit.
    #[error("frame at byte {offset}: {kind:?} of {len} bytes is over its limit of {max}")]
    TooLong {
        /// Where the frame starts.
        offset: u64,
        /// The frame's kind.
        kind: Kind,
        /// Its length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The port failed.
    #[error("the port failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads frames from one side of the port, counting stream offsets.
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    from_guest: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader of what the guest sends (`from_guest`), or of what the host
    /// sends.
    pub fn new(inner: R, from_guest: bool) -> FrameReader<R> {
        FrameReader { inner, offset: 0, from_guest }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next frame.
    ///
    /// # Errors
    /// [`FrameError`]: the stream closed or broke, or the frame is bad.
    pub fn read(&mut self) -> Result<Frame, FrameError> {
        let offset = self.offset;
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        self.offset += got as u64;
        if got == 0 {
            return Err(FrameError::Closed);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated { offset, got: got as u64, want: HEADER_LEN as u64 });
        }
        let found = [header[0], header[1], header[2], header[3]];
        if found != MAGIC {
            return Err(FrameError::Magic { offset, found });
        }
        let raw_kind = u16::from_le_bytes([header[4], header[5]]);
        let kind = Kind::from_u16(raw_kind)
            .filter(|k| k.from_guest() == self.from_guest)
            .ok_or(FrameError::Kind { offset, kind: raw_kind })?;
        let flags = u16::from_le_bytes([header[6], header[7]]);
        if flags != 0 {
            return Err(FrameError::Flags { offset, flags });
        }
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if len > kind.max_len() {
            return Err(FrameError::TooLong { offset, kind, len, max: kind.max_len() });
        }
        // Grows as bytes arrive: a length is not an allocation.
        let mut payload = Vec::new();
        let n = (&mut self.inner).take(u64::from(len)).read_to_end(&mut payload)?;
        self.offset += n as u64;
        if n < len as usize {
            return Err(FrameError::Truncated {
                offset,
                got: (HEADER_LEN + n) as u64,
                want: HEADER_LEN as u64 + u64::from(len),
            });
        }
        Ok(Frame { kind, payload })
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes one frame.
///
/// # Errors
/// The payload is over the kind's limit (`InvalidInput`), or the write
/// failed.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= kind.max_len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{kind:?} payload over its limit")))?;
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
    header[8..].copy_from_slice(&len.to_le_bytes());
    w.write_all(&header)?;
    w.write_all(payload)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(kind: u16, flags: u16, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend(kind.to_le_bytes());
        v.extend(flags.to_le_bytes());
        v.extend(len.to_le_bytes());
        v.extend(payload);
        v
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Ready, b"{}").unwrap();
        write_frame(&mut buf, Kind::Point, b"{\"point\":\"x\"}").unwrap();
        let mut r = FrameReader::new(&buf[..], true);
        assert_eq!(r.read().unwrap(), Frame { kind: Kind::Ready, payload: b"{}".to_vec() });
        assert_eq!(r.read().unwrap().kind, Kind::Point);
        assert!(matches!(r.read(), Err(FrameError::Closed)));
    }

    #[test]
    fn hostile_headers_are_named_with_their_offset() {
        let ok = framed(0x0006, 0, 2, b"{}");
        let mut bad = ok.clone();
        bad.extend(framed(0x0006, 0, u32::MAX, b""));
        let mut r = FrameReader::new(&bad[..], true);
        r.read().unwrap();
        assert!(matches!(r.read(), Err(FrameError::TooLong { offset: 14, len: u32::MAX, .. })));

        type Want = fn(&FrameError) -> bool;
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (b"PBRB\x06\0\0\0\0\0\0\0".to_vec(), |e| matches!(e, FrameError::Magic { offset: 0, .. })),
            (framed(0x0081, 0, 0, b""), |e| matches!(e, FrameError::Kind { kind: 0x81, .. })),
            (framed(0x7777, 0, 0, b""), |e| matches!(e, FrameError::Kind { kind: 0x7777, .. })),
            (framed(0x0006, 1, 0, b""), |e| matches!(e, FrameError::Flags { flags: 1, .. })),
            (framed(0x0006, 0, 10, b"abc"), |e| matches!(e, FrameError::Truncated { got: 15, want: 22, .. })),
            (b"PBRA\x06".to_vec(), |e| matches!(e, FrameError::Truncated { got: 5, .. })),
        ];
        for (bytes, want) in cases {
            let e = FrameReader::new(&bytes[..], true).read().unwrap_err();
            assert!(want(&e), "{e}");
        }
    }

    #[test]
    fn the_guest_reads_only_host_kinds() {
        let bytes = framed(0x0001, 0, 0, b"");
        assert!(matches!(FrameReader::new(&bytes[..], false).read(), Err(FrameError::Kind { kind: 1, .. })));
        let bytes = framed(0x0081, 0, 0, b"");
        assert_eq!(FrameReader::new(&bytes[..], false).read().unwrap().kind, Kind::Continue);
    }

    #[test]
    fn limits_are_the_specs_table() {
        // spec/agent.md §2: kind number and limit of every frame.
        let table: [(u16, u32); 10] = [
            (0x0001, 64 << 10),
            (0x0002, 64 << 20),
            (0x0003, 64 << 20),
            (0x0004, 16 << 20),
            (0x0005, 64 << 10),
            (0x0006, 64 << 10),
            (0x0007, 64 << 20),
            (0x0008, 0),
            (0x0081, 0),
            (0x0082, 520),
        ];
        for (number, limit) in table {
            let kind = Kind::from_u16(number).unwrap();
            assert_eq!((kind as u16, kind.max_len()), (number, limit), "{kind:?}");
        }
    }

    #[test]
    fn oversized_writes_are_refused() {
        assert!(write_frame(&mut Vec::new(), Kind::Continue, b"x").is_err());
    }
}
