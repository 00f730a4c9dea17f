//! `pbr-img export`: write an image out in another format.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use pbr_format::Image;
use serde_json::json;

use crate::progress;
use pbr_tools::Result;
use pbr_tools::export::raw::export_raw;
use pbr_tools::libvirt::{self, Compression};
use pbr_tools::qemu::export::{ExportOptions, export_qemu, export_qemu_to};
use pbr_tools::xen::export::{export_xl, export_xl_to};

/// Formats `export` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    /// Guest-physical memory as one flat sparse file.
    Raw,
    /// A QEMU migration stream for `-incoming` (images converted from QEMU).
    Qemu,
    /// An `xl save` file for `xl restore` (images converted from xl).
    Xl,
    /// A libvirt save file for `virsh restore` (images converted from one).
    Libvirt,
}

/// `--compress` of a libvirt export.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Compress {
    /// No compression.
    Raw,
    /// gzip.
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// zstd (only newer libvirt reads it; libvirt 9.0 does not).
    Zstd,
}

impl Compress {
    fn libvirt(self) -> Compression {
        match self {
            Compress::Raw => Compression::Raw,
            Compress::Gzip => Compression::Gzip,
            Compress::Bzip2 => Compression::Bzip2,
            Compress::Xz => Compression::Xz,
            Compress::Zstd => Compression::Zstd,
        }
    }
}

/// Prints the summary line: on standard output, or on standard error when
/// the stream itself goes to standard output.
macro_rules! report {
    ($to_stdout:expr, $($t:tt)*) => {
        if $to_stdout { eprintln!($($t)*) } else { outln!($($t)*) }
    };
}

pub fn run(
    to: Target,
    path: &Path,
    output: &Path,
    compress: Option<Compress>,
    as_json: bool,
    quiet: bool,
) -> Result<ExitCode> {
    if compress.is_some() && !matches!(to, Target::Libvirt) {
        return Err(pbr_tools::Error::Unsupported("--compress applies to --to libvirt".into()));
    }
    let img = Image::open(path)?;
    let piped = super::files::is_dash(output);
    if piped {
        // Nothing half-written can be taken back from a pipe.
        img.check_page_crcs()?;
    }
    let stdout = || std::io::BufWriter::with_capacity(1 << 20, super::out::Stdout::lock());
    match to {
        Target::Raw => {
            let bar = progress::bytes(img.guest_size(), "export", quiet);
            let r = export_raw(&img, output, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            if as_json {
                outln!(
                    "{}",
                    json!({"output": output.display().to_string(), "file_len": r.file_len, "data_pages": r.data_pages,
                           "hole_pages": r.hole_pages, "skipped_regions": r.skipped_regions,
                           "refilled_pages": r.refilled_pages})
                );
            } else {
                outln!(
                    "{}: {} bytes of guest-physical memory, {} pages with data, {} holes, {} page-cache pages refilled from the disks",
                    output.display(),
                    r.file_len,
                    r.data_pages,
                    r.hole_pages,
                    r.refilled_pages
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
                           "zero_records": r.zero_records, "dropped_mapped_ram": r.dropped_mapped_ram,
                           "refilled_pages": r.refilled_pages})
                );
            } else {
                report!(
                    piped,
                    "{}: QEMU stream of {} bytes ({} page + {} zero records, {} of them page-cache pages refilled from the disks){}",
                    output.display(),
                    r.stream_bytes,
                    r.page_records,
                    r.zero_records,
                    r.refilled_pages,
                    if r.dropped_mapped_ram { "; written as a plain stream (mapped-ram dropped)" } else { "" }
                );
            }
        }
        Target::Libvirt => {
            let c = compress.map(Compress::libvirt);
            let r = if piped { libvirt::export_to(&img, stdout(), c)? } else { libvirt::export(&img, output, c)? };
            let shown = if piped { "standard output".to_owned() } else { output.display().to_string() };
            let c = c.or_else(|| {
                img.metadata_value(pbr_format::keys::LIBVIRT_COMPRESSED)
                    .and_then(|n| (0..6).filter_map(Compression::from_code).find(|c| c.name() == n))
            });
            let cname = c.map_or("as the original", Compression::name);
            if as_json {
                report!(
                    piped,
                    "{}",
                    json!({"output": shown, "compressed": cname, "stream_bytes": r.stream_bytes,
                                            "page_records": r.page_records, "zero_records": r.zero_records})
                );
            } else {
                report!(
                    piped,
                    "{shown}: libvirt save file ({cname}) around a QEMU stream of {} bytes ({} page + {} zero records)",
                    r.stream_bytes,
                    r.page_records,
                    r.zero_records
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
