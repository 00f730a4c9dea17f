//! `pbr-img boot`: its arguments; the work is [`super::phase`]'s.

use std::process::ExitCode;

use super::error::Result;
use super::phase;

/// The arguments of `boot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    guest: phase::GuestArgs,
    /// Start QEMU paused first and time from `cont`: a reboot of a VM
    /// whose QEMU process is already running (as after a reset).
    #[arg(long)]
    standby: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The QEMU command line of a guest that runs pbr-agent (binary
    /// first).
    #[arg(last = true, value_name = "QEMU")]
    command: Vec<String>,
}

/// Runs `boot`.
pub fn run(a: &Args) -> Result<ExitCode> {
    Ok(if a.command.is_empty() {
        phase::boot_run(&a.guest, a.standby, a.json)?
    } else {
        phase::boot_points_run(&a.command, a.standby, a.json)?
    })
}
