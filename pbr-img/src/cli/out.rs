//! Standard output that a closed pipe (`pbr-img inspect X | head`,
//! `pbr-img export --to qemu X -o - | head -c 10`) ends quietly with status
//! 141, as SIGPIPE ends C tools, instead of with an error or a panic; and
//! that must be open at all (`pbr-img inspect X >&-` would lose its output).

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to standard output found its reader gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Remembers that the reader of standard output went away when `e` says so.
fn note(e: &std::io::Error) {
    if e.kind() == ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::SeqCst);
    }
}

/// Whether a write to standard output found its reader gone: however that
/// failure travelled back (an error of the command, or one a buffer's drop
/// swallowed), the process then ends with [`exit_closed`].
pub fn closed() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

/// Ends the process because standard output was closed by its reader:
/// what an interrupt would clean up is cleaned up (temporary files, child
/// QEMUs), then status 141 (what a shell reports for SIGPIPE), no message.
pub fn exit_closed() -> ! {
    pbr_tools::cleanup::clean_up();
    std::process::exit(141)
}

/// Set before `main` when descriptor 1 was closed at the start (`>&-`):
/// Rust's runtime then opens /dev/null there before `main`, so that writes
/// vanish and only a look before the runtime's can tell.
static NOT_OPEN_AT_START: AtomicBool = AtomicBool::new(false);

/// Run by the C runtime before Rust's (as a constructor of the executable).
extern "C" fn look_at_stdout() {
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; it touches
    // no memory of this process and changes nothing.
    #[allow(unsafe_code)]
    let flags = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) };
    if flags == -1 {
        NOT_OPEN_AT_START.store(true, Ordering::SeqCst);
    }
}

// SAFETY: an entry of `.init_array` is a function the C runtime calls
// once, with no arguments, before `main`; `look_at_stdout` is one and only
// makes a system call and stores to an atomic (nothing needs initialising).
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static LOOK_AT_STDOUT: extern "C" fn() = look_at_stdout;

/// Fails when standard output was not open at the start (`>&-`): whatever
/// the command printed would be lost.
pub fn check_open() -> std::io::Result<()> {
    if NOT_OPEN_AT_START.load(Ordering::SeqCst) {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(())
}

/// Standard output for a stream (`-o -`) or a generated text: a write that
/// finds the reader gone is remembered ([`closed`]).
pub struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    /// Locks standard output for this writer.
    pub fn lock() -> Stdout {
        Stdout(std::io::stdout().lock())
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).inspect_err(note)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf).inspect_err(note)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().inspect_err(note)
    }
}

/// Writes `bytes` (a generated text) to standard output.
///
/// # Errors
/// Standard output failed (a closed pipe is also remembered).
pub fn write_bytes(bytes: &[u8]) -> pbr_tools::Result<()> {
    let mut out = Stdout::lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| pbr_tools::Error::io("cannot write to standard output", e))
}

/// Writes `args` to standard output: a closed pipe ends the process with
/// [`exit_closed`]; any other failure with one error line and status 2.
pub fn write(args: std::fmt::Arguments<'_>) {
    if let Err(e) = Stdout::lock().write_fmt(args) {
        if closed() {
            exit_closed();
        }
        eprintln!("pbr-img: error: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}

/// `println!` through [`write()`].
macro_rules! outln {
    () => {
        $crate::cli::out::write(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::out::write(format_args!("{}\n", format_args!($($t)*)))
    };
}
