//! `pbr-img run` keeps the Debian guest with disks: it captures at the
//! agent's points without stopping the VM, sees a kernel panic injected in
//! the guest (`echo c > /proc/sysrq-trigger`, through pvpanic) and
//! recovers by itself from the latest valid candidate; the service answers
//! again, a file written before the panic is there. A reboot the guest
//! asks for soon after is a failure too, and since the recovered VM failed
//! again so soon, it boots from scratch, capturing afresh. A hang that
//! only the agent's heartbeat tells (the fault module spins every CPU with
//! interrupts off) is recovered too, after the guest flooded its
//! agent's port with garbage (the watch reads on). SIGTERM powers the guest
//! off, after which both disks pass `e2fsck -fn`.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::distro::{Lab, ONE_GUEST};

/// `pbr-img run`, stopped if the test fails half way: its VM must not
/// outlive the test. Two SIGTERMs: the second makes `run` stop its QEMU and
/// exit at once.
pub struct Run(pub std::process::Child);

impl Drop for Run {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        for _ in 0..2 {
            if let Ok(None) = self.0.try_wait() {
                let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let t = Instant::now();
        while let Ok(None) = self.0.try_wait() {
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Run {
    /// `pbr-img run` of the lab's guest with `options`; its log.
    pub fn start(lab: &Lab, options: &[&str]) -> (Run, std::path::PathBuf) {
        let log = lab.dir.path().join("run.jsonl");
        let stderr = std::fs::File::create(lab.dir.path().join("run.err")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
            .arg("run")
            .arg("--candidates")
            .arg(lab.out())
            .arg("--log")
            .arg(&log)
            .args(options)
            .arg("--")
            .args(&lab.argv)
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        (Run(child), log)
    }

    /// Sends SIGTERM as an operator does (kill(1)) and waits for a clean
    /// exit.
    pub fn stop(&mut self, lab: &Lab, log: &Path) {
        let child = &mut self.0;
        let t = Instant::now();
        let ok = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(ok.success());
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(180), "run did not stop: {:#?}", events(log));
            std::thread::sleep(Duration::from_millis(200));
        };
        let err = std::fs::read_to_string(lab.dir.path().join("run.err")).unwrap();
        assert!(status.success(), "{status}: {err}");
        let all = events(log);
        let stopped = all.iter().find(|e| e["event"] == "stopped");
        assert_eq!(stopped.map(|e| &e["powered_off"]), Some(&serde_json::json!(true)), "{all:#?}");
    }
}

/// The events `run` logged so far.
pub fn events(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits up to `limit` until the log has `count` events named `name`.
pub fn wait_for(log: &Path, name: &str, count: usize, limit: Duration, child: &mut std::process::Child) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if events(log).iter().filter(|e| e["event"] == name).count() >= count {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pbr-img run exited ({status}) before {name}: {:#?}", events(log));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The caller's `Run` stops `run` and its VM as the test unwinds.
    panic!("no {name} event within {limit:?}: {:#?}", events(log));
}

#[test]
fn failures_are_recovered_by_themselves_and_sigterm_powers_off() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (mut run, log) = Run::start(&lab, &["--hang-after", "2"]);
    let child = &mut run.0;
    wait_for(&log, "ready", 1, Duration::from_secs(900), child);
    let captured: Vec<_> = events(&log).into_iter().filter(|e| e["event"] == "captured").collect();
    assert!(captured.iter().any(|e| e["point"] == "daemons"), "{captured:?}");
    assert_eq!(lab.get().1, "served from the data disk\n", "the VM serves once captured");

    let (_, status) = lab.shell("date > /srv/data/before-the-panic && sync");
    assert_eq!(status, 0);
    lab.type_line("echo c > /proc/sysrq-trigger");
    wait_for(&log, "recovered", 1, Duration::from_secs(600), child);
    let all = events(&log);
    let failed: Vec<_> = all.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{all:#?}");
    assert_eq!(failed[0]["kind"], "panic", "{all:#?}");
    let recovered = all.iter().find(|e| e["event"] == "recovered").unwrap();
    assert!(recovered["chosen"].as_str().unwrap().ends_with("daemons.pbr"), "{recovered}");
    assert_eq!(lab.get().1, "served from the data disk\n", "the recovered VM serves");
    let (_, status) = lab.shell("test -s /srv/data/before-the-panic");
    assert_eq!(status, 0, "the file written before the panic is on the data disk");

    // A reboot within a minute of the recovery: booted from scratch, and
    // captured again.
    lab.type_line("reboot -f");
    wait_for(&log, "ready", 2, Duration::from_secs(900), child);
    let all = events(&log);
    let kinds: Vec<_> = all.iter().filter(|e| e["event"] == "failed").map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds, ["panic", "reboot"], "{all:#?}");
    let boots: Vec<_> = all.iter().filter(|e| e["event"] == "booting").collect();
    assert_eq!(boots.len(), 2, "{all:#?}");
    assert!(boots[1]["reason"].as_str().unwrap().contains("failed again"), "{all:#?}");
    assert!(all.iter().filter(|e| e["event"] == "captured").count() > captured.len(), "captured afresh");
    assert_eq!(lab.get().1, "served from the data disk\n", "the rebooted VM serves");

    // A guest that floods its agent's port with garbage and then sends a
    // point: the watch reads on, answers the point, and still times the
    // heartbeat (the hang below is caught through it).
    let port = "/dev/virtio-ports/org.pbr.agent.0";
    let (_, status) = lab.shell(&format!(
        "systemctl stop pbr-alive.service && head -c 4000000 /dev/urandom > {port} && pbr-agent point flood \
         && systemctl start pbr-alive.service"
    ));
    assert_eq!(status, 0, "the point after the flood was answered");
    let all = events(&log);
    let hostile: Vec<_> = all.iter().filter(|e| e["event"] == "hostile").collect();
    assert_eq!(hostile.len(), 1, "the breach is told once: {all:#?}");
    assert_eq!(all.iter().filter(|e| e["event"] == "failed").count(), 2, "a flood is no failure: {all:#?}");

    // Every CPU spins with interrupts off: nothing in the guest reports
    // it; its heartbeat stops: a hang, recovered.
    let (_, status) = lab.shell("systemctl is-active pbr-alive.service && sleep 2");
    assert_eq!(status, 0, "the heartbeat runs");
    lab.type_line("insmod /usr/lib/pbr/pbr_fault.ko fault=hang");
    wait_for(&log, "recovered", 2, Duration::from_secs(600), child);
    let all = events(&log);
    let kinds: Vec<_> = all.iter().filter(|e| e["event"] == "failed").map(|e| e["kind"].clone()).collect();
    assert_eq!(kinds, ["panic", "reboot", "hang"], "{all:#?}");
    assert_eq!(lab.get().1, "served from the data disk\n", "the VM recovered from its hang serves");

    run.stop(&lab, &log);
    lab.fsck_clean();
}

/// `--prestaged`: a QEMU holding the latest candidate waits beside the
/// running VM (same disks, its own stand-ins for the forwarded port and
/// the console); the panic is recovered into it, and it takes over the
/// port and the console the VM had.
#[test]
fn a_prestaged_qemu_waits_beside_the_vm_and_takes_it_over() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (mut run, log) = Run::start(&lab, &["--prestaged"]);
    let child = &mut run.0;
    wait_for(&log, "standby", 1, Duration::from_secs(900), child);
    let all = events(&log);
    let standby = all.iter().find(|e| e["event"] == "standby").unwrap();
    assert!(standby["candidate"].as_str().unwrap().ends_with("daemons.pbr"), "{all:#?}");
    assert_eq!(lab.get().1, "served from the data disk\n", "the VM serves beside its standby");
    let (_, status) = lab.shell("date > /srv/data/before-the-panic && sync");
    assert_eq!(status, 0);

    lab.type_line("echo c > /proc/sysrq-trigger");
    wait_for(&log, "recovered", 1, Duration::from_secs(600), child);
    let all = events(&log);
    let recovered = all.iter().find(|e| e["event"] == "recovered").unwrap();
    assert_eq!(recovered["vmm"], "prestaged", "{all:#?}");
    assert_eq!(lab.get().1, "served from the data disk\n", "the port was taken over");
    let (_, status) = lab.shell("test -s /srv/data/before-the-panic");
    assert_eq!(status, 0, "the console was taken over, and the file is there");
    wait_for(&log, "standby", 2, Duration::from_secs(120), child);
    run.stop(&lab, &log);
    lab.fsck_clean();
}

/// A guest whose agent says nothing in time (`--agent-wait`, as for a
/// guest without pbr-agent) runs on without candidates, and `run` says
/// why; its panic finds no candidate, and it boots again from scratch.
#[test]
fn a_guest_whose_agent_is_silent_runs_without_candidates() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (mut run, log) = Run::start(&lab, &["--agent-wait", "0.001"]);
    let child = &mut run.0;
    wait_for(&log, "no-capture", 1, Duration::from_secs(120), child);
    let all = events(&log);
    let why = all.iter().find(|e| e["event"] == "no-capture").unwrap()["reason"].as_str().unwrap().to_owned();
    assert!(why.contains("said nothing within") && why.contains("no candidates"), "{why}");
    // Its points are still answered: the boot goes on to serve.
    let (_, status) = lab.shell("systemctl is-system-running --wait > /dev/null; systemctl is-active nginx");
    assert_eq!(status, 0, "the guest booted on to serve");
    assert_eq!(lab.get().1, "served from the data disk\n");
    let all = events(&log);
    assert!(!all.iter().any(|e| e["event"] == "captured"), "{all:#?}");
    lab.type_line("echo c > /proc/sysrq-trigger");
    wait_for(&log, "booting", 2, Duration::from_secs(120), child);
    let all = events(&log);
    let boots: Vec<_> = all.iter().filter(|e| e["event"] == "booting").collect();
    assert!(boots[1]["reason"].as_str().unwrap().contains("no candidate"), "{all:#?}");
    assert_eq!(all.iter().filter(|e| e["event"] == "failed").count(), 1, "{all:#?}");
    // Booted up again (a guest powers off on ACPI's button only once up).
    let (_, status) = lab.shell("systemctl is-system-running --wait > /dev/null; systemctl is-active nginx");
    assert_eq!(status, 0, "the guest booted again to serve");
    run.stop(&lab, &log);
    lab.fsck_clean();
}
