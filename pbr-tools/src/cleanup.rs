//! Clean-up when the user interrupts a tool (SIGINT, SIGTERM): the
//! temporary files of unfinished outputs are removed, work directories too,
//! and child processes (QEMU) are stopped, before the process exits with
//! 128 + the signal number (130, 143), as a shell reports it.
//!
//! An interrupt that comes once the run's output (registered with
//! [`output`]) has been renamed into place no longer fails the run: it ends
//! as it would have ([`interrupt`] decides). The program installs the
//! signal handlers itself and calls [`interrupt`] from them.
//!
//! Temporary files of outputs (this crate's [`crate::output::AtomicFile`]
//! and `pbr_format::ImageWriter`) are named `.pbr-<process ID>-*.tmp`, so a
//! directory registered with [`temp_files_in`] loses those of this process
//! only. Everything else is registered by what creates it, for as long as
//! the returned [`Registration`] lives.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to clean up, each entry under the ID of its registration.
struct State {
    next: u64,
    temp_dirs: Vec<(u64, PathBuf)>,
    paths: Vec<(u64, PathBuf)>,
    children: Vec<(u64, u32)>,
    /// Mount points, detached before the paths are removed.
    mounts: Vec<(u64, PathBuf)>,
    /// Outputs, with the device and inode their path had when registered.
    outputs: Vec<(u64, PathBuf, Option<Identity>)>,
}

/// The device and inode of a directory entry.
type Identity = (u64, u64);

static STATE: Mutex<State> = Mutex::new(State {
    next: 0,
    temp_dirs: Vec::new(),
    paths: Vec::new(),
    children: Vec::new(),
    mounts: Vec::new(),
    outputs: Vec::new(),
});

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
        s.mounts.retain(|e| e.0 != self.0);
        s.outputs.retain(|e| e.0 != self.0);
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

/// The output of the run, `dest`: on interrupt, this process's temporary
/// output files in its directory are removed (as [`temp_files_in`]); then,
/// if `dest` is no longer the file it was at this registration (an output
/// renamed into place: committed), the interrupt no longer fails the run.
pub fn output(dest: &Path) -> Registration {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let before = identity(dest);
    let dest = dest.to_path_buf();
    register(|s, id| {
        s.temp_dirs.push((id, dir));
        s.outputs.push((id, dest, before));
    })
}

/// The device and inode of the directory entry `path` (a link is not
/// followed: a rename replaces the entry).
fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A registered output that has been renamed into place since it was
/// registered.
fn written_output() -> Option<PathBuf> {
    let s = state();
    s.outputs.iter().find(|(_, p, before)| identity(p).is_some_and(|now| Some(now) != *before)).map(|o| o.1.clone())
}

/// What an interrupt does, decided by [`interrupt`].
#[derive(Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The process exits with this status (128 + the signal number): the
    /// output was not written.
    Exit(i32),
    /// The output was already written: the run ends as it would have.
    Written(PathBuf),
}

/// Handles signal `sig`: cleans up what is registered, then decides. The
/// temporary files are removed first: an output renamed into place before
/// that is found written; one renamed after cannot be (its temporary file
/// is gone), so the decision holds whatever the run does meanwhile.
pub fn interrupt(sig: i32) -> Interrupt {
    clean_up();
    match written_output() {
        Some(p) => Interrupt::Written(p),
        None => Interrupt::Exit(128 + sig),
    }
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

/// On interrupt, once the children are stopped, detaches the file system
/// mounted on `path` (a lazy unmount: what still uses it lets go first).
pub fn unmount_on_interrupt(path: &Path) -> Registration {
    let path = path.to_path_buf();
    register(|s, id| s.mounts.push((id, path)))
}

/// Stops the registered children, detaches the registered mounts and
/// removes the registered files now.
pub fn clean_up() {
    let (children, mounts, paths, dirs) = {
        let s = state();
        let ids = |v: &Vec<(u64, u32)>| v.iter().map(|e| e.1).collect::<Vec<_>>();
        let paths = |v: &Vec<(u64, PathBuf)>| v.iter().map(|e| e.1.clone()).collect::<Vec<_>>();
        (ids(&s.children), paths(&s.mounts), paths(&s.paths), paths(&s.temp_dirs))
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
    for m in mounts {
        detach(&m);
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

/// Detaches the file system mounted on `path` (`umount2`, `MNT_DETACH`;
/// not root, `fusermount3 -u -z`).
#[allow(unsafe_code)]
fn detach(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; umount2
    // reads it and changes no memory of this process.
    let done = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0;
    if !done {
        // Not root: the FUSE helper mounted it and unmounts it.
        for helper in ["fusermount3", "fusermount"] {
            let ok = std::process::Command::new(helper)
                .args(["-u", "-z", "--"])
                .arg(path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
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
