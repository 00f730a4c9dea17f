//! Boots from scratch, timed as a recovery is: a phase guest until its
//! service answers, an agent's machine until its agent says ready.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::agent::vmgenid_args;
use crate::error::{Error, Result};
use crate::guest::{Guest, GuestSpec};
use crate::machine::{Machine, UserCommand};
use crate::ready::{serve, until_ready};
use crate::recovery::{Recovery, Refused};
use crate::resident::Resident;
use crate::vmm::Vmm;

/// Boots `spec` from scratch and returns the time until the guest's
/// service answers a client on the host ([`crate::service::wait_ready`]):
/// from QEMU's start ([`Vmm::Spawn`]), or from `cont` of a QEMU started
/// paused ([`Vmm::Standby`]). The guest's own `PBR-READY` must follow.
///
/// # Errors
/// QEMU or the guest failed.
pub fn cold_boot(spec: &GuestSpec, vmm: Vmm) -> Result<Duration> {
    let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
    let (t, mut g) = match vmm {
        Vmm::Spawn => {
            let t = Instant::now();
            (t, Guest::boot(spec, work.path(), false)?)
        }
        Vmm::Standby | Vmm::Prestaged => {
            let mut g = Guest::boot(spec, work.path(), true)?;
            let t = Instant::now();
            g.qemu.qmp().cmd("cont", serde_json::json!({}))?;
            (t, g)
        }
    };
    let served = serve(&mut g.control, &mut g.qemu, g.port, false, t)?;
    g.quit();
    Ok(served.at)
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
    on_ready: &mut dyn FnMut(&Recovery, Option<&mut Child>),
) -> Result<Recovery> {
    boot_after(cmd, vmm, Before::default(), on_ready)
}

/// What a recovery did before it had to boot from scratch.
#[derive(Default)]
pub(crate) struct Before {
    /// The candidates refused.
    pub(crate) refused: Vec<Refused>,
    /// Judging them.
    pub(crate) select: Duration,
    /// What the standby QEMU held.
    pub(crate) held: Option<Resident>,
    /// From the decision until the boot started.
    pub(crate) spent: Duration,
}

/// [`boot_points`] after `before`, which the report (also the one
/// `on_ready` gets) includes.
pub(crate) fn boot_after(
    cmd: &UserCommand,
    vmm: Vmm,
    before: Before,
    on_ready: &mut dyn FnMut(&Recovery, Option<&mut Child>),
) -> Result<Recovery> {
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
        m.qemu.qmp().cmd("cont", serde_json::json!({}))?;
        t
    } else {
        t0
    };
    let restore = t.elapsed();
    until_ready(&mut m.agent, &mut m.qemu)?;
    let downtime = before.spent + t.elapsed();
    let restore = before.spent - before.select + restore;
    let r = Recovery {
        chosen: None,
        refused: before.refused,
        downtime,
        select: before.select,
        restore,
        guest: downtime.saturating_sub(before.select + restore),
        adapter: "qemu",
        ram_mapped: false,
        vmm: if paused { Vmm::Standby } else { Vmm::Spawn },
        signal: "the agent said ready".into(),
        held: before.held,
        page_check: Duration::ZERO,
        resumed: None,
        refilled_pages: 0,
        refill: Duration::ZERO,
    };
    on_ready(&r, Some(m.qemu.child()));
    m.quit();
    Ok(r)
}
