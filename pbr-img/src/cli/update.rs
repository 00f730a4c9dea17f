//! `pbr-img update`: a kernel update of the VM a `pbr-img run` keeps,
//! asked for on its control socket ([`pbr_reboot::control`]). The units
//! named with --keep are checkpointed with CRIU on the old kernel and
//! restored on the new one; the others start cold, as after any reboot.

use std::path::PathBuf;
use std::process::ExitCode;

use pbr_reboot::update::Update;
use serde_json::Value;

use super::error::{Error, Result};

/// The arguments of `update`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The candidates of the `pbr-img run` keeping the VM, as it was
    /// given them: a directory, or s3://BUCKET[/PREFIX]/VM.
    #[arg(long, value_name = "DIR|S3_URL")]
    candidates: PathBuf,
    /// (store candidates) The --cache directory `run` was given.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// The new kernel (it replaces the command line's -kernel).
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// The new kernel's initramfs (it replaces -initrd).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// A new kernel command line (it replaces -append).
    #[arg(long, value_name = "CMDLINE")]
    append: Option<String>,
    /// The systemd services whose processes are kept (checkpointed and
    /// restored with CRIU), comma-separated.
    #[arg(long, value_name = "UNIT,...", value_delimiter = ',')]
    keep: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Asks for the update and waits for the new kernel's guest to be ready.
pub fn run(a: &Args) -> Result<ExitCode> {
    let absolute = |p: &PathBuf| std::path::absolute(p).map_err(|e| Error::Usage(format!("{}: {e}", p.display())));
    let update = Update {
        kernel: absolute(&a.kernel)?,
        initrd: a.initrd.as_ref().map(absolute).transpose()?,
        append: a.append.clone(),
        keep: a.keep.clone(),
    };
    // The request is checked here as the supervisor checks it.
    let update = Update::from_json(&update.to_json())?;
    let dir = super::store::run_dir(&a.candidates, a.cache.as_ref())?;
    let report = pbr_reboot::control::request_update(&dir, &update, &mut |v| {
        if v["event"] == "checkpointed" {
            eprintln!("update: {}", checkpointed(v));
        }
    })?;
    if a.json {
        println!("{report}");
    } else {
        print!("{}", text(&report));
    }
    match report["reverted"].as_str() {
        Some(why) => Err(Error::Usage(format!("the new kernel was given up ({why}): the VM runs its old kernel"))),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The checkpoint's event as one line.
fn checkpointed(v: &Value) -> String {
    if let Some(e) = v["error"].as_str() {
        return format!("no checkpoint ({e}): every unit starts cold");
    }
    let units = v["units"].as_array().map(Vec::as_slice).unwrap_or_default();
    let dumped = units.iter().filter(|u| u["dumped"] == true).count();
    format!(
        "{dumped} of {} units checkpointed on {} in {:.2} s; booting the new kernel",
        units.len(),
        v["kernel"].as_str().unwrap_or("?"),
        v["checkpoint_s"].as_f64().unwrap_or(0.0)
    )
}

/// The report for people.
fn text(v: &Value) -> String {
    let mut out = format!(
        "kernel {} -> {}, ready {:.2} s after the request\n",
        v["kernel_before"].as_str().unwrap_or("?"),
        v["kernel_after"].as_str().unwrap_or("?"),
        v["total_s"].as_f64().unwrap_or(0.0)
    );
    for u in v["units"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let unit = u["unit"].as_str().unwrap_or("?");
        match (u["restored"].as_bool(), u["reason"].as_str()) {
            (Some(true), _) => out.push_str(&format!("  {unit}: restored\n")),
            (_, reason) => out.push_str(&format!("  {unit}: started cold: {}\n", reason.unwrap_or("?"))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_names_each_unit() {
        let v = json!({"event": "updated", "kernel_before": "6.1.0-57-cloud-amd64",
                       "kernel_after": "6.1.0-56-cloud-amd64", "total_s": 21.5,
                       "units": [{"unit": "memcached.service", "restored": true, "reason": null},
                                 {"unit": "nginx.service", "restored": false, "reason": "criu dump: exit status: 1"}]});
        assert_eq!(
            text(&v),
            "kernel 6.1.0-57-cloud-amd64 -> 6.1.0-56-cloud-amd64, ready 21.50 s after the request\n  \
             memcached.service: restored\n  nginx.service: started cold: criu dump: exit status: 1\n"
        );
        let c = json!({"event": "checkpointed", "kernel": "6.1.0-57-cloud-amd64", "checkpoint_s": 1.25,
                       "units": [{"dumped": true}, {"dumped": false}]});
        assert_eq!(
            checkpointed(&c),
            "1 of 2 units checkpointed on 6.1.0-57-cloud-amd64 in 1.25 s; booting the new kernel"
        );
    }
}
