//! `pbr-img verify`: every checksum and hash; exit 0 only when all pass.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::read::CheckReport;
use pbr_format::{ErrorKind, Image};
use serde_json::{Value, json};

use super::error::{CHECK_FAILED, Result, one_line};
use super::report::{Report, print};
use crate::progress;

/// The arguments of `verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// Check only the stored pages against their crc32 (and blake3
    /// when the image has page hashes), as a restore does, and say how
    /// long it took; the first damaged page ends it.
    #[arg(long)]
    pages: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What `verify` found.
enum Verified<'a> {
    /// Every check ran: how many passed, and what failed.
    Checked(&'a Path, CheckReport),
    /// `--pages`: every stored page passed, in `check_s` seconds.
    Pages(&'a Path, u64, f64),
    /// The first damage found ended the check.
    Failed(&'a Path, pbr_format::Error),
}

impl Report for Verified<'_> {
    fn json(&self) -> Value {
        match self {
            Verified::Checked(path, r) => {
                let damage: Vec<_> = r
                    .damage
                    .iter()
                    .map(|e| json!({"error": e.to_string(), "section": e.section(), "offset": e.offset()}))
                    .collect();
                json!({"path": path.display().to_string(), "ok": r.damaged == 0, "sections": r.sections, "pages": r.pages,
                       "hashed_bytes": r.hashed_bytes, "damaged": r.damaged, "damage": damage,
                       "damage_listed": r.damage.len()})
            }
            Verified::Pages(path, pages, check_s) => {
                json!({"path": path.display().to_string(), "ok": true, "pages": pages, "check_s": check_s})
            }
            Verified::Failed(path, e) => {
                json!({"path": path.display().to_string(), "ok": false, "error": e.to_string(),
                                                "section": e.section(), "offset": e.offset()})
            }
        }
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Verified::Checked(path, r) if r.damaged == 0 => writeln!(
                w,
                "{}: ok ({} sections, {} stored pages, {} bytes hashed)",
                path.display(),
                r.sections,
                r.pages,
                r.hashed_bytes
            ),
            Verified::Checked(_, r) => {
                for e in &r.damage {
                    writeln!(w, "damaged: {}", one_line(&e.to_string()))?;
                }
                if r.damaged > r.damage.len() as u64 {
                    writeln!(
                        w,
                        "... and {} more (the first {MAX_LISTED} are listed)",
                        r.damaged - r.damage.len() as u64
                    )?;
                }
                Ok(())
            }
            Verified::Pages(path, pages, check_s) => {
                writeln!(w, "{}: ok ({pages} stored pages checked in {:.1} ms)", path.display(), check_s * 1e3)
            }
            Verified::Failed(..) => Ok(()),
        }
    }

    fn after(&self, json: bool) -> Vec<String> {
        match self {
            _ if json => Vec::new(),
            Verified::Checked(path, r) if r.damaged > 0 => vec![format!(
                "pbr-img: error: {}: {} damaged (sections, pages or the trailer hash); {} sections and {} stored pages are good",
                path.display(),
                r.damaged,
                r.sections,
                r.pages
            )],
            Verified::Failed(_, e) => vec![format!("pbr-img: error: {}", one_line(&e.to_string()))],
            Verified::Checked(..) | Verified::Pages(..) => Vec::new(),
        }
    }

    fn status(&self) -> ExitCode {
        match self {
            Verified::Checked(_, r) if r.damaged > 0 => ExitCode::from(CHECK_FAILED),
            Verified::Failed(..) => ExitCode::from(CHECK_FAILED),
            Verified::Checked(..) | Verified::Pages(..) => ExitCode::SUCCESS,
        }
    }
}

/// Runs `verify`.
pub fn run(a: &Args, quiet: bool) -> Result<ExitCode> {
    let report = if a.pages { check_pages(&a.image)? } else { check(&a.image, quiet)? };
    print(&report, a.json)
}

/// Every checksum and hash of the image at `path`.
fn check(path: &Path, quiet: bool) -> Result<Verified<'_>> {
    let img = match Image::open(path) {
        Ok(img) => img,
        Err(e) if is_damage(&e) => return Ok(Verified::Failed(path, e)),
        Err(e) => return Err(e.into()),
    };
    let bar = progress::bytes(progress::check_total(&img), "verify", quiet);
    let r = img.check(MAX_LISTED, &|n| bar.inc(n));
    bar.finish_and_clear();
    Ok(Verified::Checked(path, r))
}

/// `verify --pages`: every stored page against its crc32, timed; the first
/// damaged one ends it.
fn check_pages(path: &Path) -> Result<Verified<'_>> {
    let img = Image::open(path)?;
    let t = std::time::Instant::now();
    // As a restore checks: a flat image's holes are known zero.
    let holes = std::fs::File::open(path).map(|f| pbr_tools::holes::holes(&f)).unwrap_or_default();
    let r = img.check_page_crcs_outside(&holes);
    let check_s = t.elapsed().as_secs_f64();
    Ok(match r {
        Ok(pages) => Verified::Pages(path, pages, check_s),
        Err(e) => Verified::Failed(path, e),
    })
}

/// How many failures `verify` lists at most.
const MAX_LISTED: usize = 100;

/// Whether `e` says the image is damaged (the check failed), as opposed to
/// an input that cannot be checked at all (missing, not a `.pbr` image).
fn is_damage(e: &pbr_format::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ChecksumMismatch { .. }
            | ErrorKind::HashMismatch { .. }
            | ErrorKind::Malformed(_)
            | ErrorKind::Incomplete { .. }
    )
}
