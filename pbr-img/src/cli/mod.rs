//! The `pbr-img` subcommands: each has its arguments and its `run` in its
//! own file, and prints its report through [`report::print`].

#[macro_use]
pub mod out;

mod boot;
mod capture;
mod classify;
mod completions;
mod convert;
mod diff;
pub mod error;
mod export;
mod extract;
mod files;
mod fmt;
mod guest;
mod inspect;
mod inspect_processes;
mod man;
mod manifest;
mod pack;
mod recover;
mod replay;
mod report;
mod run;
mod select;
mod store;
mod trim;
mod update;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use error::{Result, USAGE_OR_INPUT};

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
    /// devices, manifest, processes checkpointed with CRIU.
    Inspect(inspect::Args),
    /// Convert a QEMU migration stream, a libvirt save file (`virsh save`,
    /// `virsh managedsave`) or an `xl save` file (file or `-` for stdin)
    /// into a `.pbr` image; the input format is found by its magic.
    Convert(convert::Args),
    /// Set page classes from a Linux guest's /proc/kpageflags (and
    /// /proc/kpagecount) or from a class map (one byte per page frame).
    Classify(classify::Args),
    /// Drop what a restore does not need: free and zero pages by default.
    Trim(trim::Args),
    /// Store pages lz4-compressed and identical pages once.
    Pack(pack::Args),
    /// Restore the mmap-able raw layout of a packed image.
    Unpack(pack::UnpackArgs),
    /// Show what changed from A to B (exit 1 when they differ, 0 when not),
    /// or write a diff image with -o.
    Diff(diff::Args),
    /// Rebuild a full image from a base and one or more diffs (oldest first).
    Apply(diff::ApplyArgs),
    /// Flatten a chain of diffs (oldest first) into one diff.
    Rebase(diff::RebaseArgs),
    /// Record the files a boot read up to the image's phase.
    Manifest(manifest::Args),
    /// Pick the latest candidate of a boot still valid against the current
    /// files. Exit 0 with the choice; 3 when none is valid (do a full reboot).
    Select(select::Args),
    /// Restore an image into a hypervisor and resume the guest.
    Replay(replay::Args),
    /// Boot a guest, save it with QEMU at each boot phase it announces, and
    /// write one classified, trimmed candidate per phase into OUTDIR.
    ///
    /// Either the project's busybox guest (--kernel, --initrd), or any QEMU
    /// command line after `--` whose guest runs pbr-agent: QMP, the agent's
    /// port and a vmgenid device are added, nothing else is changed. Each
    /// candidate records seals of the boot files and of every disk it holds
    /// mounted; a point with a disk mounted read-write gives no candidate.
    Capture(capture::Args),
    /// Boot the guest from scratch and time it to service ready (for a QEMU
    /// command line after `--`: until its agent says ready).
    Boot(boot::Args),
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
    Recover(recover::Args),
    /// Run a QEMU command line (after --) whose guest runs pbr-agent as a
    /// kept VM: capture a candidate at each point of its boot without
    /// stopping it, watch it, and recover it by itself when it fails (a
    /// kernel panic, QEMU exiting, a reboot it asks for), from the latest
    /// valid candidate, or boot it again from scratch. SIGTERM or SIGINT
    /// powers the guest off (ACPI), then QEMU quits (exit 0).
    Run(run::Args),
    /// Update the kernel of the VM a `pbr-img run` keeps (its
    /// --candidates): the services named with --keep are checkpointed with
    /// CRIU by the guest's agent, the guest powers off, the new kernel
    /// boots (capturing fresh candidates), and they are restored before
    /// their units start. A service that cannot be checkpointed or
    /// restored starts cold; the report names it and why.
    Update(update::Args),
    /// Store an image in an S3-compatible object store (s3://BUCKET/PREFIX/NAME)
    /// as content-addressed chunks of pages: chunks the store holds already
    /// (another VM's) are not uploaded again. Every page is checked first.
    Push(store::PushArgs),
    /// Fetch an image from the store, every chunk checked against its hash
    /// (through a local chunk cache); a missing or damaged chunk fails it.
    Pull(store::PullArgs),
    /// List the images of a store (s3://BUCKET/PREFIX).
    Ls(store::StoreArgs),
    /// Remove the chunks no image of the store names.
    Gc(store::StoreArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
    /// Print the man page, pbr-img(1), with every command (roff).
    Man,
    /// Check every checksum and hash; exit 0 only when all pass.
    Verify(verify::Args),
    /// Write one device blob, or a range of guest pages, to a file (or `-`
    /// for standard output).
    Extract(extract::Args),
    /// Write an image out in another format.
    Export(export::Args),
}

impl Command {
    /// The files the command reads and the one it writes.
    fn files(&self) -> (Vec<files::Input<'_>>, Option<files::Output<'_>>) {
        use files::{Input, Output};
        fn file(path: &Path) -> Option<Output<'_>> {
            Some(Output { path, needs_file: Some(files::IMAGE_NEEDS_FILE) })
        }
        // An s3:// candidate is the store's to check, when it is pulled.
        fn images(v: &[PathBuf]) -> Vec<Input<'_>> {
            v.iter().filter(|p| !p.to_str().is_some_and(pbr_store::is_s3)).map(|p| Input::Image(p)).collect()
        }
        match self {
            Command::Inspect(inspect::Args { image, .. })
            | Command::Verify(verify::Args { image, .. })
            | Command::Replay(replay::Args { image, .. }) => (vec![Input::Image(image)], None),
            Command::Convert(a) => (vec![Input::Stream(&a.input)], file(&a.output)),
            Command::Classify(a) => {
                let mut v = vec![Input::Image(&a.image)];
                v.extend([&a.kpageflags, &a.kpagecount, &a.class_map].into_iter().flatten().map(|p| Input::Other(p)));
                (v, file(&a.output))
            }
            Command::Trim(trim::Args { image, output, .. })
            | Command::Pack(pack::Args { image, output, .. })
            | Command::Unpack(pack::UnpackArgs { image, output, .. }) => (vec![Input::Image(image)], file(output)),
            Command::Diff(a) => (vec![Input::Image(&a.a), Input::Image(&a.b)], a.output.as_deref().and_then(file)),
            Command::Apply(a) => {
                let mut v = vec![Input::Image(&a.base)];
                v.extend(images(&a.diffs));
                (v, file(&a.output))
            }
            Command::Rebase(a) => (images(&a.diffs), file(&a.output)),
            Command::Manifest(manifest::Args { action: manifest::Action::Add(a) }) => {
                let mut v = vec![Input::Image(&a.image)];
                v.extend(a.list.iter().map(|p| Input::Other(p)));
                (v, file(&a.output))
            }
            Command::Select(a) => (images(&a.images), None),
            Command::Recover(a) => (images(&a.candidates), None),
            Command::Extract(a) => (vec![Input::Image(&a.image)], Some(Output { path: &a.output, needs_file: None })),
            Command::Export(a) => {
                let needs_file = matches!(a.to, export::Target::Raw).then_some(files::RAW_NEEDS_FILE);
                (vec![Input::Image(&a.image)], Some(Output { path: &a.output, needs_file }))
            }
            Command::Capture(_)
            | Command::Boot(_)
            | Command::Run(_)
            | Command::Update(_)
            | Command::Push(_)
            | Command::Pull(_)
            | Command::Ls(_)
            | Command::Gc(_)
            | Command::Completions(_)
            | Command::Man => (Vec::new(), None),
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
    let quiet = cli.quiet;
    match cli.command {
        Command::Inspect(a) => inspect::run(&a),
        Command::Convert(a) => convert::run(&a, quiet),
        Command::Classify(a) => classify::run(&a),
        Command::Trim(a) => trim::run(&a),
        Command::Pack(a) => pack::run(&a, quiet),
        Command::Unpack(a) => pack::unpack_run(&a, quiet),
        Command::Diff(a) => diff::run(&a),
        Command::Apply(a) => diff::apply(&a),
        Command::Rebase(a) => diff::rebase(&a),
        Command::Manifest(a) => manifest::run(&a),
        Command::Select(a) => select::run(&a),
        Command::Replay(a) => replay::run(a),
        Command::Capture(a) => capture::run(a, quiet),
        Command::Boot(a) => boot::run(&a),
        Command::Recover(a) => recover::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Update(a) => update::run(&a),
        Command::Push(a) => store::push(&a),
        Command::Pull(a) => store::pull(&a),
        Command::Ls(a) => store::ls(&a),
        Command::Gc(a) => store::gc(&a),
        Command::Completions(a) => completions::run(&a, Cli::command()),
        Command::Man => man::run(Cli::command()),
        Command::Verify(a) => verify::run(&a, quiet),
        Command::Extract(a) => extract::run(&a),
        Command::Export(a) => export::run(&a, quiet),
    }
}
