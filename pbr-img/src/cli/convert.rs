//! `pbr-img convert`: a hypervisor's save file or stream into a `.pbr`
//! image, the format found by magic.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::{Phase, WELL_KNOWN_PHASES};
use serde_json::{Value, json};

use super::error::Result;
use super::fmt::count;
use super::report::{Report, print};
use crate::progress;
use pbr_tools::Error;
use pbr_tools::convert::{InputFormat, detect_input};
use pbr_tools::libvirt::Header;
use pbr_tools::qemu::{self, ConvertOptions};
use pbr_tools::xen;

/// `--checkpoints`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CheckpointArg {
    /// The state after the last checkpoint.
    Last,
    /// One image per checkpoint, and the last.
    Each,
}

/// The arguments of `convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The QEMU stream, libvirt save file or xl save file, or `-` for
    /// standard input.
    pub input: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Phase tag: firmware, kernel, daemons, service or any name.
    #[arg(long)]
    phase: Option<String>,
    /// Position of the phase in its boot (default: the well-known order).
    #[arg(long)]
    phase_seq: Option<u32>,
    /// Milliseconds from boot start to the capture.
    #[arg(long)]
    since_boot_ms: Option<u64>,
    /// Store a blake3 hash per page (for diff and dedup).
    #[arg(long)]
    hashes: bool,
    /// Version of the QEMU that wrote the stream.
    #[arg(long)]
    qemu_version: Option<String>,
    /// The command line a restore must repeat.
    #[arg(long, allow_hyphen_values = true)]
    restore_cmdline: Option<String>,
    /// Checkpointed (Remus/COLO) xl streams: `last` writes the state
    /// after the last checkpoint; `each` also writes one image per
    /// checkpoint, OUTPUT with `.cpN` before its extension.
    #[arg(long, value_enum, default_value = "last")]
    checkpoints: CheckpointArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A QEMU stream converted, found inside a libvirt save file when `header`
/// is there.
struct QemuConverted<'a> {
    a: &'a Args,
    header: Option<Header>,
    r: qemu::ConvertReport,
}

impl Report for QemuConverted<'_> {
    fn json(&self) -> Value {
        let (r, lv) = (&self.r, &self.header);
        let libvirt = lv.as_ref().map(|h| {
            let el = |t: &str| h.element(t).map(|e| e.0);
            json!({"save_version": h.version, "was_running": h.was_running == 1, "compressed": h.compressed.name(),
                   "xml_bytes": h.xml.len(), "domain": el("name"), "uuid": el("uuid")})
        });
        json!({
            "input": self.a.input.display().to_string(), "output": self.a.output.display().to_string(),
            "format": if lv.is_some() { "libvirt" } else { "qemu" }, "libvirt": libvirt,
            "machine": r.machine, "capabilities": r.capabilities,
            "blocks": r.blocks.iter().map(|b| json!({"name": b.name, "used_length": b.used_length})).collect::<Vec<_>>(),
            "zero_records": r.zero_records, "page_records": r.page_records, "mapped_pages": r.mapped_pages,
            "stream_bytes": r.stream_bytes, "device_sections": r.device_sections, "vcpus": r.vcpus,
            "vmdescription": r.vmdescription, "notes": r.notes, "image_bytes": r.image.file_len,
            "stored_pages": r.image.stored_pages, "extents": r.image.extents,
        })
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.r;
        writeln!(
            w,
            "{} -> {}: {}qemu {} stream, {} bytes; {} + {}{}; {}, {}; image {} bytes",
            self.a.input.display(),
            self.a.output.display(),
            self.header
                .as_ref()
                .map(|h| format!(
                    "libvirt save of '{}' ({}, {}) holding a ",
                    h.element("name").map(|e| e.0).unwrap_or_default(),
                    if h.was_running == 1 { "was running" } else { "was paused" },
                    h.compressed.name()
                ))
                .unwrap_or_default(),
            if r.machine.is_empty() { "(machine type not recorded)" } else { &r.machine },
            r.stream_bytes,
            count(r.page_records, "page record"),
            count(r.zero_records, "zero record"),
            if r.mapped_pages > 0 { format!(" + {}", count(r.mapped_pages, "mapped-ram page")) } else { String::new() },
            count(r.device_sections as u64, "device section"),
            count(r.vcpus as u64, "vCPU"),
            r.image.file_len
        )
    }
}

/// An xl save file converted.
struct XlConverted<'a> {
    a: &'a Args,
    r: xen::ConvertReport,
}

impl Report for XlConverted<'_> {
    fn json(&self) -> Value {
        let r = &self.r;
        json!({
            "input": self.a.input.display().to_string(), "output": self.a.output.display().to_string(), "format": "xl",
            "guest_type": r.guest_type, "libxc_version": r.libxc_version, "xen_version": r.xen_version,
            "domain_name": r.domain_name, "page_records": r.page_records, "data_pages": r.data_pages,
            "hole_entries": r.hole_entries, "vcpus": r.vcpus, "hvm_entries": r.hvm_entries,
            "emulator_context_bytes": r.emulator_bytes, "checkpoints": r.checkpoints,
            "checkpoint_images": r.checkpoint_images.iter().map(|c| c.path.display().to_string()).collect::<Vec<_>>(),
            "stream_bytes": r.stream_bytes, "image_bytes": r.image.file_len,
            "stored_pages": r.image.stored_pages, "extents": r.image.extents, "notes": r.notes,
        })
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.r;
        writeln!(
            w,
            "{} -> {}: xl save of {} guest{} (libxc v{}, Xen {}), {} bytes; {}, {}, {}; {}; image {} bytes",
            self.a.input.display(),
            self.a.output.display(),
            r.guest_type,
            r.domain_name.as_deref().map(|n| format!(" '{n}'")).unwrap_or_default(),
            r.libxc_version,
            r.xen_version,
            r.stream_bytes,
            count(r.page_records, "PAGE_DATA record"),
            count(r.data_pages, "data page"),
            count(r.hole_entries, "hole"),
            count(r.vcpus as u64, "vCPU"),
            r.image.file_len
        )?;
        for c in &r.checkpoint_images {
            writeln!(w, "checkpoint image {}: {} bytes", c.path.display(), c.file_len)?;
        }
        Ok(())
    }
}

/// Runs `convert`.
pub fn run(a: &Args, quiet: bool) -> Result<ExitCode> {
    let (input, output) = (a.input.as_path(), a.output.as_path());
    let from_stdin = input == Path::new("-");
    let file = if from_stdin {
        None
    } else {
        Some(File::open(input).map_err(|e| Error::io(format!("cannot open {}", input.display()), e))?)
    };
    let reader: Box<dyn Read> = match &file {
        Some(f) => Box::new(f.try_clone().map_err(|e| Error::io("cannot reopen the input", e))?),
        None => Box::new(std::io::stdin().lock()),
    };
    let (format, full) = detect_input(reader, &input.display().to_string())?;
    let phase = a.phase.as_deref().map(|name| Phase {
        name: name.to_owned().into(),
        sequence: a
            .phase_seq
            .unwrap_or_else(|| WELL_KNOWN_PHASES.iter().position(|p| *p == name).map_or(0, |i| i as u32)),
        since_boot_ns: a.since_boot_ms.unwrap_or(0) * 1_000_000,
        captured_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    });
    // A pipe (standard input, a FIFO) has no length: a spinner counts what
    // was read.
    let total = file.as_ref().and_then(|f| f.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len());
    let bar = match total {
        Some(total) => progress::bytes(total, "convert", quiet),
        None => progress::stream("convert", quiet),
    };
    match format {
        InputFormat::Qemu | InputFormat::Libvirt => {
            let opts = ConvertOptions {
                phase,
                page_hashes: a.hashes,
                qemu_version: a.qemu_version.clone(),
                restore_cmdline: a.restore_cmdline.clone(),
                ..Default::default()
            };
            let (r, lv) = if format == InputFormat::Libvirt {
                let l = pbr_tools::libvirt::convert(full, output, &opts, &|pos| bar.set_position(pos))?;
                (l.qemu, Some(l.header))
            } else {
                (qemu::convert(full, file.as_ref(), output, &opts, &|pos| bar.set_position(pos))?, None)
            };
            bar.finish_and_clear();
            if let Some(note) = &r.vcpu_note {
                eprintln!("warning: {note}");
            }
            for note in &r.notes {
                eprintln!("note: {note}");
            }
            print(&QemuConverted { a, header: lv, r }, a.json)
        }
        InputFormat::Xl => {
            if a.qemu_version.is_some() || a.restore_cmdline.is_some() {
                return Err(super::error::Error::Usage(
                    "--qemu-version and --restore-cmdline apply to QEMU streams, not to xl save files".into(),
                ));
            }
            let opts = xen::ConvertOptions {
                phase,
                page_hashes: a.hashes,
                no_sync: false,
                checkpoints: match a.checkpoints {
                    CheckpointArg::Last => xen::Checkpoints::Last,
                    CheckpointArg::Each => xen::Checkpoints::Each,
                },
            };
            let r = xen::convert(full, output, &opts, &|pos| bar.set_position(pos))?;
            bar.finish_and_clear();
            for note in &r.notes {
                eprintln!("note: {note}");
            }
            print(&XlConverted { a, r }, a.json)
        }
        InputFormat::Pbr => Err(super::error::Error::Usage(format!("{} is already a .pbr image", input.display()))),
    }
}
