//! Progress bars on stderr for long work, shown only when stderr is a
//! terminal and the work is large.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Work smaller than this many bytes gets no bar.
const MIN_BYTES: u64 = 256 << 20;

/// A byte-counting progress bar, hidden when not useful.
pub fn bytes(total: u64, message: &str, quiet: bool) -> ProgressBar {
    if quiet || total < MIN_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}
