//! `pbr-img recover`: the latest valid candidate restored (or, for an
//! agent's machine, a boot from scratch when none is), reported once the
//! guest is ready.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::fleet::{Candidates, Fetch, MountReport};
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
    /// How a candidate from a store reaches the guest: `pull` (the whole
    /// image pulled, then restored), `stream` (QEMU maps its RAM from a
    /// mount of the store that every chunk is read into before the guest
    /// runs) or `lazy` (the guest runs at once, a page is fetched when it
    /// is first touched). `stream` and `lazy` need QEMU 8.2 or later and
    /// FUSE.
    #[arg(long, value_name = "HOW", default_value = "pull", value_parser = ["pull", "stream", "lazy"])]
    fetch: String,
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
    let fetch = Fetch::parse(&a.fetch);
    // A candidate the store cannot give is told in every mode: it is in
    // no recovery's report.
    let made = super::store::local_candidates(&a.candidates, a.cache.as_ref(), fetch, &mut |r| {
        eprintln!("refused {}: {}", r.path.display(), r.reason);
    })?;
    let mut refused = |r: &Refused| {
        if !a.json {
            eprintln!("refused {}: {}", made.name(&r.path), r.reason);
        }
    };
    // Said once the guest is ready, before a kept guest runs on.
    let mut printed = Ok(ExitCode::SUCCESS);
    let mut ready = |r: &Recovery, child: Option<&mut std::process::Child>| {
        let store = r.chosen.as_deref().and_then(|c| made.mount_report(c));
        printed = print(&Recovered { r, vmm, made: &made, store, fetch }, a.json);
        match (a.keep_running, child) {
            (true, Some(child)) => {
                eprintln!("the recovered guest runs until its QEMU exits");
                let _ = child.wait();
            }
            (true, None) => eprintln!("note: --keep-running applies to QEMU recoveries"),
            _ => {}
        }
    };
    let opts = RecoverOptions { root: a.root.as_deref(), qemu: a.qemu.as_deref(), vmm, served: &made.served };
    recover(&made.paths, &opts, &mut refused, &mut ready)?;
    printed
}

/// What a recovery did, and how it was asked to start QEMU.
struct Recovered<'a> {
    r: &'a Recovery,
    vmm: Vmm,
    /// The candidates, those of a store made local.
    made: &'a Candidates,
    /// What the chosen candidate's mount did, when it came from a store
    /// that way.
    store: Option<MountReport>,
    fetch: Fetch,
}

impl Report for Recovered<'_> {
    fn json(&self) -> Value {
        let (r, s) = (self.r, |d: std::time::Duration| d.as_secs_f64());
        let refused: Vec<_> =
            r.refused.iter().map(|x| json!({"candidate": self.made.name(&x.path), "reason": x.reason})).collect();
        let store = self.store.as_ref().map(|m| {
            json!({"url": m.url, "fetch": self.fetch.name(), "prepare_s": m.prepare_s, "reads": m.reads,
                   "chunks_from_store": m.fetched.from_store, "chunks_from_cache": m.fetched.from_cache,
                   "downloaded_bytes": m.fetched.bytes, "failed": m.failed})
        });
        json!({"chosen": r.chosen.as_ref().map(|p| self.made.name(p)), "refused": refused, "store": store,
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
            self.made.name(path),
            super::fmt::recovery(r, &refilled),
            r.signal,
            super::fmt::held(r.held)
        )?;
        match &self.store {
            Some(m) => writeln!(
                w,
                "its RAM from the store ({}): shell and mount made in {:.3} s, {} reads served, {} chunks \
                 fetched ({} bytes), {} from the cache{}",
                self.fetch.name(),
                m.prepare_s,
                m.reads,
                m.fetched.from_store,
                m.fetched.bytes,
                m.fetched.from_cache,
                m.failed.as_ref().map_or(String::new(), |f| format!("; FAILED: {f}"))
            ),
            None => Ok(()),
        }
    }
}
