//! `pbr-img recover`: the latest valid candidate restored (or, for an
//! agent's machine, a boot from scratch when none is), reported once the
//! guest is ready.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::{RecoverOptions, Recovery, Refused, Vmm, recover};
use serde_json::{Value, json};

use super::error::Result;
use super::report::{Report, print};

/// The arguments of `recover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The candidates of one boot, in any order: files, or images in an
    /// S3-compatible store (s3://BUCKET/PREFIX/NAME), pulled first (every
    /// chunk checked; one that cannot be is refused).
    #[arg(required = true)]
    pub candidates: Vec<PathBuf>,
    /// Where candidates from a store are pulled to, their chunks cached
    /// in its `chunks` (default: $PBR_CACHE/.., else ~/.cache/pbr).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
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
}

/// Runs `recover`; with `--keep-running`, the guest then runs until its
/// QEMU exits.
pub fn run(a: &Args) -> Result<ExitCode> {
    let vmm = match (a.standby, a.prestaged) {
        (_, true) => Vmm::Prestaged,
        (true, _) => Vmm::Standby,
        _ => Vmm::Spawn,
    };
    let mut refused = |r: &Refused| {
        if !a.json {
            eprintln!("refused {}: {}", r.path.display(), r.reason);
        }
    };
    // Said once the guest is ready, before a kept guest runs on.
    let mut printed = Ok(ExitCode::SUCCESS);
    let mut ready = |r: &Recovery, child: Option<&mut std::process::Child>| {
        printed = print(&Recovered { r, vmm }, a.json);
        match (a.keep_running, child) {
            (true, Some(child)) => {
                eprintln!("the recovered guest runs until its QEMU exits");
                let _ = child.wait();
            }
            (true, None) => eprintln!("note: --keep-running applies to QEMU recoveries"),
            _ => {}
        }
    };
    let opts = RecoverOptions { root: a.root.as_deref(), qemu: a.qemu.as_deref(), vmm };
    // A candidate the store cannot give is told in every mode: it is in
    // no recovery's report.
    let candidates = super::store::local_candidates(&a.candidates, a.cache.as_ref(), &mut |r| {
        eprintln!("refused {}: {}", r.path.display(), r.reason);
    })?;
    recover(&candidates, &opts, &mut refused, &mut ready)?;
    printed
}

/// What a recovery did, and how it was asked to start QEMU.
struct Recovered<'a> {
    r: &'a Recovery,
    vmm: Vmm,
}

impl Report for Recovered<'_> {
    fn json(&self) -> Value {
        let (r, s) = (self.r, |d: std::time::Duration| d.as_secs_f64());
        let refused: Vec<_> =
            r.refused.iter().map(|x| json!({"candidate": x.path.display().to_string(), "reason": x.reason})).collect();
        json!({"chosen": r.chosen.as_ref().map(|p| p.display().to_string()), "refused": refused,
               "downtime_s": s(r.downtime), "select_s": s(r.select), "restore_s": s(r.restore),
               "guest_s": s(r.guest), "standby": self.vmm != Vmm::Spawn, "vmm": r.vmm.name(), "adapter": r.adapter,
               "ram": r.ram(), "signal": r.signal, "refilled_pages": r.refilled_pages, "refill_s": s(r.refill),
               "page_check_s": s(r.page_check), "held": super::fmt::held_json(r.held),
               "clock_step_s": r.resumed.as_ref().map(|x| x.clock_step_ns as f64 / 1e9),
               "reseeded": r.resumed.as_ref().map(|x| x.reseeded)})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (r, s) = (self.r, |d: std::time::Duration| d.as_secs_f64());
        let Some(path) = &r.chosen else {
            let after = s(r.downtime);
            return writeln!(
                w,
                "no candidate is safe to restore: booted from scratch, ready {after:.3} s after the decision"
            );
        };
        let caught_up = r.resumed.as_ref().map_or(String::new(), |x| {
            format!(
                "; clock stepped {:.3} s, {} entropy bytes, RNG {}",
                x.clock_step_ns as f64 / 1e9,
                x.entropy_bytes,
                if x.reseeded { "reseeded" } else { "NOT reseeded" }
            )
        });
        let refilled = match r.refilled_pages {
            0 => String::new(),
            n => format!(", {n} page-cache pages refilled from the disks in {:.3} s", s(r.refill)),
        };
        writeln!(
            w,
            "recovered from {} ({}: {}{caught_up}{}",
            path.display(),
            super::fmt::recovery(r, &refilled),
            r.signal,
            super::fmt::held(r.held)
        )
    }
}
