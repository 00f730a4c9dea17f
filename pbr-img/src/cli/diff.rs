//! `pbr-img diff`, `apply` and `rebase`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::{Value, json};

use super::error::{DIFFERENT, Error, Result};
use super::fmt::{bytes, count, hex};
use super::report::{Report, print};
use pbr_tools::apply::Applied;
use pbr_tools::diff::{Counts, DiffImage, DiffReport, diff, write_diff};

/// The arguments of `diff`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The older image.
    pub a: PathBuf,
    /// The newer image.
    pub b: PathBuf,
    /// Write a diff image rebuilding B from A instead of a report.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The arguments of `apply`.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The base image.
    pub base: PathBuf,
    /// The diffs, oldest first.
    #[arg(required = true)]
    pub diffs: Vec<PathBuf>,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The arguments of `rebase`.
#[derive(clap::Args, Debug)]
pub struct RebaseArgs {
    /// The diffs, oldest first.
    #[arg(required = true)]
    pub diffs: Vec<PathBuf>,
    /// The diff to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What changed from A to B.
struct Changes<'a> {
    a: &'a Path,
    b: &'a Path,
    r: DiffReport,
}

fn counts(c: &Counts) -> Value {
    json!({"added": c.added, "removed": c.removed, "changed": c.changed, "unchanged": c.unchanged})
}

fn counts_line(c: &Counts) -> String {
    format!("{} added, {} removed, {} changed, {} unchanged", c.added, c.removed, c.changed, c.unchanged)
}

impl Report for Changes<'_> {
    fn json(&self) -> Value {
        let r = &self.r;
        json!({
            "a": self.a.display().to_string(), "b": self.b.display().to_string(),
            "phases": [r.phases.0, r.phases.1],
            "pages": counts(&r.pages),
            "reclassified": r.reclassified,
            "by_class": r.by_class.iter().map(|(k, c)| (k.clone(), counts(c))).collect::<serde_json::Map<_, _>>(),
            "by_region": r.by_region.iter().map(|(k, c)| (k.clone(), counts(c))).collect::<serde_json::Map<_, _>>(),
            "vcpus": r.vcpus,
            "devices": {"added": r.devices.0, "removed": r.devices.1, "changed": r.devices.2},
            "manifest": {"added": r.manifest.0, "removed": r.manifest.1, "changed": r.manifest.2},
            "metadata": r.metadata.iter().map(|(k, x, y)| json!({"key": k, "a": x, "b": y})).collect::<Vec<_>>(),
        })
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.r;
        let (pa, pb) = (r.phases.0.as_deref(), r.phases.1.as_deref());
        writeln!(w, "phases     {} -> {}", pa.unwrap_or("(none)"), pb.unwrap_or("(none)"))?;
        writeln!(w, "pages      {}; {} reclassified", counts_line(&r.pages), r.reclassified)?;
        for (k, c) in &r.by_class {
            writeln!(w, "  class {k:<8} {}", counts_line(c))?;
        }
        for (k, c) in &r.by_region {
            writeln!(w, "  region {k}: {}", counts_line(c))?;
        }
        writeln!(w, "vcpus      {}", count(r.vcpus.len() as u64, "difference"))?;
        for l in &r.vcpus {
            writeln!(w, "  {l}")?;
        }
        for (label, (x, y, z)) in [("devices", &r.devices), ("manifest", &r.manifest)] {
            writeln!(w, "{label:<10} {} added, {} removed, {} changed", x.len(), y.len(), z.len())?;
            for (sign, v) in [("+", x), ("-", y), ("~", z)] {
                for k in v {
                    writeln!(w, "  {sign} {k}")?;
                }
            }
        }
        for (k, x, y) in &r.metadata {
            writeln!(
                w,
                "metadata   {k}: {} -> {}",
                x.as_deref().unwrap_or("(none)"),
                y.as_deref().unwrap_or("(none)")
            )?;
        }
        Ok(())
    }

    fn pretty(&self) -> bool {
        true
    }

    /// As diff(1) and cmp(1): 0 when the images are the same, 1 when they
    /// differ.
    fn status(&self) -> ExitCode {
        if self.r.differs() { ExitCode::from(DIFFERENT) } else { ExitCode::SUCCESS }
    }
}

/// The diff image `diff -o` wrote.
struct Written<'a>(&'a Path, DiffImage);

impl Report for Written<'_> {
    fn json(&self) -> Value {
        let Written(out, d) = self;
        json!({"output": out.display().to_string(), "stored_pages": d.stored, "base_pages": d.in_base, "file_len": d.file_len})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let Written(out, d) = self;
        writeln!(
            w,
            "{}: {} changed or added pages stored, {} left in the base; {}",
            out.display(),
            d.stored,
            d.in_base,
            bytes(d.file_len)
        )
    }
}

/// The image `apply` rebuilt from `diffs` diffs.
struct Rebuilt<'a> {
    output: &'a Path,
    diffs: usize,
    r: Applied,
}

impl Report for Rebuilt<'_> {
    fn json(&self) -> Value {
        json!({"output": self.output.display().to_string(), "file_len": self.r.file_len, "content_blake3": hex(&self.r.content_hash)})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "{}: rebuilt from {} diff(s), {}, content {}",
            self.output.display(),
            self.diffs,
            bytes(self.r.file_len),
            hex(&self.r.content_hash)
        )
    }
}

/// The diff `rebase` wrote for a chain of `diffs` diffs, `file_len` bytes.
struct Rebased<'a> {
    output: &'a Path,
    diffs: usize,
    file_len: u64,
}

impl Report for Rebased<'_> {
    fn json(&self) -> Value {
        json!({"output": self.output.display().to_string(), "file_len": self.file_len})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "{}: one diff for {} ({})", self.output.display(), self.diffs, bytes(self.file_len))
    }
}

/// Runs `diff`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let ia = Image::open(&a.a)?;
    let ib = Image::open(&a.b)?;
    if let Some(out) = &a.output {
        let name = a.a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return print(&Written(out, write_diff(&ia, &ib, &name, out)?), a.json);
    }
    print(&Changes { a: &a.a, b: &a.b, r: diff(&ia, &ib)? }, a.json)
}

/// Runs `apply`.
pub fn apply(a: &ApplyArgs) -> Result<ExitCode> {
    let b = Image::open(&a.base)?;
    let ds = a.diffs.iter().map(Image::open).collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&Image> = ds.iter().collect();
    let r = pbr_tools::apply::apply(&b, &refs, &a.output)?;
    print(&Rebuilt { output: &a.output, diffs: ds.len(), r }, a.json)
}

/// Runs `rebase`.
pub fn rebase(a: &RebaseArgs) -> Result<ExitCode> {
    if a.diffs.len() < 2 {
        return Err(Error::Usage("rebase flattens a chain: give at least two diffs, oldest first".into()));
    }
    let ds = a.diffs.iter().map(Image::open).collect::<std::result::Result<Vec<_>, _>>()?;
    let refs: Vec<&Image> = ds.iter().collect();
    let file_len = pbr_tools::apply::rebase(&refs, &a.output)?;
    print(&Rebased { output: &a.output, diffs: a.diffs.len(), file_len }, a.json)
}
