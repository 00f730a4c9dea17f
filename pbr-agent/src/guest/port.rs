//! The virtio-serial port to the host, found by its name in sysfs.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pbr_agent::PORT_NAME;
use pbr_agent::frame::{FrameReader, write_frame};
use pbr_agent::message::Message;

/// The open port.
pub struct Port {
    reader: FrameReader<File>,
    writer: File,
}

impl Port {
    /// Opens the port named [`PORT_NAME`], creating its device node when
    /// no udev did (an early initramfs). `None` when the guest has no such
    /// port.
    pub fn open() -> Result<Option<Port>, String> {
        let Some(dev) = find()? else { return Ok(None) };
        let file = File::options().read(true).write(true).open(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
        let writer = file.try_clone().map_err(|e| format!("{}: {e}", dev.display()))?;
        Ok(Some(Port { reader: FrameReader::new(file, false), writer }))
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message) -> Result<(), String> {
        let f = m.encode();
        write_frame(&mut self.writer, f.kind, &f.payload).map_err(|e| format!("cannot send {:?}: {e}", f.kind))?;
        self.writer.flush().map_err(|e| format!("cannot send {:?}: {e}", f.kind))
    }

    /// Waits up to `timeout` (guest time, which stands still while the
    /// machine is saved) for a message from the host.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        let deadline = Instant::now() + timeout;
        while !self.reader.has_buffered() && !self.readable(deadline)? {
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
        let frame = self.reader.read().map_err(|e| e.to_string())?;
        Message::decode(&frame).map(Some).map_err(|e| e.to_string())
    }

    /// After a bad frame: the next read skips to the host's next frame.
    pub fn resync(&mut self) {
        self.reader.resync();
    }

    /// Waits until the port has bytes to read, or up to `deadline`; false
    /// when it has none yet.
    fn readable(&self, deadline: Instant) -> Result<bool, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd { fd: self.reader.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::Interrupted => Ok(false),
                _ => Err(format!("poll: {e}")),
            };
        }
        if pfd.revents & libc::POLLIN != 0 {
            return Ok(true);
        }
        if n > 0 {
            // POLLHUP: no host on the other end yet; look again soon.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(false)
    }
}

/// The device node of the port named [`PORT_NAME`].
fn find() -> Result<Option<PathBuf>, String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") else { return Ok(None) };
    for entry in dir.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() != PORT_NAME {
            continue;
        }
        let node = Path::new("/dev").join(entry.file_name());
        if !node.exists() {
            make_node(&node, &entry.path().join("dev"))?;
        }
        return Ok(Some(node));
    }
    Ok(None)
}

/// Creates the character device `node` from sysfs's `MAJOR:MINOR` in `dev`.
fn make_node(node: &Path, dev: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("{}: not MAJOR:MINOR", dev.display()))?;
    let path = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) };
    if rc != 0 {
        return Err(format!("mknod {}: {}", node.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}
