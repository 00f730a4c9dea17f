//! The signal set-up of `pbr-img`: SIGINT and SIGTERM clean up what the
//! library registered ([`pbr_tools::cleanup`]) and end the process with
//! 128 + the signal number, unless the run's output was already written.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use pbr_tools::cleanup::{Interrupt, interrupt};

/// The signal being handled, 0 before any.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// Held while an interrupt is cleaned up, until the process exits or the
/// interrupt is found to have come after the output was written.
static CLEANING: Mutex<()> = Mutex::new(());
/// The output an interrupt found written.
static WRITTEN: Mutex<Option<PathBuf>> = Mutex::new(None);
/// A command that stops by itself when asked ([`graceful`]).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// Set by the first SIGINT or SIGTERM in graceful mode.
static STOP: AtomicBool = AtomicBool::new(false);

/// From now on the first SIGINT or SIGTERM only sets the returned flag: the
/// command (`run`) stops by itself, cleanly. A second one cleans up and
/// exits at once, as always.
pub fn graceful() -> &'static AtomicBool {
    GRACEFUL.store(true, Ordering::SeqCst);
    &STOP
}

/// Starts a thread that waits for SIGINT and SIGTERM; on either, cleans up
/// what is registered and exits with 128 + the signal number, unless the
/// run's output was already written ([`interrupt`]) or the command stops
/// by itself ([`graceful`]).
///
/// # Errors
/// The signal handlers could not be installed.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot install the signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("pbr-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
                    continue;
                }
                let _cleaning = CLEANING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                INTERRUPTED.store(sig, Ordering::SeqCst);
                match interrupt(sig) {
                    Interrupt::Exit(status) => std::process::exit(status),
                    Interrupt::Written(p) => *written() = Some(p),
                }
            }
        })
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

fn written() -> std::sync::MutexGuard<'static, Option<PathBuf>> {
    WRITTEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An interrupt that came after the run's output was written.
#[derive(Debug)]
pub struct Interrupted {
    /// The output.
    pub output: PathBuf,
    /// The status an interrupt ends with (128 + the signal number).
    pub status: u8,
}

/// Called when the run is over (the output's registration still held).
/// When an interrupt is being handled, waits for its clean-up: one before
/// the output was written ends the process there with its status (its
/// clean-up makes the work fail: QEMU stops, files vanish, and that failure
/// is not reported as an error); one after is returned.
pub fn after_run() -> Option<Interrupted> {
    let sig = INTERRUPTED.load(Ordering::SeqCst);
    if sig == 0 {
        return None;
    }
    let _wait = CLEANING.lock();
    match written().clone() {
        Some(output) => Some(Interrupted { output, status: u8::try_from(128 + sig).unwrap_or(u8::MAX) }),
        // Not reached: the signal thread exits the process while it holds
        // the lock; if it panicked, exit here with its status.
        None => std::process::exit(128 + sig),
    }
}
