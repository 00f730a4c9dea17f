//! `pbr-img export`: write an image out in another format.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use pbr_format::Image;
use serde_json::json;

use pbr_tools::export::raw::export_raw;
use pbr_tools::qemu::export::{ExportOptions, export_qemu, export_qemu_to};
use pbr_tools::xen::export::{export_xl, export_xl_to};
use pbr_tools::{Result, progress};

/// Formats `export` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    /// Guest-physical memory as one flat sparse file.
    Raw,
    /// A QEMU migration stream for `-incoming` (images converted from QEMU).
    Qemu,
    /// An `xl save` file for `xl restore` (images converted from xl).
    Xl,
}

/// Prints the summary line: on standard output, or on standard error when
/// the stream itself goes to standard output.
macro_rules! report {
    ($to_stdout:expr, $($t:tt)*) => {
        if $to_stdout { eprintln!($($t)*) } else { outln!($($t)*) }
    };
}

pub fn run(to: Target, path: &Path, output: &Path, as_json: bool, quiet: bool) -> Result<ExitCode> {
    let img = Image::open(path)?;
    let piped = super::files::is_dash(output);
    let stdout = || std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    match to {
        Target::Raw => {
            let bar = progress::bytes(img.guest_size(), "export", quiet);
            let r = export_raw(&img, output, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            if as_json {
                outln!(
                    "{}",
                    json!({"output": output.display().to_string(), "file_len": r.file_len, "data_pages": r.data_pages,
                           "hole_pages": r.hole_pages, "skipped_regions": r.skipped_regions})
                );
            } else {
                outln!(
                    "{}: {} bytes of guest-physical memory, {} pages with data, {} holes",
                    output.display(),
                    r.file_len,
                    r.data_pages,
                    r.hole_pages
                );
                if !r.skipped_regions.is_empty() {
                    eprintln!("note: not guest-physical, not exported: {}", r.skipped_regions.join(", "));
                }
            }
        }
        Target::Qemu => {
            let r = if piped {
                export_qemu_to(&img, stdout(), ExportOptions::default())?
            } else {
                export_qemu(&img, output)?
            };
            if as_json {
                report!(
                    piped,
                    "{}",
                    json!({"output": output.display().to_string(), "stream_bytes": r.stream_bytes, "page_records": r.page_records,
                           "zero_records": r.zero_records, "dropped_mapped_ram": r.dropped_mapped_ram})
                );
            } else {
                report!(
                    piped,
                    "{}: QEMU stream of {} bytes ({} page + {} zero records){}",
                    output.display(),
                    r.stream_bytes,
                    r.page_records,
                    r.zero_records,
                    if r.dropped_mapped_ram { "; written as a plain stream (mapped-ram dropped)" } else { "" }
                );
            }
        }
        Target::Xl => {
            let r = if piped { export_xl_to(&img, stdout())? } else { export_xl(&img, output)? };
            if as_json {
                report!(
                    piped,
                    "{}",
                    json!({"output": output.display().to_string(), "stream_bytes": r.stream_bytes, "page_records": r.page_records,
                           "data_pages": r.data_pages, "added_pages": r.added_pages, "patched_entries": r.patched_entries})
                );
            } else {
                report!(
                    piped,
                    "{}: xl save file of {} bytes ({} PAGE_DATA records, {} data pages){}{}",
                    output.display(),
                    r.stream_bytes,
                    r.page_records,
                    r.data_pages,
                    if r.added_pages > 0 { format!("; {} pages added", r.added_pages) } else { String::new() },
                    if r.patched_entries > 0 {
                        format!("; {} HVM entries written from changed vCPU records", r.patched_entries)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
