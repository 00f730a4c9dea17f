//! `pbr-img select`: the latest candidate still valid, against the files
//! under a root ([`pbr_format::select::select_files`]) or, without one,
//! against the seals an agent capture recorded ([`pbr_reboot::select::select`]).

use pbr_reboot::fleet::Fetch;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pbr_format::select::{FileSelection, FileVerdict, select_files};
use serde_json::{Value, json};

use super::error::{NO_CANDIDATE, Result};
use super::report::{Report, print};

/// The arguments of `select`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The guest root directory (a mounted guest file system). Without
    /// it, candidates are judged by the seals an agent capture recorded
    /// (boot files, mounted disks, QEMU version).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The QEMU binary that would restore (seal judging) [default: the
    /// one the capture ran].
    #[arg(long)]
    qemu: Option<String>,
    /// The candidate images, in any order: files, or images in an
    /// S3-compatible store (s3://BUCKET/PREFIX/NAME), pulled first (one
    /// that cannot be is refused).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Where candidates from a store are pulled to (as `recover`'s).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Hash every file even when its size and mtime match.
    #[arg(long)]
    strict: bool,
    /// Do not read the stored pages: judge the files and seals only.
    /// Without it the candidate about to be chosen has every stored
    /// page checked against its crc32, as `recover` does, and a damaged
    /// one is refused.
    #[arg(long)]
    fast: bool,
    /// Print the verdicts as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `select`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let images = super::store::local_candidates(&a.images, a.cache.as_ref(), Fetch::Pull, &mut |r| {
        eprintln!("refused {}: {}", r.path.display(), r.reason);
    })?
    .paths;
    match &a.root {
        Some(root) => print(&Selected { s: select_files(&images, root, a.strict, a.fast), fast: a.fast }, a.json),
        None => print(&Sealed(pbr_reboot::select::select(&images, a.qemu.as_deref(), a.fast)), a.json),
    }
}

/// The verdicts on candidates judged against the files under a root.
struct Selected {
    s: FileSelection,
    /// No stored page was read.
    fast: bool,
}

fn verdict_json(c: &FileVerdict) -> Value {
    let v = c.verdict.as_ref().ok();
    json!({
        "image": c.path.display().to_string(),
        "phase": c.phase.as_ref().map(|p| json!({"name": p.name, "sequence": p.sequence})),
        "valid": v.is_some_and(|v| v.valid),
        "first_mismatch": v.and_then(|v| v.first_mismatch.as_ref()).map(|(p, m)| json!({"path": p, "why": m.to_string()})),
        "refused": c.verdict.as_ref().err(),
        "files_checked": v.map_or(0, |v| v.files_checked),
        "files_hashed": v.map_or(0, |v| v.files_hashed),
        "stale_cache_pages": v.map(|v| v.stale_cache.iter().map(|c| c.gfn).collect::<Vec<_>>()).unwrap_or_default(),
        "pages_checked": v.is_some_and(|v| v.pages_checked),
        "damage": v.and_then(|v| v.damage.clone()),
    })
}

impl Report for Selected {
    fn json(&self) -> Value {
        let list: Vec<Value> = self.s.candidates.iter().map(verdict_json).collect();
        json!({"chosen": self.s.chosen.as_ref().map(|p| p.display().to_string()), "candidates": list})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for c in &self.s.candidates {
            let v = match &c.verdict {
                Ok(v) => v,
                Err(e) => {
                    writeln!(w, "{}: refused: {e}", c.path.display())?;
                    continue;
                }
            };
            let phase = c.phase.as_ref().map_or("(no phase)".to_string(), |p| format!("{} #{}", p.name, p.sequence));
            let pages = if v.pages_checked { ", pages checked" } else { "" };
            let what = match (&v.first_mismatch, &v.damage) {
                (Some((p, m)), _) => format!("invalid: {p} {m}"),
                (None, Some(d)) => format!("refused: damaged: {d}"),
                (None, None) => format!("valid ({} files, {} hashed{pages})", v.files_checked, v.files_hashed),
            };
            writeln!(w, "{} ({phase}): {what}", c.path.display())?;
            if !v.stale_cache.is_empty() {
                writeln!(
                    w,
                    "  {} cache pages hold changed files: drop or refresh them after restoring",
                    v.stale_cache.len()
                )?;
            }
        }
        if self.fast {
            writeln!(w, "note: --fast: no stored page was read; recover checks every page it restores")?;
        }
        if let Some(p) = &self.s.chosen {
            writeln!(w, "chosen: {}", p.display())?;
        }
        Ok(())
    }

    fn pretty(&self) -> bool {
        true
    }

    fn after(&self, _json: bool) -> Vec<String> {
        match self.s.chosen {
            Some(_) => Vec::new(),
            None => vec!["pbr-img: no valid candidate: do a full reboot".into()],
        }
    }

    /// 3 when no candidate is valid: do a full reboot.
    fn status(&self) -> ExitCode {
        if self.s.chosen.is_some() { ExitCode::SUCCESS } else { ExitCode::from(NO_CANDIDATE) }
    }
}

/// The verdicts on agent candidates judged by their seals.
struct Sealed(pbr_reboot::select::Selection);

impl Report for Sealed {
    fn json(&self) -> Value {
        let list: Vec<Value> = self
            .0
            .verdicts
            .iter()
            .map(|(p, v)| json!({"image": p.display().to_string(), "valid": v.is_ok(), "reason": v.as_ref().err()}))
            .collect();
        json!({"chosen": self.0.chosen.as_ref().map(|p| p.display().to_string()), "candidates": list})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        for (p, v) in &self.0.verdicts {
            match v {
                Ok(()) => writeln!(w, "{}: valid (seals hold)", p.display())?,
                Err(reason) => writeln!(w, "{}: invalid: {reason}", p.display())?,
            }
        }
        if self.0.fast {
            writeln!(w, "note: --fast: no stored page was read; recover checks every page it restores")?;
        }
        if let Some(p) = &self.0.chosen {
            writeln!(w, "chosen: {}", p.display())?;
        }
        Ok(())
    }

    fn pretty(&self) -> bool {
        true
    }

    fn after(&self, _json: bool) -> Vec<String> {
        match self.0.chosen {
            Some(_) => Vec::new(),
            None => vec!["pbr-img: no candidate's seals hold: do a full reboot".into()],
        }
    }

    /// 3 when no candidate's seals hold: do a full reboot.
    fn status(&self) -> ExitCode {
        if self.0.chosen.is_some() { ExitCode::SUCCESS } else { ExitCode::from(NO_CANDIDATE) }
    }
}
