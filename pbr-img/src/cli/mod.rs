//! The `pbr-img` subcommands.

#[macro_use]
pub mod out;

mod classify;
mod convert;
mod diff;
mod export;
mod extract;
mod files;
mod fmt;
mod inspect;
mod man;
mod manifest;
mod pack;
mod phase;
mod points;
mod replay;
mod trim;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pbr_reboot::{CaptureOptions, Vmm};
use pbr_tools::Result;

/// Restartable VM images: convert, inspect, verify and export `.pbr` files.
///
/// Exit status, the same for every command: 0 ok; 1 `verify` found damage
/// or `diff` found the images different; 2 a usage or input error (one line
/// on standard error); 3 `select` or `recover` found no valid candidate (do
/// a full reboot); 130 or 143 interrupted by SIGINT or SIGTERM (temporary
/// files removed, child QEMUs stopped); 141 standard output closed.
#[derive(Parser, Debug)]
#[command(name = "pbr-img", version)]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise an image: phase, regions, page classes and encodings, vCPUs,
    /// devices, manifest.
    Inspect {
        /// The image.
        image: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// List every extent of the page index.
        #[arg(long)]
        pages: bool,
        /// Show every vCPU register, segment, MSR, LAPIC and XSAVE state
        /// (always in --json).
        #[arg(long)]
        vcpus: bool,
        /// Show the device sections with their fields decoded through the
        /// stream's vmdescription (QEMU images).
        #[arg(long)]
        devices: bool,
    },
    /// Convert a QEMU migration stream, a libvirt save file (`virsh save`,
    /// `virsh managedsave`) or an `xl save` file (file or `-` for stdin)
    /// into a `.pbr` image; the input format is found by its magic.
    Convert {
        /// The QEMU stream, libvirt save file or xl save file, or `-` for
        /// standard input.
        input: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
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
        checkpoints: convert::CheckpointArg,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set page classes from a Linux guest's /proc/kpageflags (and
    /// /proc/kpagecount) or from a class map (one byte per page frame).
    Classify {
        /// The image.
        image: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// A dump of /proc/kpageflags (raw or gzip).
        #[arg(long, conflicts_with = "class_map")]
        kpageflags: Option<PathBuf>,
        /// A dump of /proc/kpagecount taken at the same moment.
        #[arg(long, requires = "kpageflags")]
        kpagecount: Option<PathBuf>,
        /// One byte per page frame: 0 unknown, 1 free, 2 cache, 3 kernel, 4 user.
        #[arg(long)]
        class_map: Option<PathBuf>,
        /// The guest kernel version, recorded in the image.
        #[arg(long)]
        kernel: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop what a restore does not need: free and zero pages by default.
    Trim {
        /// The image.
        image: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// What to drop: any of free, zero, cache (default free,zero).
        #[arg(long)]
        drop: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Store pages lz4-compressed and identical pages once.
    Pack {
        /// The image.
        image: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore the mmap-able raw layout of a packed image.
    Unpack {
        /// The image.
        image: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// The flat layout: each region one range of the file in region
        /// order, zero and trimmed pages as holes (QEMU 8.2+ maps the RAM
        /// from it at restore).
        #[arg(long)]
        flat: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what changed from A to B (exit 1 when they differ, 0 when not),
    /// or write a diff image with -o.
    Diff {
        /// The older image.
        a: PathBuf,
        /// The newer image.
        b: PathBuf,
        /// Write a diff image rebuilding B from A instead of a report.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a full image from a base and one or more diffs (oldest first).
    Apply {
        /// The base image.
        base: PathBuf,
        /// The diffs, oldest first.
        #[arg(required = true)]
        diffs: Vec<PathBuf>,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Flatten a chain of diffs (oldest first) into one diff.
    Rebase {
        /// The diffs, oldest first.
        #[arg(required = true)]
        diffs: Vec<PathBuf>,
        /// The diff to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record the files a boot read up to the image's phase.
    Manifest {
        #[command(subcommand)]
        action: ManifestAction,
    },
    /// Pick the latest candidate of a boot still valid against the current
    /// files. Exit 0 with the choice; 3 when none is valid (do a full reboot).
    Select {
        /// The guest root directory (a mounted guest file system). Without
        /// it, candidates are judged by the seals an agent capture recorded
        /// (boot files, mounted disks, QEMU version).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The QEMU binary that would restore (seal judging) [default: the
        /// one the capture ran].
        #[arg(long)]
        qemu: Option<String>,
        /// The candidate images, in any order.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Hash every file even when its size and mtime match.
        #[arg(long)]
        strict: bool,
        /// Do not read the stored pages: judge the files and seals only.
        /// Without it the candidate about to be chosen has every stored
        /// page checked against its crc32, as `recover` does, and a damaged
        /// one is refused.
        #[arg(long)]
        fast: bool,
        /// Print the verdicts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore an image into a hypervisor and resume the guest.
    Replay {
        /// The image.
        image: PathBuf,
        /// The hypervisor.
        #[arg(long, value_enum, default_value = "qemu")]
        adapter: replay::Adapter,
        /// The QEMU binary (qemu adapter).
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: String,
        /// Stop after this many guest I/O writes (kvm adapter).
        #[arg(long, default_value_t = 100)]
        max_exits: u64,
        /// Stop after this many seconds (default: when the guest stops).
        #[arg(long = "for", value_name = "SECONDS")]
        seconds: Option<f64>,
        /// Print the replay report as JSON.
        #[arg(long)]
        json: bool,
        /// QEMU machine arguments, overriding the image's restore.cmdline.
        #[arg(last = true)]
        qemu_args: Vec<String>,
    },
    /// Boot a guest, save it with QEMU at each boot phase it announces, and
    /// write one classified, trimmed candidate per phase into OUTDIR.
    ///
    /// Either the project's busybox guest (--kernel, --initrd), or any QEMU
    /// command line after `--` whose guest runs pbr-agent: QMP, the agent's
    /// port and a vmgenid device are added, nothing else is changed. Each
    /// candidate records seals of the boot files and of every disk it holds
    /// mounted; a point with a disk mounted read-write gives no candidate.
    Capture {
        #[command(flatten)]
        guest: phase::GuestArgs,
        /// Record the files each phase read that exist under this root.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Keep each phase's QEMU stream (`PHASE.qemu`) and the guest's
        /// kpageflags dump (`PHASE.kpageflags.gz`) in this directory.
        #[arg(long, value_name = "DIR")]
        keep_streams: Option<PathBuf>,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// The QEMU command line of a guest that runs pbr-agent (binary
        /// first).
        #[arg(last = true, value_name = "QEMU")]
        command: Vec<String>,
    },
    /// Boot the guest from scratch and time it to service ready (for a QEMU
    /// command line after `--`: until its agent says ready).
    Boot {
        #[command(flatten)]
        guest: phase::GuestArgs,
        /// Start QEMU paused first and time from `cont`: a reboot of a VM
        /// whose QEMU process is already running (as after a reset).
        #[arg(long)]
        standby: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The QEMU command line of a guest that runs pbr-agent (binary
        /// first).
        #[arg(last = true, value_name = "QEMU")]
        command: Vec<String>,
    },
    /// Recover: restore the latest valid candidate with QEMU and time it to
    /// service ready. Exit 3 when no candidate is valid (do a full reboot).
    ///
    /// Candidates captured at agent points are checked against their seals
    /// first: one whose boot files, disks or QEMU changed is refused with
    /// one line saying why, and the next older one is tried; when none is
    /// left, the machine boots from scratch (exit 0, "chosen": null).
    ///
    /// A flat candidate (`unpack --flat`) restored with QEMU 8.2 or later
    /// has its RAM mapped from the image instead of streamed; the line says
    /// which. With --standby or --prestaged it also says what the waiting
    /// QEMU held in memory before the decision.
    Recover {
        /// The candidates of one boot, in any order.
        #[arg(required = true)]
        candidates: Vec<PathBuf>,
        /// Check candidates against the files under this root.
        #[arg(long)]
        root: Option<PathBuf>,
        /// The QEMU binary [default: the one the capture ran, else
        /// qemu-system-x86_64].
        #[arg(long)]
        qemu: Option<String>,
        /// Keep the recovered guest running (until its QEMU exits) instead
        /// of stopping it once its service answered.
        #[arg(long)]
        keep_running: bool,
        /// Start a QEMU for the candidates' machine before the decision,
        /// waiting for the state (a warm standby VMM): its start is not
        /// downtime. A flat latest candidate's RAM is mapped in it and its
        /// stream built beforehand; nothing of the guest is loaded.
        #[arg(long)]
        standby: bool,
        /// As --standby, and the standby QEMU loads the latest candidate
        /// before the decision and holds it paused: choosing that candidate
        /// (unchanged) only resumes it. The guest's memory is held from
        /// then on, unless the candidate is flat (its RAM is only mapped).
        #[arg(long, conflicts_with = "standby")]
        prestaged: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page, pbr-img(1), with every command (roff).
    Man,
    /// Check every checksum and hash; exit 0 only when all pass.
    Verify {
        /// The image.
        image: PathBuf,
        /// Check only the stored pages against their crc32 (and blake3
        /// when the image has page hashes), as a restore does, and say how
        /// long it took; the first damaged page ends it.
        #[arg(long)]
        pages: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write one device blob, or a range of guest pages, to a file (or `-`
    /// for standard output).
    Extract {
        /// The image.
        image: PathBuf,
        /// The blob: NAME, NAME.INSTANCE, or #K for the K-th blob `inspect`
        /// lists (from 0).
        #[arg(long, required_unless_present = "pages", conflicts_with = "pages")]
        device: Option<String>,
        /// Guest frames FIRST-LAST (inclusive) or FIRST+COUNT, decimal or
        /// 0x hex; written page after page, zero and trimmed pages as zeros.
        #[arg(long)]
        pages: Option<String>,
        /// Output file, or `-` for standard output.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write an image out in another format.
    Export {
        /// Target format.
        #[arg(long, value_enum)]
        to: export::Target,
        /// The image.
        image: PathBuf,
        /// Output file, or `-` for standard output (qemu, xl, libvirt).
        #[arg(short, long)]
        output: PathBuf,
        /// The libvirt save file's compression (default: as the original).
        #[arg(long, value_enum)]
        compress: Option<export::Compress>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestAction {
    /// Add files (path, size, mtime, inode, blake3) read under a root.
    Add {
        /// The image.
        image: PathBuf,
        /// The guest root directory.
        #[arg(long)]
        root: PathBuf,
        /// A file listing the paths, one per line.
        #[arg(long, conflicts_with = "accessed_since")]
        list: Option<PathBuf>,
        /// Every regular file accessed after this time (seconds since the
        /// epoch, e.g. the boot start).
        #[arg(long)]
        accessed_since: Option<f64>,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status when a check failed: `verify` found damage.
pub const CHECK_FAILED: u8 = 1;
/// Exit status of `diff` when the images differ (as diff(1) and cmp(1)).
pub const DIFFERENT: u8 = 1;
/// Exit status of a usage or input error.
pub const USAGE_OR_INPUT: u8 = 2;
/// Exit status of `select` and `recover` when no candidate is valid.
pub const NO_CANDIDATE: u8 = 3;

impl Command {
    /// The files the command reads and the one it writes.
    fn files(&self) -> (Vec<files::Input<'_>>, Option<files::Output<'_>>) {
        use files::{Input, Output};
        fn file(path: &Path) -> Option<Output<'_>> {
            Some(Output { path, needs_file: Some(files::IMAGE_NEEDS_FILE) })
        }
        fn images(v: &[PathBuf]) -> Vec<Input<'_>> {
            v.iter().map(|p| Input::Image(p)).collect()
        }
        match self {
            Command::Inspect { image, .. } | Command::Verify { image, .. } | Command::Replay { image, .. } => {
                (vec![Input::Image(image)], None)
            }
            Command::Convert { input, output, .. } => (vec![Input::Stream(input)], file(output)),
            Command::Classify { image, output, kpageflags, kpagecount, class_map, .. } => {
                let mut v = vec![Input::Image(image)];
                v.extend([kpageflags, kpagecount, class_map].into_iter().flatten().map(|p| Input::Other(p)));
                (v, file(output))
            }
            Command::Trim { image, output, .. }
            | Command::Pack { image, output, .. }
            | Command::Unpack { image, output, .. } => (vec![Input::Image(image)], file(output)),
            Command::Diff { a, b, output, .. } => {
                (vec![Input::Image(a), Input::Image(b)], output.as_deref().and_then(file))
            }
            Command::Apply { base, diffs, output, .. } => {
                let mut v = vec![Input::Image(base)];
                v.extend(images(diffs));
                (v, file(output))
            }
            Command::Rebase { diffs, output, .. } => (images(diffs), file(output)),
            Command::Manifest { action: ManifestAction::Add { image, list, output, .. } } => {
                let mut v = vec![Input::Image(image)];
                v.extend(list.iter().map(|p| Input::Other(p)));
                (v, file(output))
            }
            Command::Select { images: v, .. } => (images(v), None),
            Command::Recover { candidates, .. } => (images(candidates), None),
            Command::Extract { image, output, .. } => {
                (vec![Input::Image(image)], Some(Output { path: output, needs_file: None }))
            }
            Command::Export { to, image, output, .. } => {
                let needs_file = matches!(to, export::Target::Raw).then_some(files::RAW_NEEDS_FILE);
                (vec![Input::Image(image)], Some(Output { path: output, needs_file }))
            }
            Command::Capture { .. } | Command::Boot { .. } | Command::Completions { .. } | Command::Man => {
                (Vec::new(), None)
            }
        }
    }
}

/// Checks the files the command names ([`files::check`]); returns what
/// keeps its output registered for the interrupt handling, to be held until
/// the process exits.
pub fn check_files(cli: &Cli) -> Result<Option<pbr_tools::cleanup::Registration>> {
    let (inputs, output) = cli.command.files();
    files::check(&inputs, output)
}

/// Runs one subcommand (its files checked by [`check_files`]).
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Inspect { image, json, pages, vcpus, devices } => {
            inspect::run(&image, json, inspect::Show { pages, vcpus, devices })
        }
        Command::Verify { image, pages: true, json } => verify::pages_run(&image, json),
        Command::Verify { image, pages: false, json } => verify::run(&image, json, cli.quiet),
        Command::Classify { image, output, kpageflags, kpagecount, class_map, kernel, json } => classify::run(
            &image,
            &output,
            &classify::Args {
                kpageflags: kpageflags.as_deref(),
                kpagecount: kpagecount.as_deref(),
                class_map: class_map.as_deref(),
                kernel: kernel.as_deref(),
                json,
            },
        ),
        Command::Trim { image, output, drop, json } => trim::run(&image, &output, drop.as_deref(), json),
        Command::Pack { image, output, json } => pack::run(&image, &output, pack::Layout::Packed, json, cli.quiet),
        Command::Unpack { image, output, flat, json } => {
            let layout = if flat { pack::Layout::Flat } else { pack::Layout::Raw };
            pack::run(&image, &output, layout, json, cli.quiet)
        }
        Command::Diff { a, b, output, json } => diff::run(&a, &b, output.as_deref(), json),
        Command::Apply { base, diffs, output, json } => diff::apply(&base, &diffs, &output, json),
        Command::Rebase { diffs, output, json } => diff::rebase(&diffs, &output, json),
        Command::Manifest { action: ManifestAction::Add { image, root, list, accessed_since, output, json } } => {
            manifest::add_run(&image, &root, list.as_deref(), accessed_since, &output, json)
        }
        Command::Select { root, images, strict, fast, json, qemu } => match root {
            Some(root) => manifest::select_run(&root, &images, strict, fast, json),
            None => points::select_run(&images, qemu.as_deref(), fast, json),
        },
        Command::Capture { guest, root, keep_streams, output, json, command } => {
            let opts = CaptureOptions { classify: false, root, keep_streams };
            if command.is_empty() {
                phase::capture_run(&guest, &output, opts, json)
            } else {
                phase::capture_points_run(&command, &output, opts, json, cli.quiet)
            }
        }
        Command::Boot { guest, standby, json, command } => {
            if command.is_empty() {
                phase::boot_run(&guest, standby, json)
            } else {
                phase::boot_points_run(&command, standby, json)
            }
        }
        Command::Recover { candidates, root, qemu, keep_running, standby, prestaged, json } => {
            let vmm = match (standby, prestaged) {
                (_, true) => Vmm::Prestaged,
                (true, _) => Vmm::Standby,
                _ => Vmm::Spawn,
            };
            phase::recover_run(&candidates, root.as_deref(), qemu.as_deref(), vmm, keep_running, json)
        }
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "pbr-img", &mut text);
            out::write_bytes(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut text = Vec::new();
            man::render(&mut text).map_err(|e| pbr_tools::Error::io("cannot write the man page", e))?;
            out::write_bytes(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { image, adapter, qemu, max_exits, seconds, json, qemu_args } => {
            replay::run(&image, replay::Args { adapter, qemu, qemu_args, max_exits, seconds, json })
        }
        Command::Convert {
            input,
            output,
            phase,
            phase_seq,
            since_boot_ms,
            hashes,
            qemu_version,
            restore_cmdline,
            checkpoints,
            json,
        } => convert::run(
            &input,
            &output,
            &convert::Args {
                phase: phase.as_deref(),
                sequence: phase_seq,
                since_boot_ms,
                hashes,
                qemu_version,
                restore_cmdline,
                checkpoints,
                json,
                quiet: cli.quiet,
            },
        ),
        Command::Export { to, image, output, compress, json } => {
            export::run(to, &image, &output, compress, json, cli.quiet)
        }
        Command::Extract { image, device, pages, output, json } => {
            let what = match (&device, &pages) {
                (Some(d), _) => extract::What::Device(d),
                (None, Some(p)) => extract::What::Pages(p),
                (None, None) => return Err(pbr_tools::Error::Unsupported("give --device or --pages".into())),
            };
            extract::run(&image, what, &output, json)
        }
    }
}
