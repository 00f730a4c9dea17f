//! Typed messages, checked field by field: what a frame's payload means.

use serde_json::{Value, json};

use crate::checkpoint::{Checkpoint, Checkpointed, ProcessFile};
pub use crate::fields::MessageError;
use crate::fields::{err, object, string, uint};
use crate::frame::{Frame, Kind};
pub use crate::limits::{MAX_ENTROPY, MAX_MOUNTS, MAX_STRING, MIN_ENTROPY};
use crate::restore::{Restore, Restored};

/// A block device the guest has mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount's source as the guest names it (`/dev/vda`).
    pub source: String,
    /// Where it is mounted (`/`).
    pub target: String,
    /// File system type (`ext4`).
    pub fstype: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// The whole disk it lives on.
    pub disk: Disk,
}

/// How the host can tell which of its drives a guest disk is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The guest's name for the whole disk (`vda`).
    pub name: String,
    /// The disk's serial (`-device virtio-blk-pci,serial=...`), if it has one.
    pub serial: Option<String>,
    /// The PCI address of its controller (`0000:00:03.0`), if on PCI.
    pub pci: Option<String>,
}

/// A restartable point: the guest waits for [`Kind::Continue`] or
/// [`Kind::Resume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// The point's name (`kernel`, `daemons`).
    pub name: String,
    /// The guest's boot time clock, in nanoseconds.
    pub uptime_ns: u64,
    /// Every block device mounted at the point.
    pub mounts: Vec<Mount>,
}

/// What the guest did with a [`Resume`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// How far the clock was stepped (host time minus guest time).
    pub clock_step_ns: i64,
    /// Entropy bytes added to the kernel's pool.
    pub entropy_bytes: u32,
    /// The kernel's random generator was reseeded from them.
    pub reseeded: bool,
}

/// The guest's service is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The guest's boot time clock, in nanoseconds.
    pub uptime_ns: u64,
}

/// What the host tells a restored guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The host's wall clock, nanoseconds since the Unix epoch.
    pub realtime_ns: u64,
    /// Fresh random bytes for the kernel's pool.
    pub entropy: Vec<u8>,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Point`].
    Point(Point),
    /// gzip of `/proc/kpageflags`.
    Kpageflags(Vec<u8>),
    /// gzip of `/proc/kpagecount`.
    Kpagecount(Vec<u8>),
    /// Files the boot read.
    Files(Vec<String>),
    /// Page-cache pages of files on the guest's disks.
    Cache(Vec<crate::cache::CachedFile>),
    /// See [`Resumed`].
    Resumed(Resumed),
    /// See [`Ready`].
    Ready(Ready),
    /// Carry on.
    Continue,
    /// The guest is alive (its heartbeat, once ready).
    Alive,
    /// See [`Resume`].
    Resume(Resume),
    /// See [`Checkpoint`].
    Checkpoint(Checkpoint),
    /// See [`ProcessFile`].
    ProcessFile(ProcessFile),
    /// See [`Checkpointed`].
    Checkpointed(Checkpointed),
    /// A unit's image file to restore (a [`ProcessFile`] from the host).
    RestoreFile(ProcessFile),
    /// See [`Restore`].
    Restore(Restore),
    /// See [`Restored`].
    Restored(Restored),
}

/// Whether `s` is a valid point name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn valid_point_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl Message {
    /// Decodes a frame.
    ///
    /// # Errors
    /// [`MessageError`] naming the field that is missing or wrong.
    pub fn decode(frame: &Frame) -> Result<Message, MessageError> {
        let k = frame.kind;
        let p = &frame.payload;
        Ok(match k {
            Kind::Point => Message::Point(point(&object(k, p)?, k)?),
            Kind::Kpageflags => Message::Kpageflags(p.clone()),
            Kind::Kpagecount => Message::Kpagecount(p.clone()),
            Kind::Files => Message::Files(files(p, k)?),
            Kind::Cache => Message::Cache(crate::cache::decode(p).map_err(|m| err(k, m))?),
            Kind::Resumed => {
                let o = object(k, p)?;
                let entropy_bytes = u32::try_from(uint(&o, "entropy_bytes", k)?)
                    .map_err(|_| err(k, "entropy_bytes is out of range"))?;
                Message::Resumed(Resumed {
                    clock_step_ns: o
                        .get("clock_step_ns")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| err(k, "clock_step_ns is missing or not an integer"))?,
                    entropy_bytes,
                    reseeded: o
                        .get("reseeded")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| err(k, "reseeded is missing or not a boolean"))?,
                })
            }
            Kind::Ready => Message::Ready(Ready { uptime_ns: uint(&object(k, p)?, "uptime_ns", k)? }),
            Kind::Continue => Message::Continue,
            Kind::Alive => Message::Alive,
            Kind::Resume => {
                let (time, entropy) = p.split_at_checked(8).ok_or_else(|| err(k, "shorter than its 8-byte time"))?;
                if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
                    return Err(err(k, format!("{} entropy bytes, not {MIN_ENTROPY} to {MAX_ENTROPY}", entropy.len())));
                }
                let realtime_ns = u64::from_le_bytes(time.try_into().map_err(|_| err(k, "bad time"))?);
                Message::Resume(Resume { realtime_ns, entropy: entropy.to_vec() })
            }
            Kind::Checkpoint => Message::Checkpoint(Checkpoint::decode(p)?),
            Kind::ProcessFile => Message::ProcessFile(ProcessFile::decode(p)?),
            Kind::Checkpointed => Message::Checkpointed(Checkpointed::decode(p)?),
            Kind::RestoreFile => Message::RestoreFile(ProcessFile::decode_as(k, p)?),
            Kind::Restore => Message::Restore(Restore::decode(p)?),
            Kind::Restored => Message::Restored(Restored::decode(p)?),
        })
    }

    /// The frame that carries this message.
    pub fn encode(&self) -> Frame {
        let (kind, payload) = match self {
            Message::Point(p) => {
                let mounts: Vec<Value> = p
                    .mounts
                    .iter()
                    .map(|m| {
                        json!({"source": m.source, "target": m.target, "fstype": m.fstype,
                               "mode": if m.read_only { "ro" } else { "rw" },
                               "disk": {"name": m.disk.name, "serial": m.disk.serial, "pci": m.disk.pci}})
                    })
                    .collect();
                (Kind::Point, json!({"point": p.name, "uptime_ns": p.uptime_ns, "mounts": mounts}).to_string().into())
            }
            Message::Kpageflags(b) => (Kind::Kpageflags, b.clone()),
            Message::Kpagecount(b) => (Kind::Kpagecount, b.clone()),
            Message::Files(f) => (Kind::Files, f.join("\0").into_bytes()),
            Message::Cache(c) => (Kind::Cache, crate::cache::encode(c)),
            Message::Resumed(r) => (
                Kind::Resumed,
                json!({"clock_step_ns": r.clock_step_ns, "entropy_bytes": r.entropy_bytes, "reseeded": r.reseeded})
                    .to_string()
                    .into(),
            ),
            Message::Ready(r) => (Kind::Ready, json!({"uptime_ns": r.uptime_ns}).to_string().into()),
            Message::Continue => (Kind::Continue, Vec::new()),
            Message::Alive => (Kind::Alive, Vec::new()),
            Message::Resume(r) => {
                let mut v = r.realtime_ns.to_le_bytes().to_vec();
                v.extend_from_slice(&r.entropy);
                (Kind::Resume, v)
            }
            Message::Checkpoint(c) => (Kind::Checkpoint, c.encode()),
            Message::ProcessFile(f) => (Kind::ProcessFile, f.encode()),
            Message::Checkpointed(c) => (Kind::Checkpointed, c.encode()),
            Message::RestoreFile(f) => (Kind::RestoreFile, f.encode()),
            Message::Restore(r) => (Kind::Restore, r.encode()),
            Message::Restored(r) => (Kind::Restored, r.encode()),
        };
        Frame { kind, payload }
    }
}

fn optional(o: &serde_json::Map<String, Value>, key: &str, k: Kind, at: &str) -> Result<Option<String>, MessageError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(o, key, k, at).map(Some),
    }
}

fn point(o: &serde_json::Map<String, Value>, k: Kind) -> Result<Point, MessageError> {
    let name = string(o, "point", k, "")?;
    if !valid_point_name(&name) {
        return Err(err(k, format!("point name {name:?} is not 1 to 64 of A-Z a-z 0-9 _ . -")));
    }
    let list = o.get("mounts").and_then(Value::as_array).ok_or_else(|| err(k, "mounts is missing or not a list"))?;
    if list.len() > MAX_MOUNTS {
        return Err(err(k, format!("{} mounts, over {MAX_MOUNTS}", list.len())));
    }
    let mut mounts = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("mounts[{i}].");
        let m = m.as_object().ok_or_else(|| err(k, format!("mounts[{i}] is not an object")))?;
        let read_only = match string(m, "mode", k, &at)?.as_str() {
            "ro" => true,
            "rw" => false,
            other => return Err(err(k, format!("{at}mode is {other:?}, not ro or rw"))),
        };
        let d = m.get("disk").and_then(Value::as_object).ok_or_else(|| err(k, format!("{at}disk is not an object")))?;
        let at_disk = format!("{at}disk.");
        mounts.push(Mount {
            source: string(m, "source", k, &at)?,
            target: string(m, "target", k, &at)?,
            fstype: string(m, "fstype", k, &at)?,
            read_only,
            disk: Disk {
                name: string(d, "name", k, &at_disk)?,
                serial: optional(d, "serial", k, &at_disk)?,
                pci: optional(d, "pci", k, &at_disk)?,
            },
        });
    }
    Ok(Point { name, uptime_ns: uint(o, "uptime_ns", k)?, mounts })
}

fn files(p: &[u8], k: Kind) -> Result<Vec<String>, MessageError> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    p.split(|&b| b == 0)
        .enumerate()
        .map(|(i, f)| {
            String::from_utf8(f.to_vec()).map_err(|_| err(k, format!("file {i} is not UTF-8"))).and_then(|s| {
                if s.len() > MAX_STRING { Err(err(k, format!("file {i} is over {MAX_STRING} bytes"))) } else { Ok(s) }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point_msg() -> Message {
        Message::Point(Point {
            name: "daemons".into(),
            uptime_ns: 12_000_000_000,
            mounts: vec![Mount {
                source: "/dev/vda".into(),
                target: "/".into(),
                fstype: "ext4".into(),
                read_only: true,
                disk: Disk { name: "vda".into(), serial: Some("root".into()), pci: Some("0000:00:03.0".into()) },
            }],
        })
    }

    #[test]
    fn every_message_round_trips() {
        let all = [
            point_msg(),
            Message::Kpageflags(vec![1, 2, 3]),
            Message::Files(vec!["/etc/a".into(), "/usr/b".into()]),
            Message::Resumed(Resumed { clock_step_ns: -5, entropy_bytes: 64, reseeded: true }),
            Message::Ready(Ready { uptime_ns: 7 }),
            Message::Continue,
            Message::Alive,
            Message::Resume(Resume { realtime_ns: 1 << 60, entropy: vec![9; 64] }),
            Message::Checkpoint(Checkpoint { units: vec!["nginx.service".into()] }),
            Message::ProcessFile(ProcessFile {
                unit: "nginx.service".into(),
                name: "pstree.img".into(),
                data: vec![7],
            }),
            Message::Checkpointed(Checkpointed { kernel: "6.1.0".into(), criu_version: None, units: Vec::new() }),
        ];
        for m in all {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn hostile_payloads_name_the_field() {
        let cases: [(Kind, &[u8], &str); 9] = [
            (Kind::Point, b"[]", "not a JSON object"),
            (Kind::Point, b"{\"point\":\"../x\",\"uptime_ns\":1,\"mounts\":[]}", "point name"),
            (Kind::Point, b"{\"point\":\"a\",\"uptime_ns\":-1,\"mounts\":[]}", "uptime_ns"),
            (Kind::Point, b"{\"point\":\"a\",\"uptime_ns\":1,\"mounts\":[{\"mode\":\"rx\"}]}", "mounts[0].mode"),
            (Kind::Point, b"{\"point\":\"a\",\"uptime_ns\":1,\"mounts\":[7]}", "mounts[0] is not"),
            (Kind::Ready, b"{\"uptime_ns\":\"1\"}", "uptime_ns"),
            (Kind::Resume, b"1234567", "8-byte time"),
            (Kind::Resume, &[0; 12], "4 entropy bytes"),
            (Kind::Files, b"a\0\xff", "file 1 is not UTF-8"),
        ];
        for (kind, payload, want) in cases {
            let e = Message::decode(&Frame { kind, payload: payload.to_vec() }).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Message::decode(&Frame { kind: Kind::Ready, payload: deep.into_bytes() }).is_err());
        let many = format!("{{\"point\":\"a\",\"uptime_ns\":1,\"mounts\":[{}]}}", vec!["{}"; 300].join(","));
        assert!(Message::decode(&Frame { kind: Kind::Point, payload: many.into_bytes() }).is_err());
    }
}
