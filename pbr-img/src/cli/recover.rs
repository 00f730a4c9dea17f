//! `pbr-img recover`: its arguments; the work is [`super::phase`]'s.

use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::Vmm;

use super::error::Result;
use super::phase;

/// The arguments of `recover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The candidates of one boot, in any order.
    #[arg(required = true)]
    pub candidates: Vec<PathBuf>,
    /// Check candidates against the files under this root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// The QEMU binary [default: the one the capture ran, else
    /// qemu-system-x86_64].
    #[arg(long)]
    qemu: Option<String>,
    /// Keep the recovered guest running (until its QEMU exits) instead
    /// of stopping it once its service answered.
    #[arg(long)]
    keep_running: bool,
    /// Start a QEMU for the candidates' machine before the decision,
    /// waiting for the state (a warm standby VMM): its start is not
    /// downtime. A flat latest candidate's RAM is mapped in it and its
    /// stream built beforehand; nothing of the guest is loaded.
    #[arg(long)]
    standby: bool,
    /// As --standby, and the standby QEMU loads the latest candidate
    /// before the decision and holds it paused: choosing that candidate
    /// (unchanged) only resumes it. The guest's memory is held from
    /// then on, unless the candidate is flat (its RAM is only mapped).
    #[arg(long, conflicts_with = "standby")]
    prestaged: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `recover`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let vmm = match (a.standby, a.prestaged) {
        (_, true) => Vmm::Prestaged,
        (true, _) => Vmm::Standby,
        _ => Vmm::Spawn,
    };
    Ok(phase::recover_run(&a.candidates, a.root.as_deref(), a.qemu.as_deref(), vmm, a.keep_running, a.json)?)
}
