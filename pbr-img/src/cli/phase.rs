//! `pbr-img capture`, `boot` and `recover`: phase-based reboot end to end,
//! for a phase guest (`--kernel`) or a QEMU command line whose guest runs
//! pbr-agent (after `--`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use pbr_reboot::guest::GuestSpec;
use pbr_reboot::machine::UserCommand;
use pbr_reboot::{CaptureOptions, RecoverOptions, Recovery, Vmm, boot_points, capture, cold_boot, points, recover};
use pbr_tools::Result;

/// How to boot the guest (kernel + initramfs + command line).
#[derive(Args, Debug, Clone)]
pub struct GuestArgs {
    /// The guest kernel.
    #[arg(long, required_unless_present = "command")]
    kernel: Option<PathBuf>,
    /// The guest initramfs.
    #[arg(long, required_unless_present = "command")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = "console=ttyS0", allow_hyphen_values = true)]
    append: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// QEMU machine and accelerator.
    #[arg(long, default_value = "q35,accel=tcg")]
    machine: String,
    /// QEMU CPU model.
    #[arg(long, default_value = "max")]
    cpu: String,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
}

impl GuestArgs {
    fn spec(&self) -> GuestSpec {
        GuestSpec {
            qemu: self.qemu.clone(),
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            mem_mb: self.mem,
            smp: self.smp,
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone().unwrap_or_default(),
            append: self.append.clone(),
        }
    }
}

pub fn capture_run(g: &GuestArgs, out: &Path, opts: CaptureOptions, as_json: bool) -> Result<ExitCode> {
    let classify = g.append.split_whitespace().any(|w| w == "pbr.kpf=1");
    let list = capture(&g.spec(), out, &CaptureOptions { classify, ..opts }).map_err(tools_error)?;
    if as_json {
        let v: Vec<_> = list.iter().map(candidate_json).collect();
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        candidate_table("phase", &list);
    }
    Ok(ExitCode::SUCCESS)
}

/// A candidate as `capture --json` lists it.
pub fn candidate_json(c: &pbr_reboot::Candidate) -> serde_json::Value {
    json!({"phase": c.phase, "image": c.path.display().to_string(), "since_power_on_s": c.since_power_on,
           "guest_uptime_s": c.guest_uptime, "guest_bytes": c.guest_bytes, "stream_bytes": c.stream_bytes,
           "untrimmed_bytes": c.untrimmed_bytes, "image_bytes": c.image_bytes,
           "qemu_zero_pages": c.counters.zero_pages, "qemu_normal_pages": c.counters.normal_pages})
}

/// The candidates as `capture` prints them, `first` naming the phase
/// column.
pub fn candidate_table(first: &str, list: &[pbr_reboot::Candidate]) {
    outln!(
        "{:<10} {:>12} {:>10} {:>12} {:>12} {:>12}  image",
        first,
        "since on (s)",
        "guest MiB",
        "stream MiB",
        "untrimmed",
        "stored MiB"
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    for c in list {
        outln!(
            "{:<10} {:>12.2} {:>10.0} {:>12.1} {:>12.1} {:>12.1}  {}",
            c.phase,
            c.since_power_on,
            mib(c.guest_bytes),
            mib(c.stream_bytes),
            mib(c.untrimmed_bytes),
            mib(c.image_bytes),
            c.path.display()
        );
    }
}

/// `--standby` as a [`Vmm`].
fn vmm(standby: bool) -> Vmm {
    if standby { Vmm::Standby } else { Vmm::Spawn }
}

/// `capture -- QEMU ARGS...`: one candidate per point the agent announces.
pub fn capture_points_run(
    command: &[String],
    out: &Path,
    opts: CaptureOptions,
    as_json: bool,
    quiet: bool,
) -> Result<ExitCode> {
    let cmd = UserCommand::parse(command).map_err(tools_error)?;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("capture: {line}");
        }
    };
    let r = points::capture_points(&cmd, out, &opts, &mut progress).map_err(tools_error)?;
    if as_json {
        let list: Vec<_> = r.candidates.iter().map(candidate_json).collect();
        let skipped: Vec<_> = r.skipped.iter().map(|s| json!({"point": s.point, "reason": s.reason})).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"candidates": list, "skipped": skipped, "ready_s": r.ready_s}))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    candidate_table("point", &r.candidates);
    for s in &r.skipped {
        outln!("{:<10} no candidate: {}", s.point, s.reason);
    }
    outln!("the guest's agent said ready {:.2} s after QEMU started", r.ready_s);
    Ok(ExitCode::SUCCESS)
}

/// `boot --kernel ...`: a phase guest from scratch until its service
/// answers.
pub fn boot_run(g: &GuestArgs, standby: bool, as_json: bool) -> Result<ExitCode> {
    let d = cold_boot(&g.spec(), vmm(standby)).map_err(tools_error)?;
    if as_json {
        outln!("{}", json!({"cold_boot_s": d.as_secs_f64(), "standby": standby}));
    } else {
        outln!(
            "cold boot to service ready: {:.3} s{}",
            d.as_secs_f64(),
            if standby { " (from the start of a QEMU already running, paused)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `boot -- QEMU ARGS...`: the machine from scratch until its agent says
/// ready.
pub fn boot_points_run(command: &[String], standby: bool, as_json: bool) -> Result<ExitCode> {
    let cmd = UserCommand::parse(command).map_err(tools_error)?;
    let r = boot_points(&cmd, vmm(standby), &mut |_, _| {}).map_err(tools_error)?;
    if as_json {
        outln!("{}", json!({"cold_boot_s": r.downtime.as_secs_f64(), "standby": standby}));
    } else {
        outln!("cold boot until the agent said ready: {:.3} s", r.downtime.as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

/// `recover`: restores the latest valid candidate (or, for an agent's
/// machine, boots from scratch when none is) and reports once the guest is
/// ready; with `keep`, the guest then runs until its QEMU exits.
pub fn recover_run(
    candidates: &[PathBuf],
    root: Option<&Path>,
    qemu: Option<&str>,
    vmm: Vmm,
    keep: bool,
    as_json: bool,
) -> Result<ExitCode> {
    let mut refused = |r: &pbr_reboot::Refused| {
        if !as_json {
            eprintln!("refused {}: {}", r.path.display(), r.reason);
        }
    };
    // Said once the guest is ready, before a kept guest runs on.
    let mut ready = |r: &Recovery, child: Option<&mut std::process::Child>| {
        recovery_report(r, vmm, as_json);
        match (keep, child) {
            (true, Some(child)) => {
                eprintln!("the recovered guest runs until its QEMU exits");
                let _ = child.wait();
            }
            (true, None) => eprintln!("note: --keep-running applies to QEMU recoveries"),
            _ => {}
        }
    };
    let opts = RecoverOptions { root, qemu, vmm };
    recover(candidates, &opts, &mut refused, &mut ready).map_err(tools_error)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints what a recovery did, as text or JSON.
fn recovery_report(r: &Recovery, vmm: Vmm, as_json: bool) {
    let s = |d: std::time::Duration| d.as_secs_f64();
    if as_json {
        let refused: Vec<_> =
            r.refused.iter().map(|x| json!({"candidate": x.path.display().to_string(), "reason": x.reason})).collect();
        outln!(
            "{}",
            json!({"chosen": r.chosen.as_ref().map(|p| p.display().to_string()), "refused": refused,
                   "downtime_s": s(r.downtime), "select_s": s(r.select), "restore_s": s(r.restore),
                   "guest_s": s(r.guest), "standby": vmm != Vmm::Spawn, "vmm": r.vmm.name(), "adapter": r.adapter,
                   "ram": r.ram(), "signal": r.signal, "refilled_pages": r.refilled_pages, "refill_s": s(r.refill),
                   "page_check_s": s(r.page_check), "held": super::fmt::held_json(r.held),
                   "clock_step_s": r.resumed.as_ref().map(|x| x.clock_step_ns as f64 / 1e9),
                   "reseeded": r.resumed.as_ref().map(|x| x.reseeded)})
        );
        return;
    }
    let Some(path) = &r.chosen else {
        outln!("no candidate is safe to restore: booted from scratch, ready {:.3} s after the decision", s(r.downtime));
        return;
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
    outln!(
        "recovered from {} ({} {}, RAM {}{refilled}): ready {:.3} s after the decision (select {:.3} s, restore {:.3} s, guest {:.3} s): {}{caught_up}{}",
        path.display(),
        r.adapter,
        r.vmm.name(),
        r.ram(),
        s(r.downtime),
        s(r.select),
        s(r.restore),
        s(r.guest),
        r.signal,
        super::fmt::held(r.held)
    );
}

/// The libraries' error as the CLI's.
pub fn tools_error(e: pbr_reboot::Error) -> pbr_tools::Error {
    match e {
        pbr_reboot::Error::NoCandidate(why) => pbr_tools::Error::NoCandidate(why),
        pbr_reboot::Error::Replay(pbr_replay::Error::Tools(e)) => e,
        e => pbr_tools::Error::Unsupported(e.to_string()),
    }
}
