//! A kernel update of the Debian guest kept by `pbr-img run`: `pbr-img
//! update` moves it from its 6.1.0-57 cloud kernel to the 6.1.0-56 build.
//! memcached, holding keys only in memory, is checkpointed with CRIU on the
//! old kernel and restored on the new one before its unit would start it:
//! every key is there, and the guest's kernel changed. Two services asked
//! to be kept too cannot be: journald cannot be checkpointed (its sockets'
//! peers are every other service), nginx cannot be restored (its log files
//! live on a tmpfs the new boot does not have). Each starts cold, the
//! report says why, and nginx serves. The new kernel's boot gives fresh
//! candidates; at the end both disks pass `e2fsck -fn`.

use std::process::Command;
use std::time::Duration;

use crate::common::distro::{Lab, ONE_GUEST, guest};
use crate::run::{Run, events, wait_for};

/// Keys memcached holds before the update.
const KEYS: u32 = 300;

/// A shell line storing `KEYS` keys in memcached (`k1`: `v0000001`...)
/// through bash's `/dev/tcp`, waiting for memcached's answer to the last.
fn fill() -> String {
    format!(
        "exec 3<>/dev/tcp/127.0.0.1/11211 && for i in $(seq {KEYS}); do printf 'set k%d 0 0 8 noreply\\r\\nv%07d\\r\\n' \
         $i $i; done >&3 && printf 'version\\r\\n' >&3 && read -t 5 l <&3 && exec 3>&- && echo \"$l\" | grep -q VERSION"
    )
}

/// A shell line printing memcached's `curr_items` and the value of `k150`.
const CHECK: &str = "exec 3<>/dev/tcp/127.0.0.1/11211 && printf 'stats\\r\\nget k150\\r\\nquit\\r\\n' >&3 && \
                     grep -aE 'curr_items|^v0' <&3 | tr -d '\\r'; exec 3>&-";

#[test]
fn a_kernel_update_keeps_memcached_and_starts_the_rest_cold() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let g = guest();
    let new = g["kernels"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["release"] == "6.1.0-56-cloud-amd64"))
        .expect("guest.json names the 6.1.0-56 kernel (scripts/fetch-distro-guest)")
        .clone();
    let lab = Lab::new(512);
    let (mut run, log) = Run::start(&lab, &[]);
    wait_for(&log, "ready", 1, Duration::from_secs(900), &mut run.0);
    let (before, _) = lab.shell("uname -r");
    assert!(before.contains("6.1.0-57-cloud-amd64"), "{before}");
    let (_, status) = lab.shell(&fill());
    assert_eq!(status, 0, "memcached took the keys:\n{}", lab.console_tail());

    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["update", "--candidates"])
        .arg(lab.out())
        .args(["--kernel", new["kernel"].as_str().unwrap(), "--initrd", new["initrd"].as_str().unwrap()])
        .args(["--keep", "memcached.service,nginx.service,systemd-journald.service", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{:#?}", events(&log));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("the update's report: {report:#}");
    assert_eq!(report["kernel_before"], "6.1.0-57-cloud-amd64", "{report:#}");
    assert_eq!(report["kernel_after"], "6.1.0-56-cloud-amd64", "{report:#}");
    let unit = |name: &str| report["units"].as_array().unwrap().iter().find(|u| u["unit"] == name).unwrap().clone();
    let memcached = unit("memcached.service");
    assert_eq!((&memcached["dumped"], &memcached["restored"]), (&true.into(), &true.into()), "{report:#}");
    let nginx = unit("nginx.service");
    assert_eq!(nginx["restored"], false, "{report:#}");
    assert!(nginx["reason"].as_str().is_some_and(|r| r.contains("criu restore")), "{report:#}");
    let journald = unit("systemd-journald.service");
    assert_eq!(journald["dumped"], false, "{report:#}");
    assert!(journald["reason"].as_str().is_some_and(|r| r.contains("criu dump")), "{report:#}");
    assert!(stderr.contains("checkpointed on 6.1.0-57-cloud-amd64"), "{stderr}");

    // The new kernel runs memcached with every key, and nginx (cold) serves.
    let (now, _) = lab.shell("uname -r");
    assert!(now.contains("6.1.0-56-cloud-amd64"), "{now}");
    let (items, _) = lab.shell(CHECK);
    assert!(items.contains(&format!("STAT curr_items {KEYS}")), "{items}");
    assert!(items.contains("v0000150"), "{items}");
    assert_eq!(lab.get().1, "served from the data disk\n", "nginx, started cold, serves");
    let (_, status) = lab.shell("systemctl is-active memcached.service nginx.service systemd-journald.service");
    assert_eq!(status, 0, "every unit is active");

    let all = events(&log);
    let boots: Vec<_> = all.iter().filter(|e| e["event"] == "booting").collect();
    assert_eq!(boots.len(), 2, "{all:#?}");
    assert!(boots[1]["reason"].as_str().unwrap().starts_with("kernel update to "), "{all:#?}");
    let at = all.iter().position(|e| e["event"] == "updated").unwrap();
    assert!(all[..at].iter().rev().take_while(|e| e["event"] != "booting").any(|e| e["event"] == "captured"));
    let image = report["image"].as_str().unwrap();
    let shown = Command::new(env!("CARGO_BIN_EXE_pbr-img")).args(["inspect", image]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("from kernel 6.1.0-57-cloud-amd64, dumped by CRIU 3.17.1"), "{shown}");
    assert!(shown.contains("  memcached.service  "), "{shown}");
    assert!(shown.contains("    open tcp 0.0.0.0:11211 listen"), "memcached's socket, from files.img: {shown}");

    run.stop(&lab, &log);
    lab.fsck_clean();
}

/// Without a `pbr-img run` keeping a VM there, or with a unit that is not a
/// service's name, `update` says so in one line and exits non-zero;
/// nothing is left behind.
#[test]
fn an_update_nobody_can_make_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, want) in [
        (vec!["--kernel", "/bin/sh", "--keep", "memcached.service"], "no pbr-img run keeps a VM in"),
        (vec!["--kernel", "/bin/sh", "--keep", "../x.service"], "\"../x.service\" is not a service's unit name"),
    ] {
        let out = crate::common::pbr_img(&[&["update", "--candidates", d][..], &args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("pbr-img: error: ") && err.contains(want), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
