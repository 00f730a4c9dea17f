//! The guest's service as a client sees it: HTTP on the guest's port 8080,
//! forwarded by QEMU's user network to a port on the host's loopback.
//!
//! Readiness is the service's own answer to a client outside the guest,
//! the same for a cold boot and a recovery: `GET /index.html` returns
//! `200` with the body `ok` (the guest writes that page last, once its
//! daemons are up).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The guest's network backend id in the recorded command line.
pub const NETDEV: &str = "pbrnet";

/// The port the guest's service listens on.
pub const GUEST_PORT: u16 = 8080;

/// The guest's network: a virtio NIC on QEMU's user network (no host
/// port yet: [`forward`] adds one per run).
pub fn nic_args() -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id={NETDEV}"),
        "-device".into(),
        format!("virtio-net-pci,netdev={NETDEV},mac=52:54:00:12:34:56,romfile="),
    ]
}

/// A free port on the host's loopback.
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::io("cannot bind a local port", e))?;
    Ok(l.local_addr().map_err(|e| Error::io("local port", e))?.port())
}

/// Forwards host port `port` to the guest's service in `args` (the
/// `-netdev user,id=pbrnet` of [`nic_args`]).
///
/// # Errors
/// `args` have no such network (a machine recorded without it), so the
/// service could not be reached.
pub fn forward(args: &mut [String], port: u16) -> Result<()> {
    let own = format!("user,id={NETDEV}");
    let net = args.iter_mut().find(|a| **a == own).ok_or_else(|| {
        Error::Usage(format!(
            "the machine has no `-netdev {own}` to reach the guest's service on (recorded by an older pbr-img capture?)"
        ))
    })?;
    net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}"));
    Ok(())
}

/// One request in flight.
struct Attempt {
    stream: TcpStream,
    started: Instant,
    reply: Vec<u8>,
}

/// How often a new request starts while earlier ones are unanswered: a
/// request sent before the guest listens may sit in QEMU's user network
/// for a TCP retransmission timeout, so requests overlap.
const EVERY: Duration = Duration::from_millis(10);
/// At most this many requests are unanswered at once: every request is a
/// connection QEMU's user network keeps (and an ARP request to a guest
/// whose address it does not know yet), and a flood of them slows a
/// booting guest down.
const IN_FLIGHT: usize = 4;
/// How long an unanswered request is kept.
const PATIENCE: Duration = Duration::from_millis(500);

/// Requests `GET /index.html` on the host's `port` until the guest's
/// service answers `200` with the body `ok`; returns the status line.
/// Gives up when `stop` is set (the guest reported a failure).
///
/// # Errors
/// No such answer within `timeout`, or `stop` was set.
pub fn wait_ready(port: u16, timeout: Duration, stop: &AtomicBool) -> Result<String> {
    let t = Instant::now();
    let mut inflight: Vec<Attempt> = Vec::new();
    let mut last_answer = String::from("no answer");
    while t.elapsed() < timeout && !stop.load(Ordering::Relaxed) {
        if inflight.len() < IN_FLIGHT
            && inflight.last().is_none_or(|a| a.started.elapsed() >= EVERY)
            && let Some(a) = start(port)
        {
            inflight.push(a);
        }
        let mut i = 0;
        while i < inflight.len() {
            match poll(&mut inflight[i]) {
                Poll::Pending if inflight[i].started.elapsed() < PATIENCE => i += 1,
                Poll::Pending => drop(inflight.swap_remove(i)),
                Poll::Done(reply) => match ready(&reply) {
                    Some(status) => return Ok(status),
                    None => {
                        if !reply.is_empty() {
                            last_answer = String::from_utf8_lossy(reply.split(|&b| b == b'\r').next().unwrap_or(&[]))
                                .into_owned();
                        }
                        drop(inflight.swap_remove(i));
                    }
                },
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(Error::Guest(format!(
        "the guest's service on port {port} did not answer `ok` within {:.1} s (last: {last_answer})",
        t.elapsed().as_secs_f64()
    )))
}

/// Connects and sends the request (QEMU's user network accepts at once and
/// holds the bytes until the guest answers).
fn start(port: u16) -> Option<Attempt> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    stream.set_nonblocking(true).ok()?;
    Some(Attempt { stream, started: Instant::now(), reply: Vec::new() })
}

enum Poll {
    Pending,
    Done(Vec<u8>),
}

/// Reads what has arrived; the reply is whole at end of stream.
fn poll(a: &mut Attempt) -> Poll {
    let mut buf = [0u8; 4096];
    loop {
        match a.stream.read(&mut buf) {
            Ok(0) => return Poll::Done(std::mem::take(&mut a.reply)),
            Ok(n) if a.reply.len() + n <= 1 << 16 => a.reply.extend_from_slice(&buf[..n]),
            Ok(_) => return Poll::Done(Vec::new()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Poll::Done(Vec::new()),
        }
    }
}

/// The status line of a `200` reply whose body is `ok`.
fn ready(reply: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(reply).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    (status.split_whitespace().nth(1) == Some("200") && body.trim() == "ok").then(|| status.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_ready_only_with_200_and_ok() {
        assert_eq!(ready(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").as_deref(), Some("HTTP/1.1 200 OK"));
        assert_eq!(ready(b"HTTP/1.1 404 Not Found\r\n\r\nok\n"), None);
        assert_eq!(ready(b"HTTP/1.1 200 OK\r\n\r\nnot yet\n"), None);
        assert_eq!(ready(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"), None);
        assert_eq!(ready(b""), None);
    }

    #[test]
    fn forward_adds_a_host_port_to_the_own_network_only() {
        let mut args = nic_args();
        forward(&mut args, 4321).unwrap();
        assert_eq!(args[1], "user,id=pbrnet,hostfwd=tcp:127.0.0.1:4321-:8080");
        let mut other = vec!["-netdev".to_owned(), "user,id=other".to_owned()];
        let e = forward(&mut other, 4321).unwrap_err().to_string();
        assert!(e.contains("no `-netdev user,id=pbrnet`"), "{e}");
        assert_eq!(other[1], "user,id=other");
    }

    /// A server that refuses, then answers 404, then answers `ok`, as a
    /// booting guest does: the wait ends at the `ok`.
    #[test]
    fn waits_through_refusals_and_not_found() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut req = [0u8; 64];
                let _ = s.read(&mut req);
                let reply: &[u8] = match i {
                    0 => b"",
                    1..=3 => b"HTTP/1.0 404 Not Found\r\n\r\n",
                    _ => b"HTTP/1.0 200 OK\r\n\r\nok\n",
                };
                s.write_all(reply).unwrap();
                if i >= 4 {
                    return i;
                }
            }
            0
        });
        assert_eq!(wait_ready(port, Duration::from_secs(10), &AtomicBool::new(false)).unwrap(), "HTTP/1.0 200 OK");
        assert_eq!(server.join().unwrap(), 4);
    }

    #[test]
    fn gives_up_with_the_last_answer() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut req = [0u8; 64];
                let _ = s.read(&mut req);
                let _ = s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n");
            }
        });
        let e = wait_ready(port, Duration::from_millis(300), &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(e.contains("503 Service Unavailable"), "{e}");
    }
}
