//! One QEMU process with its QMP: the only place QEMU is started. The
//! adapter, a capture's machine and a timed guest all run QEMU this way.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::qmp::Qmp;
use super::stderr::{self, QemuStderr};
use crate::error::{Error, Result};

/// Where QEMU's standard streams go.
pub struct Io {
    /// Its standard input (a console under `-serial stdio` reads it).
    pub stdin: Stdio,
    /// Its standard output (the guest's console under `-serial stdio`).
    pub stdout: Stdio,
    /// Hold its standard error until [`QemuProcess::pass_on_stderr`], so
    /// that a failure before then reports QEMU's own message; else it goes
    /// to the caller's standard error as it comes.
    pub hold_stderr: bool,
}

impl Io {
    /// No input, output to the caller's, standard error as it comes.
    pub fn quiet() -> Io {
        Io { stdin: Stdio::null(), stdout: Stdio::inherit(), hold_stderr: false }
    }
}

/// A running QEMU and its QMP connection. Dropping it kills QEMU; an
/// interrupt of the tool stops it too.
pub struct QemuProcess {
    qemu: String,
    child: Child,
    qmp: Qmp,
    stderr: Option<QemuStderr>,
    _interrupt: pbr_tools::cleanup::Registration,
}

impl QemuProcess {
    /// Starts `qemu` with `args` and a QMP server on the unix socket
    /// `qmp_sock`, and connects to it.
    ///
    /// # Errors
    /// QEMU did not start, exited first (its own message when `io` holds
    /// its standard error), or its QMP never came up.
    pub fn launch(qemu: &str, args: &[String], qmp_sock: &Path, io: Io) -> Result<QemuProcess> {
        let mut child = Command::new(qemu)
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
            .stdin(io.stdin)
            .stdout(io.stdout)
            .stderr(if io.hold_stderr { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .map_err(|e| Error::io(format!("cannot start {qemu}"), e))?;
        let interrupt = pbr_tools::cleanup::stop_on_interrupt(child.id());
        let stderr = child.stderr.take().map(QemuStderr::start);
        let mut gone = || match child.try_wait() {
            Ok(Some(status)) => Some(exited(qemu, status, "before it was ready", stderr.as_ref())),
            _ => None,
        };
        let qmp = Qmp::connect_watching(qmp_sock, &mut gone);
        let qmp = match qmp {
            Ok(qmp) => qmp,
            Err(e) => {
                let e = failure(qemu, &mut child, stderr.as_ref(), e, "before it was ready");
                // One that still runs (blocked before its QMP came up) is
                // not left behind.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(QemuProcess { qemu: qemu.to_owned(), child, qmp, stderr, _interrupt: interrupt })
    }

    /// Its QMP connection.
    pub fn qmp(&mut self) -> &mut Qmp {
        &mut self.qmp
    }

    /// Runs a QMP command; when it fails because QEMU exited, the error
    /// says so (with QEMU's message), happening `when`.
    ///
    /// # Errors
    /// QMP failed, or QEMU exited.
    pub fn cmd(&mut self, execute: &str, arguments: Value, when: &str) -> Result<Value> {
        self.qmp.cmd(execute, arguments).map_err(|e| self.failure(e, when))
    }

    /// The QEMU process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// From now on, QEMU's held standard error goes to the caller's as it
    /// comes (what it says is the running guest's).
    pub fn pass_on_stderr(&self) {
        if let Some(tail) = &self.stderr {
            tail.pass_on();
        }
    }

    /// The error to report for `e`, which happened `when`: if QEMU has
    /// exited (it is given a second), that it did, with its own message
    /// and the likely cause; else `e`.
    pub fn failure(&mut self, e: Error, when: &str) -> Error {
        failure(&self.qemu, &mut self.child, self.stderr.as_ref(), e, when)
    }

    /// Quits QEMU over QMP and waits for it (killing it after 10 s).
    pub fn quit(mut self) {
        let _ = self.qmp.cmd("quit", json!({}));
        wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for QemuProcess {
    /// A QEMU left behind by an error is stopped, not orphaned.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// [`QemuProcess::failure`] of `child` (the process `qemu`).
fn failure(qemu: &str, child: &mut Child, held: Option<&QemuStderr>, e: Error, when: &str) -> Error {
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exited(qemu, status, when, held),
            Ok(None) if t.elapsed() < Duration::from_secs(1) => std::thread::sleep(Duration::from_millis(10)),
            _ => return e,
        }
    }
}

/// QEMU exited with `status` `when`: with its own message when its
/// standard error was held, else pointing at the message it printed.
fn exited(qemu: &str, status: ExitStatus, when: &str, held: Option<&QemuStderr>) -> Error {
    match held {
        Some(tail) if !tail.passed_on() => stderr::exited(qemu, status, when, &tail.lines(Duration::from_secs(1))),
        _ => Error::QemuExited {
            qemu: qemu.to_owned(),
            status,
            when: when.to_owned(),
            said: "see its message above".into(),
        },
    }
}

/// Waits up to `limit` for `child` to exit, then kills it.
pub fn wait_or_kill(child: &mut Child, limit: Duration) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "QEMU" that complains on its standard error and exits.
    fn failing(dir: &Path, hold_stderr: bool) -> Error {
        let args = ["-c".to_owned(), "echo 'unsupported machine type' >&2; exit 1".to_owned(), "sh".to_owned()];
        let io = Io { stdin: Stdio::null(), stdout: Stdio::null(), hold_stderr };
        match QemuProcess::launch("sh", &args, &dir.join("qmp.sock"), io) {
            Ok(_) => panic!("a process that exits has no QMP"),
            Err(e) => e,
        }
    }

    /// A QEMU that exits before its QMP comes up is reported at once, with
    /// its own message when its standard error was held.
    #[test]
    fn an_early_exit_names_qemus_message() {
        let dir = tempfile::tempdir().unwrap();
        let e = failing(dir.path(), true);
        assert!(matches!(e, Error::QemuExited { .. }), "{e:?}");
        let line = e.to_string();
        assert!(line.contains("exited (exit status: 1) before it was ready"), "{line}");
        assert!(line.contains("QEMU said: unsupported machine type"), "{line}");
        assert!(line.contains("likely cause"), "{line}");
        let e = failing(dir.path(), false).to_string();
        assert!(e.ends_with("before it was ready: see its message above"), "{e}");
    }

    #[test]
    fn a_binary_that_does_not_start_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = QemuProcess::launch("/nonexistent/qemu", &[], &dir.path().join("qmp.sock"), Io::quiet());
        let e = e.err().expect("no such binary");
        assert!(e.to_string().starts_with("cannot start /nonexistent/qemu"), "{e}");
    }
}
