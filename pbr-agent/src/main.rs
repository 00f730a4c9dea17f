//! `pbr-agent`: the guest side of phase-based reboot.
//!
//! - `pbr-agent point NAME`: announce a restartable point (mounted block
//!   devices, kpageflags, kpagecount), then wait while the host saves. In a
//!   restored copy, step the clock and reseed the random generator first.
//! - `pbr-agent ready`: tell the host that the guest's service is ready.
//! - `pbr-agent watch`: from early boot, keep the paths of the files opened
//!   on the root file system (fanotify), for the points to send.
//! - `pbr-agent alive`: once ready, tell the host every 200 ms
//!   (`HEARTBEAT`) that the guest is alive, so that it notices a hang;
//!   and checkpoint the units the host names with CRIU (a kernel update).
//! - `pbr-agent restore-unit UNIT`: on the new kernel, restore a unit from
//!   the images the host sent (the start command of its drop-in).
//! - `pbr-agent cold-start UNIT`: start a unit whose restore failed cold
//!   (`pbr-cold@.service`).
//!
//! With no host port (`org.pbr.agent.0`) it says so and exits 0: a guest
//! booted without pbr boots as before.

mod guest;

use std::process::ExitCode;
use std::time::Duration;

/// How long a point waits for the host before the boot carries on.
const HOST_TIMEOUT: Duration = Duration::from_secs(120);

/// How often `pbr-agent alive` sends ALIVE (`spec/agent.md` §6): often
/// enough that a host may call a guest hung after a second or two.
const HEARTBEAT: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["point", name] if pbr_agent::message::valid_point_name(name) => guest::point(name, HOST_TIMEOUT),
        ["point", name] => Err(format!("{name:?} is not a point name (1 to 64 of A-Z a-z 0-9 _ . -)")),
        ["ready"] => guest::ready(),
        ["watch"] => guest::watch(),
        ["alive"] => guest::alive(HEARTBEAT),
        ["restore-unit", unit] => guest::restore_unit(unit),
        ["cold-start", unit] => guest::cold_start(unit),
        _ => {
            eprintln!("usage: pbr-agent point NAME | ready | watch | alive | restore-unit UNIT | cold-start UNIT");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(said) => {
            eprintln!("pbr-agent: {said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbr-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
