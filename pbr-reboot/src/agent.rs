//! The host's end of the guest agent's port (`spec/agent.md`): QEMU's
//! chardev socket, what the host adds to a command line for it, and the
//! messages, read as hostile input.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pbr_agent::frame::{FrameReader, write_frame};
use pbr_agent::message::{MIN_ENTROPY, Message, Resume};

use crate::error::{Error, Result};

/// The QEMU arguments of the agent's port, its socket in `dir`.
pub fn port_args(dir: &Path) -> (Vec<String>, PathBuf) {
    let sock = dir.join("agent.sock");
    let path = sock.display().to_string().replace(',', ",,");
    let args = vec![
        "-device".into(),
        "virtio-serial-pci,id=pbr-vser".into(),
        "-chardev".into(),
        format!("socket,id=pbr-agent,path={path},server=on,wait=off"),
        "-device".into(),
        format!("virtserialport,bus=pbr-vser.0,chardev=pbr-agent,name={}", pbr_agent::PORT_NAME),
    ];
    (args, sock)
}

/// A `-device vmgenid` with a new random guid: a restored kernel that has
/// the driver sees the VM generation change and reseeds itself.
pub fn vmgenid_args() -> Result<Vec<String>> {
    let b = random_bytes(16)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let guid = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    Ok(vec!["-device".into(), format!("vmgenid,id=pbr-vmgenid,guid={guid}")])
}

/// `n` bytes from the host's random generator.
fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("cannot read /dev/urandom", e))?;
    Ok(b)
}

/// How long a write to the port may wait for the guest to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The connected port.
pub struct AgentPort {
    reader: FrameReader<UnixStream>,
    writer: UnixStream,
}

impl AgentPort {
    /// Connects to the socket QEMU serves (waiting up to 20 s for it).
    ///
    /// # Errors
    /// It never appeared.
    pub fn connect(sock: &Path) -> Result<AgentPort> {
        let s = crate::guest::connect_socket(sock)
            .map_err(|e| Error::io(format!("cannot reach the agent's port {}", sock.display()), e))?;
        let writer = s.try_clone().map_err(|e| Error::io("agent port", e))?;
        // A guest that stops reading its port cannot hold the host's writes.
        writer.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(|e| Error::io("agent port", e))?;
        Ok(AgentPort { reader: FrameReader::new(s, true), writer })
    }

    /// After a bad frame or message: the next read skips to the start of
    /// the guest's next frame.
    pub fn resync(&mut self) {
        self.reader.resync();
    }

    /// The next message, waiting up to `timeout`.
    ///
    /// # Errors
    /// Nothing came in time, the port closed, or the guest sent a bad
    /// frame or message (named, with its offset in the stream).
    pub fn next(&mut self, timeout: Duration) -> Result<Message> {
        self.reader.get_ref().set_read_timeout(Some(timeout)).map_err(|e| Error::io("agent port", e))?;
        self.reader.set_deadline(Some(std::time::Instant::now() + timeout));
        let at = self.reader.offset();
        let frame = self.reader.read().map_err(|e| match e {
            pbr_agent::FrameError::Io(e)
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Error::AgentSilent(timeout)
            }
            e => Error::AgentFrame(e),
        })?;
        Message::decode(&frame).map_err(|source| Error::AgentMessage { at, source })
    }

    /// Tells the guest to carry on.
    ///
    /// # Errors
    /// The port failed.
    pub fn carry_on(&mut self) -> Result<()> {
        self.send(&Message::Continue)
    }

    /// Tells a restored guest the host's time and gives it fresh entropy.
    ///
    /// # Errors
    /// The port failed, or no entropy.
    pub fn resume(&mut self) -> Result<()> {
        let entropy = random_bytes(MIN_ENTROPY * 2)?;
        let realtime_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        self.send(&Message::Resume(Resume { realtime_ns: u64::try_from(realtime_ns).unwrap_or(u64::MAX), entropy }))
    }

    /// Sends one message.
    ///
    /// # Errors
    /// The port failed (a guest that stops reading it fails the write
    /// after 5 s).
    pub fn send(&mut self, m: &Message) -> Result<()> {
        let f = m.encode();
        write_frame(&mut self.writer, f.kind, &f.payload).map_err(|e| Error::io("cannot write to the agent's port", e))
    }
}
