//! `select`: which agent candidates a recovery may restore now.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use pbr_tools::Result;

pub fn select_run(images: &[PathBuf], qemu: Option<&str>, fast: bool, as_json: bool) -> Result<ExitCode> {
    let selection = pbr_reboot::select::select(images, qemu, fast);
    let chosen = selection.chosen.as_ref().map(|p| p.display().to_string());
    let verdicts: Vec<(String, std::result::Result<(), String>)> =
        selection.verdicts.into_iter().map(|(p, v)| (p.display().to_string(), v)).collect();
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
