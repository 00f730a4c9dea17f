//! `pbr-img capture`: a phase guest (`--kernel`) saved at each boot phase it
//! announces, or a QEMU command line (after `--`) whose guest runs
//! pbr-agent, saved at each point the agent announces.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::machine::UserCommand;
use pbr_reboot::points::{PointsCapture, capture_points};
use pbr_reboot::{Candidate, CaptureOptions, capture};
use serde_json::{Value, json};

use super::error::Result;
use super::guest::GuestArgs;
use super::report::{Report, print};

/// The arguments of `capture`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    guest: GuestArgs,
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
    if a.command.is_empty() {
        let list = capture(&a.guest.spec(), &a.output, &CaptureOptions { classify: a.guest.classify(), ..opts })?;
        return print(&Phases(list), a.json);
    }
    let cmd = UserCommand::parse(&a.command)?;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("capture: {line}");
        }
    };
    print(&Points(capture_points(&cmd, &a.output, &opts, &mut progress)?), a.json)
}

/// The candidates of a phase guest's capture.
struct Phases(Vec<Candidate>);

/// The candidates of an agent's capture, and the points that gave none.
struct Points(PointsCapture);

fn candidate_json(c: &Candidate) -> Value {
    json!({"phase": c.phase, "image": c.path.display().to_string(), "since_power_on_s": c.since_power_on,
           "guest_uptime_s": c.guest_uptime, "guest_bytes": c.guest_bytes, "stream_bytes": c.stream_bytes,
           "untrimmed_bytes": c.untrimmed_bytes, "image_bytes": c.image_bytes,
           "qemu_zero_pages": c.counters.zero_pages, "qemu_normal_pages": c.counters.normal_pages})
}

/// The candidates as a table whose first column is named `first`.
fn candidate_table(w: &mut dyn Write, first: &str, list: &[Candidate]) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<10} {:>12} {:>10} {:>12} {:>12} {:>12}  image",
        first, "since on (s)", "guest MiB", "stream MiB", "untrimmed", "stored MiB"
    )?;
    let mib = |b: u64| b as f64 / 1048576.0;
    for c in list {
        writeln!(
            w,
            "{:<10} {:>12.2} {:>10.0} {:>12.1} {:>12.1} {:>12.1}  {}",
            c.phase,
            c.since_power_on,
            mib(c.guest_bytes),
            mib(c.stream_bytes),
            mib(c.untrimmed_bytes),
            mib(c.image_bytes),
            c.path.display()
        )?;
    }
    Ok(())
}

impl Report for Phases {
    fn json(&self) -> Value {
        Value::Array(self.0.iter().map(candidate_json).collect())
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        candidate_table(w, "phase", &self.0)
    }

    fn pretty(&self) -> bool {
        true
    }
}

impl Report for Points {
    fn json(&self) -> Value {
        let r = &self.0;
        let list: Vec<_> = r.candidates.iter().map(candidate_json).collect();
        let skipped: Vec<_> = r.skipped.iter().map(|s| json!({"point": s.point, "reason": s.reason})).collect();
        json!({"candidates": list, "skipped": skipped, "ready_s": r.ready_s})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let r = &self.0;
        candidate_table(w, "point", &r.candidates)?;
        for s in &r.skipped {
            writeln!(w, "{:<10} no candidate: {}", s.point, s.reason)?;
        }
        writeln!(w, "the guest's agent said ready {:.2} s after QEMU started", r.ready_s)
    }

    fn pretty(&self) -> bool {
        true
    }
}
