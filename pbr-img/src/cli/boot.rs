//! `pbr-img boot`: a cold boot from scratch, timed as `recover` times a
//! recovery: a phase guest until its service answers, a QEMU command line
//! until its agent says ready.

use std::io::Write;
use std::process::ExitCode;

use pbr_reboot::machine::UserCommand;
use pbr_reboot::{Vmm, boot_points, cold_boot};
use serde_json::{Value, json};

use super::error::Result;
use super::guest::GuestArgs;
use super::report::{Report, print};

/// The arguments of `boot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    guest: GuestArgs,
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
    let vmm = if a.standby { Vmm::Standby } else { Vmm::Spawn };
    let booted = if a.command.is_empty() {
        Booted { seconds: cold_boot(&a.guest.spec(), vmm)?.as_secs_f64(), standby: a.standby, agent: false }
    } else {
        let cmd = UserCommand::parse(&a.command)?;
        let r = boot_points(&cmd, vmm, &mut |_, _| {})?;
        Booted { seconds: r.downtime.as_secs_f64(), standby: a.standby, agent: true }
    };
    print(&booted, a.json)
}

/// How long a cold boot took.
struct Booted {
    seconds: f64,
    /// From `cont` of a QEMU started paused.
    standby: bool,
    /// Until the agent said ready (else until the service answered).
    agent: bool,
}

impl Report for Booted {
    fn json(&self) -> Value {
        json!({"cold_boot_s": self.seconds, "standby": self.standby})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        if self.agent {
            return writeln!(w, "cold boot until the agent said ready: {:.3} s", self.seconds);
        }
        let paused = if self.standby { " (from the start of a QEMU already running, paused)" } else { "" };
        writeln!(w, "cold boot to service ready: {:.3} s{paused}", self.seconds)
    }
}
