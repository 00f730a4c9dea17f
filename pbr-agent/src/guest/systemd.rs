//! What the agent asks systemd: a unit's main process, and starting a unit
//! again after its configuration changed.

use std::path::{Path, PathBuf};
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

/// The runtime drop-in `name` of `unit`
/// (`/run/systemd/system/UNIT.d/NAME`).
pub fn drop_in(unit: &str, name: &str) -> PathBuf {
    Path::new("/run/systemd/system").join(format!("{unit}.d")).join(name)
}

/// Writes `unit`'s runtime drop-in `name` (applied at systemd's next
/// reload, or its start).
///
/// # Errors
/// I/O.
pub fn write_drop_in(unit: &str, name: &str, text: &str) -> Result<(), String> {
    let path = drop_in(unit, name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reloads systemd's units.
///
/// # Errors
/// systemctl failed.
pub fn reload() -> Result<(), String> {
    systemctl(&["daemon-reload"]).map(drop)
}

/// Reloads systemd's units, clears `unit`'s failure and queues its start.
///
/// # Errors
/// systemctl failed.
pub fn start_again(unit: &str) -> Result<(), String> {
    reload()?;
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
        write_drop_in(
            unit,
            "zz-pbr-checkpointed.conf",
            "# Written by pbr-agent: checkpointed for a kernel update.\n[Service]\nRestart=no\n",
        )?;
    }
    Command::new("systemctl").arg("daemon-reload").spawn().map(Some).map_err(|e| format!("cannot run systemctl: {e}"))
}

/// Once `reload` (from [`no_restarts`]) is done, kills the processes of
/// `units`: they stop for good. The units that could not be, and why (all
/// of them when the reload failed).
pub fn kill_stopped(reload: Result<Option<std::process::Child>, String>, units: &[String]) -> Vec<(String, String)> {
    let reloaded = reload.and_then(|r| match r {
        Some(mut r) => match r.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("systemctl daemon-reload: {s}")),
            Err(e) => Err(format!("systemctl daemon-reload: {e}")),
        },
        None => Ok(()),
    });
    if let Err(e) = reloaded {
        return units.iter().map(|u| (u.clone(), e.clone())).collect();
    }
    units.iter().filter_map(|u| systemctl(&["kill", "--signal=SIGKILL", u]).err().map(|e| (u.clone(), e))).collect()
}

/// Waits for a reload from [`no_restarts`] that is no longer needed.
pub fn reap(reload: Result<Option<std::process::Child>, String>) {
    if let Ok(Some(mut r)) = reload {
        let _ = r.wait();
    }
}

/// Lets `unit`'s processes run again after a dump that is not kept.
///
/// # Errors
/// systemctl failed.
pub fn resume(unit: &str) -> Result<(), String> {
    systemctl(&["kill", "--signal=SIGCONT", unit]).map(drop)
}
