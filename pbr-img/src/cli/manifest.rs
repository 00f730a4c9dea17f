//! `pbr-img manifest add` and `pbr-img select`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::Image;
use pbr_format::select::{Verdict, select, select_fast};
use serde_json::json;

use pbr_tools::manifest::{accessed_since, add, read_list};
use pbr_tools::{Error, Result};

pub fn add_run(
    image: &Path,
    root: &Path,
    list: Option<&Path>,
    since: Option<f64>,
    output: &Path,
    as_json: bool,
) -> Result<ExitCode> {
    let paths = match (list, since) {
        (Some(l), None) => read_list(l)?,
        (None, Some(t)) => accessed_since(root, (t * 1e9) as i128)?,
        _ => return Err(Error::Unsupported("give exactly one of --list or --accessed-since".into())),
    };
    let img = Image::open(image)?;
    let added = add(&img, root, &paths, output)?;
    if as_json {
        outln!("{}", json!({"output": output.display().to_string(), "files_added": added, "paths": paths.len()}));
    } else {
        outln!("{}: {added} files added to the manifest from {}", output.display(), root.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict_json(
    path: &Path,
    img: Option<&Image>,
    v: Option<&Verdict>,
    open_error: Option<String>,
) -> serde_json::Value {
    json!({
        "image": path.display().to_string(),
        "phase": img.and_then(|i| i.phase()).map(|p| json!({"name": p.name, "sequence": p.sequence})),
        "valid": v.is_some_and(|v| v.valid),
        "first_mismatch": v.and_then(|v| v.first_mismatch.as_ref()).map(|(p, m)| json!({"path": p, "why": m.to_string()})),
        "refused": open_error,
        "files_checked": v.map_or(0, |v| v.files_checked),
        "files_hashed": v.map_or(0, |v| v.files_hashed),
        "stale_cache_pages": v.map(|v| v.stale_cache.iter().map(|c| c.gfn).collect::<Vec<_>>()).unwrap_or_default(),
        "pages_checked": v.is_some_and(|v| v.pages_checked),
        "damage": v.and_then(|v| v.damage.clone()),
    })
}

pub fn select_run(root: &Path, images: &[PathBuf], strict: bool, fast: bool, as_json: bool) -> Result<ExitCode> {
    // A candidate that cannot be opened (a hostile manifest, corruption) is
    // refused, never trusted; the others are still judged.
    let opened: Vec<(usize, std::result::Result<Image, String>)> =
        images.iter().enumerate().map(|(i, p)| (i, Image::open(p).map_err(|e| e.to_string()))).collect();
    let (idx, good): (Vec<usize>, Vec<&Image>) =
        opened.iter().filter_map(|(i, r)| r.as_ref().ok().map(|img| (*i, img))).unzip();
    let s = if fast { select_fast(&good, root, strict) } else { select(&good, root, strict) };
    let verdicts: Vec<(usize, Verdict)> = s.verdicts.into_iter().map(|v| (idx[v.index], v)).collect();
    let chosen = s.chosen.map(|i| idx[i]);
    if as_json {
        let mut list: Vec<serde_json::Value> = verdicts
            .iter()
            .map(|(i, v)| verdict_json(&images[*i], opened[*i].1.as_ref().ok(), Some(v), None))
            .collect();
        for (i, r) in &opened {
            if let Err(e) = r {
                list.push(verdict_json(&images[*i], None, None, Some(e.clone())));
            }
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"chosen": chosen.map(|i| images[i].display().to_string()), "candidates": list})
            )
            .unwrap_or_default()
        );
    } else {
        for (i, v) in &verdicts {
            let img = opened[*i].1.as_ref().ok();
            let phase =
                img.and_then(|i| i.phase()).map_or("(no phase)".to_string(), |p| format!("{} #{}", p.name, p.sequence));
            let pages = if v.pages_checked { ", pages checked" } else { "" };
            let what = match (&v.first_mismatch, &v.damage) {
                (Some((p, m)), _) => format!("invalid: {p} {m}"),
                (None, Some(d)) => format!("refused: damaged: {d}"),
                (None, None) => format!("valid ({} files, {} hashed{pages})", v.files_checked, v.files_hashed),
            };
            outln!("{} ({phase}): {what}", images[*i].display());
            if !v.stale_cache.is_empty() {
                outln!(
                    "  {} cache pages hold changed files: drop or refresh them after restoring",
                    v.stale_cache.len()
                );
            }
        }
        for (i, r) in &opened {
            if let Err(e) = r {
                outln!("{}: refused: {e}", images[*i].display());
            }
        }
        if fast {
            outln!("note: --fast: no stored page was read; recover checks every page it restores");
        }
    }
    match chosen {
        Some(i) => {
            if !as_json {
                outln!("chosen: {}", images[i].display());
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("pbr-img: no valid candidate: do a full reboot");
            Ok(ExitCode::from(super::NO_CANDIDATE))
        }
    }
}
