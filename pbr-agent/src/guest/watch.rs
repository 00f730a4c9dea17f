//! The files the boot reads: a fanotify watch on the root file system from
//! early boot, each path opened kept once in a file under `/run` that
//! each point sends to the host.

use std::collections::HashSet;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

/// Where the watcher keeps the paths (NUL-separated).
pub const LIST: &str = "/run/pbr-agent/files";

/// `struct fanotify_event_metadata`'s size and version.
const META_LEN: usize = 24;
const META_VERSION: u8 = 3;

/// Watches opens on the file system of `/` until killed, appending each
/// new path to [`LIST`].
pub fn watch() -> Result<String, String> {
    // SAFETY: plain syscall with flag arguments; the result is checked.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!("fanotify_init: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor this function owns from here on.
    let fan = unsafe { OwnedFd::from_raw_fd(fd) };
    let root = c"/";
    // SAFETY: `fan` is a fanotify descriptor and `root` a NUL-terminated path.
    let rc = unsafe {
        libc::fanotify_mark(
            std::os::fd::AsRawFd::as_raw_fd(&fan),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_OPEN | libc::FAN_OPEN_EXEC,
            libc::AT_FDCWD,
            root.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!("fanotify_mark /: {}", std::io::Error::last_os_error()));
    }
    std::fs::create_dir_all("/run/pbr-agent").map_err(|e| format!("/run/pbr-agent: {e}"))?;
    let mut out =
        std::fs::OpenOptions::new().create(true).append(true).open(LIST).map_err(|e| format!("{LIST}: {e}"))?;
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: `buf` is writable for its length for the whole call.
        let n = unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&fan), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("fanotify read: {e}"));
        }
        let mut batch = Vec::new();
        for fd in events(&buf[..n as usize]) {
            // SAFETY: the kernel opened this descriptor for the listener,
            // which must close it: it is owned here.
            let file = unsafe { OwnedFd::from_raw_fd(fd) };
            let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
            if let Ok(path) = std::fs::read_link(&link) {
                let path = path.to_string_lossy().into_owned();
                if seen.insert(path.clone()) {
                    batch.extend_from_slice(path.as_bytes());
                    batch.push(0);
                }
            }
        }
        if !batch.is_empty() {
            out.write_all(&batch).map_err(|e| format!("{LIST}: {e}"))?;
        }
    }
}

/// The file descriptors of the events in `buf` (a queue overflow has none).
fn events(buf: &[u8]) -> Vec<i32> {
    let mut fds = Vec::new();
    let mut at = 0;
    while let Some(meta) = buf.get(at..at + META_LEN) {
        let event_len = u32::from_ne_bytes([meta[0], meta[1], meta[2], meta[3]]) as usize;
        let fd = i32::from_ne_bytes([meta[16], meta[17], meta[18], meta[19]]);
        if meta[4] != META_VERSION || event_len < META_LEN {
            break;
        }
        if fd >= 0 {
            fds.push(fd);
        }
        at += event_len;
    }
    fds
}

/// The paths [`watch`] has kept so far, whole paths only, at most `max`
/// bytes of them.
pub fn list(max: usize) -> Vec<String> {
    let Ok(raw) = std::fs::read(LIST) else { return Vec::new() };
    let mut out = Vec::new();
    let mut used = 0;
    for p in raw.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        used += p.len() + 1;
        if used > max {
            break;
        }
        if let Ok(s) = std::str::from_utf8(p) {
            out.push(s.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_records() {
        let mut buf = Vec::new();
        for fd in [7i32, -1, 9] {
            let mut m = [0u8; META_LEN];
            m[..4].copy_from_slice(&(META_LEN as u32).to_ne_bytes());
            m[4] = META_VERSION;
            m[16..20].copy_from_slice(&fd.to_ne_bytes());
            buf.extend_from_slice(&m);
        }
        assert_eq!(events(&buf), [7, 9]);
        buf[META_LEN + 4] = 2;
        assert_eq!(events(&buf), [7]);
        assert!(events(&buf[..10]).is_empty());
    }
}
