//! `pbr-img capture`: its arguments; the work is [`super::phase`]'s (the
//! busybox guest) or [`super::points`]'s (a QEMU command line).

use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::CaptureOptions;

use super::error::Result;
use super::phase;

/// The arguments of `capture`.
#[derive(clap::Args, Debug)]
pub struct Args {
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
}

/// Runs `capture`.
pub fn run(a: Args, quiet: bool) -> Result<ExitCode> {
    let opts = CaptureOptions { classify: false, root: a.root, keep_streams: a.keep_streams };
    Ok(if a.command.is_empty() {
        phase::capture_run(&a.guest, &a.output, opts, a.json)?
    } else {
        phase::capture_points_run(&a.command, &a.output, opts, a.json, quiet)?
    })
}
