//! Where the QEMU process of a timed boot or recovery comes from.

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
