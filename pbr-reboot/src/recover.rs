//! Recovery: one engine for every candidate. The candidates are opened
//! once; the latest valid one (its seals hold for an agent's candidate,
//! its files match `root` for a phase guest's) is restored with every page
//! checked as it goes; one found damaged, or whose cache cannot be
//! refilled, is refused and the next is tried. The recovery is over when
//! the guest says ready: its agent, or its service answering on the host.
//! When no candidate is left, an agent's machine boots from scratch; a
//! phase guest's recovery ends with [`Error::NoCandidate`].

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pbr_agent::message::Resumed;
use pbr_format::Image;
use pbr_replay::qemu::process::QemuProcess;
use pbr_replay::qemu::{QemuAdapter, ServedRam};
use pbr_tools::compat::QemuHost;

use crate::agent::{AgentPort, port_args, vmgenid_args};
use crate::boot::{Before, boot_after};
use crate::error::{Error, Result};
use crate::guest::{Control, serial_args};
use crate::machine::UserCommand;
use crate::ready::{serve, until_ready};
use crate::recovery::{Recovery, Refused};
use crate::resident::Resident;
use crate::select::{check, is_agent_candidate, recorded_command};
use crate::service;
use crate::standby::{Opened, Standby, restore_into};
use crate::vmm::Vmm;

/// How to recover.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoverOptions<'a> {
    /// Judge a phase guest's candidates by the files they recorded against
    /// this root; without it, by phase alone. (An agent's candidates are
    /// judged by their seals.)
    pub root: Option<&'a Path>,
    /// The QEMU binary; else the one an agent's candidate records, else
    /// `qemu-system-x86_64`.
    pub qemu: Option<&'a str>,
    /// Where the restoring QEMU comes from.
    pub vmm: Vmm,
    /// Candidates whose RAM a server outside the file serves (a store
    /// image's shell and its mount, `pbr-store`): each is restored into a
    /// QEMU of its own that maps its RAM from the server.
    pub served: &'a [(PathBuf, Arc<dyn ServedRam>)],
}

/// How the candidates' machine is run and says it is ready.
enum Wiring {
    /// A guest that runs pbr-agent: the user's command line with the
    /// agent's port and a VM generation id; its seals judge a candidate.
    Agent { cmd: UserCommand, host: QemuHost, sock: PathBuf, extra: Vec<String> },
    /// A phase guest: its recorded machine with its service forwarded to
    /// `port` of the host and its control port on `ctl`.
    Phase { qemu: String, port: u16, serial: Vec<String>, ctl: PathBuf },
}

/// The connection a restored guest says ready on: its agent's port, or
/// its control port and the host port its service is forwarded to.
enum Link {
    Agent(AgentPort),
    Control(Control, u16),
}

impl Wiring {
    /// The wiring of the candidates' machine: an agent's when one of them
    /// was captured at an agent's point (with the command line the latest
    /// such records), else a phase guest's. Its sockets go in `work`.
    fn of(opened: &[Opened], latest_first: &[usize], opts: &RecoverOptions<'_>, work: &Path) -> Result<Wiring> {
        Ok(match latest_first.iter().find(|&&i| is_agent_candidate(&opened[i].image)) {
            Some(&i) => {
                let cmd = recorded_command(&opened[i].image, opts.qemu)?;
                let host = QemuHost::of(&cmd.qemu).map_err(Error::Usage)?;
                let (mut extra, sock) = port_args(work);
                extra.extend(vmgenid_args()?);
                Wiring::Agent { cmd, host, sock, extra }
            }
            None => {
                let (serial, ctl) = serial_args(work);
                let qemu = opts.qemu.unwrap_or("qemu-system-x86_64").to_owned();
                Wiring::Phase { qemu, port: service::free_port()?, serial, ctl }
            }
        })
    }

    fn qemu(&self) -> &str {
        match self {
            Wiring::Agent { cmd, .. } => &cmd.qemu,
            Wiring::Phase { qemu, .. } => qemu,
        }
    }

    /// The arguments that restore `img`: its machine type pinned.
    fn args(&self, img: &Image) -> Result<Vec<String>> {
        let (mut a, own) = self.parts(img)?;
        a.extend(own);
        Ok(a)
    }

    /// [`Wiring::args`] in two parts: the machine's own, and what the
    /// recovery adds to reach the guest (its sockets, in the work
    /// directory).
    fn parts(&self, img: &Image) -> Result<(Vec<String>, Vec<String>)> {
        match self {
            Wiring::Agent { cmd, extra, .. } => {
                Ok((pbr_tools::compat::restore_args(cmd.args.clone(), img), extra.clone()))
            }
            Wiring::Phase { port, serial, .. } => {
                let mut a = pbr_replay::qemu::args::recorded_args(img)
                    .ok_or_else(|| Error::Usage("the candidate records no restore command line".into()))?;
                service::forward(&mut a, *port)?;
                Ok((a, serial.clone()))
            }
        }
    }

    /// Whether `img` may be restored now, else why not.
    fn judge(&self, img: &Image) -> std::result::Result<(), String> {
        match self {
            Wiring::Agent { host, .. } => check(img, host),
            Wiring::Phase { .. } => Ok(()),
        }
    }

    fn connect(&self) -> Result<Link> {
        Ok(match self {
            Wiring::Agent { sock, .. } => Link::Agent(AgentPort::connect(sock)?),
            Wiring::Phase { ctl, port, .. } => Link::Control(Control::connect(ctl)?, *port),
        })
    }
}

/// The refusals of a recovery, told as they are decided.
struct Refusals<'a> {
    list: Vec<Refused>,
    on: &'a mut dyn FnMut(&Refused),
}

impl Refusals<'_> {
    fn push(&mut self, path: &Path, reason: String) {
        let r = Refused { path: path.to_path_buf(), reason };
        (self.on)(&r);
        self.list.push(r);
    }
}

/// Whether the project's own VMM wrote `img` (as `examples/phase_vmm.rs`
/// does): it is restored on /dev/kvm, not by QEMU.
fn is_vmm_image(img: &Image) -> bool {
    img.metadata_value(pbr_format::keys::SOURCE_FORMAT) == Some("vmm")
}

/// Recovers from the latest of `candidates` that may be restored, as the
/// module says. Refusals go to `on_refused` as they are decided;
/// `on_ready` gets the report and the running QEMU once the guest is
/// ready (no QEMU for a VMM image); when it returns, QEMU quits (a caller
/// that wants the guest to keep running waits inside it).
///
/// With [`Vmm::Standby`], a QEMU for the latest candidate's machine is
/// started before the decision and waits for the state (its RAM mapped
/// and its stream made ready where it can); when the chosen candidate
/// records another machine, a new QEMU is started after all. With
/// [`Vmm::Prestaged`], that QEMU has loaded the latest candidate before
/// the decision and holds it paused.
///
/// # Errors
/// No candidate opens, or (a phase guest) none is left; QEMU, KVM, the
/// guest or its agent failed.
pub fn recover(
    candidates: &[PathBuf],
    opts: &RecoverOptions<'_>,
    on_refused: &mut dyn FnMut(&Refused),
    on_ready: &mut dyn FnMut(&Recovery, Option<&mut Child>),
) -> Result<Recovery> {
    match restore(candidates, opts, on_refused)? {
        Outcome::Running(mut r) => {
            on_ready(&r.report, r.vm.process().map(|p| p.child()));
            r.vm.quit();
            Ok(r.report)
        }
        Outcome::Kvm(r) => {
            on_ready(&r, None);
            Ok(r)
        }
        Outcome::NoneLeft { before, cmd: Some(cmd) } => boot_after(&cmd, Vmm::Spawn, before, on_ready),
        Outcome::NoneLeft { before, cmd: None } => Err(no_candidate(&before.refused)),
    }
}

/// As [`recover`], and the restored guest runs on: it is handed over, ready,
/// with its agent's port. `None` when no candidate is left (the caller boots
/// from scratch).
///
/// # Errors
/// As [`recover`]; a VMM image is refused (it runs on KVM, not QEMU).
pub fn recover_running(
    candidates: &[PathBuf],
    opts: &RecoverOptions<'_>,
    on_refused: &mut dyn FnMut(&Refused),
) -> Result<Option<Running>> {
    running(restore(candidates, opts, on_refused)?)
}

/// The running guest of a recovery's outcome.
fn running(outcome: Outcome) -> Result<Option<Running>> {
    match outcome {
        Outcome::Running(r) => Ok(Some(*r)),
        Outcome::NoneLeft { .. } => Ok(None),
        Outcome::Kvm(r) => Err(Error::Usage(format!(
            "{} is the project's own VMM's image: it runs on KVM, not as a QEMU machine",
            r.chosen.map_or_else(String::new, |p| p.display().to_string())
        ))),
    }
}

/// A restored guest, running and ready.
pub struct Running {
    /// What the recovery did.
    pub report: Recovery,
    /// The QEMU running it.
    pub vm: QemuAdapter,
    /// Its agent's port, for an agent's guest: its points are to be
    /// answered, what it says read.
    pub agent: Option<AgentPort>,
    /// The sockets of its machine.
    _work: tempfile::TempDir,
    /// Removes them if the tool is interrupted.
    _interrupt: pbr_tools::cleanup::Registration,
}

/// How a recovery ended, before its guest is handed over.
enum Outcome {
    /// A QEMU guest restored and ready.
    Running(Box<Running>),
    /// A VMM image, restored on KVM and run to its first port write.
    Kvm(Recovery),
    /// No candidate is left: what was done, and for an agent's machine the
    /// command line that boots it from scratch.
    NoneLeft { before: Before, cmd: Option<UserCommand> },
}

/// A recovery made ready before the failure: the candidates opened once
/// and, with a standby [`Vmm`], a QEMU for the latest one waiting (and,
/// prestaged, holding it paused). [`recover_prepared`] finishes it.
pub struct Prepared {
    opened: Vec<Opened>,
    /// Indices into `opened`, latest first.
    latest_first: Vec<usize>,
    /// The candidates that did not open.
    refused: Vec<Refused>,
    wiring: Wiring,
    standby: Option<Standby>,
    /// The standby's agent or control port, connected.
    link: Option<Link>,
    /// Why no QEMU waits, when one was asked for and none could.
    no_standby: Option<String>,
    work: tempfile::TempDir,
    interrupt: pbr_tools::cleanup::Registration,
}

impl Prepared {
    /// The candidate the waiting QEMU is for, if one waits.
    pub fn standby_for(&self) -> Option<&Path> {
        self.standby.as_ref().and_then(|_| self.latest_first.first()).map(|&i| self.opened[i].path.as_path())
    }

    /// Why no QEMU waits although `opts.vmm` asked for one.
    pub fn no_standby(&self) -> Option<&str> {
        self.no_standby.as_deref()
    }
}

/// Makes the recovery from `candidates` ready, as [`recover`] does before
/// its decision. `beside` starts the waiting QEMU while the VM it will
/// replace still runs: it gets stand-ins for what that VM binds on the
/// host (forwarded ports, listening sockets, files its chardevs write) and
/// takes them over once the VM is gone; a command line with something
/// that cannot be taken over gets no waiting QEMU
/// ([`Prepared::no_standby`]).
///
/// # Errors
/// No candidate opens (a [`Error::NoCandidate`]), a work directory, or the
/// waiting QEMU did not start.
pub fn prepare(candidates: &[PathBuf], opts: &RecoverOptions<'_>, beside: bool) -> Result<Prepared> {
    let (opened, refused) = open_all(candidates, opts.served);
    if opened.is_empty() {
        return Err(no_candidate(&refused));
    }
    prepare_opened(opened, refused, opts, beside)
}

/// [`prepare`] of the candidates that opened (at least one).
fn prepare_opened(
    opened: Vec<Opened>,
    refused: Vec<Refused>,
    opts: &RecoverOptions<'_>,
    beside: bool,
) -> Result<Prepared> {
    let mut latest_first: Vec<usize> = (0..opened.len()).collect();
    latest_first.sort_by_key(|&i| std::cmp::Reverse(crate::select::phase_order(&opened[i].image)));
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let wiring = Wiring::of(&opened, &latest_first, opts, work.path())?;
    let latest = &opened[latest_first[0]];
    let started = match (opts.vmm, is_vmm_image(&latest.image)) {
        // A VMM image needs no QEMU.
        (Vmm::Spawn, _) | (_, true) => Ok(None),
        (vmm, false) => wiring
            .parts(&latest.image)
            .map_err(|e| e.to_string())
            .and_then(|parts| Standby::start(wiring.qemu(), parts, latest, vmm, beside.then(|| work.path()))),
    };
    let (standby, no_standby) = match started {
        Ok(s) => (s, None),
        Err(why) => (None, Some(why)),
    };
    let link = match standby {
        Some(_) => Some(wiring.connect()?),
        None => None,
    };
    // Asked before the decision: a flat candidate's restore needs it.
    let _ = pbr_tools::compat::qemu_full_version(wiring.qemu());
    Ok(Prepared { opened, latest_first, refused, wiring, standby, link, no_standby, work, interrupt })
}

/// The recovery proper: the latest valid candidate restored, until its
/// guest is ready.
fn restore(candidates: &[PathBuf], opts: &RecoverOptions<'_>, on_refused: &mut dyn FnMut(&Refused)) -> Result<Outcome> {
    let (opened, refused) = open_all(candidates, opts.served);
    if opened.is_empty() {
        refused.iter().for_each(&mut *on_refused);
        return Err(Error::NoCandidate("no candidate opens: do a full reboot".into()));
    }
    decide(prepare_opened(opened, refused, opts, false)?, opts.root, on_refused)
}

/// As [`recover_running`], from a recovery made ready before the failure.
///
/// # Errors
/// As [`recover_running`].
pub fn recover_prepared(
    prepared: Prepared,
    root: Option<&Path>,
    on_refused: &mut dyn FnMut(&Refused),
) -> Result<Option<Running>> {
    running(decide(prepared, root, on_refused)?)
}

/// From the decision on: the candidates judged, the latest valid one
/// restored (into the waiting QEMU where it can), until its guest is
/// ready.
fn decide(p: Prepared, root: Option<&Path>, on_refused: &mut dyn FnMut(&Refused)) -> Result<Outcome> {
    let Prepared { opened, latest_first, refused, wiring, mut standby, mut link, work, interrupt, .. } = p;
    let mut refusals = Refusals { list: Vec::new(), on: on_refused };
    for r in refused {
        refusals.push(&r.path, r.reason);
    }
    let qemu = wiring.qemu().to_owned();
    let held = standby.as_ref().and_then(|s| s.vm.pid()).and_then(Resident::of);

    let t = Instant::now();
    // A phase guest's candidates by their files against `root`, valid
    // ones only; else latest first.
    let order: Vec<usize> = match (&wiring, root) {
        (Wiring::Phase { .. }, Some(root)) => {
            let refs: Vec<&Image> = opened.iter().map(|o| &o.image).collect();
            let verdicts = pbr_format::select::select_fast(&refs, root, false).verdicts;
            verdicts.iter().filter(|v| v.valid).map(|v| v.index).collect()
        }
        _ => latest_first,
    };
    let mut select = t.elapsed();
    let mut next = order.into_iter();
    let (chosen, mut q, used) = loop {
        let s = Instant::now();
        let found = next.by_ref().find(|&i| match wiring.judge(&opened[i].image) {
            Ok(()) => true,
            Err(reason) => {
                refusals.push(&opened[i].path, reason);
                false
            }
        });
        select += s.elapsed();
        let Some(i) = found else {
            drop(standby.take());
            let before = Before { refused: refusals.list, select, held, spent: t.elapsed() };
            let cmd = match wiring {
                Wiring::Agent { cmd, .. } => Some(cmd),
                Wiring::Phase { .. } => None,
            };
            return Ok(Outcome::NoneLeft { before, cmd });
        };
        let o = &opened[i];
        if is_vmm_image(&o.image) {
            let mut r = recover_kvm(o, t, select)?;
            r.refused = refusals.list;
            return Ok(Outcome::Kvm(r));
        }
        let restored = wiring.args(&o.image).and_then(|args| restore_into(&qemu, &args, o, standby.take()));
        match restored {
            Ok((q, used)) => break (o, q, used),
            Err(e) if e.refuses_candidate() => {
                // The standby QEMU, and its connection, went with it.
                link = None;
                refusals.push(&o.path, e.refusal());
            }
            Err(e) => return Err(e),
        }
    };
    if used == Vmm::Spawn {
        // The standby QEMU's connection went with it.
        link = None;
    }
    let restore = t.elapsed() - select;
    let mut link = match link {
        Some(l) => l,
        None => wiring.connect()?,
    };
    let process = q.process().ok_or_else(|| Error::Guest("the restored QEMU is not running".into()))?;
    let Ready { downtime, signal, resumed } = link.until_ready(process, t)?;
    let report = Recovery {
        chosen: Some(chosen.path.clone()),
        refused: refusals.list,
        downtime,
        select,
        restore,
        guest: downtime.saturating_sub(select + restore),
        adapter: "qemu",
        ram_mapped: q.ram_mapped(),
        vmm: used,
        signal,
        held,
        page_check: q.page_check_time(),
        resumed,
        refilled_pages: q.refilled_pages(),
        refill: q.refill_time(),
    };
    let agent = match link {
        Link::Agent(a) => Some(a),
        Link::Control(..) => None,
    };
    Ok(Outcome::Running(Box::new(Running { report, vm: q, agent, _work: work, _interrupt: interrupt })))
}

/// Opens every candidate once, with the server of its RAM when `served`
/// names one. One that does not open is refused, never trusted; the others
/// are still judged.
fn open_all(candidates: &[PathBuf], served: &[(PathBuf, Arc<dyn ServedRam>)]) -> (Vec<Opened>, Vec<Refused>) {
    let (mut opened, mut refused) = (Vec::new(), Vec::new());
    for p in candidates {
        match Image::open(p) {
            Ok(image) => {
                let served = served.iter().find(|(c, _)| c == p).map(|(_, r)| r.clone());
                opened.push(Opened { path: p.clone(), image, served });
            }
            Err(e) => refused.push(Refused { path: p.clone(), reason: format!("does not open: {e}") }),
        }
    }
    (opened, refused)
}

/// What the restored guest said when it was ready.
struct Ready {
    /// From the decision until then.
    downtime: Duration,
    /// The ready signal.
    signal: String,
    /// What its agent did to catch up.
    resumed: Option<Resumed>,
}

impl Link {
    /// Waits, from the decision at `t`, until the restored guest running
    /// in `process` is ready: its agent told to catch up and then saying
    /// ready, or its service answering while its control port is served.
    fn until_ready(&mut self, process: &mut QemuProcess, t: Instant) -> Result<Ready> {
        Ok(match self {
            Link::Agent(agent) => {
                agent.resume()?;
                let resumed = until_ready(agent, process)?;
                Ready { downtime: t.elapsed(), signal: "the agent said ready".into(), resumed }
            }
            Link::Control(control, port) => {
                let port = *port;
                let served = serve(control, process, port, true, t)?;
                let signal = format!("{} on the host's port {port}, then PBR-READY {}", served.status, served.uptime);
                Ready { downtime: served.at, signal, resumed: None }
            }
        })
    }
}

/// The error when no candidate is left: do a full reboot, and why each
/// was refused.
fn no_candidate(refused: &[Refused]) -> Error {
    let why: Vec<String> = refused.iter().map(|r| format!("{}: {}", r.path.display(), r.reason)).collect();
    Error::NoCandidate(if why.is_empty() {
        "do a full reboot".into()
    } else {
        format!("do a full reboot ({})", why.join("; "))
    })
}

/// Restores a VMM-written image on /dev/kvm and runs its first vCPU until
/// the guest writes to an I/O port.
fn recover_kvm(o: &Opened, t: Instant, select: Duration) -> Result<Recovery> {
    use pbr_replay::kvm::{Exit, KvmAdapter};
    let file = std::fs::File::open(&o.path).map_err(|e| Error::io("candidate", e))?;
    let mut vm = KvmAdapter::new()?;
    pbr_replay::replay(&o.image, &file, &mut vm)?;
    let restore = t.elapsed() - select;
    let id = o.image.vcpus().first().map(pbr_format::Vcpu::id).ok_or_else(|| Error::Usage("no vCPU".into()))?;
    let signal = match vm.run_until_io(id)? {
        Exit::IoOut { port, data } => {
            let hex: Vec<String> = data.iter().map(|b| format!("{b:02x}")).collect();
            format!("out port {port:#x}: {}", hex.join(" "))
        }
        Exit::Halt => return Err(Error::Guest("the restored guest halted".into())),
    };
    let downtime = t.elapsed();
    Ok(Recovery {
        chosen: Some(o.path.clone()),
        refused: Vec::new(),
        downtime,
        select,
        restore,
        guest: downtime - select - restore,
        adapter: "kvm",
        ram_mapped: true,
        vmm: Vmm::Spawn,
        signal,
        held: None,
        page_check: Duration::ZERO,
        resumed: None,
        refilled_pages: 0,
        refill: Duration::ZERO,
    })
}
