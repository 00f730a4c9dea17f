//! `pbr-img pack` and `unpack`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::{Value, json};

use super::error::Result;
use super::fmt::bytes;
use super::report::{Report, print};
use crate::progress;
use pbr_tools::pack::PackReport;

/// The arguments of `pack`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The arguments of `unpack`.
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// The image.
    pub image: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The flat layout: each region one range of the file in region
    /// order, zero and trimmed pages as holes (QEMU 8.2+ maps the RAM
    /// from it at restore).
    #[arg(long)]
    flat: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A function writing an image in one layout, reporting progress.
type Writer = fn(&Image, &Path, &dyn Fn(u64)) -> pbr_tools::Result<PackReport>;

/// The image `pack` or `unpack` wrote.
struct Packed<'a>(&'a Path, PackReport);

impl Report for Packed<'_> {
    fn json(&self) -> Value {
        let Packed(output, r) = self;
        json!({"output": output.display().to_string(), "before_bytes": r.before_bytes, "after_bytes": r.after_bytes,
               "stored_pages": r.stored_pages, "dup_pages": r.dup_pages})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let Packed(output, r) = self;
        writeln!(
            w,
            "{}: {} -> {} ({:.1}%); {} pages stored, {} stored once for several",
            output.display(),
            bytes(r.before_bytes),
            bytes(r.after_bytes),
            r.after_bytes as f64 * 100.0 / r.before_bytes.max(1) as f64,
            r.stored_pages,
            r.dup_pages
        )
    }
}

/// Runs `pack`: pages lz4-compressed, identical pages once.
pub fn run(a: &Args, quiet: bool) -> Result<ExitCode> {
    write(&a.image, &a.output, ("pack", pbr_tools::pack::pack), a.json, quiet)
}

/// Runs `unpack`: the raw layout, or the flat one.
pub fn unpack_run(a: &UnpackArgs, quiet: bool) -> Result<ExitCode> {
    let layout: Writer = if a.flat { pbr_tools::flat::unpack_flat } else { pbr_tools::pack::unpack };
    write(&a.image, &a.output, ("unpack", layout), a.json, quiet)
}

/// Writes `image` at `output` with `write`, its progress bar named `name`.
fn write(image: &Path, output: &Path, (name, write): (&str, Writer), json: bool, quiet: bool) -> Result<ExitCode> {
    let img = Image::open(image)?;
    let bar = progress::bytes(img.guest_size(), name, quiet);
    let r = write(&img, output, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    print(&Packed(output, r), json)
}
