//! The block devices the guest has mounted, from `/proc/self/mountinfo`,
//! with what the host needs to tell which of its drives each one is.

use std::path::{Path, PathBuf};

use pbr_agent::message::{Disk, Mount};

/// Every mount of a block device.
pub fn block_mounts() -> Result<Vec<Mount>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(m) = parse(line) else { continue };
        let sys = PathBuf::from(format!("/sys/dev/block/{}", m.devno));
        let Ok(dev) = std::fs::canonicalize(&sys) else { continue };
        let disk_dir = if dev.join("partition").exists() { dev.parent().unwrap_or(&dev).to_path_buf() } else { dev };
        let name = disk_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        out.push(Mount {
            source: m.source,
            target: m.target,
            fstype: m.fstype,
            read_only: m.read_only,
            disk: Disk { serial: serial(&disk_dir), pci: pci_address(&disk_dir), name },
        });
    }
    Ok(out)
}

/// One line of mountinfo, the fields the agent reports.
struct Line {
    devno: String,
    target: String,
    fstype: String,
    source: String,
    read_only: bool,
}

/// Parses `id parent maj:min root target options [optional...] - fstype
/// source superoptions`. Read-only means the mount and its super block.
fn parse(line: &str) -> Option<Line> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let ro = |opts: &str| opts.split(',').any(|o| o == "ro");
    Some(Line {
        devno: l.get(2)?.to_string(),
        target: unescape(l.get(4)?),
        fstype: r.first()?.to_string(),
        source: unescape(r.get(1)?),
        read_only: ro(l.get(5)?) && ro(r.get(2)?),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The disk's serial (virtio-blk exposes it as `serial`).
fn serial(disk: &Path) -> Option<String> {
    [disk.join("serial"), disk.join("device/serial")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The last PCI address (`0000:00:03.0`) on the disk's sysfs path: its
/// controller.
fn pci_address(disk: &Path) -> Option<String> {
    disk.components().filter_map(|c| c.as_os_str().to_str()).rfind(|c| is_pci(c)).map(str::to_owned)
}

fn is_pci(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && hex(11..12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let m = parse("25 1 254:0 / / ro,relatime shared:1 - ext4 /dev/vda ro").unwrap();
        assert_eq!((m.devno.as_str(), m.target.as_str(), m.fstype.as_str(), m.read_only), ("254:0", "/", "ext4", true));
        let m = parse("30 25 254:16 / /srv/my\\040data rw - ext4 /dev/vdb rw,errors=remount-ro").unwrap();
        assert_eq!((m.target.as_str(), m.read_only), ("/srv/my data", false));
        // A read-only bind of a writable file system is writable.
        assert!(!parse("31 25 254:0 / /x ro - ext4 /dev/vda rw").unwrap().read_only);
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn pci_addresses() {
        let p = Path::new("/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0/virtio2/block/vdb");
        assert_eq!(pci_address(p).as_deref(), Some("0000:01:00.0"));
        assert_eq!(pci_address(Path::new("/sys/devices/virtual/block/loop0")), None);
    }
}
