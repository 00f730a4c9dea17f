//! What a recovery or a boot from scratch did: the report both give.

use std::path::PathBuf;
use std::time::Duration;

use pbr_agent::message::Resumed;

use crate::resident::Resident;
use crate::vmm::Vmm;

/// A candidate that was not restored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The candidate.
    pub path: PathBuf,
    /// Why (one line).
    pub reason: String,
}

/// What a recovery (or a boot from scratch) did.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// The candidate restored; `None` for a boot from scratch.
    pub chosen: Option<PathBuf>,
    /// The candidates refused, latest first: one that does not open, whose
    /// seals do not hold, or whose restore found a damaged page or pages it
    /// cannot refill (before its guest ran).
    pub refused: Vec<Refused>,
    /// From the decision to recover until the guest was ready.
    pub downtime: Duration,
    /// Of which judging the candidates.
    pub select: Duration,
    /// Of which starting QEMU and loading the state, until the VM ran.
    pub restore: Duration,
    /// Of which the restored guest's work until it was ready.
    pub guest: Duration,
    /// The adapter that restored it: `qemu`, or `kvm` for images the
    /// project's own VMM wrote.
    pub adapter: &'static str,
    /// Whether the guest's RAM was mapped from the image (KVM; QEMU 8.2+
    /// with a flat image) rather than streamed through QEMU's migration.
    pub ram_mapped: bool,
    /// Where the restoring QEMU came from: the standby or prestaged one
    /// when it served the chosen candidate, else [`Vmm::Spawn`] (also for
    /// the KVM adapter, which starts no QEMU).
    pub vmm: Vmm,
    /// The ready signal: the service's status line and the guest's own
    /// `PBR-READY <uptime>` that followed, for a phase guest; the agent's
    /// ready; the first port write of a VMM guest.
    pub signal: String,
    /// What the standby or prestaged QEMU held in memory just before the
    /// decision; `None` without one.
    pub held: Option<Resident>,
    /// Checking the crc32 of the pages QEMU maps from a flat candidate,
    /// beside QEMU's start and load (zero when done before the decision,
    /// or streamed: each streamed page is checked as it is written).
    pub page_check: Duration,
    /// What the restored guest's agent did (clock step, entropy).
    pub resumed: Option<Resumed>,
    /// Page-cache pages read back from the guest's disks before it ran.
    pub refilled_pages: u64,
    /// Of the restore, reading them back.
    pub refill: Duration,
}

impl Recovery {
    /// How the guest's RAM got there: `mapped` or `streamed`.
    pub fn ram(&self) -> &'static str {
        if self.ram_mapped { "mapped" } else { "streamed" }
    }
}
