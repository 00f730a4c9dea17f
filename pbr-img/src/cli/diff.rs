//! `pbr-img diff`, `apply` and `rebase`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::{Value, json};

use super::fmt::{bytes, hex};
use pbr_tools::diff::{Counts, diff, write_diff};
use pbr_tools::{Error, Result};

/// As diff(1) and cmp(1): 0 when the images are the same, 1 when they
/// differ.
fn status(r: &pbr_tools::diff::DiffReport) -> ExitCode {
    if r.differs() { ExitCode::from(super::DIFFERENT) } else { ExitCode::SUCCESS }
}

fn counts(c: &Counts) -> Value {
    json!({"added": c.added, "removed": c.removed, "changed": c.changed, "unchanged": c.unchanged})
}

pub fn run(a: &Path, b: &Path, output: Option<&Path>, as_json: bool) -> Result<ExitCode> {
    let ia = Image::open(a)?;
    let ib = Image::open(b)?;
    if let Some(out) = output {
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let d = write_diff(&ia, &ib, &name, out)?;
        if as_json {
            outln!(
                "{}",
                json!({"output": out.display().to_string(), "stored_pages": d.stored, "base_pages": d.in_base, "file_len": d.file_len})
            );
        } else {
            outln!(
                "{}: {} changed or added pages stored, {} left in the base; {}",
                out.display(),
                d.stored,
                d.in_base,
                bytes(d.file_len)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = diff(&ia, &ib)?;
    if as_json {
        let v = json!({
            "a": a.display().to_string(), "b": b.display().to_string(),
            "phases": [r.phases.0, r.phases.1],
            "pages": counts(&r.pages),
            "reclassified": r.reclassified,
            "by_class": r.by_class.iter().map(|(k, c)| (k.clone(), counts(c))).collect::<serde_json::Map<_, _>>(),
            "by_region": r.by_region.iter().map(|(k, c)| (k.clone(), counts(c))).collect::<serde_json::Map<_, _>>(),
            "vcpus": r.vcpus,
            "devices": {"added": r.devices.0, "removed": r.devices.1, "changed": r.devices.2},
            "manifest": {"added": r.manifest.0, "removed": r.manifest.1, "changed": r.manifest.2},
            "metadata": r.metadata.iter().map(|(k, x, y)| json!({"key": k, "a": x, "b": y})).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(status(&r));
    }
    let line = |c: &Counts| {
        format!("{} added, {} removed, {} changed, {} unchanged", c.added, c.removed, c.changed, c.unchanged)
    };
    outln!("phases     {} -> {}", r.phases.0.as_deref().unwrap_or("(none)"), r.phases.1.as_deref().unwrap_or("(none)"));
    outln!("pages      {}; {} reclassified", line(&r.pages), r.reclassified);
    for (k, c) in &r.by_class {
        outln!("  class {k:<8} {}", line(c));
    }
    for (k, c) in &r.by_region {
        outln!("  region {k}: {}", line(c));
    }
    outln!("vcpus      {}", super::fmt::count(r.vcpus.len() as u64, "difference"));
    for l in &r.vcpus {
        outln!("  {l}");
    }
    let list = |label: &str, (x, y, z): &(Vec<String>, Vec<String>, Vec<String>)| {
        outln!("{label:<10} {} added, {} removed, {} changed", x.len(), y.len(), z.len());
        for (sign, v) in [("+", x), ("-", y), ("~", z)] {
            for k in v {
                outln!("  {sign} {k}");
            }
        }
    };
    list("devices", &r.devices);
    list("manifest", &r.manifest);
    for (k, x, y) in &r.metadata {
        outln!("metadata   {k}: {} -> {}", x.as_deref().unwrap_or("(none)"), y.as_deref().unwrap_or("(none)"));
    }
    Ok(status(&r))
}

pub fn apply(base: &Path, diffs: &[PathBuf], output: &Path, as_json: bool) -> Result<ExitCode> {
    let b = Image::open(base)?;
    let ds = diffs.iter().map(Image::open).collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&Image> = ds.iter().collect();
    let r = pbr_tools::apply::apply(&b, &refs, output)?;
    if as_json {
        outln!(
            "{}",
            json!({"output": output.display().to_string(), "file_len": r.file_len, "content_blake3": hex(&r.content_hash)})
        );
    } else {
        outln!(
            "{}: rebuilt from {} diff(s), {}, content {}",
            output.display(),
            ds.len(),
            bytes(r.file_len),
            hex(&r.content_hash)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rebase(diffs: &[PathBuf], output: &Path, as_json: bool) -> Result<ExitCode> {
    if diffs.len() < 2 {
        return Err(Error::Unsupported("rebase flattens a chain: give at least two diffs, oldest first".into()));
    }
    let ds = diffs.iter().map(Image::open).collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&Image> = ds.iter().collect();
    let len = pbr_tools::apply::rebase(&refs, output)?;
    if as_json {
        outln!("{}", json!({"output": output.display().to_string(), "file_len": len}));
    } else {
        outln!("{}: one diff for {} ({})", output.display(), diffs.len(), bytes(len));
    }
    Ok(ExitCode::SUCCESS)
}
