//! Seals: what a candidate's memory depends on outside itself, recorded at
//! capture and checked before a restore (`spec/agent.md`, "Seals").
//!
//! - The host-side boot files (kernel, initrd, firmware): the restored
//!   memory holds what they were.
//! - Every disk the guest had mounted at the point: its page cache and
//!   file system state describe the disk as it was. Restoring over a disk
//!   that has changed since corrupts it.
//!
//! A seal is the file's identity and change time: device, inode, size,
//! mtime and ctime, in nanoseconds. Any write to a file moves its ctime,
//! which no program can set back; a file replaced by another has another
//! inode. So an unchanged seal proves an unchanged file without reading
//! it, and the check on the recovery path is a `stat` per file. A boot
//! file whose seal moved is hashed (it is small) and passes if its content
//! is the same; a disk whose seal moved is refused, since reading it would
//! cost the recovery a whole disk.

use pbr_format::keys;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::compat::QemuHost;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The metadata key that holds a candidate's seals (JSON).
pub const SEALS_KEY: &str = keys::PBR_SEALS;

/// A file's identity at capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSeal {
    /// Its absolute path.
    pub path: PathBuf,
    /// Device number of its file system.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Last change of the inode (data or metadata), nanoseconds.
    pub ctime_ns: i128,
    /// blake3 of its content, for boot files.
    pub blake3: Option<String>,
}

/// A disk the guest held mounted at the point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSeal {
    /// QEMU's name for the drive (`-drive id=`, or its qdev path).
    pub drive: String,
    /// The guest's name for the disk (`vda`).
    pub guest: String,
    /// Where the guest had it mounted, with `ro` or `rw`.
    pub mounts: Vec<String>,
    /// The image file.
    pub file: FileSeal,
}

/// Everything a candidate depends on outside itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seals {
    /// Kernel, initrd and firmware the machine booted from.
    pub boot: Vec<FileSeal>,
    /// Disks held mounted.
    pub disks: Vec<DiskSeal>,
    /// `qemu --version`'s version at capture.
    pub qemu_version: String,
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

impl FileSeal {
    /// Seals `path` as it is now; with its blake3 when `hash`.
    ///
    /// # Errors
    /// It cannot be read.
    pub fn of(path: &Path, hash: bool) -> Result<FileSeal> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(format!("cannot seal {}", path.display()), e))?;
        let m = std::fs::metadata(&path).map_err(|e| Error::io(format!("cannot seal {}", path.display()), e))?;
        let blake3 = if hash { Some(hash_file(&path)?) } else { None };
        Ok(FileSeal::from_metadata(path, &m, blake3))
    }

    fn from_metadata(path: PathBuf, m: &Metadata, blake3: Option<String>) -> FileSeal {
        FileSeal {
            path,
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            blake3,
        }
    }

    /// What moved since the seal, in words; `None` when nothing did.
    fn moved(&self, now: &FileSeal) -> Option<String> {
        let when = |t: i128| crate::time::rfc3339(u64::try_from(t.max(0)).unwrap_or(0), true);
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("replaced by another file".into())
        } else if self.size != now.size {
            Some(format!("size {} -> {} bytes, modified {}", self.size, now.size, when(now.mtime_ns)))
        } else if self.mtime_ns != now.mtime_ns {
            Some(format!("modified {}", when(now.mtime_ns)))
        } else if self.ctime_ns != now.ctime_ns {
            Some(format!("changed {}", when(now.ctime_ns)))
        } else {
            None
        }
    }

    fn to_json(&self) -> Value {
        json!({"path": self.path.display().to_string(), "dev": self.dev, "ino": self.ino, "size": self.size,
               "mtime_ns": self.mtime_ns.to_string(), "ctime_ns": self.ctime_ns.to_string(), "blake3": self.blake3})
    }

    fn from_json(v: &Value) -> Option<FileSeal> {
        let int = |k: &str| v.get(k)?.as_str()?.parse::<i128>().ok();
        Some(FileSeal {
            path: PathBuf::from(v.get("path")?.as_str()?),
            dev: v.get("dev")?.as_u64()?,
            ino: v.get("ino")?.as_u64()?,
            size: v.get("size")?.as_u64()?,
            mtime_ns: int("mtime_ns")?,
            ctime_ns: int("ctime_ns")?,
            blake3: v.get("blake3").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// blake3 of a file's content, hex.
fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("cannot hash {}", path.display()), e))?;
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(format!("cannot hash {}", path.display()), e))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Why a candidate may not be restored: one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl DiskSeal {
    /// Checks the disk's image file against its seal: one `stat`.
    ///
    /// # Errors
    /// The refusal, naming the disk, its image and what moved.
    pub fn check(&self) -> std::result::Result<(), Refusal> {
        let mounted = self.mounts.join(", ");
        let now = match std::fs::metadata(&self.file.path) {
            Ok(m) => FileSeal::from_metadata(self.file.path.clone(), &m, None),
            Err(e) => {
                return Err(Refusal(format!(
                    "disk {} ({}, mounted {mounted}): {e}",
                    self.guest,
                    self.file.path.display()
                )));
            }
        };
        match self.file.moved(&now) {
            Some(what) => Err(Refusal(format!(
                "disk {} ({}, mounted {mounted} in the candidate) changed since capture: {what}",
                self.guest,
                self.file.path.display()
            ))),
            None => Ok(()),
        }
    }
}

impl Seals {
    /// Checks every seal against the files as they are now, and the QEMU
    /// that would restore (`host`) against the one that saved: the same
    /// release, or a later one that still provides the versioned machine
    /// type the stream was saved with (`machine`,
    /// [`QemuHost::may_load`]). Reads no disk: a `stat` per file, and a
    /// hash of a boot file only when its `stat` moved.
    pub fn check(&self, host: &QemuHost, machine: Option<&str>) -> std::result::Result<(), Refusal> {
        host.may_load(&self.qemu_version, machine).map_err(Refusal)?;
        for b in &self.boot {
            let now = match std::fs::metadata(&b.path) {
                Ok(m) => FileSeal::from_metadata(b.path.clone(), &m, None),
                Err(e) => return Err(Refusal(format!("boot file {}: {e}", b.path.display()))),
            };
            if let Some(what) = b.moved(&now) {
                let same = b.blake3.as_deref().is_some_and(|h| hash_file(&b.path).is_ok_and(|n| n == h));
                if !same {
                    return Err(Refusal(format!("boot file {} changed since capture: {what}", b.path.display())));
                }
            }
        }
        self.disks.iter().try_for_each(DiskSeal::check)
    }

    /// The JSON kept in the candidate's metadata.
    pub fn to_json(&self) -> String {
        let disks: Vec<Value> = self
            .disks
            .iter()
            .map(|d| json!({"drive": d.drive, "guest": d.guest, "mounts": d.mounts, "file": d.file.to_json()}))
            .collect();
        let boot: Vec<Value> = self.boot.iter().map(FileSeal::to_json).collect();
        json!({"boot": boot, "disks": disks, "qemu_version": self.qemu_version}).to_string()
    }

    /// Reads the JSON [`Seals::to_json`] wrote.
    ///
    /// # Errors
    /// It is not that JSON.
    pub fn from_json(s: &str) -> Result<Seals> {
        let bad = || Error::Inconsistent(format!("{SEALS_KEY} is not a list of seals"));
        let v: Value = serde_json::from_str(s).map_err(|_| bad())?;
        let list = |k: &str| v.get(k).and_then(Value::as_array).ok_or_else(bad);
        let boot = list("boot")?.iter().map(FileSeal::from_json).collect::<Option<Vec<_>>>().ok_or_else(bad)?;
        let disks = list("disks")?
            .iter()
            .map(|d| {
                Some(DiskSeal {
                    drive: d.get("drive")?.as_str()?.to_owned(),
                    guest: d.get("guest")?.as_str()?.to_owned(),
                    mounts: d
                        .get("mounts")?
                        .as_array()?
                        .iter()
                        .map(|m| m.as_str().map(str::to_owned))
                        .collect::<Option<_>>()?,
                    file: FileSeal::from_json(d.get("file")?)?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let qemu_version = v.get("qemu_version").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(Seals { boot, disks, qemu_version })
    }
}

/// Waits until a file written now would get a change time after `t`
/// (file times come from a coarse clock: a write within the same tick as
/// the seal would leave the ctime where it was).
pub fn wait_past(t: i128) {
    let dir = std::env::temp_dir();
    for _ in 0..1000 {
        let probe = tempfile::tempfile_in(&dir);
        let now = probe.and_then(|f| f.metadata()).map(|m| ns(m.ctime(), m.ctime_nsec()));
        match now {
            Ok(now) if now > t => return,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                return;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn host() -> QemuHost {
        QemuHost { version: "7.2.0".into(), machines: Vec::new() }
    }

    fn disk_seals(path: &Path) -> Seals {
        Seals {
            boot: Vec::new(),
            disks: vec![DiskSeal {
                drive: "root".into(),
                guest: "vda".into(),
                mounts: vec!["/ ro".into()],
                file: FileSeal::of(path, false).unwrap(),
            }],
            qemu_version: "7.2.0".into(),
        }
    }

    #[test]
    fn any_write_to_a_sealed_disk_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.raw");
        std::fs::write(&disk, vec![0u8; 8192]).unwrap();
        let seals = disk_seals(&disk);
        assert_eq!(seals.check(&host(), None), Ok(()));
        assert_eq!(Seals::from_json(&seals.to_json()).unwrap(), seals);
        wait_past(seals.disks[0].file.ctime_ns);
        // The same size, one byte changed in place: still seen.
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        let e = seals.check(&host(), None).unwrap_err().to_string();
        assert!(
            e.starts_with("disk vda (") && e.contains("mounted / ro in the candidate) changed since capture"),
            "{e}"
        );
        // A copy with the same bytes put in its place is another file.
        let seals = disk_seals(&disk);
        std::fs::copy(&disk, dir.path().join("copy")).unwrap();
        std::fs::rename(dir.path().join("copy"), &disk).unwrap();
        assert!(seals.check(&host(), None).unwrap_err().0.contains("replaced by another file"));
        assert!(
            seals
                .check(&QemuHost { version: "8.2.0".into(), machines: Vec::new() }, None)
                .unwrap_err()
                .0
                .contains("QEMU 7.2.0")
        );
    }

    #[test]
    fn a_boot_file_touched_but_unchanged_passes() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"kernel v1").unwrap();
        let seals = Seals { boot: vec![FileSeal::of(&kernel, true).unwrap()], ..Default::default() };
        wait_past(seals.boot[0].ctime_ns);
        std::fs::write(&kernel, b"kernel v1").unwrap();
        assert_eq!(seals.check(&host(), None), Ok(()));
        std::fs::write(&kernel, b"kernel v2").unwrap();
        assert!(seals.check(&host(), None).unwrap_err().0.starts_with(&format!("boot file {}", kernel.display())));
        std::fs::remove_file(&kernel).unwrap();
        assert!(seals.check(&host(), None).is_err());
    }

    #[test]
    fn hostile_seal_json_is_an_error() {
        for s in ["", "[]", "{\"boot\":[{}],\"disks\":[]}", "{\"boot\":[],\"disks\":[{\"drive\":1}]}"] {
            assert!(Seals::from_json(s).is_err(), "{s}");
        }
    }
}
