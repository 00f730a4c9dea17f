//! Frames: a 12-byte header (`PBRA`, kind, flags, length) and a payload.
//!
//! A reader never trusts the length: each kind has its own limit, checked
//! before anything is allocated, and the payload buffer grows only as bytes
//! arrive.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::Instant;

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
    /// Guest: one image file CRIU wrote while checkpointing a unit for a
    /// kernel update (binary, `checkpoint`).
    ProcessFile = 0x0009,
    /// Guest: how the units of a [`Kind::Checkpoint`] fared (JSON).
    Checkpointed = 0x000a,
    /// Guest: how the units of a [`Kind::Restore`] fared, on the new
    /// kernel (JSON).
    Restored = 0x000b,
    /// Host: carry on (the point was saved, or nobody saves).
    Continue = 0x0081,
    /// Host: this is a restored copy: the host's time and entropy.
    Resume = 0x0082,
    /// Host: checkpoint these systemd units with CRIU for a kernel update
    /// (JSON).
    Checkpoint = 0x0083,
    /// Host, at a point of the boot after a kernel update: one image file
    /// of a unit to restore (binary, as [`Kind::ProcessFile`]).
    RestoreFile = 0x0084,
    /// Host: restore these units from the [`Kind::RestoreFile`]s before
    /// their units start (JSON).
    Restore = 0x0085,
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
            0x0009 => Kind::ProcessFile,
            0x000a => Kind::Checkpointed,
            0x000b => Kind::Restored,
            0x0081 => Kind::Continue,
            0x0082 => Kind::Resume,
            0x0083 => Kind::Checkpoint,
            0x0084 => Kind::RestoreFile,
            0x0085 => Kind::Restore,
            _ => return None,
        })
    }

    /// Whether the guest sends it (else the host does).
    pub fn from_guest(self) -> bool {
        (self as u16) < 0x80
    }

    /// The largest payload a reader accepts for this kind.
    pub const fn max_len(self) -> u32 {
        match self {
            Kind::Point
            | Kind::Resumed
            | Kind::Ready
            | Kind::Checkpointed
            | Kind::Restored
            | Kind::Checkpoint
            | Kind::Restore => 64 << 10,
            // 8 bytes a page, 1 TiB of guest memory, before gzip.
            Kind::Kpageflags | Kind::Kpagecount => 64 << 20,
            Kind::Files => 16 << 20,
            // 24 bytes a page: 2.7 million pages, 10 GiB of page cache.
            Kind::Cache => 64 << 20,
            // One CRIU image file and its two names.
            Kind::ProcessFile | Kind::RestoreFile => 64 << 20,
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
///
/// A read that times out (a socket's read timeout) or is otherwise cut
/// short keeps what arrived of the frame: the next read goes on from
/// there, so a timeout never splits the stream. After a bad frame,
/// [`FrameReader::resync`] skips to the next `PBRA`: a peer that sent
/// garbage is read on, not given up on.
pub struct FrameReader<R> {
    inner: BufReader<R>,
    offset: u64,
    from_guest: bool,
    /// The bytes of the frame being read (while resynchronising: the
    /// prefix of [`MAGIC`] seen so far).
    partial: Vec<u8>,
    resync: bool,
    /// After a bad magic: the header's bytes after its first, which a
    /// resync looks at before the stream's next bytes.
    rescan: Vec<u8>,
    /// When a read gives up, however the bytes trickle in.
    deadline: Option<Instant>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of what the guest sends (`from_guest`), or of what the host
    /// sends.
    pub fn new(inner: R, from_guest: bool) -> FrameReader<R> {
        FrameReader {
            inner: BufReader::new(inner),
            offset: 0,
            from_guest,
            partial: Vec::new(),
            resync: false,
            rescan: Vec::new(),
            deadline: None,
        }
    }

    /// A read past `deadline` stops with [`FrameError::Io`] (`TimedOut`),
    /// keeping what arrived, even while bytes keep coming: a peer that
    /// trickles a frame byte by byte, or sends garbage without end, cannot
    /// hold the reader. (A socket's own read timeout bounds each wait for
    /// bytes, not a whole frame.)
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Bytes taken from the stream so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }

    /// Whether bytes already taken from the underlying reader wait to be
    /// read: a caller that polls its file descriptor reads first.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// The next [`FrameReader::read`] first skips the stream up to the next
    /// `PBRA`: what follows a bad frame is read as frames again.
    pub fn resync(&mut self) {
        self.partial.clear();
        self.resync = true;
    }

    /// Reads the next frame.
    ///
    /// # Errors
    /// [`FrameError`]: the stream closed or broke, or the frame is bad.
    /// After [`FrameError::Io`] the frame read so far is kept for the next
    /// call; after any other error it is dropped.
    pub fn read(&mut self) -> Result<Frame, FrameError> {
        if self.resync {
            self.skip_to_magic()?;
        } else {
            self.rescan.clear();
        }
        self.fill(HEADER_LEN)?;
        let offset = self.offset - HEADER_LEN as u64;
        let header: [u8; HEADER_LEN] = self.partial[..HEADER_LEN].try_into().unwrap_or([0; HEADER_LEN]);
        let (kind, len) = match self.check(&header, offset) {
            Ok(checked) => checked,
            Err(e) => {
                if matches!(e, FrameError::Magic { .. }) {
                    // A frame may start inside what was taken for a header.
                    self.rescan = header[1..].to_vec();
                }
                self.partial = Vec::new();
                return Err(e);
            }
        };
        self.fill(HEADER_LEN + len as usize)?;
        let mut frame = std::mem::take(&mut self.partial);
        frame.drain(..HEADER_LEN);
        Ok(Frame { kind, payload: frame })
    }

    /// The kind and payload length of a frame's header, or what is wrong
    /// with it.
    fn check(&self, header: &[u8; HEADER_LEN], offset: u64) -> Result<(Kind, u32), FrameError> {
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
        Ok((kind, len))
    }

    /// Reads until the frame being read has `want` bytes. The frame grows
    /// as bytes arrive: a length is not an allocation.
    fn fill(&mut self, want: usize) -> Result<(), FrameError> {
        while self.partial.len() < want {
            let buf = available(&mut self.inner, self.deadline)?;
            if buf.is_empty() {
                let got = self.partial.len() as u64;
                let offset = self.offset - got;
                self.partial.clear();
                return Err(match got {
                    0 => FrameError::Closed,
                    _ => FrameError::Truncated { offset, got, want: want as u64 },
                });
            }
            let n = buf.len().min(want - self.partial.len());
            self.partial.extend_from_slice(&buf[..n]);
            self.inner.consume(n);
            self.offset += n as u64;
        }
        Ok(())
    }

    /// Takes bytes until the last four are [`MAGIC`], which become the
    /// start of the next frame: first those of a header whose magic was
    /// bad, then the stream's.
    fn skip_to_magic(&mut self) -> Result<(), FrameError> {
        let rescan = std::mem::take(&mut self.rescan);
        for (i, &b) in rescan.iter().enumerate() {
            if take_magic_byte(&mut self.partial, b) {
                self.partial.extend_from_slice(&rescan[i + 1..]);
                self.resync = false;
                return Ok(());
            }
        }
        loop {
            let buf = available(&mut self.inner, self.deadline)?;
            if buf.is_empty() {
                self.partial.clear();
                return Err(FrameError::Closed);
            }
            let mut taken = buf.len();
            for (i, &b) in buf.iter().enumerate() {
                if take_magic_byte(&mut self.partial, b) {
                    taken = i + 1;
                    self.resync = false;
                    break;
                }
            }
            self.inner.consume(taken);
            self.offset += taken as u64;
            if !self.resync {
                return Ok(());
            }
        }
    }
}

/// The bytes `inner` has ready (empty at the end of the stream), waiting
/// for some unless `deadline` has passed: then [`FrameError::Io`]
/// (`TimedOut`).
fn available<R: Read>(inner: &mut BufReader<R>, deadline: Option<Instant>) -> Result<&[u8], FrameError> {
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(FrameError::Io(io::Error::from(io::ErrorKind::TimedOut)));
        }
        match inner.fill_buf() {
            Ok(_) => return Ok(inner.buffer()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// Adds `b` to `seen`, the longest prefix of [`MAGIC`] the bytes so far
/// end with; whether that is now the whole magic.
fn take_magic_byte(seen: &mut Vec<u8>, b: u8) -> bool {
    seen.push(b);
    while !MAGIC.starts_with(seen) {
        seen.remove(0);
    }
    seen.len() == MAGIC.len()
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

    /// Hands out its pieces one read at a time; `None` is a read that
    /// times out.
    struct Pieces(std::collections::VecDeque<Option<Vec<u8>>>);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                Some(Some(p)) => {
                    buf[..p.len()].copy_from_slice(&p);
                    Ok(p.len())
                }
            }
        }
    }

    /// A timeout inside the header or the payload loses nothing: the next
    /// read goes on with the same frame.
    #[test]
    fn a_timeout_inside_a_frame_keeps_what_arrived() {
        let whole = framed(0x0006, 0, 2, b"{}");
        let pieces = [Some(whole[..5].to_vec()), None, Some(whole[5..13].to_vec()), None, Some(whole[13..].to_vec())];
        let mut r = FrameReader::new(Pieces(pieces.into_iter().collect()), true);
        for _ in 0..2 {
            assert!(matches!(r.read(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock));
        }
        assert_eq!(r.read().unwrap(), Frame { kind: Kind::Ready, payload: b"{}".to_vec() });
        assert_eq!(r.offset(), 14);
        assert!(matches!(r.read(), Err(FrameError::Closed)));
    }

    /// After garbage, even garbage that starts like a magic, the next
    /// frame is found and its offset is where it starts.
    #[test]
    fn resync_finds_the_next_frame() {
        let mut bytes = b"garbage PBPB PBR".to_vec();
        bytes.extend(framed(0x0008, 0, 0, b""));
        bytes.extend(framed(0x0006, 0, 2, b"{}"));
        let mut r = FrameReader::new(&bytes[..], true);
        assert!(matches!(r.read(), Err(FrameError::Magic { offset: 0, .. })));
        r.resync();
        assert_eq!(r.read().unwrap().kind, Kind::Alive);
        assert_eq!(r.offset(), 16 + 12);
        assert_eq!(r.read().unwrap().kind, Kind::Ready);
        r.resync();
        assert!(matches!(r.read(), Err(FrameError::Closed)), "nothing is left to find");
        let oversized = framed(0x0008, 0, 5, b"12345");
        let mut r = FrameReader::new(&oversized[..], true);
        assert!(matches!(r.read(), Err(FrameError::TooLong { len: 5, .. })));
        r.resync();
        assert!(matches!(r.read(), Err(FrameError::Closed)));
    }

    /// A frame that starts inside what was taken for a header is found.
    #[test]
    fn a_stray_byte_costs_no_frame() {
        let mut bytes = b"x".to_vec();
        bytes.extend(framed(0x0008, 0, 0, b""));
        let mut r = FrameReader::new(&bytes[..], true);
        assert!(matches!(r.read(), Err(FrameError::Magic { offset: 0, .. })));
        r.resync();
        assert_eq!(r.read().unwrap().kind, Kind::Alive);
        assert_eq!(r.offset(), 13);
    }

    /// Garbage without end, or a frame trickled in byte by byte, does not
    /// hold a reader past its deadline; what arrived is kept.
    #[test]
    fn a_deadline_bounds_a_read_however_bytes_trickle() {
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf[0] = b'x';
                Ok(1)
            }
        }
        let mut r = FrameReader::new(Endless, true);
        r.resync();
        r.set_deadline(Some(Instant::now() + std::time::Duration::from_millis(50)));
        assert!(matches!(r.read(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
        assert!(r.offset() > 0);
        let whole = framed(0x0006, 0, 2, b"{}");
        let mut r = FrameReader::new(&whole[..], true);
        r.set_deadline(Some(Instant::now()));
        assert!(matches!(r.read(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
        r.set_deadline(None);
        assert_eq!(r.read().unwrap().kind, Kind::Ready);
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
        let table: [(u16, u32); 16] = [
            (0x0001, 64 << 10),
            (0x0002, 64 << 20),
            (0x0003, 64 << 20),
            (0x0004, 16 << 20),
            (0x0005, 64 << 10),
            (0x0006, 64 << 10),
            (0x0007, 64 << 20),
            (0x0008, 0),
            (0x0009, 64 << 20),
            (0x000a, 64 << 10),
            (0x000b, 64 << 10),
            (0x0081, 0),
            (0x0082, 520),
            (0x0083, 64 << 10),
            (0x0084, 64 << 20),
            (0x0085, 64 << 10),
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
