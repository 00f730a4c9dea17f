//! The supervisor's control socket: `pbr-img run` listens on
//! `control.sock` in its candidates' directory, and `pbr-img update`
//! asks it there for a kernel update. One JSON object per line: the
//! request (`{"update": {...}}`), then the supervisor's events as they
//! happen, the last one `updated` (or `{"error": "..."}`).
//!
//! The socket is the host's own (mode 0600, root's): its requests are
//! checked as any command line is, never trusted with more.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::update::Update;

/// The socket's name in the candidates' directory.
pub const SOCKET: &str = "control.sock";

/// The longest request line.
const MAX_REQUEST: u64 = 64 << 10;

/// How long a client may take to send its request (the watch waits for
/// it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The listening socket; removed when dropped.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

/// A client's request, and its connection for the answers.
#[derive(Debug)]
pub struct Request {
    /// The update asked for.
    pub update: Update,
    conn: UnixStream,
}

impl Control {
    /// Whether a supervisor answers on [`SOCKET`] in `dir`.
    fn answering(dir: &Path) -> bool {
        UnixStream::connect(dir.join(SOCKET)).is_ok()
    }

    /// Listens on [`SOCKET`] in `dir`. A socket left by a supervisor that
    /// is gone is replaced.
    ///
    /// # Errors
    /// [`Error::Usage`] when another supervisor answers there; an I/O
    /// error when the socket cannot be made.
    pub fn bind(dir: &Path) -> Result<Control> {
        let path = dir.join(SOCKET);
        if Control::answering(dir) {
            return Err(Error::Usage(format!(
                "another pbr-img run keeps the VM of {}: {} answers",
                dir.display(),
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| pbr_tools::Error::io(format!("cannot listen on {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| pbr_tools::Error::io(format!("cannot restrict {}", path.display()), e))?;
        listener.set_nonblocking(true).map_err(|e| pbr_tools::Error::io("control socket", e))?;
        Ok(Control { listener, path })
    }

    /// The next request, if a client is waiting. A client whose request
    /// does not read is answered with its error and dropped.
    pub fn accept(&self) -> Option<Request> {
        let (conn, _) = self.listener.accept().ok()?;
        let mut conn = conn;
        match read_request(&mut conn) {
            Ok(update) => Some(Request { update, conn }),
            Err(e) => {
                let _ = writeln!(conn, "{}", json!({"error": e.to_string()}));
                None
            }
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request line from a client, all of it within
/// [`REQUEST_TIMEOUT`]: a client that trickles its bytes cannot hold the
/// supervisor.
fn read_request(conn: &mut UnixStream) -> Result<Update> {
    let io = |e| pbr_tools::Error::io("control socket", e);
    conn.set_nonblocking(false).map_err(io)?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || line.len() as u64 > MAX_REQUEST {
            return Err(Error::Usage(format!(
                "no request line within {} s and {MAX_REQUEST} bytes",
                REQUEST_TIMEOUT.as_secs()
            )));
        }
        conn.set_read_timeout(Some(left)).map_err(io)?;
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e).into()),
        }
    }
    let v: Value = serde_json::from_slice(line.split(|&b| b == b'\n').next().unwrap_or_default())
        .map_err(|e| Error::Usage(format!("the request is not JSON: {e}")))?;
    match v.get("update") {
        Some(u) => Update::from_json(u),
        None => Err(Error::Usage("the request asks for nothing pbr-img run does (an update)".into())),
    }
}

impl Request {
    /// Tells the client `v` (one line). A client that left is not an
    /// error: the update goes on.
    pub fn tell(&mut self, v: &Value) {
        let _ = writeln!(self.conn, "{v}");
    }

    /// Tells the client the update failed, and why.
    pub fn fail(mut self, e: &Error) {
        self.tell(&json!({"error": e.to_string()}));
    }
}

/// Asks the supervisor keeping the VM of `dir` for `update`; `on_line`
/// hears each of its events, and the last (`updated`) is returned.
///
/// # Errors
/// No supervisor answers, it refused the update (its reason), or it
/// ended the connection before the update did.
pub fn request_update(dir: &Path, update: &Update, on_line: &mut dyn FnMut(&Value)) -> Result<Value> {
    let path = dir.join(SOCKET);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        pbr_tools::Error::io(format!("no pbr-img run keeps a VM in {} ({})", dir.display(), path.display()), e)
    })?;
    writeln!(conn, "{}", json!({"update": update.to_json()})).map_err(|e| pbr_tools::Error::io("control socket", e))?;
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| pbr_tools::Error::io("control socket", e))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| Error::Guest(format!("the supervisor sent a line that is not JSON: {e}")))?;
        // An error with no event is the update's end; an event may carry
        // one (a checkpoint that kept nothing) and the update goes on.
        if let (None, Some(e)) = (v["event"].as_str(), v["error"].as_str()) {
            return Err(Error::Guest(format!("the update failed: {e}")));
        }
        if v["event"] == "updated" {
            return Ok(v);
        }
        on_line(&v);
    }
    Err(Error::Guest("the supervisor ended the connection before the update ended".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_the_supervisor_and_its_answers_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::bind(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SOCKET)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Control::bind(dir.path()).unwrap_err().to_string().contains("another pbr-img run"));
        assert!(control.accept().is_none(), "nobody asked");
        let update = Update {
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
            append: None,
            keep: vec!["memcached.service".into()],
        };
        let sent = update.clone();
        let d = dir.path().to_path_buf();
        let client = std::thread::spawn(move || {
            let mut heard = Vec::new();
            let last = request_update(&d, &sent, &mut |v| heard.push(v["event"].clone())).unwrap();
            (heard, last)
        });
        let mut req = loop {
            if let Some(r) = control.accept() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(req.update, update);
        req.tell(&json!({"event": "checkpointed"}));
        req.tell(&json!({"event": "updated", "kernel_after": "6.1.0-56-cloud-amd64"}));
        let (heard, last) = client.join().unwrap();
        assert_eq!(heard, ["checkpointed"]);
        assert_eq!(last["kernel_after"], "6.1.0-56-cloud-amd64");
    }

    #[test]
    fn bad_requests_are_answered_with_their_error() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::bind(dir.path()).unwrap();
        for (line, want) in [
            ("not json\n", "not JSON"),
            ("{\"reboot\": {}}\n", "asks for nothing"),
            ("{\"update\": {\"kernel\": \"/k\", \"keep\": [\"a b\"]}}\n", "is not a service's unit name"),
        ] {
            let mut c = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
            c.write_all(line.as_bytes()).unwrap();
            assert!(control.accept().is_none(), "{line} is refused");
            let mut answer = String::new();
            BufReader::new(c).read_line(&mut answer).unwrap();
            assert!(answer.contains(want), "{line}: {answer}");
        }
        drop(control);
        assert!(!dir.path().join(SOCKET).exists(), "removed with the supervisor");
        let gone =
            request_update(dir.path(), &Update::from_json(&json!({"kernel": "/k", "keep": []})).unwrap(), &mut |_| {});
        assert!(gone.unwrap_err().to_string().contains("no pbr-img run keeps a VM"));
    }
}
