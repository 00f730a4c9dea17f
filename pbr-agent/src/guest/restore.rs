//! Restoring checkpointed units on the new kernel (`spec/agent.md` §7).
//!
//! At its point in the initramfs the agent receives the units' image
//! files (`RESTORE_FILE`) and the units (`RESTORE`), before systemd has
//! started: it keeps the files under `/run/pbr/restore/UNIT/` and gives
//! each unit a runtime drop-in whose start restores it with CRIU instead
//! of starting it cold ([`drop_in`]). A restore that fails leaves the unit
//! failed; its `OnFailure=` unit (`pbr-cold@.service`) removes the
//! drop-in and starts the unit cold. Each restore writes its outcome
//! beside its files, and `pbr-agent ready` sends them all in `RESTORED`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pbr_agent::checkpoint::valid_unit_name;
use pbr_agent::{ProcessFile, Restore, RestoreOutcome, Restored};
use serde_json::{Value, json};

use super::{RUN_DIR, criu, systemd};

/// Where restores keep their files and outcomes.
fn dir() -> PathBuf {
    Path::new(RUN_DIR).join("restore")
}

/// The list of units this boot restores, one per line.
fn units_file() -> PathBuf {
    dir().join("units")
}

/// The runtime drop-in that makes `unit`'s start a restore. Drop-ins
/// apply in the order of their names, whatever their directory: its name
/// comes after the unit's own (`override.conf`, `pbr.conf`), so that its
/// start commands are the ones left.
fn drop_in_path(unit: &str) -> PathBuf {
    systemd::drop_in(unit, RESTORE_DROP_IN)
}

/// The restore drop-in's name.
const RESTORE_DROP_IN: &str = "zz-pbr-restore.conf";

/// Whether this agent runs before systemd (in the initramfs): only there
/// can a unit's start still be made a restore.
pub fn before_systemd() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() != "systemd")
}

/// Keeps one image file the host sent. Its names were checked when its
/// frame was decoded: the file lands inside its unit's directory. A file
/// that does not fit (the initramfs's `/run` is a tenth of the memory)
/// gives up its unit: its files go, and its outcome says why.
pub fn keep_file(f: &ProcessFile) {
    if dir().join(format!("{}.result", f.unit)).exists() {
        return;
    }
    let unit_dir = dir().join(&f.unit);
    let path = unit_dir.join(&f.name);
    let kept = std::fs::create_dir_all(&unit_dir).and_then(|()| std::fs::write(&path, &f.data));
    if let Err(e) = kept {
        let _ = std::fs::remove_dir_all(&unit_dir);
        let why =
            json!({"restored": false, "reason": format!("its images could not be kept in {}: {e}", dir().display())});
        let _ = std::fs::write(dir().join(format!("{}.result", f.unit)), why.to_string());
    }
}

/// Makes the start of each unit of `r` that has files a restore; how many.
/// Every unit of `r` is told in `RESTORED`, one whose files did not all
/// fit included.
///
/// # Errors
/// I/O.
pub fn prepare(r: &Restore) -> Result<usize, String> {
    std::fs::create_dir_all(dir()).map_err(|e| format!("{}: {e}", dir().display()))?;
    let mut listed = String::new();
    let mut restoring = 0;
    for unit in &r.units {
        listed.push_str(unit);
        listed.push('\n');
        if !dir().join(unit).is_dir() {
            if !dir().join(format!("{unit}.result")).exists() {
                let why = json!({"restored": false, "reason": "the host sent no image file for it"});
                let _ = std::fs::write(dir().join(format!("{unit}.result")), why.to_string());
            }
            continue;
        }
        restoring += 1;
        systemd::write_drop_in(unit, RESTORE_DROP_IN, &drop_in(unit))?;
    }
    std::fs::write(units_file(), &listed).map_err(|e| format!("{}: {e}", units_file().display()))?;
    Ok(restoring)
}

/// The drop-in of a unit to restore: its start runs `pbr-agent
/// restore-unit` (with full privileges: CRIU is not the service, and the
/// restored processes get back their own credentials and limits) in place
/// of its start commands (conditions and post-start commands too: they
/// are about a process starting, and this one resumes), and tracks the
/// restored main process through its PID file; a failed restore is not
/// retried but handed to `pbr-cold@.service`. Once the guest is ready the
/// drop-in goes ([`forget`]): the unit is itself again.
pub fn drop_in(unit: &str) -> String {
    let pid = dir().join(format!("{unit}.pid"));
    format!(
        "# Written by pbr-agent: this boot restores {unit} from CRIU's images\n\
         # (a kernel update); a failed restore starts it cold.\n\
         [Unit]\nOnFailure=pbr-cold@%n.service\n\n\
         [Service]\nType=forking\nPIDFile={}\nRestart=no\nTimeoutStartSec=300\nExecCondition=\n\
         ExecStartPre=\nExecStart=\nExecStartPost=\n\
         ExecStart=+/usr/sbin/pbr-agent restore-unit {unit}\n",
        pid.display()
    )
}

/// Removes the restore drop-ins of `units` and reloads systemd: restored
/// or started cold, each unit runs as it is configured from now on.
pub fn forget(units: &[String]) {
    for unit in units {
        let _ = std::fs::remove_file(drop_in_path(unit));
    }
    if !units.is_empty() {
        let _ = systemd::reload();
    }
}

/// `pbr-agent restore-unit UNIT`: restores the unit's processes with CRIU
/// and writes the outcome (`UNIT.result`). The image files are removed
/// either way: they live in memory.
///
/// # Errors
/// The restore failed (the unit then fails, and starts cold).
pub fn restore_unit(unit: &str) -> Result<String, String> {
    if !valid_unit_name(unit) {
        return Err(format!("{unit:?} is not a service's unit name"));
    }
    let images = dir().join(unit);
    let outcome = pids_free(&images).and_then(|()| {
        criu::restore(&images, &dir().join(format!("{unit}.pid")), &dir().join(format!("{unit}.restore.log")))
    });
    let _ = std::fs::remove_dir_all(&images);
    let result = json!({"restored": outcome.is_ok(), "reason": outcome.as_ref().err()});
    let path = dir().join(format!("{unit}.result"));
    std::fs::write(&path, result.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    outcome.map(|()| format!("{unit} restored"))
}

/// Checks that the PIDs the images give back (their `core-PID.img` files)
/// are free in this boot.
fn pids_free(images: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(images).map_err(|e| format!("no images for the unit: {}: {e}", images.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("core-").and_then(|n| n.strip_suffix(".img")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let proc = Path::new("/proc").join(pid.to_string());
        if proc.exists() {
            let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
            return Err(format!(
                "PID {pid} is taken in this boot (by {}): CRIU gives a process back its PIDs",
                comm.trim()
            ));
        }
    }
    Ok(())
}

/// `pbr-agent cold-start UNIT` (`pbr-cold@UNIT.service`): removes the
/// restore's drop-in and starts the unit as it is configured.
///
/// # Errors
/// systemctl failed.
pub fn cold_start(unit: &str) -> Result<String, String> {
    if !valid_unit_name(unit) {
        return Err(format!("{unit:?} is not a service's unit name"));
    }
    let _ = std::fs::remove_file(drop_in_path(unit));
    let result = dir().join(format!("{unit}.result"));
    if !result.exists() {
        let why = json!({"restored": false, "reason": "the unit failed before its restore ran"});
        let _ = std::fs::write(&result, why.to_string());
    }
    systemd::start_again(unit)?;
    Ok(format!("{unit} started cold"))
}

/// The outcome of this boot's restores, once each has one (waiting up to
/// `wait`); `None` when this boot restores nothing, or it was told.
pub fn outcome(wait: Duration) -> Option<Restored> {
    let listed = std::fs::read_to_string(units_file()).ok()?;
    let t = Instant::now();
    let mut units = Vec::new();
    for unit in listed.lines().filter(|u| valid_unit_name(u)) {
        let path = dir().join(format!("{unit}.result"));
        while !path.exists() && t.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(100));
        }
        let result: Value =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let (restored, reason) = match result["restored"].as_bool() {
            Some(r) => (r, result["reason"].as_str().map(super::bounded)),
            None => (false, Some(format!("no outcome within {} s", wait.as_secs()))),
        };
        units.push(RestoreOutcome { unit: unit.to_owned(), restored, reason });
    }
    let _ = std::fs::rename(units_file(), dir().join("units.told"));
    Some(Restored { kernel: super::release(), units })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_in_replaces_the_start_with_a_restore() {
        let d = drop_in("memcached.service");
        for line in [
            "OnFailure=pbr-cold@%n.service",
            "Type=forking",
            "PIDFile=/run/pbr/restore/memcached.service.pid",
            "Restart=no",
            "ExecStartPre=\n",
            "ExecStart=\n",
            "ExecCondition=\n",
            "ExecStartPost=\n",
            "TimeoutStartSec=300",
            "ExecStart=+/usr/sbin/pbr-agent restore-unit memcached.service",
        ] {
            assert!(d.contains(line), "{line} in\n{d}");
        }
    }

    #[test]
    fn a_taken_pid_is_named() {
        let images = tempfile::tempdir().unwrap();
        std::fs::write(images.path().join("core-1.img"), b"").unwrap();
        let e = pids_free(images.path()).unwrap_err();
        assert!(e.starts_with("PID 1 is taken in this boot"), "{e}");
        let free = tempfile::tempdir().unwrap();
        std::fs::write(free.path().join(format!("core-{}.img", u32::MAX - 1)), b"").unwrap();
        std::fs::write(free.path().join("core-x.img"), b"").unwrap();
        pids_free(free.path()).unwrap();
    }
}
