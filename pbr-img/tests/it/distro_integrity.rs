//! The real Debian guest (`scripts/fetch-distro-guest`) and what may be
//! restored: a candidate with one damaged page is refused while it
//! loads, before the guest runs, and the next older one restored; a QEMU
//! update (7.2 to 10.0) keeps the candidates, which serve and leave clean
//! disks.

use crate::common;

use std::path::{Path, PathBuf};

use common::distro::{Lab, ONE_GUEST};
use pbr_format::{Image, PageEncoding};
use pbr_reboot::machine::UserCommand;
use pbr_reboot::points::capture_points;
use pbr_reboot::{RecoverOptions, Recovery, Refused, recover};

/// Captures the lab's guest; returns (kernel, daemons) candidates.
fn capture(lab: &Lab) -> (PathBuf, PathBuf) {
    let cmd = UserCommand::parse(&lab.argv).unwrap();
    let r = capture_points(&cmd, &lab.out(), &Default::default(), &mut |_| {}).unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    (r.candidates[0].path.clone(), r.candidates[1].path.clone())
}

/// Flips one bit of a stored page of guest RAM in the middle of `path`;
/// returns its gfn.
fn damage(path: &Path) -> u64 {
    let img = Image::open(path).unwrap();
    let raw: Vec<_> = img.extents().filter(|e| e.encoding == PageEncoding::Raw && e.gfn < 0x10_0000).collect();
    let e = raw[raw.len() / 2];
    let at = e.data as usize + 2048;
    drop(img);
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
    e.gfn
}

/// Recovers from `candidates` with `qemu` (the recorded one when `None`):
/// the guest serves from its data disk, writes it and powers off.
fn recover_serving(lab: &Lab, candidates: &[PathBuf], qemu: Option<&str>) -> (Recovery, Vec<Refused>) {
    let mut refused = Vec::new();
    let opts = RecoverOptions { qemu, ..Default::default() };
    let r = recover(candidates, &opts, &mut |x| refused.push(x.clone()), &mut |_, child| {
        assert_eq!(lab.get().1, "served from the data disk\n");
        lab.write_and_power_off(child.expect("a QEMU guest"));
    })
    .unwrap();
    lab.fsck_clean();
    (r, refused)
}

#[test]
fn a_damaged_candidate_is_refused_while_it_loads_and_the_older_one_restored() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (kernel, daemons) = capture(&lab);
    let gfn = damage(&daemons);
    // `select` reads the pages of the candidate it would choose.
    let (k, d) = (kernel.to_str().unwrap(), daemons.to_str().unwrap());
    let v: serde_json::Value = serde_json::from_str(&common::pbr_img_ok(&["select", "--json", d, k])).unwrap();
    assert_eq!(v["chosen"], k, "{v}");
    assert!(v["candidates"][0]["reason"].as_str().unwrap().contains(&format!("gfn {gfn:#x}")), "{v}");

    let (r, refused) = recover_serving(&lab, &[daemons.clone(), kernel.clone()], None);
    assert_eq!(r.chosen.as_ref(), Some(&kernel), "refused: {refused:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].path, daemons);
    let why = &refused[0].reason;
    assert!(why.starts_with("damaged: ") && why.contains("crc32 mismatch"), "{why}");
    assert!(why.contains(&format!("gfn {gfn:#x}")), "the page is not named: {why}");
}

/// A wrapper that runs QEMU 10 with its firmware search path, as an
/// installed QEMU 10 would find it.
fn qemu10_wrapper(dir: &Path) -> String {
    let (bin, firmware) = common::vm::qemu10();
    let path = dir.join("qemu10");
    std::fs::write(&path, format!("#!/bin/sh\nexec {bin} {} \"$@\"\n", firmware.join(" "))).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn candidates_of_qemu_7_2_restore_under_qemu_10() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (kernel, daemons) = capture(&lab);
    let img = Image::open(&daemons).unwrap();
    let machine = img.metadata_value("qemu.machine").unwrap().to_owned();
    assert!(machine.starts_with("pc-q35-7."), "{machine}");
    drop(img);
    let qemu10 = qemu10_wrapper(lab.dir.path());
    // `select` with QEMU 10 as the restoring QEMU accepts the 7.2 candidate.
    let (k, d) = (kernel.to_str().unwrap(), daemons.to_str().unwrap());
    let v: serde_json::Value =
        serde_json::from_str(&common::pbr_img_ok(&["select", "--json", "--qemu", &qemu10, d, k])).unwrap();
    assert_eq!(v["chosen"], d, "{v}");
    let (r, refused) = recover_serving(&lab, &[daemons.clone(), kernel.clone()], Some(&qemu10));
    assert_eq!(r.chosen.as_ref(), Some(&daemons), "refused: {refused:?}");
    assert!(refused.is_empty(), "{refused:?}");
}
