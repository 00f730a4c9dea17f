//! `pbr-img trim`: drop free pages, zero pages and (asked for) clean cache.

use std::path::Path;
use std::process::ExitCode;

use pbr_format::{Image, PageClass};
use serde_json::json;

use super::fmt::bytes;
use pbr_tools::Result;
use pbr_tools::trim::{Drop, trim};

pub fn run(image: &Path, output: &Path, drop: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let drop = drop.map(Drop::parse).transpose()?.unwrap_or_default();
    let img = Image::open(image)?;
    let counts = img.page_counts();
    let unknown: u64 = counts[PageClass::Unknown as usize].iter().sum();
    let unclassified = (drop.free || drop.cache) && unknown == img.page_count();
    let r = trim(&img, output, drop)?;
    // Said once the output is written: a failure is its one line alone.
    if unclassified {
        eprintln!(
            "note: {} was never classified, so it has no free or cache pages to drop: classify it first with `pbr-img classify {} --kpageflags FILE -o OUT` (the guest's /proc/kpageflags) or `--class-map FILE`",
            image.display(),
            image.display()
        );
    }
    if as_json {
        outln!(
            "{}",
            json!({"output": output.display().to_string(), "before_bytes": r.before_bytes, "after_bytes": r.after_bytes,
                   "free_pages": r.free_pages, "cache_pages": r.cache_pages, "cache_pages_kept": r.cache_pages_kept,
                   "zero_pages": r.zero_pages, "classified": !unclassified})
        );
    } else {
        let cache = if drop.cache {
            format!(
                ", {} cache pages (a restore reads them back from the disk; {} kept, with no disk reference)",
                r.cache_pages, r.cache_pages_kept
            )
        } else {
            String::new()
        };
        outln!(
            "{}: {} -> {} ({:.1}%); dropped {} free pages{cache}; {} zero pages",
            output.display(),
            bytes(r.before_bytes),
            bytes(r.after_bytes),
            r.after_bytes as f64 * 100.0 / r.before_bytes.max(1) as f64,
            r.free_pages,
            r.zero_pages
        );
    }
    Ok(ExitCode::SUCCESS)
}
