//! The Debian guest fails as a kernel really does, through its fault
//! module (`examples/fault-module`, `insmod /usr/lib/pbr/pbr_fault.ko
//! fault=KIND` from root's shell): an oops, a soft lockup and a hung task
//! each panic within the time its kernel command line promises, and pvpanic
//! tells the host (QMP `GUEST_PANICKED`); a hang is told by nothing in the
//! guest: no event, QEMU still running, the console silent.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::distro::{Lab, ONE_GUEST};
use serde_json::{Value, json};

/// The guest under plain QEMU with a pvpanic device, a panic pausing it,
/// and a QMP socket.
struct Guest {
    lab: Lab,
    qemu: Child,
    qmp: BufReader<UnixStream>,
}

impl Guest {
    /// Boots a fresh copy of the guest and waits for root's shell.
    fn boot() -> Guest {
        let lab = Lab::new(512);
        let sock = lab.dir.path().join("qmp.sock");
        let qemu = Command::new(&lab.argv[0])
            .args(&lab.argv[1..])
            .args(["-device", "pvpanic", "-action", "panic=pause", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.dir.path().join("qemu.err")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/test puts QEMU 7.2 on PATH: scripts/fetch-qemu72)");
        let stream = common::vm::connect_qmp(&sock);
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut g = Guest { lab, qemu, qmp: BufReader::new(stream) };
        g.next_qmp(Duration::from_secs(20)).expect("QMP greeting");
        writeln!(g.qmp.get_mut(), "{}", json!({"execute": "qmp_capabilities"})).unwrap();
        // Root's shell answers once the boot is done (a slow host: give it time).
        let t = Instant::now();
        while !g.console().contains("root@pbr-distro") {
            assert!(t.elapsed() < Duration::from_secs(600), "no shell prompt:\n{}", g.lab.console_tail());
            std::thread::sleep(Duration::from_millis(500));
        }
        // (A start joins the boot's own job: it returns once ready is.)
        let (_, status) = g.lab.shell("systemctl start pbr-ready.service");
        assert_eq!(status, 0, "the boot did not reach ready:\n{}", g.lab.console_tail());
        g
    }

    /// Everything the guest wrote on its console.
    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.lab.dir.path().join("console.log")).unwrap_or_default()).into()
    }

    /// The next QMP message within `limit`.
    fn next_qmp(&mut self, limit: Duration) -> Option<Value> {
        let t = Instant::now();
        let mut line = String::new();
        while t.elapsed() < limit {
            match self.qmp.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => return Some(serde_json::from_str(&line).unwrap()),
                _ => {}
            }
        }
        None
    }

    /// Whether QMP reports `event` before `limit` from `since` (other
    /// messages are skipped).
    fn wait_event(&mut self, event: &str, since: Instant, limit: Duration) -> bool {
        while since.elapsed() < limit {
            if let Some(m) = self.next_qmp(limit.saturating_sub(since.elapsed()))
                && m["event"] == event
            {
                return true;
            }
        }
        false
    }

    /// Types the module's insmod on root's shell.
    fn inject(&self, kind: &str) {
        self.lab.type_line(&format!("insmod /usr/lib/pbr/pbr_fault.ko fault={kind}"));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

#[test]
fn an_oops_a_soft_lockup_and_a_hung_task_panic_through_pvpanic() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    // (kind, the panic's line on the console, the longest wait from insmod:
    // the soft-lockup detector reports after 20 s, checked every 4 s; the
    // hung-task one after 10 to 20 s).
    let kinds = [
        ("oops", "BUG: kernel NULL pointer dereference", 30),
        ("softlockup", "watchdog: BUG: soft lockup", 45),
        ("hungtask", "blocked for more than 10 seconds", 45),
    ];
    for (kind, line, limit) in kinds {
        let mut g = Guest::boot();
        if kind == "oops" {
            let (out, status) = g.lab.shell(
                "cd /proc/sys/kernel && cat panic_on_oops softlockup_panic hung_task_panic hung_task_timeout_secs \
                 /sys/module/rcupdate/parameters/rcu_cpu_stall_timeout | tr '\\n' ' '",
            );
            assert_eq!(status, 0);
            assert_eq!(out.lines().last().unwrap().trim(), "1 1 1 10 60", "the kernel's failure settings");
        }
        let t = Instant::now();
        g.inject(kind);
        let panicked = g.wait_event("GUEST_PANICKED", t, Duration::from_secs(limit));
        let took = t.elapsed();
        let console = g.console();
        assert!(panicked, "{kind}: no GUEST_PANICKED within {limit} s; console:\n{}", g.lab.console_tail());
        assert!(console.contains(line), "{kind}: the console does not say {line:?}:\n{}", g.lab.console_tail());
        assert!(console.contains("Kernel panic - not syncing"), "{kind}: {}", g.lab.console_tail());
        eprintln!("{kind}: GUEST_PANICKED within {:.1} s of the insmod", took.as_secs_f64());
    }
}

#[test]
fn a_hang_is_told_by_nothing_in_the_guest() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Guest::boot();
    g.inject("hang");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(m) = g.next_qmp(Duration::from_secs(1)) {
            assert_ne!(m["event"], "GUEST_PANICKED", "a hang panicked:\n{}", g.lab.console_tail());
        }
    }
    writeln!(g.qmp.get_mut(), "{}", json!({"execute": "query-status"})).unwrap();
    let status = loop {
        let m = g.next_qmp(Duration::from_secs(20)).expect("query-status answered");
        if m.get("return").is_some() {
            break m["return"]["status"].clone();
        }
    };
    assert_eq!(status, "running", "QEMU runs on, the guest inside it hung");
    // A line typed on the console is not even echoed.
    let mut c = UnixStream::connect(&g.lab.console).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    c.write_all(b"echo still-here\n").unwrap();
    let mut heard = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = c.read(&mut buf) {
            heard.extend_from_slice(&buf[..n]);
        }
    }
    assert!(heard.is_empty(), "the hung guest answered: {:?}", String::from_utf8_lossy(&heard));
    assert!(!g.console().contains("Kernel panic"), "{}", g.lab.console_tail());
}
