//! `pbr-img export`: write an image out in another format.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use pbr_format::Image;
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::report::{Report, print};
use crate::progress;
use pbr_tools::export::raw::{RawExport, export_raw};
use pbr_tools::libvirt::{self, Compression};
use pbr_tools::qemu::export::{ExportOptions, QemuExport, export_qemu, export_qemu_to};
use pbr_tools::xen::export::{XlExport, export_xl, export_xl_to};

/// The arguments of `export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target format.
    #[arg(long, value_enum)]
    pub to: Target,
    /// The image.
    pub image: PathBuf,
    /// Output file, or `-` for standard output (qemu, xl, libvirt).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The libvirt save file's compression (default: as the original).
    #[arg(long, value_enum)]
    compress: Option<Compress>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

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

/// What `export` wrote at `output`.
struct Exported<'a> {
    output: &'a Path,
    /// The stream went to standard output: the report goes to standard
    /// error.
    piped: bool,
    what: Written,
}

/// The file or stream `export` wrote, by format.
enum Written {
    /// Guest-physical memory.
    Raw(RawExport),
    /// A QEMU migration stream.
    Qemu(QemuExport),
    /// A libvirt save file, its compression named.
    Libvirt(QemuExport, &'static str),
    /// An `xl save` file.
    Xl(XlExport),
}

impl Exported<'_> {
    /// Where the output went, as the libvirt report names it.
    fn shown(&self) -> String {
        if self.piped { "standard output".to_owned() } else { self.output.display().to_string() }
    }
}

impl Report for Exported<'_> {
    fn json(&self) -> Value {
        let output = self.output.display().to_string();
        match &self.what {
            Written::Raw(r) => json!({"output": output, "file_len": r.file_len, "data_pages": r.data_pages,
                                      "hole_pages": r.hole_pages, "skipped_regions": r.skipped_regions,
                                      "refilled_pages": r.refilled_pages}),
            Written::Qemu(r) => {
                json!({"output": output, "stream_bytes": r.stream_bytes, "page_records": r.page_records,
                                       "zero_records": r.zero_records, "dropped_mapped_ram": r.dropped_mapped_ram,
                                       "refilled_pages": r.refilled_pages})
            }
            Written::Libvirt(r, cname) => {
                json!({"output": self.shown(), "compressed": cname, "stream_bytes": r.stream_bytes,
                                                 "page_records": r.page_records, "zero_records": r.zero_records})
            }
            Written::Xl(r) => json!({"output": output, "stream_bytes": r.stream_bytes, "page_records": r.page_records,
                                     "data_pages": r.data_pages, "added_pages": r.added_pages, "patched_entries": r.patched_entries}),
        }
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let output = self.output.display();
        match &self.what {
            Written::Raw(r) => writeln!(
                w,
                "{output}: {} bytes of guest-physical memory, {} pages with data, {} holes, {} page-cache pages refilled from the disks",
                r.file_len, r.data_pages, r.hole_pages, r.refilled_pages
            ),
            Written::Qemu(r) => writeln!(
                w,
                "{output}: QEMU stream of {} bytes ({} page + {} zero records, {} of them page-cache pages refilled from the disks){}",
                r.stream_bytes,
                r.page_records,
                r.zero_records,
                r.refilled_pages,
                if r.dropped_mapped_ram { "; written as a plain stream (mapped-ram dropped)" } else { "" }
            ),
            Written::Libvirt(r, cname) => writeln!(
                w,
                "{}: libvirt save file ({cname}) around a QEMU stream of {} bytes ({} page + {} zero records)",
                self.shown(),
                r.stream_bytes,
                r.page_records,
                r.zero_records
            ),
            Written::Xl(r) => writeln!(
                w,
                "{output}: xl save file of {} bytes ({} PAGE_DATA records, {} data pages){}{}",
                r.stream_bytes,
                r.page_records,
                r.data_pages,
                if r.added_pages > 0 { format!("; {} pages added", r.added_pages) } else { String::new() },
                if r.patched_entries > 0 {
                    format!("; {} HVM entries written from changed vCPU records", r.patched_entries)
                } else {
                    String::new()
                }
            ),
        }
    }

    fn on_stderr(&self) -> bool {
        self.piped
    }

    fn after(&self, json: bool) -> Vec<String> {
        match &self.what {
            Written::Raw(r) if !json && !r.skipped_regions.is_empty() => {
                vec![format!("note: not guest-physical, not exported: {}", r.skipped_regions.join(", "))]
            }
            _ => Vec::new(),
        }
    }
}

/// Runs `export`.
pub fn run(a: &Args, quiet: bool) -> Result<ExitCode> {
    if a.compress.is_some() && !matches!(a.to, Target::Libvirt) {
        return Err(Error::Usage("--compress applies to --to libvirt".into()));
    }
    let img = Image::open(&a.image)?;
    let (output, piped) = (a.output.as_path(), super::files::is_dash(&a.output));
    if piped {
        // Nothing half-written can be taken back from a pipe.
        img.check_page_crcs()?;
    }
    let stdout = || std::io::BufWriter::with_capacity(1 << 20, super::out::Stdout::lock());
    let what = match a.to {
        Target::Raw => {
            let bar = progress::bytes(img.guest_size(), "export", quiet);
            let r = export_raw(&img, output, &|n| bar.inc(n))?;
            bar.finish_and_clear();
            Written::Raw(r)
        }
        Target::Qemu => Written::Qemu(if piped {
            export_qemu_to(&img, stdout(), ExportOptions::default())?
        } else {
            export_qemu(&img, output)?
        }),
        Target::Libvirt => {
            let c = a.compress.map(Compress::libvirt);
            let r = if piped { libvirt::export_to(&img, stdout(), c)? } else { libvirt::export(&img, output, c)? };
            let c = c.or_else(|| {
                img.metadata_value(pbr_format::keys::LIBVIRT_COMPRESSED)
                    .and_then(|n| (0..6).filter_map(Compression::from_code).find(|c| c.name() == n))
            });
            Written::Libvirt(r, c.map_or("as the original", Compression::name))
        }
        Target::Xl => Written::Xl(if piped { export_xl_to(&img, stdout())? } else { export_xl(&img, output)? }),
    };
    print(&Exported { output, piped, what }, a.json)
}
