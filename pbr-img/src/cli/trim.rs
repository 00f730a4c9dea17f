//! `pbr-img trim`: drop free pages, zero pages and (asked for) clean cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::{Image, PageClass};
use serde_json::{Value, json};

use super::error::Result;
use super::fmt::bytes;
use super::report::{Report, print};
use pbr_tools::trim::{Drop, TrimReport, trim};

/// The arguments of `trim`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// What to drop: any of free, zero, cache (default free,zero).
    #[arg(long)]
    drop: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What `trim` dropped.
struct Trimmed<'a> {
    output: &'a Path,
    drop: Drop,
    /// The image had page classes to go by.
    classified: bool,
    r: TrimReport,
}

impl Report for Trimmed<'_> {
    fn json(&self) -> Value {
        let r = &self.r;
        json!({"output": self.output.display().to_string(), "before_bytes": r.before_bytes, "after_bytes": r.after_bytes,
               "free_pages": r.free_pages, "cache_pages": r.cache_pages, "cache_pages_kept": r.cache_pages_kept,
               "zero_pages": r.zero_pages, "classified": self.classified})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.r;
        let cache = if self.drop.cache {
            format!(
                ", {} cache pages (a restore reads them back from the disk; {} kept, with no disk reference)",
                r.cache_pages, r.cache_pages_kept
            )
        } else {
            String::new()
        };
        writeln!(
            w,
            "{}: {} -> {} ({:.1}%); dropped {} free pages{cache}; {} zero pages",
            self.output.display(),
            bytes(r.before_bytes),
            bytes(r.after_bytes),
            r.after_bytes as f64 * 100.0 / r.before_bytes.max(1) as f64,
            r.free_pages,
            r.zero_pages
        )
    }
}

/// Runs `trim`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let drop = a.drop.as_deref().map(Drop::parse).transpose()?.unwrap_or_default();
    let img = Image::open(&a.image)?;
    let counts = img.page_counts();
    let unknown: u64 = counts[PageClass::Unknown as usize].iter().sum();
    let unclassified = (drop.free || drop.cache) && unknown == img.page_count();
    let r = trim(&img, &a.output, drop)?;
    // Said once the output is written: a failure is its one line alone.
    if unclassified {
        eprintln!(
            "note: {} was never classified, so it has no free or cache pages to drop: classify it first with `pbr-img classify {} --kpageflags FILE -o OUT` (the guest's /proc/kpageflags) or `--class-map FILE`",
            a.image.display(),
            a.image.display()
        );
    }
    print(&Trimmed { output: &a.output, drop, classified: !unclassified, r }, a.json)
}
