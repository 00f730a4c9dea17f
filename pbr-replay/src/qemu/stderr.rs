//! QEMU's standard error, read from a pipe by a thread of its own: held
//! back while QEMU starts and loads the image (only the last lines kept),
//! so that a QEMU that exits then is reported in one line with its own
//! message and the likely cause; passed on to ours once the guest runs.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStderr, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Lines kept while held back.
const KEEP_LINES: usize = 32;
/// Longer lines are cut into pieces of this many bytes.
const MAX_LINE: u64 = 1024;

#[derive(Default)]
struct Held {
    lines: VecDeque<String>,
    pass_on: bool,
    ended: bool,
}

/// QEMU's standard error, read by a thread.
pub struct QemuStderr(Arc<Mutex<Held>>);

impl QemuStderr {
    /// Starts reading `pipe`, holding its lines back.
    pub fn start(pipe: ChildStderr) -> QemuStderr {
        let held = Arc::new(Mutex::new(Held::default()));
        let shared = Arc::clone(&held);
        let read = move || {
            let mut r = BufReader::new(pipe);
            loop {
                let mut buf = Vec::new();
                match (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                let mut h = lock(&shared);
                if h.pass_on {
                    let _ = writeln!(std::io::stderr(), "{line}");
                } else {
                    if h.lines.len() == KEEP_LINES {
                        h.lines.pop_front();
                    }
                    h.lines.push_back(line);
                }
            }
            lock(&shared).ended = true;
        };
        if std::thread::Builder::new().name("qemu-stderr".into()).spawn(read).is_err() {
            // No thread: nothing reads the pipe, and nothing will.
            lock(&held).ended = true;
        }
        QemuStderr(held)
    }

    /// From now on QEMU's lines go to our standard error, those held first.
    pub fn pass_on(&self) {
        let mut h = lock(&self.0);
        let mut err = std::io::stderr().lock();
        for line in h.lines.drain(..) {
            let _ = writeln!(err, "{line}");
        }
        h.pass_on = true;
    }

    /// Whether the lines go to our standard error ([`QemuStderr::pass_on`]).
    pub fn passed_on(&self) -> bool {
        lock(&self.0).pass_on
    }

    /// The lines held, once the pipe has ended (QEMU exited: it ends at
    /// once) or `wait` has passed.
    pub fn lines(&self, wait: Duration) -> Vec<String> {
        let t = Instant::now();
        while !lock(&self.0).ended && t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        lock(&self.0).lines.iter().cloned().collect()
    }
}

fn lock(m: &Mutex<Held>) -> MutexGuard<'_, Held> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The error for `qemu`, which exited with `status` `when` (`before it was
/// ready`, `while loading the image`), from the `lines` it wrote on its
/// standard error: its own message, and the likely cause.
pub fn exited(qemu: &str, status: ExitStatus, when: &str, lines: &[String]) -> Error {
    let name = std::path::Path::new(qemu).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l.strip_prefix(name.as_str()).and_then(|l| l.strip_prefix(": ")).unwrap_or(l).trim())
        .filter(|l| !l.is_empty() && !l.starts_with("warning:"))
        .collect();
    let said = match (messages.first(), messages.last()) {
        (Some(first), Some(last)) if first != last => format!("QEMU said: {first}; {last}"),
        (Some(first), _) => format!("QEMU said: {first}"),
        _ => "it wrote no error message".to_owned(),
    };
    let cause = likely_cause(&messages).map(|c| format!(" (likely cause: {c})")).unwrap_or_default();
    Error::QemuExited { qemu: qemu.to_owned(), status, when: when.to_owned(), said: format!("{said}{cause}") }
}

/// What QEMU's messages most likely mean for the user.
fn likely_cause(messages: &[&str]) -> Option<&'static str> {
    let any = |words: &[&str]| messages.iter().any(|m| words.iter().any(|w| m.contains(w)));
    if any(&["Unknown ramblock", "Length mismatch", "ram block", "RAM block"]) {
        Some("the image's RAM does not fit this QEMU command line: check -m and -machine")
    } else if any(&["unsupported machine type", "machine type", "-machine help"]) {
        Some("-machine names a machine type this QEMU does not have (`-machine help` lists them)")
    } else if any(&[
        "Unknown savevm section",
        "Missing section footer",
        "error while loading state",
        "Failed to load",
        "load of migration failed",
        "savevm",
        "vmstate",
    ]) {
        Some(
            "the image's device state does not fit this QEMU command line: check -machine and the devices (restore.cmdline records the ones the image was saved with)",
        )
    } else if any(&["/dev/kvm", "KVM"]) {
        Some("KVM is not usable here: give accel=tcg in -machine")
    } else if any(&["Could not open", "No such file", "Permission denied"]) {
        Some("a file the command line names cannot be opened")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn status() -> ExitStatus {
        ExitStatus::from_raw(1 << 8)
    }

    /// QEMU 7.2's lines for an image of another machine: its first and
    /// last message, and the cause, in one line; warnings left out.
    #[test]
    fn a_failed_load_names_qemus_message_and_the_cause() {
        let lines = [
            "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]",
            "qemu-system-x86_64: Unknown savevm section or instance 'xen_platform' 0. Make sure that your current VM setup matches your saved VM setup, including any hotplugged devices",
            "qemu-system-x86_64: load of migration failed: Invalid argument",
        ]
        .map(String::from);
        let e = exited("/usr/bin/qemu-system-x86_64", status(), "while loading the image", &lines).to_string();
        assert!(
            e.starts_with("/usr/bin/qemu-system-x86_64 exited (exit status: 1) while loading the image: QEMU said: Unknown savevm section or instance 'xen_platform' 0."),
            "{e}"
        );
        assert!(e.contains("; load of migration failed: Invalid argument"), "{e}");
        assert!(
            e.contains("likely cause: the image's device state does not fit this QEMU command line: check -machine")
        );
        assert!(!e.contains("warning") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn causes_and_silence() {
        let e = exited("qemu", status(), "before it was ready", &[]).to_string();
        assert_eq!(e, "qemu exited (exit status: 1) before it was ready: it wrote no error message");
        let one = ["qemu: -machine q99: unsupported machine type".to_owned()];
        let e = exited("qemu", status(), "before it was ready", &one).to_string();
        assert!(e.ends_with("QEMU said: -machine q99: unsupported machine type (likely cause: -machine names a machine type this QEMU does not have (`-machine help` lists them))"), "{e}");
        let ram = ["qemu: Length mismatch: pc.ram: 0x1000000 in != 0x8000000: Invalid argument".to_owned()];
        assert!(exited("qemu", status(), "x", &ram).to_string().contains("check -m and -machine"));
    }

    /// The thread holds what the pipe carries until passed on.
    #[test]
    fn lines_are_held_until_the_pipe_ends() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "for i in $(seq 1 40); do echo line $i >&2; done"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let tail = QemuStderr::start(child.stderr.take().unwrap());
        child.wait().unwrap();
        let lines = tail.lines(Duration::from_secs(10));
        assert_eq!(lines.len(), KEEP_LINES);
        assert_eq!(lines.first().map(String::as_str), Some("line 9"));
        assert_eq!(lines.last().map(String::as_str), Some("line 40"));
    }
}
