//! A checkpoint for a kernel update, in the guest (`spec/agent.md` §7):
//! each unit the host names is dumped with CRIU, its image files are sent
//! to the host, and `CHECKPOINTED` says how each unit fared.

use std::path::{Path, PathBuf};

use pbr_agent::checkpoint::valid_file_name;
use pbr_agent::message::Message;
use pbr_agent::{Checkpoint, Checkpointed, ProcessFile, UnitOutcome};

use super::port::Port;
use super::{RUN_DIR, criu, systemd};

/// Dumps the units of `c` and sends their files and the outcome.
///
/// # Errors
/// The port failed.
pub fn checkpoint(port: &mut Port, c: &Checkpoint) -> Result<String, String> {
    let criu_version = criu::version();
    let mut units = Vec::with_capacity(c.units.len());
    for unit in &c.units {
        let dir = Path::new(RUN_DIR).join("checkpoint").join(unit);
        let dumped = match criu_version {
            Some(_) => dump_unit(unit, &dir),
            None => Err("CRIU does not run in the guest (is the criu package installed?)".into()),
        };
        let outcome = match dumped {
            Ok(files) => {
                let mut outcome = UnitOutcome { unit: unit.clone(), dumped: true, files: 0, bytes: 0, reason: None };
                for (name, path) in files {
                    let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    outcome.files += 1;
                    outcome.bytes += data.len() as u64;
                    port.send(&Message::ProcessFile(ProcessFile { unit: unit.clone(), name, data }))?;
                }
                // Its processes, stopped since the dump, must not run on:
                // the unit stops and they are killed (a SIGTERM would wait
                // on a stopped process).
                if let Err(e) = systemd::stop_killed(unit) {
                    eprintln!("pbr-agent: {e}");
                }
                outcome
            }
            Err(reason) => UnitOutcome { unit: unit.clone(), dumped: false, files: 0, bytes: 0, reason: Some(reason) },
        };
        let _ = std::fs::remove_dir_all(&dir);
        units.push(outcome);
    }
    let dumped = units.iter().filter(|u| u.dumped).count();
    let total = units.len();
    port.send(&Message::Checkpointed(Checkpointed { kernel: super::release(), criu_version, units }))?;
    Ok(format!("checkpoint: {dumped} of {total} units dumped"))
}

/// The most bytes one image file may have: what a `PROCESS_FILE` frame
/// carries beside its two names.
const MAX_FILE: u64 = (64 << 20) - 2 - 255 - 64;

/// Dumps `unit`'s processes into `dir`: the files to send, by name.
fn dump_unit(unit: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let pid = systemd::main_pid(unit)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    criu::dump(pid, dir, &dir.with_extension("log"))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_file_name(&name) {
            return Err(format!("CRIU wrote {name:?}, not an image file name the protocol carries"));
        }
        let len = entry.metadata().map_err(|e| format!("{name}: {e}"))?.len();
        if len > MAX_FILE {
            return Err(format!("image file {name} is {len} bytes, over the {MAX_FILE} one frame carries"));
        }
        files.push((name, entry.path()));
    }
    files.sort();
    Ok(files)
}
