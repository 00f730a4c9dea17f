//! `pbr-img verify`: every checksum and hash; exit 0 only when all pass.

use std::path::Path;
use std::process::ExitCode;

use pbr_format::{ErrorKind, Image};
use serde_json::json;

use crate::progress;
use pbr_tools::Result;

pub fn run(path: &Path, as_json: bool, quiet: bool) -> Result<ExitCode> {
    let img = match Image::open(path) {
        Ok(img) => img,
        Err(e) if is_damage(&e) => return Ok(report_failure(path, &e, as_json)),
        Err(e) => return Err(e.into()),
    };
    let bar = progress::bytes(progress::check_total(&img), "verify", quiet);
    let r = img.check(MAX_LISTED, &|n| bar.inc(n));
    bar.finish_and_clear();
    let ok = r.damaged == 0;
    if as_json {
        let damage: Vec<_> = r
            .damage
            .iter()
            .map(|e| json!({"error": e.to_string(), "section": e.section(), "offset": e.offset()}))
            .collect();
        outln!(
            "{}",
            json!({"path": path.display().to_string(), "ok": ok, "sections": r.sections, "pages": r.pages,
                   "hashed_bytes": r.hashed_bytes, "damaged": r.damaged, "damage": damage,
                   "damage_listed": r.damage.len()})
        );
    } else if ok {
        outln!(
            "{}: ok ({} sections, {} stored pages, {} bytes hashed)",
            path.display(),
            r.sections,
            r.pages,
            r.hashed_bytes
        );
    } else {
        for e in &r.damage {
            outln!("damaged: {}", crate::one_line(&e.to_string()));
        }
        if r.damaged > r.damage.len() as u64 {
            outln!("... and {} more (the first {MAX_LISTED} are listed)", r.damaged - r.damage.len() as u64);
        }
        eprintln!(
            "pbr-img: error: {}: {} damaged (sections, pages or the trailer hash); {} sections and {} stored pages are good",
            path.display(),
            r.damaged,
            r.sections,
            r.pages
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(super::CHECK_FAILED) })
}

/// `verify --pages`: every stored page against its crc32, timed; exit 1 at
/// the first damaged one.
pub fn pages_run(path: &Path, as_json: bool) -> Result<ExitCode> {
    let img = Image::open(path)?;
    let t = std::time::Instant::now();
    // As a restore checks: a flat image's holes are known zero.
    let holes = std::fs::File::open(path).map(|f| pbr_tools::holes::holes(&f)).unwrap_or_default();
    let r = img.check_page_crcs_outside(&holes);
    let check_s = t.elapsed().as_secs_f64();
    match (r, as_json) {
        (Ok(pages), true) => {
            outln!("{}", json!({"path": path.display().to_string(), "ok": true, "pages": pages, "check_s": check_s}))
        }
        (Ok(pages), false) => {
            outln!("{}: ok ({pages} stored pages checked in {:.1} ms)", path.display(), check_s * 1e3)
        }
        (Err(e), _) => return Ok(report_failure(path, &e, as_json)),
    }
    Ok(ExitCode::SUCCESS)
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

fn report_failure(path: &Path, e: &pbr_format::Error, as_json: bool) -> ExitCode {
    if as_json {
        outln!(
            "{}",
            json!({"path": path.display().to_string(), "ok": false, "error": e.to_string(), "section": e.section(), "offset": e.offset()})
        );
    } else {
        eprintln!("pbr-img: error: {}", crate::one_line(&e.to_string()));
    }
    ExitCode::from(super::CHECK_FAILED)
}
