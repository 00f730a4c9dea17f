//! A minimal QMP client over a unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The most events [`Qmp::take_events`] keeps between two calls.
pub const MAX_EVENTS: usize = 256;

/// How long QEMU may take to create its QMP socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A QMP connection, and the events QEMU sent while it answered commands.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `sock` (waiting up to 20 s for QEMU to create it) and
    /// negotiates capabilities.
    ///
    /// # Errors
    /// The socket never appeared or QMP misbehaved.
    pub fn connect(sock: &Path) -> Result<Qmp> {
        Qmp::connect_watching(sock, &mut || None)
    }

    /// As [`Qmp::connect`], asking `gone` between tries whether QEMU has
    /// exited (then its error is returned at once, not after the wait).
    ///
    /// # Errors
    /// `gone`'s error, the socket never appeared, or QMP misbehaved.
    pub(crate) fn connect_watching(sock: &Path, gone: &mut dyn FnMut() -> Option<Error>) -> Result<Qmp> {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > CONNECT_TIMEOUT => {
                    return Err(Error::io(format!("cannot connect to QMP at {}", sock.display()), e));
                }
                Err(_) => {
                    if let Some(e) = gone() {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| Error::io("QMP", e))?;
        let mut q = Qmp { reader: BufReader::new(s), events: Vec::new() };
        q.read()?;
        q.cmd("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| Error::io("QMP read", e))?;
        if line.is_empty() {
            return Err(Error::QmpProtocol("QEMU closed its QMP socket (did it exit? see its stderr)".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::QmpProtocol(format!("QMP sent {line:?}: {e}")))
    }

    /// Runs `execute` and returns its `return` value.
    ///
    /// # Errors
    /// I/O, or QEMU answered with an error ([`Error::Qmp`]).
    pub fn cmd(&mut self, execute: &str, arguments: Value) -> Result<Value> {
        writeln!(self.reader.get_mut(), "{}", json!({"execute": execute, "arguments": arguments}))
            .map_err(|e| Error::io("QMP write", e))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                // Bounded: a guest cannot make QEMU flood the host's memory.
                if self.events.len() < MAX_EVENTS {
                    self.events.push(v);
                }
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(Error::Qmp { command: execute.to_owned(), message: e.to_string() });
            }
            return Ok(v["return"].clone());
        }
    }

    /// The events QEMU sent since the last call (`GUEST_PANICKED`,
    /// `SHUTDOWN`, ...), oldest first; at most [`MAX_EVENTS`] are kept
    /// between two calls. QMP delivers them in between the answers to
    /// commands, so a caller that waits for one runs a command now and then
    /// (`query-status`).
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Polls `query-migrate` (every millisecond: a QMP round trip costs far
    /// less, and a recovery's downtime counts every wasted one) until
    /// `completed`, and returns that last answer (its `ram` counters).
    ///
    /// # Errors
    /// The migration failed or took longer than `timeout`.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value> {
        let t = Instant::now();
        loop {
            let st = self.cmd("query-migrate", json!({}))?;
            match st["status"].as_str() {
                Some("completed") => return Ok(st),
                Some("failed") | Some("cancelled") => return Err(Error::Migration(st.to_string())),
                _ if t.elapsed() > timeout => return Err(Error::Migration(format!("did not finish: {st}"))),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}
