//! A VM kept by phase-based reboot. The user's QEMU command line runs with
//! what capture adds (QMP, the agent's port, a VM generation id) and what
//! failure detection needs (a pvpanic device; a guest's panic or reboot
//! request pauses QEMU instead of resetting it). During the boot a
//! candidate is captured at each point the agent announces, and the VM
//! runs on. When it fails (a kernel panic, QEMU exiting, a reboot the
//! guest asks for, a hang: its agent's heartbeat stops), it is recovered
//! from the latest valid candidate, as `recover` does (into a QEMU that
//! waited beside it, when asked: [`crate::recover::prepare`]), or booted
//! again from scratch, capturing afresh, when none is left or the last
//! recovery failed again too soon; a VM that keeps failing waits between
//! tries. Whatever the guest sends is hostile input: it never stops the
//! watch. A stop request powers the guest off (ACPI), then QEMU quits.
//!
//! With a store ([`crate::fleet::Remote`]), each boot's candidates are
//! pushed there once its capture is kept, and a host that holds none of
//! the VM's candidates starts the VM from the store's instead of booting
//! it.
//!
//! A kernel update comes through the control socket ([`crate::control`]):
//! the guest's agent checkpoints the units asked for with CRIU, the guest
//! powers off, and the machine boots the new kernel, capturing afresh (the
//! old kernel's candidates are removed); at its first point the units are
//! handed back to be restored before they start ([`crate::update`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbr_agent::FrameError;
use pbr_agent::message::Message;
use pbr_replay::qemu::process::QemuProcess;
use serde_json::{Value, json};

use crate::agent::AgentPort;
use crate::backoff::{Failures, wait_unless_stopped};
use crate::capture::{Candidate, CaptureOptions};
use crate::control::{Control, Request};
use crate::error::{Error, Result};
use crate::fleet::Remote;
use crate::machine::UserCommand;
use crate::points::{Booted, Skipped, boot_keeping};
use crate::recover::{Prepared, RecoverOptions, Running, prepare, recover_prepared, recover_running};
use crate::recovery::{Recovery, Refused};
use crate::update::{CHECKPOINT_TIMEOUT, Kept, Report, Update};
use crate::updating::{self, Updating};
use crate::vmm::Vmm;

/// What `run` adds to the command line so that QEMU tells it of a failure:
/// a pvpanic device (the guest kernel reports its panic through it), and a
/// guest's panic, reboot or power-off pausing QEMU instead of resetting or
/// ending it. A candidate records them: its restore repeats them.
pub const FAILURE_DETECTION: [&str; 4] =
    ["-device", "pvpanic", "-action", "reboot=shutdown,shutdown=pause,panic=pause"];

/// How often the VM is looked at.
const POLL: Duration = Duration::from_millis(100);

/// How a failure is recovered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reboot {
    /// Phase-based: restore the latest valid candidate.
    #[default]
    Phase,
    /// A normal reboot: reset the machine, which boots from scratch.
    Full,
}

/// How to keep the VM.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions<'a> {
    /// Where candidates are written and recovered from.
    pub candidates: &'a Path,
    /// A store the candidates are pushed to as well; when `candidates`
    /// holds none (another host kept the VM before), the VM is recovered
    /// from the store's.
    pub store: Option<&'a Remote>,
    /// Where a recovery's QEMU comes from.
    pub vmm: Vmm,
    /// How a panic or a hang is recovered.
    pub on_failure: Reboot,
    /// How a reboot the guest asks for is made.
    pub on_reboot: Reboot,
    /// The guest runs pbr-agent: its boot is captured at its points and
    /// its heartbeat watched. Without it there are no candidates, and every
    /// failure is a normal reboot.
    pub agent: bool,
    /// A recovered VM that fails again sooner than this is booted from
    /// scratch next: the candidate is not used in a loop.
    pub retry_after: Duration,
    /// How long the guest may take to power off when asked to stop.
    pub power_off: Duration,
    /// A guest whose agent sent its heartbeat (`spec/agent.md` §6) and
    /// then none for this long is hung.
    pub hang_after: Duration,
    /// A booting guest whose agent says nothing for this long runs no
    /// agent: that boot gives no candidates.
    pub agent_wait: Duration,
}

impl RunOptions<'_> {
    /// How the VM of `cmd` is recovered: from its agent's candidates,
    /// into a QEMU from where these options say.
    fn recover<'c>(&self, cmd: &'c UserCommand) -> RecoverOptions<'c> {
        RecoverOptions { root: None, qemu: Some(&cmd.qemu), vmm: self.vmm, served: &[] }
    }
}

/// A failure of the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The guest kernel panicked (pvpanic, QMP `GUEST_PANICKED`).
    Panicked,
    /// The guest asked for a reboot.
    Rebooted,
    /// QEMU exited by itself.
    Exited(String),
    /// The agent's heartbeat stopped.
    Hung,
}

/// A failure as the watch saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    /// What failed.
    pub failure: Failure,
    /// How long after the failure the watch saw it: from QEMU's time
    /// stamp on its event, for a hang from the last heartbeat; zero for a
    /// QEMU that exited.
    pub late: Duration,
}

impl Failure {
    /// Its name in the log: `panic`, `reboot`, `qemu-exit`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Panicked => "panic",
            Failure::Rebooted => "reboot",
            Failure::Exited(_) => "qemu-exit",
            Failure::Hung => "hang",
        }
    }
}

/// What happened, in order, for the log.
#[derive(Debug)]
pub enum Event<'a> {
    /// The VM boots from scratch, capturing: why.
    Booting(&'a str),
    /// A candidate was captured at a point.
    Captured(&'a Candidate),
    /// A point gave no candidate.
    Skipped(&'a Skipped),
    /// The booted guest's agent said ready, this long after QEMU started.
    Ready(Duration),
    /// The boot's capture ended before its guest said ready, and why; the
    /// guest runs on.
    NoCapture(&'a str),
    /// The guest broke its agent's protocol (told once per boot or
    /// recovery); the port is read on from the next frame.
    Hostile(&'a str),
    /// The VM failed.
    Failed(&'a Detected),
    /// A candidate was refused.
    Refused(&'a Refused),
    /// The VM was recovered and is ready, this long after it failed
    /// (its detection included).
    Recovered(&'a Recovery, Duration),
    /// The guest was reset, as the policy for its reboots says.
    Reset,
    /// The VM failed too often: its next recovery or boot waits this long.
    BackingOff(Duration),
    /// A QEMU waits beside the VM for its next recovery, from this
    /// candidate (`--standby`, `--prestaged`).
    Standby(&'a Path),
    /// No QEMU waits, although one was asked for, and why: the recovery
    /// starts one.
    NoStandby(&'a str),
    /// The guest powered itself off: the run ends.
    PoweredOff,
    /// A stop was asked for: the guest is powered off.
    Stopping,
    /// QEMU quit: the guest had powered off in time (true), or was still
    /// running when the time was up.
    Stopped(bool),
    /// A kernel update was asked for.
    Updating(&'a Update),
    /// The guest checkpointed the units (or why it could not): the machine
    /// goes down for the new kernel.
    Checkpointed(std::result::Result<&'a Kept, &'a str>),
    /// The new kernel's guest is ready: how each unit came through.
    Updated(&'a Report),
    /// The control socket cannot be made, and why: the VM runs, and cannot
    /// be updated.
    NoControl(&'a str),
    /// A candidate was pushed to the store: its address, and what the
    /// push did.
    Pushed(&'a str, &'a pbr_store::PushReport),
    /// The store failed: a candidate not pushed, or an update's old
    /// candidates not removed, and why.
    StoreFailed(&'a str),
}

impl Event<'_> {
    /// The event as one JSON object: `event` names it.
    pub fn json(&self) -> Value {
        match self {
            Event::Booting(why) => json!({"event": "booting", "reason": why}),
            Event::Captured(c) => json!({"event": "captured", "point": c.phase, "image": c.path.display().to_string(),
                                          "image_bytes": c.image_bytes, "since_power_on_s": c.since_power_on}),
            Event::Skipped(s) => json!({"event": "skipped", "point": s.point, "reason": s.reason}),
            Event::Ready(d) => json!({"event": "ready", "boot_s": d.as_secs_f64()}),
            Event::NoCapture(why) => json!({"event": "no-capture", "reason": why}),
            Event::Hostile(what) => json!({"event": "hostile", "what": what}),
            Event::Failed(d) => {
                let detail = match &d.failure {
                    Failure::Exited(status) => Some(status.as_str()),
                    _ => None,
                };
                json!({"event": "failed", "kind": d.failure.kind(), "detail": detail, "detection_s": d.late.as_secs_f64()})
            }
            Event::Refused(r) => {
                json!({"event": "refused", "candidate": r.path.display().to_string(), "reason": r.reason})
            }
            Event::Recovered(r, outage) => {
                let s = |d: Duration| d.as_secs_f64();
                json!({"event": "recovered", "chosen": r.chosen.as_ref().map(|p| p.display().to_string()),
                       "outage_s": s(*outage), "downtime_s": s(r.downtime), "select_s": s(r.select),
                       "restore_s": s(r.restore), "guest_s": s(r.guest), "vmm": r.vmm.name(), "ram": r.ram()})
            }
            Event::Standby(c) => json!({"event": "standby", "candidate": c.display().to_string()}),
            Event::NoStandby(why) => json!({"event": "no-standby", "reason": why}),
            Event::Reset => json!({"event": "reset"}),
            Event::BackingOff(d) => json!({"event": "backing-off", "wait_s": d.as_secs_f64()}),
            Event::PoweredOff => json!({"event": "powered-off"}),
            Event::Stopping => json!({"event": "stopping"}),
            Event::Stopped(off) => json!({"event": "stopped", "powered_off": off}),
            Event::Updating(u) => {
                let mut v = u.to_json();
                v["event"] = json!("updating");
                v
            }
            Event::Checkpointed(Ok(k)) => {
                let units: Vec<Value> = k
                    .outcome
                    .units
                    .iter()
                    .map(|u| {
                        json!({"unit": u.unit, "dumped": u.dumped, "files": u.files, "bytes": u.bytes,
                                    "reason": u.reason})
                    })
                    .collect();
                json!({"event": "checkpointed", "kernel": k.outcome.kernel, "criu_version": k.outcome.criu_version,
                       "units": units, "checkpoint_s": k.elapsed.as_secs_f64(),
                       "image": k.image.as_ref().map(|p| p.display().to_string())})
            }
            Event::Checkpointed(Err(e)) => json!({"event": "checkpointed", "error": e}),
            Event::Updated(r) => r.json(),
            Event::NoControl(why) => json!({"event": "no-control", "reason": why}),
            Event::Pushed(url, r) => {
                json!({"event": "pushed", "image": url, "chunks": r.chunks, "uploaded": r.uploaded,
                                            "uploaded_bytes": r.uploaded_bytes, "seconds": r.seconds})
            }
            Event::StoreFailed(why) => json!({"event": "store-failed", "reason": why}),
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// A stop was asked for; the guest was powered off.
    Stopped,
    /// The guest powered itself off.
    PoweredOff,
}

/// The VM being kept: booted from scratch or recovered.
enum Vm {
    Booted(Box<Booted>),
    Recovered(Box<Running>),
}

impl Vm {
    fn process(&mut self) -> Result<&mut QemuProcess> {
        match self {
            Vm::Booted(b) => Ok(&mut b.machine.qemu),
            Vm::Recovered(r) => r.vm.process().ok_or_else(|| Error::Guest("the recovered QEMU is not running".into())),
        }
    }

    fn agent(&mut self) -> Option<&mut AgentPort> {
        match self {
            Vm::Booted(b) => Some(&mut b.machine.agent),
            Vm::Recovered(r) => r.agent.as_mut(),
        }
    }
}

/// What watching the VM ended with.
enum Watched {
    Failed(Detected),
    PoweredOff,
    Stop,
    Update(Request),
}

/// Has the VM's agent checkpoint `units` into a new image in `dir`'s
/// `updates`; why it could not. Keeping none, nothing is asked.
fn checkpoint(vm: &mut Vm, units: &[String], dir: &Path) -> std::result::Result<Kept, String> {
    if units.is_empty() {
        return Err("no unit to keep".into());
    }
    let image = updating::image_path(dir)?;
    let agent = vm.agent().ok_or("the VM has no agent to checkpoint its units")?;
    crate::update::checkpoint(agent, units, &image, CHECKPOINT_TIMEOUT).map_err(|e| e.to_string())
}

/// Runs `cmd` as the module says until `stop` is set or the guest powers
/// itself off; `on_event` hears everything that happens.
///
/// # Errors
/// A boot failed (QEMU or the agent), a candidate could not be written,
/// QMP failed. A failed recovery is followed by a boot from scratch.
pub fn run(
    cmd: &UserCommand,
    opts: &RunOptions<'_>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<End> {
    let mut cmd = with_failure_detection(cmd);
    // Two supervisors never keep one directory (the socket answers: a
    // usage error); without its socket otherwise (a path too long for one)
    // the VM runs on, and cannot be updated.
    let control = match Control::bind(opts.candidates) {
        Ok(c) => Some(c),
        Err(e @ Error::Usage(_)) => return Err(e),
        Err(e) => {
            on_event(Event::NoControl(&e.to_string()));
            None
        }
    };
    let mut updating: Option<Updating> = None;
    let mut boot_why = match opts.agent {
        // Another host kept the VM: its candidates are in the store.
        true if from_store(opts) => None,
        true => Some("start".to_owned()),
        false => Some("start; the guest runs no agent: no candidates, and every failure is a normal reboot".to_owned()),
    };

    let mut recovered_at: Option<Instant>;
    // When the latest failure happened, as far as its detection tells.
    let mut failed_at = Instant::now();
    // The next recovery, made ready while the VM runs.
    let mut ready: Option<Prepared> = None;
    let mut failures = Failures::default();
    loop {
        let mut vm = match boot_why.take() {
            Some(why) => {
                drop(ready.take());
                on_event(Event::Booting(&why));
                let booted = if opts.agent {
                    let restore = updating.as_ref().and_then(Updating::image);
                    let options = CaptureOptions::default();
                    boot_keeping(&cmd, opts.candidates, &options, opts.agent_wait, restore, &mut |_| {})
                } else {
                    Booted::without_agent(&cmd)
                };
                let b = match (booted, updating.as_mut()) {
                    (Ok(b), _) => b,
                    (Err(e), None) => return Err(e),
                    (Err(e), Some(u)) => {
                        // The update's new kernel did not start: the old one does.
                        if let (updating::Ended::Revert(why), _) = u.ended(Err(e.to_string())) {
                            cmd = u.old.clone();
                            boot_why = Some(why);
                            continue;
                        }
                        return Err(e);
                    }
                };
                for c in &b.capture.candidates {
                    on_event(Event::Captured(c));
                }
                for s in &b.capture.skipped {
                    on_event(Event::Skipped(s));
                }
                match &b.capture.stopped {
                    Some(why) => on_event(Event::NoCapture(why)),
                    None if opts.agent => on_event(Event::Ready(Duration::from_secs_f64(b.capture.ready_s))),
                    None => {}
                }
                if let Some(mut u) = updating.take() {
                    match u.ended(Ok(&b.capture)) {
                        (updating::Ended::Revert(why), _) if opts.agent => {
                            // The new kernel's guest goes down cleanly if it
                            // can, and what it captured goes with it.
                            let mut b = b;
                            power_off(&mut b.machine.qemu, opts.power_off);
                            b.machine.quit();
                            remove_candidates(opts, on_event);
                            cmd = u.old.clone();
                            boot_why = Some(why);
                            updating = Some(u);
                            continue;
                        }
                        (_, Some(report)) => {
                            updating::prune(opts.candidates);
                            on_event(Event::Updated(&report));
                        }
                        _ => {}
                    }
                }
                // Kept (not an update's given-up kernel): into the store.
                if let Some(remote) = opts.store {
                    push(remote, &b.capture.candidates, on_event);
                }
                recovered_at = None;
                Vm::Booted(Box::new(b))
            }
            None => {
                let recovered = match ready.take() {
                    Some(p) => recover_prepared(p, None, &mut |r| on_event(Event::Refused(r))),
                    None => {
                        let files = candidate_files(opts.candidates)?;
                        match (files.is_empty(), opts.store) {
                            (true, Some(remote)) => from_the_store(remote, opts, &cmd, on_event),
                            _ => recover_running(&files, &opts.recover(&cmd), &mut |r| on_event(Event::Refused(r))),
                        }
                    }
                };
                match recovered {
                    Ok(Some(r)) => {
                        on_event(Event::Recovered(&r.report, failed_at.elapsed()));
                        recovered_at = Some(Instant::now());
                        Vm::Recovered(Box::new(r))
                    }
                    Ok(None) => {
                        boot_why = Some("no candidate is valid".into());
                        continue;
                    }
                    Err(Error::NoCandidate(why)) => {
                        boot_why = Some(why);
                        continue;
                    }
                    // The VM is kept whatever went wrong: a boot from
                    // scratch follows (and captures afresh).
                    Err(e) => {
                        boot_why = Some(format!("the recovery failed: {e}"));
                        continue;
                    }
                }
            }
        };
        if opts.vmm != Vmm::Spawn {
            ready = standby(opts, &cmd, on_event);
        }
        let mut port = Port::default();
        loop {
            match watch(&mut vm, stop, &mut port, opts.hang_after, control.as_ref(), on_event)? {
                Watched::Update(mut req) => {
                    on_event(Event::Updating(&req.update));
                    // A request right after a boot or a recovery: the
                    // heartbeat (every 200 ms) is given a second to be heard.
                    if port.alive.is_none() {
                        read_port(&mut vm, &mut port, Instant::now() + Duration::from_secs(1), on_event);
                    }
                    let new_cmd = match updating::command(&req, &cmd, opts.agent && port.alive.is_some()) {
                        Ok(c) => c,
                        Err(e) => {
                            req.fail(&e);
                            continue;
                        }
                    };
                    let started = Instant::now();
                    let kept = checkpoint(&mut vm, &req.update.keep, opts.candidates);
                    let told = Event::Checkpointed(kept.as_ref().map_err(String::as_str));
                    req.tell(&told.json());
                    on_event(told);
                    // The old kernel's QEMU beside it, and its candidates,
                    // are of no use now.
                    drop(ready.take());
                    power_off(vm.process()?, opts.power_off);
                    quit(vm);
                    remove_candidates(opts, on_event);
                    boot_why = Some(format!("kernel update to {}", req.update.kernel.display()));
                    let old = std::mem::replace(&mut cmd, new_cmd);
                    updating = Some(Updating { req, started, kept, old, reverted: None });
                    break;
                }
                Watched::Stop => {
                    on_event(Event::Stopping);
                    let off = power_off(vm.process()?, opts.power_off);
                    quit(vm);
                    on_event(Event::Stopped(off));
                    return Ok(End::Stopped);
                }
                Watched::PoweredOff => {
                    on_event(Event::PoweredOff);
                    quit(vm);
                    return Ok(End::PoweredOff);
                }
                Watched::Failed(d) if resets(&d.failure, opts) => {
                    on_event(Event::Failed(&d));
                    if back_off(failures.count(), stop, on_event) {
                        quit(vm);
                        on_event(Event::Stopped(false));
                        return Ok(End::Stopped);
                    }
                    reset(vm.process()?)?;
                    on_event(Event::Reset);
                }
                Watched::Failed(d) => {
                    on_event(Event::Failed(&d));
                    failed_at = Instant::now().checked_sub(d.late).unwrap_or_else(Instant::now);
                    drop(vm);
                    if back_off(failures.count(), stop, on_event) {
                        on_event(Event::Stopped(false));
                        return Ok(End::Stopped);
                    }
                    if let Some(t) = recovered_at.filter(|t| t.elapsed() < opts.retry_after) {
                        boot_why = Some(format!(
                            "the recovered VM failed again {:.0} s after its recovery",
                            t.elapsed().as_secs_f64()
                        ));
                    }
                    break;
                }
            }
        }
    }
}

/// Waits `wait` (told as an event) unless a stop comes first; whether one
/// did (the stop is told).
fn back_off(wait: Duration, stop: &AtomicBool, on_event: &mut dyn FnMut(Event<'_>)) -> bool {
    if wait.is_zero() {
        return false;
    }
    on_event(Event::BackingOff(wait));
    let stopped = wait_unless_stopped(wait, stop);
    if stopped {
        on_event(Event::Stopping);
    }
    stopped
}

/// The next recovery made ready beside the running VM, its QEMU waiting
/// (told as an event, or why none waits).
fn standby(opts: &RunOptions<'_>, cmd: &UserCommand, on_event: &mut dyn FnMut(Event<'_>)) -> Option<Prepared> {
    match candidate_files(opts.candidates).and_then(|files| prepare(&files, &opts.recover(cmd), true)) {
        Ok(p) => {
            match (p.standby_for(), p.no_standby()) {
                (Some(c), _) => on_event(Event::Standby(c)),
                (None, Some(why)) => on_event(Event::NoStandby(why)),
                (None, None) => {}
            }
            Some(p)
        }
        Err(e) => {
            on_event(Event::NoStandby(&e.to_string()));
            None
        }
    }
}

/// Whether failure `f` is met with a reset of the machine (a normal
/// reboot) rather than a recovery: as the options say, and always without
/// the agent (no candidates). QEMU that exited cannot be reset.
fn resets(f: &Failure, opts: &RunOptions<'_>) -> bool {
    let policy = match f {
        Failure::Exited(_) => return false,
        Failure::Rebooted => opts.on_reboot,
        Failure::Panicked | Failure::Hung => opts.on_failure,
    };
    policy == Reboot::Full || !opts.agent
}

/// `cmd` with [`FAILURE_DETECTION`] added, unless it names a pvpanic
/// device or an `-action` itself.
fn with_failure_detection(cmd: &UserCommand) -> UserCommand {
    let mut cmd = cmd.clone();
    let has = |what: &str| cmd.args.iter().any(|a| a.contains(what));
    if !has("pvpanic") && !cmd.args.iter().any(|a| a == "-action") {
        cmd.args.extend(FAILURE_DETECTION.iter().map(|a| (*a).to_owned()));
    }
    cmd
}

/// Removes the VM's candidates, from its directory and its store (an
/// update's old kernel's, or a given-up new kernel's: either would restore
/// the other kernel); a file that will not go is left to refuse (its seals
/// name the other kernel), a store that fails is told.
fn remove_candidates(opts: &RunOptions<'_>, on_event: &mut dyn FnMut(Event<'_>)) {
    for c in candidate_files(opts.candidates).unwrap_or_default() {
        let _ = std::fs::remove_file(&c);
    }
    if let Some(Err(e)) = opts.store.map(Remote::remove) {
        on_event(Event::StoreFailed(&format!("the old candidates stay in the store: {e}")));
    }
}

/// Whether the VM starts from the store's candidates: its host holds
/// none, and the store does.
fn from_store(opts: &RunOptions<'_>) -> bool {
    opts.store.is_some_and(|r| {
        candidate_files(opts.candidates).is_ok_and(|f| f.is_empty()) && r.candidates().is_ok_and(|c| !c.is_empty())
    })
}

/// Recovers the VM from the store's candidates (this host holds none);
/// refusals and the report name them by their store address. The mount of
/// the one restored lives as long as its QEMU.
fn from_the_store(
    remote: &Remote,
    opts: &RunOptions<'_>,
    cmd: &UserCommand,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Option<Running>> {
    let mut refused = |r: &Refused| on_event(Event::Refused(r));
    let made = remote.local(&mut refused).map_err(|e| Error::NoCandidate(format!("the store's candidates: {e}")))?;
    let o = RecoverOptions { served: &made.served, ..opts.recover(cmd) };
    let named = |r: &Refused| Refused { path: PathBuf::from(made.name(&r.path)), reason: r.reason.clone() };
    let mut running = recover_running(&made.paths, &o, &mut |r| refused(&named(r)))?;
    if let Some(r) = running.as_mut() {
        r.report.chosen = r.report.chosen.as_deref().map(|c| PathBuf::from(made.name(c)));
        r.report.refused = r.report.refused.iter().map(named).collect();
    }
    Ok(running)
}

/// Pushes the `captured` candidates to the store, each told.
fn push(remote: &Remote, captured: &[Candidate], on_event: &mut dyn FnMut(Event<'_>)) {
    for c in captured {
        let url = remote.url(&c.phase);
        match remote.push(c) {
            Ok(r) => on_event(Event::Pushed(&url, &r)),
            Err(e) => on_event(Event::StoreFailed(&format!("{url} not pushed: {e}"))),
        }
    }
}

/// The candidate images in `dir`: its `*.pbr` files (not hidden ones).
fn candidate_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "pbr")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What the watch knows of a VM's agent port.
#[derive(Default)]
struct Port {
    /// When its heartbeat last came, since the watch began.
    alive: Option<Instant>,
    /// It closed: it is no longer read.
    closed: bool,
    /// The guest stopped reading it: its points are no longer answered.
    deaf: bool,
    /// A breach of the protocol was told.
    told: bool,
}

impl Port {
    /// Tells the first breach of the protocol.
    fn breach(&mut self, what: &str, on_event: &mut dyn FnMut(Event<'_>)) {
        if !std::mem::replace(&mut self.told, true) {
            on_event(Event::Hostile(what));
        }
    }
}

/// Watches the VM until it fails, powers itself off, or `stop` is set: QMP
/// is asked its status every [`POLL`] (which also brings its events), and
/// the agent's port is read in between: its heartbeat is timed against
/// `hang_after`, its points are answered (nothing is captured now), and
/// whatever else it says is read and dropped; after a bad frame the port
/// is read on from the next one. A guest that floods its port, or stops
/// reading it, never stops the watch.
fn watch(
    vm: &mut Vm,
    stop: &AtomicBool,
    port: &mut Port,
    hang_after: Duration,
    control: Option<&Control>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Watched> {
    port.alive = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Watched::Stop);
        }
        if let Some(req) = control.and_then(Control::accept) {
            return Ok(Watched::Update(req));
        }
        let process = vm.process()?;
        if let Ok(Some(status)) = process.child().try_wait() {
            return Ok(failed(Failure::Exited(status.to_string()), Duration::ZERO));
        }
        let status = match process.qmp().cmd("query-status", json!({})) {
            Ok(s) => s,
            Err(e) => match process.child().try_wait() {
                Ok(Some(status)) => return Ok(failed(Failure::Exited(status.to_string()), Duration::ZERO)),
                _ => return Err(e.into()),
            },
        };
        for event in process.qmp().take_events() {
            let late = since_stamp(&event);
            match (event["event"].as_str(), event["data"]["reason"].as_str()) {
                (Some("GUEST_PANICKED"), _) => return Ok(failed(Failure::Panicked, late)),
                (Some("SHUTDOWN"), Some("guest-reset")) => return Ok(failed(Failure::Rebooted, late)),
                (Some("SHUTDOWN"), Some("guest-shutdown")) => return Ok(Watched::PoweredOff),
                _ => {}
            }
        }
        if status["status"] == "guest-panicked" {
            return Ok(failed(Failure::Panicked, Duration::ZERO));
        }
        if let Some(t) = port.alive.filter(|t| t.elapsed() > hang_after) {
            return Ok(failed(Failure::Hung, t.elapsed()));
        }
        let t = Instant::now();
        read_port(vm, port, t + POLL, on_event);
        if let Some(rest) = POLL.checked_sub(t.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn failed(failure: Failure, late: Duration) -> Watched {
    Watched::Failed(Detected { failure, late })
}

/// How long ago QEMU stamped `event` (its `timestamp`: seconds and
/// microseconds of the host's clock); zero without one.
fn since_stamp(event: &Value) -> Duration {
    let stamp = &event["timestamp"];
    let (Some(secs), Some(micros)) = (stamp["seconds"].as_u64(), stamp["microseconds"].as_u64()) else {
        return Duration::ZERO;
    };
    let at = std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
    std::time::SystemTime::now().duration_since(at).unwrap_or_default()
}

/// Reads the VM's agent port until `until`.
fn read_port(vm: &mut Vm, port: &mut Port, until: Instant, on_event: &mut dyn FnMut(Event<'_>)) {
    while !port.closed
        && let Some(agent) = vm.agent()
    {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match agent.next(left) {
            Ok(Message::Alive) => port.alive = Some(Instant::now()),
            Ok(Message::Point(_)) if !port.deaf => {
                if let Err(e) = agent.carry_on() {
                    port.deaf = true;
                    port.breach(&format!("the guest does not read its port ({e}): its points go unanswered"), on_event);
                }
            }
            Ok(_) => {}
            Err(Error::AgentSilent(_)) => return,
            Err(Error::AgentFrame(FrameError::Closed | FrameError::Io(_))) => port.closed = true,
            Err(e) => {
                agent.resync();
                port.breach(&format!("{e}; read on from its next frame"), on_event);
            }
        }
    }
}

/// Resets the machine, paused by its failure, and runs it again: a normal
/// reboot. A reset asked for while reboots are made shutdowns
/// ([`FAILURE_DETECTION`]) would be one too, so reboots reset for as long
/// as the reset takes.
///
/// # Errors
/// QMP failed, or QEMU did not reset within 10 s.
fn reset(process: &mut QemuProcess) -> Result<()> {
    let qmp = process.qmp();
    qmp.cmd("set-action", json!({"reboot": "reset"}))?;
    qmp.cmd("system_reset", json!({}))?;
    let t = Instant::now();
    while !qmp.take_events().iter().any(|e| e["event"] == "RESET") {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(Error::Guest("QEMU did not reset the machine within 10 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
        qmp.cmd("query-status", json!({}))?;
    }
    qmp.cmd("cont", json!({}))?;
    qmp.cmd("set-action", json!({"reboot": "shutdown"}))?;
    Ok(())
}

/// Asks the guest to power off (ACPI) and waits up to `limit` for it (the
/// caller then quits QEMU); whether it did.
fn power_off(process: &mut QemuProcess, limit: Duration) -> bool {
    let t = Instant::now();
    let _ = process.qmp().cmd("system_powerdown", json!({}));
    while t.elapsed() < limit {
        if let Ok(Some(_)) = process.child().try_wait() {
            return true;
        }
        let down = match process.qmp().cmd("query-status", json!({})) {
            Ok(s) => s["status"] == "shutdown",
            Err(_) => true,
        };
        if down {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// Quits the VM's QEMU.
fn quit(vm: Vm) {
    match vm {
        Vm::Booted(b) => b.machine.quit(),
        Vm::Recovered(r) => r.vm.quit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(agent: bool, on_failure: Reboot, on_reboot: Reboot) -> RunOptions<'static> {
        RunOptions {
            candidates: Path::new("."),
            store: None,
            vmm: Vmm::Spawn,
            on_failure,
            on_reboot,
            agent,
            retry_after: Duration::from_secs(60),
            power_off: Duration::from_secs(60),
            hang_after: Duration::from_secs(10),
            agent_wait: Duration::from_secs(120),
        }
    }

    #[test]
    fn failure_detection_is_added_once() {
        let cmd = UserCommand { qemu: "qemu".into(), args: vec!["-m".into(), "512".into()] };
        let with = with_failure_detection(&cmd);
        assert_eq!(with.args[2..], FAILURE_DETECTION);
        assert_eq!(with_failure_detection(&with), with, "a command line that has them keeps its own");
    }

    /// A reset where the policy asks for a normal reboot, and always
    /// without the agent; never for a QEMU that exited.
    #[test]
    fn policies_choose_between_recovery_and_reset() {
        let phase = opts(true, Reboot::Phase, Reboot::Phase);
        assert!(!resets(&Failure::Panicked, &phase) && !resets(&Failure::Rebooted, &phase));
        let full_reboot = opts(true, Reboot::Phase, Reboot::Full);
        assert!(resets(&Failure::Rebooted, &full_reboot) && !resets(&Failure::Hung, &full_reboot));
        let normal = opts(true, Reboot::Full, Reboot::Phase);
        assert!(resets(&Failure::Panicked, &normal) && resets(&Failure::Hung, &normal));
        let no_agent = opts(false, Reboot::Phase, Reboot::Phase);
        assert!(resets(&Failure::Panicked, &no_agent) && resets(&Failure::Rebooted, &no_agent));
        assert!(!resets(&Failure::Exited("signal 9".into()), &normal));
    }

    #[test]
    fn a_back_off_is_told_and_a_stop_ends_it() {
        let stop = AtomicBool::new(true);
        let mut told = Vec::new();
        assert!(back_off(Duration::from_secs(60), &stop, &mut |e| told.push(e.json()["event"].clone())));
        assert_eq!(told, ["backing-off", "stopping"]);
        assert!(!back_off(Duration::ZERO, &stop, &mut |_| panic!("no wait, no event")));
    }

    #[test]
    fn candidates_are_the_visible_pbr_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.pbr", "a.pbr", ".pbr-1-x.tmp", ".hidden.pbr", "a.qemu"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let names: Vec<_> =
            candidate_files(dir.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["a.pbr", "b.pbr"]);
        assert!(candidate_files(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn events_name_themselves() {
        let exited = Detected { failure: Failure::Exited("exit status: 1".into()), late: Duration::ZERO };
        let failed = Event::Failed(&exited).json();
        assert_eq!(
            failed,
            json!({"event": "failed", "kind": "qemu-exit", "detail": "exit status: 1", "detection_s": 0.0})
        );
        let hung = Detected { failure: Failure::Hung, late: Duration::from_millis(1500) };
        assert_eq!(Event::Failed(&hung).json()["detection_s"], 1.5);
        assert_eq!(Event::Booting("start").json(), json!({"event": "booting", "reason": "start"}));
    }
}
