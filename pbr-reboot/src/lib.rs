//! Phase-based reboot end to end: capture restartable candidates at a
//! guest's boot phases ([`capture`]) or its agent's points
//! ([`points::capture_points`]), and recover from the latest valid one
//! ([`recover`]), or boot from scratch ([`boot`]).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod agent;
pub mod boot;
pub mod capture;
pub mod error;
pub mod guest;
pub mod machine;
pub mod points;
mod ready;
pub mod recover;
pub mod recovery;
pub mod resident;
pub mod select;
pub mod service;

use pbr_format::Image;

pub use boot::{boot_points, cold_boot};
pub use capture::{CACHE_KEY, Candidate, CaptureOptions, KERNEL_PAGES_KEY, capture};
pub use error::{Error, Result};
pub use recover::{RecoverOptions, recover};
pub use recovery::{Recovery, Refused};

/// Where the QEMU process of a timed boot or recovery comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU is started after the decision: its start counts as downtime.
    #[default]
    Spawn,
    /// A QEMU process is running before the decision, as the VM's own
    /// process is when its guest reboots: for a cold boot, started paused at
    /// the machine's first instruction (what a reset gives); for a
    /// recovery, initialised and listening for a stream of the candidates'
    /// machine.
    Standby,
    /// As [`Vmm::Standby`], and for a recovery the standby QEMU has already
    /// loaded the latest candidate and holds it paused (the candidates are
    /// known long before a failure): when the decision chooses that image,
    /// unchanged, recovery only resumes it. A cold boot is as with
    /// [`Vmm::Standby`].
    Prestaged,
}

impl Vmm {
    /// The name scripts see: `spawn`, `standby` or `prestaged`.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Spawn => "spawn",
            Vmm::Standby => "standby",
            Vmm::Prestaged => "prestaged",
        }
    }
}

/// Where a candidate's phase stands in its boot: later phases sort higher.
pub fn phase_order(img: &Image) -> (u32, u64) {
    img.phase().map_or((0, 0), |p| (p.sequence, p.since_boot_ns))
}
