//! Progress on stderr for long work, shown only when stderr is a terminal
//! (and, where the length is known, the work is large).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pbr_format::{Image, SectionKind};

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

/// A spinner counting the bytes read, for input of unknown length (a
/// pipe): set its position to the bytes read so far.
pub fn stream(message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} {spinner} {bytes} read, {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_owned());
    // It turns while the pipe is slow to deliver.
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// What [`Image::check`] (and so `verify`) reports to its progress
/// callback over a whole check of `img`: each checksummed section other
/// than PAGE_DATA, a page size per stored page (however it is encoded),
/// and the bytes the trailer hash covers.
pub fn check_total(img: &Image) -> u64 {
    let sections: u64 =
        img.sections().iter().filter(|s| s.kind.is_some_and(|k| k != SectionKind::PageData)).map(|s| s.length).sum();
    let pages: u64 = img.extents().filter(|e| e.encoding.is_stored()).map(|e| u64::from(e.count)).sum();
    sections + pages * u64::from(img.page_size()) + img.file_len().saturating_sub(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The sum of what a check reports, on a bundled image with raw pages
    /// and on it packed (lz4: a stored page's bytes are not a page size);
    /// what pack reports.
    #[test]
    fn check_total_is_what_a_check_reports() {
        let dir = tempfile::tempdir().unwrap();
        let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/v1.0/sample.pbr");
        let packed = dir.path().join("packed.pbr");
        let (src, done) = (Image::open(&sample).unwrap(), std::cell::Cell::new(0));
        pbr_tools::pack::pack(&src, &packed, &|n| done.set(done.get() + n)).unwrap();
        assert_eq!(done.get(), src.guest_size(), "pack's progress ends at the guest's size");
        for path in [sample, packed] {
            let img = Image::open(&path).unwrap();
            let done = AtomicU64::new(0);
            let r = img.check(1, &|n| {
                done.fetch_add(n, Ordering::Relaxed);
            });
            assert_eq!(r.damaged, 0);
            assert_eq!(check_total(&img), done.load(Ordering::Relaxed), "{}", path.display());
        }
    }
}
