//! Clean-up when the user interrupts a tool (SIGINT, SIGTERM): the
//! temporary files of unfinished outputs are removed, work directories too,
//! and child processes (QEMU) are stopped, before the process exits with
//! 128 + the signal number (130, 143), as a shell reports it.
//!
//! Temporary files of outputs (this crate's [`crate::output::AtomicFile`]
//! and `pbr_format::ImageWriter`) are named `.pbr-<process ID>-*.tmp`, so a
//! directory registered with [`temp_files_in`] loses those of this process
//! only. Everything else is registered by what creates it, for as long as
//! the returned [`Registration`] lives.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What to clean up, each entry under the ID of its registration.
struct State {
    next: u64,
    temp_dirs: Vec<(u64, PathBuf)>,
    paths: Vec<(u64, PathBuf)>,
    children: Vec<(u64, u32)>,
}

static STATE: Mutex<State> =
    Mutex::new(State { next: 0, temp_dirs: Vec::new(), paths: Vec::new(), children: Vec::new() });

/// The signal being handled, 0 before any.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// Held while an interrupt is cleaned up, until the process exits.
static CLEANING: Mutex<()> = Mutex::new(());

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An entry to clean up on interrupt; dropping it forgets the entry.
#[must_use = "the entry is forgotten when the registration is dropped"]
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = state();
        s.temp_dirs.retain(|e| e.0 != self.0);
        s.paths.retain(|e| e.0 != self.0);
        s.children.retain(|e| e.0 != self.0);
    }
}

fn register(add: impl FnOnce(&mut State, u64)) -> Registration {
    let mut s = state();
    s.next += 1;
    let id = s.next;
    add(&mut s, id);
    Registration(id)
}

/// The name prefix of this process's temporary output files.
pub fn temp_prefix() -> String {
    format!(".pbr-{}-", std::process::id())
}

/// On interrupt, removes this process's temporary output files in `dir`.
pub fn temp_files_in(dir: &Path) -> Registration {
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir.to_path_buf() };
    register(|s, id| s.temp_dirs.push((id, dir)))
}

/// On interrupt, removes `path` (a file, or a directory with its contents).
pub fn remove_on_interrupt(path: &Path) -> Registration {
    let path = path.to_path_buf();
    register(|s, id| s.paths.push((id, path)))
}

/// On interrupt, stops the child process `pid` (SIGTERM, then SIGKILL after
/// a second).
pub fn stop_on_interrupt(pid: u32) -> Registration {
    register(|s, id| s.children.push((id, pid)))
}

/// Starts a thread that waits for SIGINT and SIGTERM; on either, cleans up
/// what is registered and exits with 128 + the signal number.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn install() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install the signal handlers", e))?;
    std::thread::Builder::new()
        .name("pbr-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _cleaning = CLEANING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                INTERRUPTED.store(sig, Ordering::SeqCst);
                clean_up();
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| Error::io("cannot start the signal thread", e))?;
    Ok(())
}

/// When an interrupt is being handled (its clean-up makes the work fail:
/// QEMU stops, files vanish), waits for the clean-up to end the process
/// with its status, so that the failure is not reported as an error.
pub fn exit_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) != 0 {
        let _wait = CLEANING.lock();
        // Not reached: the signal thread exits the process while it holds
        // the lock; if it panicked, exit here with its status.
        std::process::exit(128 + INTERRUPTED.load(Ordering::SeqCst));
    }
}

/// Stops the registered children and removes the registered files now.
pub fn clean_up() {
    let (children, paths, dirs) = {
        let s = state();
        let ids = |v: &Vec<(u64, u32)>| v.iter().map(|e| e.1).collect::<Vec<_>>();
        let paths = |v: &Vec<(u64, PathBuf)>| v.iter().map(|e| e.1.clone()).collect::<Vec<_>>();
        (ids(&s.children), paths(&s.paths), paths(&s.temp_dirs))
    };
    for &pid in &children {
        signal(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    while children.iter().any(|&pid| alive(pid)) && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pid in &children {
        if alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    for p in paths {
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
    let prefix = temp_prefix();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Sends `sig` to process `pid`.
#[allow(unsafe_code)]
fn signal(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) takes two integers and touches no memory of this
    // process. The pid is a child this process started; registrations are
    // dropped as the child is reaped, so a signal to a reused pid needs a
    // reap and a reuse between this read of the registry and the call.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` has not exited yet (a zombie counts as exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_removes_registered_and_own_temporary_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join(format!("{}abc.tmp", temp_prefix()));
        let other = dir.path().join(".pbr-1-abc.tmp");
        let work = dir.path().join("work");
        let kept = dir.path().join("kept");
        for f in [&own, &other, &kept] {
            std::fs::write(f, b"x").unwrap();
        }
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join("stream"), b"x").unwrap();
        let forgotten = dir.path().join("forgotten");
        std::fs::write(&forgotten, b"x").unwrap();
        drop(remove_on_interrupt(&forgotten));
        let _t = temp_files_in(dir.path());
        let _w = remove_on_interrupt(&work);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let _c = stop_on_interrupt(child.id());
        clean_up();
        assert!(!own.exists() && !work.exists());
        assert!(other.exists() && kept.exists() && forgotten.exists());
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was stopped");
    }
}
