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

/// Turns the restarts of `units` off (runtime drop-ins), and starts the
/// reload of systemd that applies them; the caller waits for it with
/// [`kill_stopped`]. A stop job would not do: it sends SIGTERM and then
/// SIGCONT, and the processes stopped since their dumps would run again
/// before they die.
///
/// # Errors
/// A drop-in cannot be written, or systemctl does not start.
pub fn no_restarts(units: &[String]) -> Result<Option<std::process::Child>, String> {
    if units.is_empty() {
        return Ok(None);
    }
    for unit in units {
        let dir = std::path::Path::new("/run/systemd/system").join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("zz-pbr-checkpointed.conf");
        std::fs::write(&path, "# Written by pbr-agent: checkpointed for a kernel update.\n[Service]\nRestart=no\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Command::new("systemctl").arg("daemon-reload").spawn().map(Some).map_err(|e| format!("cannot run systemctl: {e}"))
}

/// Once `reload` (from [`no_restarts`]) is done, kills the processes of
/// `units`: they stop for good.
///
/// # Errors
/// The reload failed, or systemctl did.
pub fn kill_stopped(reload: Option<std::process::Child>, units: &[String]) -> Result<(), String> {
    if let Some(mut r) = reload {
        let status = r.wait().map_err(|e| format!("systemctl daemon-reload: {e}"))?;
        if !status.success() {
            return Err(format!("systemctl daemon-reload: {status}"));
        }
    }
    for unit in units {
        systemctl(&["kill", "--signal=SIGKILL", unit])?;
    }
    Ok(())
}

/// Lets `unit`'s processes run again after a dump that is not kept.
///
/// # Errors
/// systemctl failed.
pub fn resume(unit: &str) -> Result<(), String> {
    systemctl(&["kill", "--signal=SIGCONT", unit]).map(drop)
}
