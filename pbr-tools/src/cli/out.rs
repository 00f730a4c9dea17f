//! Standard output that a closed pipe (`pbr-img inspect X | head`) ends
//! quietly, as SIGPIPE ends C tools, instead of with a panic.

use std::io::{ErrorKind, Write};

/// Writes `args` to standard output: a closed pipe ends the process with
/// status 141 (what a shell reports for SIGPIPE) and no message; any other
/// failure with one error line and status 2.
pub fn write(args: std::fmt::Arguments<'_>) {
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(141);
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

/// `print!` through [`write()`].
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::out::write(format_args!($($t)*))
    };
}
