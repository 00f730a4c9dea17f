//! Running CRIU, Debian's `criu`: its version, a dump and a restore, and
//! why one failed (the last error line of its log).

use std::path::Path;
use std::process::Command;

/// The CRIU binary.
const CRIU: &str = "criu";

/// The version of CRIU (`3.17.1`), `None` when it does not run.
pub fn version() -> Option<String> {
    let out = Command::new(CRIU).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().find_map(|l| l.strip_prefix("Version:"))?.trim().to_owned();
    pbr_agent::checkpoint::valid_release(&v).then_some(v)
}

/// Dumps the process tree rooted at `pid` into `dir`, with its TCP
/// connections (locked through nftables while it is dumped; connections
/// not yet accepted are left to their clients to retry), and leaves it
/// stopped: nothing it does after the dump is lost, as the machine goes
/// down next. `log` is CRIU's log.
///
/// # Errors
/// Why CRIU failed.
pub fn dump(pid: u32, dir: &Path, log: &Path) -> Result<(), String> {
    let pid = pid.to_string();
    run(
        "dump",
        &["dump", "-t", &pid, "--tcp-established", "--skip-in-flight", "--network-lock", "nftables", "--leave-stopped"],
        dir,
        log,
    )
}

/// Restores the processes of `dir`, detached (their parent is then init),
/// their root's PID written to `pidfile`. Their TCP connections are
/// closed: the peer's side did not survive the new machine.
///
/// # Errors
/// Why CRIU failed.
pub fn restore(dir: &Path, pidfile: &Path, log: &Path) -> Result<(), String> {
    let pidfile = pidfile.display().to_string();
    run("restore", &["restore", "--restore-detached", "--tcp-close", "--pidfile", &pidfile], dir, log)
}

fn run(what: &str, args: &[&str], dir: &Path, log: &Path) -> Result<(), String> {
    let status = Command::new(CRIU)
        .args(args)
        .arg("--images-dir")
        .arg(dir)
        .arg("--log-file")
        .arg(log)
        .arg("-v2")
        .status()
        .map_err(|e| format!("cannot run {CRIU}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    Err(match first_error(log) {
        Some(line) => format!("criu {what}: {status}: {line}"),
        None => format!("criu {what}: {status}"),
    })
}

/// The first `Error` line of CRIU's log that says why (not a helper
/// program's exit, which CRIU logs while probing), at most 300 bytes.
fn first_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut errors = text.lines().filter(|l| l.contains("Error ("));
    let line = errors.clone().find(|l| !l.contains("exited, status=")).or_else(|| errors.next())?.trim();
    Some(line.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_line_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("criu.log");
        std::fs::write(
            &log,
            "Error (criu/util.c:642): exited, status=1\n(00.1) Warn x\n\
             Error (criu/sk-inet.c:174): inet: In-flight connection (l) for 2f01\n\
             Error (criu/cr-dump.c:2053): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(first_error(&log).unwrap(), "Error (criu/sk-inet.c:174): inet: In-flight connection (l) for 2f01");
        std::fs::write(&log, "Error (criu/util.c:642): exited, status=1\n").unwrap();
        assert_eq!(first_error(&log).unwrap(), "Error (criu/util.c:642): exited, status=1");
        std::fs::write(&log, "fine\n").unwrap();
        assert_eq!(first_error(&log), None);
        assert_eq!(first_error(&dir.path().join("missing")), None);
    }
}
