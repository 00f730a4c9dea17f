//! What the agent asks systemd: a unit's main process, and starting a unit
//! again after its configuration changed.

use std::process::Command;

/// `systemctl ARGS`, its standard output.
fn systemctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("systemctl").args(args).output().map_err(|e| format!("cannot run systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The main process of `unit`.
///
/// # Errors
/// systemctl failed, or the unit has no main process (not running).
pub fn main_pid(unit: &str) -> Result<u32, String> {
    let text = systemctl(&["show", "--property=MainPID", "--value", unit])?;
    match text.parse::<u32>() {
        Ok(0) => Err(format!("{unit} has no main process (it is not running)")),
        Ok(pid) => Ok(pid),
        Err(_) => Err(format!("systemctl says {unit}'s main PID is {text:?}")),
    }
}

/// Reloads systemd's units, clears `unit`'s failure and queues its start.
///
/// # Errors
/// systemctl failed.
pub fn start_again(unit: &str) -> Result<(), String> {
    systemctl(&["daemon-reload"])?;
    systemctl(&["reset-failed", unit])?;
    systemctl(&["start", "--no-block", unit]).map(drop)
}

/// Stops `unit` by killing its processes: its stop is queued first, so
/// that their end is not met with a restart.
///
/// # Errors
/// systemctl failed.
pub fn stop_killed(unit: &str) -> Result<(), String> {
    systemctl(&["stop", "--no-block", unit])?;
    systemctl(&["kill", "--signal=SIGKILL", unit]).map(drop)
}
