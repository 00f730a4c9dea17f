//! A checkpoint for a kernel update, in the guest (`spec/agent.md` §7):
//! each unit the host names is dumped with CRIU, its image files are sent
//! to the host, and `CHECKPOINTED` says how each unit fared.

use std::path::{Path, PathBuf};

use pbr_agent::Kind;
use pbr_agent::checkpoint::valid_file_name;
use pbr_agent::limits::{MAX_FILE_NAME, MAX_UNIT_NAME};
use pbr_agent::message::Message;
use pbr_agent::{Checkpoint, Checkpointed, ProcessFile, UnitOutcome};

use super::port::Port;
use super::{RUN_DIR, criu, systemd};

/// Dumps the units of `c` and sends their files and the outcome. Each
/// unit fares on its own: one whose dump or files fail is reported not
/// dumped, and its processes, stopped by the dump, run on. The dumped
/// units' restarts are turned off while their files go (systemd's reload
/// is slow), and their processes are killed before the outcome is sent.
///
/// # Errors
/// The port failed (the host is gone: the stopped processes run on).
pub fn checkpoint(port: &mut Port, c: &Checkpoint) -> Result<String, String> {
    let criu_version = criu::version();
    let mut units: Vec<UnitOutcome> = Vec::with_capacity(c.units.len());
    let mut dumps = Vec::new();
    for unit in &c.units {
        let dir = Path::new(RUN_DIR).join("checkpoint").join(unit);
        let dumped = match criu_version {
            Some(_) => dump_unit(unit, &dir),
            None => Err(Sent::Unit("CRIU does not run in the guest (is the criu package installed?)".into())),
        };
        let outcome = UnitOutcome { unit: unit.clone(), dumped: false, files: 0, bytes: 0, reason: None };
        match dumped {
            Ok(files) => dumps.push((units.len(), dir, files)),
            Err(Sent::Unit(reason) | Sent::Port(reason)) => {
                let _ = systemd::resume(unit);
                let _ = std::fs::remove_dir_all(&dir);
                units.push(UnitOutcome { reason: Some(super::bounded(&reason)), ..outcome });
                continue;
            }
        }
        units.push(outcome);
    }
    let dumped: Vec<String> = dumps.iter().map(|(i, ..)| units[*i].unit.clone()).collect();
    let reload = systemd::no_restarts(&dumped);
    let mut gone = Vec::new();
    for (i, dir, files) in dumps {
        let unit = units[i].unit.clone();
        let sent = send(port, &unit, files, &mut units[i]);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(dir.with_extension("log"));
        match sent {
            Ok(()) => units[i].dumped = true,
            Err(Sent::Unit(reason)) => {
                let _ = systemd::resume(&unit);
                units[i].reason = Some(super::bounded(&reason));
            }
            Err(Sent::Port(e)) => {
                for u in &dumped {
                    let _ = systemd::resume(u);
                }
                systemd::reap(reload);
                return Err(e);
            }
        }
        if units[i].dumped {
            gone.push(unit);
        }
    }
    // The dumped units' processes, stopped since their dumps, must not run
    // on; a unit that cannot be stopped for good is not kept.
    for (unit, why) in systemd::kill_stopped(reload, &gone) {
        let _ = systemd::resume(&unit);
        if let Some(u) = units.iter_mut().find(|u| u.unit == unit) {
            u.dumped = false;
            u.reason = Some(super::bounded(&format!("it could not be stopped after its dump: {why}")));
        }
    }
    let dumped = units.iter().filter(|u| u.dumped).count();
    let total = units.len();
    port.send(&Message::Checkpointed(Checkpointed { kernel: super::release(), criu_version, units }))?;
    Ok(format!("checkpoint: {dumped} of {total} units dumped"))
}

/// Why a unit's files were not all sent.
enum Sent {
    /// The unit's own trouble: it is reported not dumped.
    Unit(String),
    /// The port failed.
    Port(String),
}

impl From<String> for Sent {
    fn from(reason: String) -> Sent {
        Sent::Unit(reason)
    }
}

/// Sends `unit`'s `files`, counting them in `outcome`.
fn send(port: &mut Port, unit: &str, files: Vec<(String, PathBuf)>, outcome: &mut UnitOutcome) -> Result<(), Sent> {
    for (name, path) in files {
        let data = std::fs::read(&path).map_err(|e| Sent::Unit(format!("{}: {e}", path.display())))?;
        outcome.files += 1;
        outcome.bytes += data.len() as u64;
        port.send(&Message::ProcessFile(ProcessFile { unit: unit.to_owned(), name, data })).map_err(Sent::Port)?;
    }
    Ok(())
}

/// The most bytes one image file may have: what a `PROCESS_FILE` frame
/// carries beside its two names and their lengths.
const MAX_FILE: u64 = Kind::ProcessFile.max_len() as u64 - 2 - MAX_UNIT_NAME as u64 - MAX_FILE_NAME as u64;

/// Dumps `unit`'s processes into `dir`: the files to send, by name.
fn dump_unit(unit: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, Sent> {
    let pid = systemd::main_pid(unit)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    criu::dump(pid, dir, &dir.with_extension("log"))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_file_name(&name) {
            return Err(format!("CRIU wrote {name:?}, not an image file name the protocol carries").into());
        }
        let len = entry.metadata().map_err(|e| format!("{name}: {e}"))?.len();
        if len > MAX_FILE {
            return Err(format!("image file {name} is {len} bytes, over the {MAX_FILE} one frame carries").into());
        }
        files.push((name, entry.path()));
    }
    files.sort();
    Ok(files)
}
