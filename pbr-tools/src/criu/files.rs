//! CRIU's `files.img`: every file the dumped processes hold open, one
//! `file_entry` each (CRIU's `images/fdinfo.proto`: type 1, id 2, and the
//! entry of its type: a regular file 3, an inet socket 4, a unix socket
//! 16...). What `pbr-img inspect` shows of them, as `crit show` does: a
//! regular file's path, a socket's addresses and state; every other kind
//! by its name.

use super::ImageError;
use super::entries::entries;
use super::protobuf::{Reader, Wire};

/// The file's name in a CRIU dump.
pub const FILE_NAME: &str = "files.img";
/// The second word of `files.img`.
pub const FILES_MAGIC: u32 = 0x5630_3138;

/// One open file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// Its id (the processes' descriptors name it).
    pub id: u32,
    /// What it is.
    pub kind: FileKind,
}

/// What an open file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file (or a directory, a device) and its path.
    Regular(String),
    /// An IPv4 or IPv6 socket.
    Inet {
        /// `tcp`, `udp` or the protocol's number.
        proto: String,
        /// The kernel's socket state (`listen`, `established`...).
        state: String,
        /// Local address and port.
        src: String,
        /// Peer address and port.
        dst: String,
    },
    /// A unix socket and its name (empty: unnamed).
    Unix(String),
    /// Any other kind, by CRIU's name (`PIPE`, `EVENTFD`...).
    Other(&'static str),
}

/// CRIU's `fd_types`, by number.
const TYPES: [&str; 19] = [
    "UND",
    "REG",
    "PIPE",
    "FIFO",
    "INETSK",
    "UNIXSK",
    "EVENTFD",
    "EVENTPOLL",
    "INOTIFY",
    "SIGNALFD",
    "PACKETSK",
    "TTY",
    "FANOTIFY",
    "NETLINKSK",
    "NS",
    "TUNF",
    "EXT",
    "TIMERFD",
    "MEMFD",
];

/// The most files [`decode`] decodes; the rest are counted.
pub const MAX_DECODED: usize = 4096;

/// Decodes a `files.img`: its first [`MAX_DECODED`] files in file order,
/// and how many more it holds.
///
/// # Errors
/// [`ImageError`] naming the byte: a wrong magic, an entry that runs past
/// the end, a malformed message.
pub fn decode(img: &[u8]) -> Result<(Vec<OpenFile>, usize), ImageError> {
    let all = entries(img, FILES_MAGIC, "files")?;
    let more = all.len().saturating_sub(MAX_DECODED);
    let open: Result<Vec<OpenFile>, ImageError> =
        all.into_iter().take(MAX_DECODED).enumerate().map(|(i, (msg, at))| entry(msg, at, i)).collect();
    Ok((open?, more))
}

/// A message's varints and length-delimited values, by field number
/// (fixed-size fields skipped).
struct Fields<'a> {
    ints: Vec<(u32, u64)>,
    bytes: Vec<(u32, &'a [u8], u64)>,
}

impl<'a> Fields<'a> {
    fn read(msg: &'a [u8], base: u64) -> Result<Fields<'a>, ImageError> {
        let mut r = Reader::new(msg, base);
        let mut f = Fields { ints: Vec::new(), bytes: Vec::new() };
        while let Some((field, wire)) = r.key()? {
            match wire {
                Wire::Varint => f.ints.push((field, r.varint()?)),
                Wire::Len => {
                    let (b, at) = r.bytes()?;
                    f.bytes.push((field, b, at));
                }
                _ => r.skip(wire)?,
            }
        }
        Ok(f)
    }

    fn int(&self, field: u32) -> Option<u64> {
        self.ints.iter().find(|(f, _)| *f == field).map(|(_, v)| *v)
    }

    fn ints(&self, field: u32) -> impl Iterator<Item = u64> + '_ {
        self.ints.iter().filter(move |(f, _)| *f == field).map(|(_, v)| *v)
    }

    fn bytes(&self, field: u32) -> Option<(&'a [u8], u64)> {
        self.bytes.iter().find(|(f, ..)| *f == field).map(|(_, b, at)| (*b, *at))
    }
}

/// One `file_entry` at file offset `base`.
fn entry(msg: &[u8], base: u64, i: usize) -> Result<OpenFile, ImageError> {
    let f = Fields::read(msg, base)?;
    let missing = |what: &str| ImageError { offset: base, what: format!("entry {i} has no {what}") };
    let kind = f.int(1).ok_or_else(|| missing("type"))?;
    let id = f.int(2).ok_or_else(|| missing("id"))?;
    let id =
        u32::try_from(id).map_err(|_| ImageError { offset: base, what: format!("entry {i}: id {id} over 32 bits") })?;
    let nested = |field: u32, what: &str| f.bytes(field).ok_or_else(|| missing(what));
    let kind = match kind {
        1 => {
            let (b, at) = nested(3, "regular file")?;
            let reg = Fields::read(b, at)?;
            let (name, _) = reg.bytes(6).ok_or_else(|| missing("regular file's name"))?;
            FileKind::Regular(String::from_utf8_lossy(name).into_owned())
        }
        4 => {
            let (b, at) = nested(4, "inet socket")?;
            inet(&Fields::read(b, at)?)
        }
        5 => {
            let (b, at) = nested(16, "unix socket")?;
            let name = Fields::read(b, at)?.bytes(11).map(|(n, _)| n).unwrap_or_default();
            FileKind::Unix(String::from_utf8_lossy(name).replace('\0', "@"))
        }
        n => FileKind::Other(TYPES.get(n as usize).copied().unwrap_or("UNKNOWN")),
    };
    Ok(OpenFile { id, kind })
}

/// An `inet_sk_entry`: family 3, proto 5, state 6, ports 7 and 8,
/// addresses 11 and 12 (one u32 for IPv4, four for IPv6, each as the
/// kernel keeps it: network order in memory).
fn inet(s: &Fields<'_>) -> FileKind {
    let proto = match s.int(5) {
        Some(6) => "tcp".to_owned(),
        Some(17) => "udp".to_owned(),
        Some(n) => format!("proto {n}"),
        None => "?".to_owned(),
    };
    // The kernel's TCP states (include/net/tcp_states.h).
    const STATES: [&str; 13] = [
        "?",
        "established",
        "syn-sent",
        "syn-recv",
        "fin-wait1",
        "fin-wait2",
        "time-wait",
        "close",
        "close-wait",
        "last-ack",
        "listen",
        "closing",
        "new-syn-recv",
    ];
    let state = s.int(6).and_then(|n| STATES.get(n as usize)).copied().unwrap_or("?").to_owned();
    let v6 = s.int(3) == Some(10);
    let addr = |field: u32, port: u32| {
        let words: Vec<[u8; 4]> = s.ints(field).map(|w| (w as u32).to_le_bytes()).collect();
        let port = s.int(port).unwrap_or(0);
        match (v6, words.as_slice()) {
            (false, [a]) => format!("{}:{port}", std::net::Ipv4Addr::from(*a)),
            (true, [a, b, c, d]) => {
                let bytes: Vec<u8> = [a, b, c, d].iter().flat_map(|w| w.iter().copied()).collect();
                let octets: [u8; 16] = bytes.try_into().unwrap_or([0; 16]);
                format!("[{}]:{port}", std::net::Ipv6Addr::from(octets))
            }
            _ => format!("?:{port}"),
        }
    };
    FileKind::Inet { proto, state, src: addr(11, 7), dst: addr(12, 8) }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileKind::Regular(path) => write!(f, "file {path}"),
            FileKind::Inet { proto, state, src, dst } if state == "listen" => write!(f, "{proto} {src} {state}"),
            FileKind::Inet { proto, state, src, dst } => write!(f, "{proto} {src} - {dst} {state}"),
            FileKind::Unix(name) if name.is_empty() => write!(f, "unix socket"),
            FileKind::Unix(name) => write!(f, "unix socket {name}"),
            FileKind::Other(kind) => write!(f, "{}", kind.to_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::entries::IMG_COMMON_MAGIC;
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int(field: u32, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(field) << 3, &mut out);
        varint(v, &mut out);
        out
    }

    fn len(field: u32, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint((u64::from(field) << 3) | 2, &mut out);
        varint(b.len() as u64, &mut out);
        out.extend(b);
        out
    }

    fn img(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut v = [IMG_COMMON_MAGIC.to_le_bytes(), FILES_MAGIC.to_le_bytes()].concat();
        for e in entries {
            v.extend((e.len() as u32).to_le_bytes());
            v.extend(e);
        }
        v
    }

    #[test]
    fn files_and_sockets_decode() {
        let reg = [int(1, 1), int(2, 3), len(3, &[int(1, 3), len(6, b"/etc/memcached.conf")].concat())].concat();
        let addr = |a: [u8; 4]| u64::from(u32::from_le_bytes(a));
        let listen = [int(3, 2), int(5, 6), int(6, 10), int(7, 11211), int(11, addr([0, 0, 0, 0]))].concat();
        let conn = [
            int(3, 2),
            int(5, 6),
            int(6, 1),
            int(7, 11211),
            int(8, 40000),
            int(11, addr([10, 0, 2, 15])),
            int(12, addr([10, 0, 2, 2])),
        ]
        .concat();
        let isk = |body: &[u8]| [int(1, 4), int(2, 7), len(4, body)].concat();
        let unix = [int(1, 5), int(2, 9), len(16, &len(11, b"\0abstract"))].concat();
        let pipe = [int(1, 2), int(2, 4)].concat();
        let (files, more) = decode(&img(&[reg, isk(&listen), isk(&conn), unix, pipe])).unwrap();
        assert_eq!(more, 0);
        let shown: Vec<String> = files.iter().map(|f| f.kind.to_string()).collect();
        assert_eq!(
            shown,
            [
                "file /etc/memcached.conf",
                "tcp 0.0.0.0:11211 listen",
                "tcp 10.0.2.15:11211 - 10.0.2.2:40000 established",
                "unix socket @abstract",
                "pipe"
            ]
        );
        assert_eq!(files[0].id, 3);
    }

    #[test]
    fn only_so_many_files_are_decoded() {
        let pipe = [int(1, 2), int(2, 4)].concat();
        let many: Vec<Vec<u8>> = (0..MAX_DECODED + 3).map(|_| pipe.clone()).collect();
        let (open, more) = decode(&img(&many)).unwrap();
        assert_eq!((open.len(), more), (MAX_DECODED, 3));
    }

    #[test]
    fn hostile_entries_name_where() {
        for (bytes, want) in [
            (img(&[int(2, 1)]), "entry 0 has no type"),
            (img(&[int(1, 1)]), "entry 0 has no id"),
            (img(&[[int(1, 1), int(2, 1)].concat()]), "entry 0 has no regular file"),
            (img(&[[int(1, 1), int(2, 1), len(3, &int(1, 1))].concat()]), "has no regular file's name"),
            (img(&[[int(1, 1), int(2, 1 << 40)].concat()]), "id 1099511627776 over 32 bits"),
            (img(&[vec![0x0a, 9]]), "runs past"),
            ([IMG_COMMON_MAGIC.to_le_bytes(), 1u32.to_le_bytes()].concat(), "is not files's"),
        ] {
            let e = decode(&bytes).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let (odd, _) = decode(&img(&[[int(1, 4), int(2, 1), len(4, &int(3, 10))].concat()])).unwrap();
        assert_eq!(odd[0].kind.to_string(), "? ?:0 - ?:0 ?");
    }
}
