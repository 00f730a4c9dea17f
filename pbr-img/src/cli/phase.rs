//! `pbr-img capture`, `boot` and `recover`: phase-based reboot end to end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use pbr_reboot::guest::GuestSpec;
use pbr_reboot::{CaptureOptions, Vmm, capture, cold_boot, recover};
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
    let list = capture(&g.spec(), out, &CaptureOptions { classify, ..opts })?;
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

pub use super::points::{boot_run as boot_points_run, capture_run as capture_points_run};

pub fn boot_run(g: &GuestArgs, standby: bool, as_json: bool) -> Result<ExitCode> {
    let d = cold_boot(&g.spec(), vmm(standby))?;
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

pub fn recover_run(
    candidates: &[PathBuf],
    root: Option<&Path>,
    qemu: Option<&str>,
    vmm: Vmm,
    keep: bool,
    as_json: bool,
) -> Result<ExitCode> {
    let agent = candidates
        .iter()
        .any(|c| pbr_format::Image::open(c).is_ok_and(|i| pbr_reboot::restore::is_agent_candidate(&i)));
    if agent {
        return super::points::recover_run(candidates, qemu, vmm, keep, as_json);
    }
    let qemu = qemu.unwrap_or("qemu-system-x86_64");
    let mut report = |r: &pbr_reboot::Recovery, child: Option<&mut std::process::Child>| {
        if as_json {
            outln!(
                "{}",
                json!({"chosen": r.chosen.display().to_string(), "downtime_s": r.downtime.as_secs_f64(), "select_s": r.select.as_secs_f64(),
                       "restore_s": r.restore.as_secs_f64(), "page_check_s": r.page_check.as_secs_f64(), "guest_s": r.guest.as_secs_f64(), "standby": vmm != Vmm::Spawn, "vmm": r.vmm.name(),
                       "adapter": r.adapter, "ram": r.ram, "signal": r.signal, "held": super::fmt::held_json(r.held),
                       "refused": r.refused.iter().map(|x| json!({"candidate": x.path.display().to_string(), "reason": x.reason})).collect::<Vec<_>>()})
            );
        } else {
            for x in &r.refused {
                eprintln!("refused {}: {}", x.path.display(), x.reason);
            }
            outln!(
                "recovered from {} ({} {}, RAM {}): service ready {:.3} s after the decision (select {:.3} s, restore {:.3} s, guest {:.3} s): {}{}",
                r.chosen.display(),
                r.adapter,
                r.vmm.name(),
                r.ram,
                r.downtime.as_secs_f64(),
                r.select.as_secs_f64(),
                r.restore.as_secs_f64(),
                r.guest.as_secs_f64(),
                r.signal,
                super::fmt::held(r.held)
            );
        }
        match (keep, child) {
            (true, Some(child)) => {
                eprintln!("the recovered guest runs until its QEMU exits");
                let _ = child.wait();
            }
            (true, None) => eprintln!("note: --keep-running applies to QEMU recoveries"),
            _ => {}
        }
    };
    recover(candidates, root, qemu, vmm, &mut report)?;
    Ok(ExitCode::SUCCESS)
}
