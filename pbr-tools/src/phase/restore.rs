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

use super::Vmm;
use super::agent::{AgentPort, port_args, vmgenid_args};
use super::machine::{Machine, UserCommand};
use super::points::{AGENT_KEY, QEMU_KEY};
use super::seal::{SEALS_KEY, Seals};
use crate::error::{Error, Result};
use crate::replay::qemu::{QemuAdapter, qemu_full_version};

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
    pub held: Option<super::resident::Resident>,
    /// What the restored guest's agent did (clock step, entropy).
    pub resumed: Option<Resumed>,
    /// Page-cache pages read back from the guest's disks before it ran.
    pub refilled_pages: u64,
    /// Of the restore, reading them back.
    pub refill: Duration,
    /// Whether QEMU mapped the guest's RAM from a flat candidate rather
    /// than loading it from the stream.
    pub ram_mapped: bool,
}

/// Whether `img` was captured at an agent's point.
pub fn is_agent_candidate(img: &Image) -> bool {
    img.metadata_value(AGENT_KEY) == Some("1")
}

/// The user's command line a candidate records, with `qemu` in place of
/// the recorded binary when given.
///
/// # Errors
/// The candidate records none.
pub fn recorded_command(img: &Image, qemu: Option<&str>) -> Result<UserCommand> {
    let args = QemuAdapter::recorded_args(img)
        .ok_or_else(|| Error::Unsupported("the candidate records no QEMU command line".into()))?;
    let binary = qemu.or(img.metadata_value(QEMU_KEY)).unwrap_or("qemu-system-x86_64");
    Ok(UserCommand { qemu: binary.to_owned(), args })
}

/// Checks a candidate's seals against the host now.
pub fn check(img: &Image, qemu_version: &str) -> std::result::Result<(), String> {
    let seals = img.metadata_value(SEALS_KEY).ok_or("it records no seals")?;
    let seals = Seals::from_json(seals).map_err(|e| e.to_string())?;
    seals.check(qemu_version).map_err(|r| r.0)
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
    order.sort_by_key(|&i| std::cmp::Reverse(super::phase_order(&images[i])));
    let latest = *order.first().ok_or_else(|| Error::NoCandidate("no candidate opens: do a full reboot".into()))?;
    let cmd = recorded_command(&images[latest], qemu)?;
    let version =
        qemu_full_version(&cmd.qemu).ok_or_else(|| Error::Unsupported(format!("cannot run {} --version", cmd.qemu)))?;
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let _interrupt = crate::cleanup::remove_on_interrupt(work.path());
    let (port, sock) = port_args(work.path());
    let mut args = cmd.args.clone();
    args.extend(port);
    args.extend(vmgenid_args()?);

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

    let held = standby.as_ref().and_then(QemuAdapter::pid).and_then(super::resident::Resident::of);
    let t = Instant::now();
    let mut chosen = None;
    for &i in &order {
        match check(&images[i], &version) {
            Ok(()) => {
                chosen = Some(i);
                break;
            }
            Err(reason) => {
                let r = Refused { path: candidates[i].clone(), reason };
                on_refused(&r);
                refused.push(r);
            }
        }
    }
    let select = t.elapsed();
    let Some(i) = chosen else {
        drop(standby.take());
        let mut r = boot_points(&cmd, Vmm::Spawn, on_ready)?;
        r.refused = refused;
        r.select = select;
        r.held = held;
        r.downtime += select;
        return Ok(r);
    };
    let hash = images[i].image_blake3();
    let (mut q, used) = match standby.take() {
        Some(mut s) if s.held() == Some(hash) => {
            s.cont()?;
            (s, Vmm::Prestaged)
        }
        Some(s) if s.held().is_some() || s.maps().is_some_and(|h| h != hash) => {
            // It holds another candidate, or maps another's RAM: a new QEMU
            // after all.
            drop(s);
            agent = None;
            (spawn_load(&cmd, &args, &candidates[i], &images[i])?, Vmm::Spawn)
        }
        Some(mut s) => {
            s.set_image(&candidates[i]);
            load(&images[i], &candidates[i], &mut s)?;
            (s, Vmm::Standby)
        }
        None => (spawn_load(&cmd, &args, &candidates[i], &images[i])?, Vmm::Spawn),
    };
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
    };
    if let Some(child) = q.child.as_mut() {
        on_ready(&r, child);
    }
    if let Some(qmp) = q.qmp.as_mut() {
        let _ = qmp.cmd("quit", serde_json::json!({}));
    }
    Ok(r)
}

fn spawn_load(cmd: &UserCommand, args: &[String], path: &Path, img: &Image) -> Result<QemuAdapter> {
    let mut q = QemuAdapter::new(path, &cmd.qemu, args.to_vec())?;
    load(img, path, &mut q)?;
    Ok(q)
}

fn load(img: &Image, path: &Path, q: &mut QemuAdapter) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("candidate", e))?;
    crate::replay::replay(img, &file, q).map(|_| ())
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
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let _interrupt = crate::cleanup::remove_on_interrupt(work.path());
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
        refused: Vec::new(),
        downtime: t.elapsed(),
        select: Duration::ZERO,
        restore,
        vmm: if paused { Vmm::Standby } else { Vmm::Spawn },
        held: None,
        resumed: None,
        refilled_pages: 0,
        refill: Duration::ZERO,
        ram_mapped: false,
    };
    on_ready(&r, &mut m.child);
    m.quit();
    Ok(r)
}
