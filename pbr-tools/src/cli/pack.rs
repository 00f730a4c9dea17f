//! `pbr-img pack` and `unpack`.

use std::path::Path;
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::json;

use super::fmt::bytes;
use pbr_tools::Result;

pub fn run(image: &Path, output: &Path, packing: bool, as_json: bool) -> Result<ExitCode> {
    let img = Image::open(image)?;
    let r = if packing { pbr_tools::pack::pack(&img, output)? } else { pbr_tools::pack::unpack(&img, output)? };
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
