//! Recovery of a machine captured at its agent's points: the latest
//! candidate whose seals hold is restored, the guest told to catch up
//! (clock, entropy), and the recovery is over when the agent says ready.
//! A candidate whose seals do not hold is refused with its reason; when
//! none is left, the machine boots from scratch.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use pbr_agent::message::{Message, Resumed};
use pbr_format::Image;

use crate::Vmm;
use crate::agent::{AgentPort, port_args, vmgenid_args};
use crate::machine::{Machine, UserCommand};
use crate::points::{AGENT_KEY, QEMU_KEY};
use pbr_replay::qemu::QemuAdapter;
use pbr_tools::error::{Error, Result};
use pbr_tools::qemu::compat::QemuHost;
use pbr_tools::seal::{SEALS_KEY, Seals};

/// How long a restored or booting guest may take to say ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// A candidate that was not restored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The candidate.
    pub path: PathBuf,
    /// Why (one line).
    pub reason: String,
}

/// What [`recover_points`] or [`boot_points`] did.
#[derive(Clone, Debug)]
pub struct PointsRecovery {
    /// The candidate restored; `None` for a boot from scratch.
    pub chosen: Option<PathBuf>,
    /// The candidates refused before it, latest first.
    pub refused: Vec<Refused>,
    /// From the decision until the agent said ready.
    pub downtime: Duration,
    /// Of which checking the candidates' seals.
    pub select: Duration,
    /// Of which starting QEMU and loading the state, until the VM ran.
    pub restore: Duration,
    /// Where the QEMU came from.
    pub vmm: Vmm,
    /// What the standby or prestaged QEMU held in memory just before the
    /// decision; `None` without one.
    pub held: Option<crate::resident::Resident>,
    /// What the restored guest's agent did (clock step, entropy).
    pub resumed: Option<Resumed>,
    /// Page-cache pages read back from the guest's disks before it ran.
    pub refilled_pages: u64,
    /// Of the restore, reading them back.
    pub refill: Duration,
    /// Whether QEMU mapped the guest's RAM from a flat candidate rather
    /// than loading it from the stream.
    pub ram_mapped: bool,
    /// Checking the crc32 of the pages QEMU maps from a flat candidate,
    /// beside QEMU's start and load (zero when done before the decision,
    /// or streamed: each streamed page is checked as it is written).
    pub page_check: Duration,
}

/// Whether `img` was captured at an agent's point.
pub fn is_agent_candidate(img: &Image) -> bool {
    img.metadata_value(AGENT_KEY) == Some("1")
}

/// The user's command line a candidate records (as recorded: to boot
/// afresh; [`pbr_tools::qemu::compat::restore_args`] makes it restore the
/// candidate), with `qemu` in place of the recorded binary when given.
///
/// # Errors
/// The candidate records none.
pub fn recorded_command(img: &Image, qemu: Option<&str>) -> Result<UserCommand> {
    let args = QemuAdapter::recorded_boot_args(img)
        .ok_or_else(|| Error::Unsupported("the candidate records no QEMU command line".into()))?;
    let binary = qemu.or(img.metadata_value(QEMU_KEY)).unwrap_or("qemu-system-x86_64");
    Ok(UserCommand { qemu: binary.to_owned(), args })
}

/// Checks a candidate's seals against the host now, `host` being the QEMU
/// that would restore it.
pub fn check(img: &Image, host: &QemuHost) -> std::result::Result<(), String> {
    let seals = img.metadata_value(SEALS_KEY).ok_or("it records no seals")?;
    let seals = Seals::from_json(seals).map_err(|e| e.to_string())?;
    seals.check(host, img.metadata_value("qemu.machine")).map_err(|r| r.0)
}

/// Recovers from the latest of `candidates` whose seals hold (refusals go
/// to `on_refused` as they are decided), or boots from scratch when none
/// does. `on_ready` gets the running QEMU once the agent said ready; when
/// it returns, QEMU quits.
///
/// # Errors
/// No candidate opens, QEMU or the agent failed.
pub fn recover_points(
    candidates: &[PathBuf],
    qemu: Option<&str>,
    vmm: Vmm,
    on_refused: &mut dyn FnMut(&Refused),
    on_ready: &mut dyn FnMut(&PointsRecovery, &mut Child),
) -> Result<PointsRecovery> {
    // A candidate that does not open is refused, never trusted; the others
    // are still judged.
    let mut refused = Vec::new();
    let mut images = Vec::new();
    let mut paths = Vec::new();
    for p in candidates {
        match Image::open(p) {
            Ok(img) => {
                images.push(img);
                paths.push(p.clone());
            }
            Err(e) => {
                let r = Refused { path: p.clone(), reason: format!("does not open: {e}") };
                on_refused(&r);
                refused.push(r);
            }
        }
    }
    let candidates = &paths[..];
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(crate::phase_order(&images[i])));
    let latest = *order.first().ok_or_else(|| Error::NoCandidate("no candidate opens: do a full reboot".into()))?;
    let cmd = recorded_command(&images[latest], qemu)?;
    let host = QemuHost::of(&cmd.qemu).map_err(Error::Unsupported)?;
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let _interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let (port, sock) = port_args(work.path());
    let mut extra = port;
    extra.extend(vmgenid_args()?);
    // The arguments that restore candidate `img`: its machine type pinned.
    let args_for = |img: &Image| {
        let mut a = pbr_tools::qemu::compat::restore_args(cmd.args.clone(), img);
        a.extend(extra.iter().cloned());
        a
    };
    let args = args_for(&images[latest]);

    // Before the failure: a QEMU waiting for a stream, or holding the
    // latest candidate paused.
    let mut standby = match vmm {
        Vmm::Spawn => None,
        // RAM already mapped from the latest candidate where it is flat,
        // and its page-cache pages read back beforehand: the seal check at
        // the decision proves them current.
        Vmm::Standby => {
            Some(QemuAdapter::standby_prepared(&cmd.qemu, args.clone(), &candidates[latest], &images[latest])?)
        }
        Vmm::Prestaged => Some(
            QemuAdapter::prestage(&cmd.qemu, args.clone(), &candidates[latest])
                .or_else(|_| QemuAdapter::standby(&cmd.qemu, args.clone()))?,
        ),
    };
    let mut agent = match standby {
        Some(_) => Some(AgentPort::connect(&sock)?),
        None => None,
    };

    let held = standby.as_ref().and_then(QemuAdapter::pid).and_then(crate::resident::Resident::of);
    let t = Instant::now();
    let mut select = Duration::ZERO;
    let mut next = order.iter().copied();
    // The latest candidate whose seals hold is restored; one found damaged
    // while it loads (a page failing its crc32 stops the stream before the
    // guest runs) is refused and the next one is tried.
    let (i, mut q, used) = loop {
        let s = Instant::now();
        let chosen = next.by_ref().find(|&i| match check(&images[i], &host) {
            Ok(()) => true,
            Err(reason) => {
                let r = Refused { path: candidates[i].clone(), reason };
                on_refused(&r);
                refused.push(r);
                false
            }
        });
        select += s.elapsed();
        let Some(i) = chosen else {
            drop(standby.take());
            let before = Before { refused, select, held, spent: t.elapsed() };
            return boot_after(&cmd, Vmm::Spawn, before, on_ready);
        };
        match restore_into(&cmd.qemu, &args_for(&images[i]), &candidates[i], &images[i], standby.take()) {
            Ok((q, used)) => break (i, q, used),
            Err(e) if e.refuses_candidate() => {
                agent = None;
                let r = Refused { path: candidates[i].clone(), reason: e.refusal() };
                on_refused(&r);
                refused.push(r);
            }
            Err(e) => return Err(e),
        }
    };
    if used == Vmm::Spawn {
        // The standby QEMU's agent connection went with it.
        agent = None;
    }
    let restore = t.elapsed() - select;
    let mut agent = match agent {
        Some(a) => a,
        None => AgentPort::connect(&sock)?,
    };
    agent.resume()?;
    let resumed = until_ready(&mut agent)?;
    let r = PointsRecovery {
        chosen: Some(candidates[i].clone()),
        refused,
        downtime: t.elapsed(),
        select,
        restore,
        vmm: used,
        held,
        resumed,
        refilled_pages: q.refilled_pages(),
        refill: q.refill_time(),
        ram_mapped: q.ram_mapped(),
        page_check: q.page_check_time(),
    };
    if let Some(child) = q.child.as_mut() {
        on_ready(&r, child);
    }
    if let Some(qmp) = q.qmp.as_mut() {
        let _ = qmp.cmd("quit", serde_json::json!({}));
    }
    Ok(r)
}

/// Restores `img` (at `path`) with `args` into the waiting QEMU where it
/// can take it, else into a new `qemu` (the waiting one is stopped first:
/// it holds the ports and sockets of `args`); says which way it went.
///
/// # Errors
/// QEMU failed, or the image is damaged (the guest never ran).
pub(crate) fn restore_into(
    qemu: &str,
    args: &[String],
    path: &Path,
    img: &Image,
    standby: Option<QemuAdapter>,
) -> Result<(QemuAdapter, Vmm)> {
    let hash = img.image_blake3();
    match standby {
        Some(mut s) if s.held() == Some(hash) => {
            s.cont()?;
            Ok((s, Vmm::Prestaged))
        }
        // It holds another candidate, maps another's RAM, or runs another
        // machine type: a new QEMU after all.
        Some(s) if s.held().is_some() || s.maps().is_some_and(|h| h != hash) || s.args() != args => {
            drop(s);
            Ok((spawn_load(qemu, args, path, img)?, Vmm::Spawn))
        }
        Some(mut s) => {
            s.set_image(path);
            load(img, path, &mut s)?;
            Ok((s, Vmm::Standby))
        }
        None => Ok((spawn_load(qemu, args, path, img)?, Vmm::Spawn)),
    }
}

fn spawn_load(qemu: &str, args: &[String], path: &Path, img: &Image) -> Result<QemuAdapter> {
    let mut q = QemuAdapter::new(path, qemu, args.to_vec())?;
    load(img, path, &mut q)?;
    Ok(q)
}

fn load(img: &Image, path: &Path, q: &mut QemuAdapter) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("candidate", e))?;
    pbr_replay::replay(img, &file, q).map(|_| ())
}

/// Answers every point with "carry on" (nothing is captured during a
/// recovery) until the agent says ready; returns what a restored guest's
/// agent reported doing.
fn until_ready(agent: &mut AgentPort) -> Result<Option<Resumed>> {
    let mut resumed = None;
    loop {
        match agent.next(READY_TIMEOUT)? {
            Message::Resumed(r) => resumed = Some(r),
            Message::Point(_) => agent.carry_on()?,
            Message::Ready(_) => return Ok(resumed),
            Message::Kpageflags(_) | Message::Kpagecount(_) | Message::Files(_) | Message::Cache(_) => {}
            other => return Err(Error::Unsupported(format!("the guest agent sent {:?}", other.encode().kind))),
        }
    }
}

/// Boots `cmd` from scratch and times it until the agent says ready: from
/// QEMU's start ([`Vmm::Spawn`]), or from `cont` of a QEMU started paused
/// (the others). Every point is answered at once.
///
/// # Errors
/// QEMU or the agent failed.
pub fn boot_points(
    cmd: &UserCommand,
    vmm: Vmm,
    on_ready: &mut dyn FnMut(&PointsRecovery, &mut Child),
) -> Result<PointsRecovery> {
    boot_after(cmd, vmm, Before::default(), on_ready)
}

/// What a recovery did before it had to boot from scratch.
#[derive(Default)]
struct Before {
    refused: Vec<Refused>,
    select: Duration,
    held: Option<crate::resident::Resident>,
    /// From the decision until the boot started.
    spent: Duration,
}

/// [`boot_points`] after `before`, which the report (also the one
/// `on_ready` gets) includes.
fn boot_after(
    cmd: &UserCommand,
    vmm: Vmm,
    before: Before,
    on_ready: &mut dyn FnMut(&PointsRecovery, &mut Child),
) -> Result<PointsRecovery> {
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let _interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let mut extra = vmgenid_args()?;
    let paused = vmm != Vmm::Spawn;
    if paused {
        extra.push("-S".into());
    }
    let t0 = Instant::now();
    let mut m = Machine::start(cmd, work.path(), &extra)?;
    let t = if paused {
        let t = Instant::now();
        m.qmp.cmd("cont", serde_json::json!({}))?;
        t
    } else {
        t0
    };
    let restore = t.elapsed();
    until_ready(&mut m.agent)?;
    let r = PointsRecovery {
        chosen: None,
        refused: before.refused,
        downtime: before.spent + t.elapsed(),
        select: before.select,
        restore: before.spent - before.select + restore,
        vmm: if paused { Vmm::Standby } else { Vmm::Spawn },
        held: before.held,
        resumed: None,
        refilled_pages: 0,
        refill: Duration::ZERO,
        ram_mapped: false,
        page_check: Duration::ZERO,
    };
    on_ready(&r, &mut m.child);
    m.quit();
    Ok(r)
}
