//! `capture`, `boot` and `recover` for a QEMU command line whose guest runs
//! pbr-agent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;

use pbr_reboot::machine::UserCommand;
use pbr_reboot::restore::{PointsRecovery, Refused, boot_points, check, recorded_command, recover_points};
use pbr_reboot::{CaptureOptions, Vmm, points};
use pbr_tools::Result;
use pbr_tools::qemu::compat::QemuHost;

pub fn capture_run(
    command: &[String],
    out: &Path,
    opts: CaptureOptions,
    as_json: bool,
    quiet: bool,
) -> Result<ExitCode> {
    let cmd = UserCommand::parse(command)?;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("capture: {line}");
        }
    };
    let r = points::capture_points(&cmd, out, &opts, &mut progress)?;
    if as_json {
        let list: Vec<_> = r.candidates.iter().map(super::phase::candidate_json).collect();
        let skipped: Vec<_> = r.skipped.iter().map(|s| json!({"point": s.point, "reason": s.reason})).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"candidates": list, "skipped": skipped, "ready_s": r.ready_s}))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    super::phase::candidate_table("point", &r.candidates);
    for s in &r.skipped {
        outln!("{:<10} no candidate: {}", s.point, s.reason);
    }
    outln!("the guest's agent said ready {:.2} s after QEMU started", r.ready_s);
    Ok(ExitCode::SUCCESS)
}

pub fn boot_run(command: &[String], standby: bool, as_json: bool) -> Result<ExitCode> {
    let cmd = UserCommand::parse(command)?;
    let vmm = if standby { Vmm::Standby } else { Vmm::Spawn };
    let r = boot_points(&cmd, vmm, &mut |_, _| {})?;
    if as_json {
        outln!("{}", json!({"cold_boot_s": r.downtime.as_secs_f64(), "standby": standby}));
    } else {
        outln!("cold boot until the agent said ready: {:.3} s", r.downtime.as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn recover_run(
    candidates: &[PathBuf],
    qemu: Option<&str>,
    vmm: Vmm,
    keep: bool,
    as_json: bool,
) -> Result<ExitCode> {
    let mut refused = |r: &Refused| {
        if !as_json {
            eprintln!("refused {}: {}", r.path.display(), r.reason);
        }
    };
    // Said once the agent is ready, before a kept guest runs on.
    let mut ready = |r: &PointsRecovery, child: &mut std::process::Child| {
        report(r, as_json);
        if keep {
            eprintln!("the recovered guest runs until its QEMU exits");
            let _ = child.wait();
        }
    };
    recover_points(candidates, qemu, vmm, &mut refused, &mut ready)?;
    Ok(ExitCode::SUCCESS)
}

fn report(r: &PointsRecovery, as_json: bool) {
    let s = |d: std::time::Duration| d.as_secs_f64();
    let guest = r.downtime.saturating_sub(r.select + r.restore);
    if as_json {
        let refused: Vec<_> =
            r.refused.iter().map(|x| json!({"candidate": x.path.display().to_string(), "reason": x.reason})).collect();
        outln!(
            "{}",
            json!({"chosen": r.chosen.as_ref().map(|p| p.display().to_string()), "refused": refused,
                   "downtime_s": s(r.downtime), "select_s": s(r.select), "restore_s": s(r.restore),
                   "guest_s": s(guest), "vmm": r.vmm.name(), "adapter": "qemu", "refilled_pages": r.refilled_pages, "refill_s": s(r.refill), "page_check_s": s(r.page_check),
                   "ram": if r.ram_mapped { "mapped" } else { "streamed" }, "held": super::fmt::held_json(r.held),
                   "clock_step_s": r.resumed.as_ref().map(|x| x.clock_step_ns as f64 / 1e9),
                   "reseeded": r.resumed.as_ref().map(|x| x.reseeded)})
        );
        return;
    }
    match &r.chosen {
        Some(path) => {
            let caught_up = r.resumed.as_ref().map_or("the agent did not report its clock".into(), |x| {
                format!(
                    "clock stepped {:.3} s, {} entropy bytes, RNG {}",
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
                "recovered from {} (qemu {}, RAM {}{refilled}): ready {:.3} s after the decision (select {:.3} s, restore {:.3} s, guest {:.3} s); {caught_up}{}",
                path.display(),
                r.vmm.name(),
                if r.ram_mapped { "mapped" } else { "streamed" },
                s(r.downtime),
                s(r.select),
                s(r.restore),
                s(guest),
                super::fmt::held(r.held),
            );
        }
        None => outln!(
            "no candidate is safe to restore: booted from scratch, ready {:.3} s after the decision",
            s(r.downtime)
        ),
    }
}

/// `select` without `--root`: the latest candidate whose seals hold and,
/// unless `fast`, whose stored pages match their crc32. Exit 3 when none
/// does.
pub fn select_run(images: &[PathBuf], qemu: Option<&str>, fast: bool, as_json: bool) -> Result<ExitCode> {
    let mut opened = Vec::new();
    for p in images {
        opened.push((p, pbr_format::Image::open(p)));
    }
    opened.sort_by_key(|(_, i)| std::cmp::Reverse(i.as_ref().ok().map_or((0, 0), pbr_reboot::phase_order)));
    let mut verdicts = Vec::new();
    let mut chosen = None;
    for (path, img) in &opened {
        let verdict = match img {
            Err(e) => Err(format!("refused: {e}")),
            Ok(img) => recorded_command(img, qemu)
                .map_err(|e| e.to_string())
                .and_then(|cmd| check(img, &QemuHost::of(&cmd.qemu)?)),
        };
        // The candidate about to be chosen has its pages checked too, as
        // recover checks them while restoring.
        let verdict = match (img, verdict) {
            (Ok(img), Ok(())) if chosen.is_none() && !fast => {
                img.check_page_crcs().map(|_| ()).map_err(|e| format!("damaged: {e}"))
            }
            (_, v) => v,
        };
        if verdict.is_ok() && chosen.is_none() {
            chosen = Some(path.display().to_string());
        }
        verdicts.push((path.display().to_string(), verdict));
    }
    if as_json {
        let list: Vec<_> =
            verdicts.iter().map(|(p, v)| json!({"image": p, "valid": v.is_ok(), "reason": v.as_ref().err()})).collect();
        outln!("{}", serde_json::to_string_pretty(&json!({"chosen": chosen, "candidates": list})).unwrap_or_default());
    } else {
        for (p, v) in &verdicts {
            match v {
                Ok(()) => outln!("{p}: valid (seals hold)"),
                Err(reason) => outln!("{p}: invalid: {reason}"),
            }
        }
        if fast {
            outln!("note: --fast: no stored page was read; recover checks every page it restores");
        }
    }
    match chosen {
        Some(c) => {
            if !as_json {
                outln!("chosen: {c}");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("pbr-img: no candidate's seals hold: do a full reboot");
            Ok(ExitCode::from(super::NO_CANDIDATE))
        }
    }
}
