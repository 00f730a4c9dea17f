//! `pbr-img pack` and `unpack`.

use std::path::Path;
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::json;

use super::fmt::bytes;
use crate::progress;
use pbr_tools::Result;

/// What `pack` and `unpack` write.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// lz4 and duplicates.
    Packed,
    /// Raw pages, mmap-able.
    Raw,
    /// Raw pages in region order, zeros as holes.
    Flat,
}

/// A function writing an image in one layout, reporting progress.
type Writer = fn(&Image, &Path, &dyn Fn(u64)) -> Result<pbr_tools::pack::PackReport>;

pub fn run(image: &Path, output: &Path, layout: Layout, as_json: bool, quiet: bool) -> Result<ExitCode> {
    let img = Image::open(image)?;
    let (name, write): (_, Writer) = match layout {
        Layout::Packed => ("pack", pbr_tools::pack::pack),
        Layout::Raw => ("unpack", pbr_tools::pack::unpack),
        Layout::Flat => ("unpack", pbr_tools::flat::unpack_flat),
    };
    let bar = progress::bytes(img.guest_size(), name, quiet);
    let r = write(&img, output, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if as_json {
        outln!(
            "{}",
            json!({"output": output.display().to_string(), "before_bytes": r.before_bytes, "after_bytes": r.after_bytes,
                   "stored_pages": r.stored_pages, "dup_pages": r.dup_pages})
        );
    } else {
        outln!(
            "{}: {} -> {} ({:.1}%); {} pages stored, {} stored once for several",
            output.display(),
            bytes(r.before_bytes),
            bytes(r.after_bytes),
            r.after_bytes as f64 * 100.0 / r.before_bytes.max(1) as f64,
            r.stored_pages,
            r.dup_pages
        );
    }
    Ok(ExitCode::SUCCESS)
}
