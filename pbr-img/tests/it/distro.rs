//! Phase-based reboot of a real Debian guest with disks
//! (`scripts/fetch-distro-guest`): capture at the agent's points, recovery
//! that refuses candidates whose disks changed, and no damage: after every
//! recovery the guest writes its data disk, powers off cleanly, and
//! `e2fsck -fn` is clean on both disks.

use crate::common;

use std::path::PathBuf;

use common::distro::{Lab, ONE_GUEST};
use pbr_reboot::Vmm;
use pbr_reboot::machine::UserCommand;
use pbr_reboot::points::capture_points;
use pbr_reboot::{RecoverOptions, Recovery, Refused};

/// Captures the lab's guest; returns (kernel, daemons) candidates.
fn capture(lab: &Lab) -> (PathBuf, PathBuf) {
    let cmd = UserCommand::parse(&lab.argv).unwrap();
    let r = capture_points(&cmd, &lab.out(), &Default::default(), &mut |_| {}).unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let names: Vec<&str> = r.candidates.iter().map(|c| c.phase.as_str()).collect();
    assert_eq!(names, ["kernel", "daemons"]);
    // The files the boot read, from the agent's fanotify watch: none before
    // the root is mounted; nginx's binary and settings by `daemons`.
    let files = |p: &PathBuf| {
        let img = pbr_format::Image::open(p).unwrap();
        img.metadata_value(pbr_reboot::points::FILES_KEY)
            .map(|v| serde_json::from_str::<Vec<String>>(v).unwrap())
            .unwrap_or_default()
    };
    assert!(files(&r.candidates[0].path).is_empty());
    let read = files(&r.candidates[1].path);
    for f in ["/usr/sbin/nginx", "/etc/nginx/nginx.conf", "/etc/nginx/pbr-site.conf"] {
        assert!(read.iter().any(|x| x == f), "{f} not among the {} files read: {read:?}", read.len());
    }
    (r.candidates[0].path.clone(), r.candidates[1].path.clone())
}

/// Recovers from `candidates`; `inside` runs while the guest runs.
fn recover(
    candidates: &[PathBuf],
    inside: &mut dyn FnMut(&Recovery, &mut std::process::Child),
) -> (Recovery, Vec<Refused>) {
    recover_with(candidates, Vmm::Spawn, inside)
}

/// [`recover`] with QEMU started the way `vmm` says.
fn recover_with(
    candidates: &[PathBuf],
    vmm: Vmm,
    inside: &mut dyn FnMut(&Recovery, &mut std::process::Child),
) -> (Recovery, Vec<Refused>) {
    let mut refused = Vec::new();
    let opts = RecoverOptions { vmm, ..Default::default() };
    let mut ready = |r: &Recovery, child: Option<&mut std::process::Child>| inside(r, child.expect("a QEMU guest"));
    let r = pbr_reboot::recover(candidates, &opts, &mut |x| refused.push(x.clone()), &mut ready).unwrap();
    (r, refused)
}

#[test]
fn data_changes_guest_writes_clock_and_rng() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new(512);
    let (kernel, daemons) = capture(&lab);
    let both = [kernel.clone(), daemons.clone()];

    // The host changes a file on the data disk, which `daemons` does not
    // hold mounted: it is restored and serves the new content.
    Lab::edit(&lab.data, "/www/index.html", "changed on the host\n");
    let mut first_random = String::new();
    let (r, refused) = recover(&both, &mut |r, child| {
        assert!(r.resumed.as_ref().is_some_and(|x| x.reseeded), "{:?}", r.resumed);
        assert_eq!(lab.get().1, "changed on the host\n");
        let offset = lab.clock_offset();
        assert!(offset.abs() < 1.0, "guest clock off by {offset} s after recovery");
        first_random = lab.urandom();
        lab.write_and_power_off(child);
    });
    assert_eq!(r.chosen.as_ref(), Some(&daemons), "refused: {refused:?}");
    // The clock was behind by the candidate's age, and was stepped.
    assert!(r.resumed.as_ref().unwrap().clock_step_ns > 1_000_000_000);
    lab.fsck_clean();

    // Again from the same candidate: another random state.
    let (r, _) = recover(&both, &mut |_, child| {
        let again = lab.urandom();
        assert_ne!(again, first_random, "two recoveries of one candidate gave the same /dev/urandom output");
        assert!(lab.clock_offset().abs() < 1.0);
        lab.write_and_power_off(child);
    });
    assert_eq!(r.chosen.as_ref(), Some(&daemons));
    lab.fsck_clean();

    // The guest writes to the root, which `daemons` holds mounted, and
    // crashes: `daemons` is refused, `kernel` restored, the boot goes on.
    recover(&both, &mut |_, child| {
        let (_, status) =
            lab.shell("mount -o remount,rw / && echo guest > /root/written && sync && mount -o remount,ro /");
        assert_eq!(status, 0);
        child.kill().unwrap();
        child.wait().unwrap();
    });
    let (r, refused) = recover(&both, &mut |_, child| {
        assert!(lab.get().0.contains("X-Pbr-Site: v1"));
        lab.write_and_power_off(child);
    });
    assert_eq!(r.chosen.as_ref(), Some(&kernel));
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].path, daemons);
    assert!(
        refused[0].reason.starts_with(&format!(
            "disk vda ({}, mounted / ro in the candidate) changed since capture",
            lab.root.display()
        )),
        "{}",
        refused[0].reason
    );
    lab.fsck_clean();
}

#[test]
fn root_changed_on_the_host_goes_back_to_kernel() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    // 1000 MiB, no whole number of Linux's 128 MiB memory sections: the
    // guest's kpageflags and kpagecount run on to 1024 MiB, "no page"
    // past its RAM, and classify all the same.
    let lab = Lab::new(1000);
    let (kernel, daemons) = capture(&lab);
    for c in [&kernel, &daemons] {
        let img = pbr_format::Image::open(c).unwrap();
        assert_eq!(img.metadata_value("classes.source"), Some("kpageflags"), "{}", c.display());
    }
    Lab::edit(&lab.root, "/etc/nginx/pbr-site.conf", "add_header X-Pbr-Site \"v2\" always;\n");
    // `select` judges by the same seals, without restoring.
    let (k, d) = (kernel.to_str().unwrap(), daemons.to_str().unwrap());
    let v: serde_json::Value = serde_json::from_str(&common::pbr_img_ok(&["select", "--json", d, k])).unwrap();
    assert_eq!(v["chosen"], k);
    assert_eq!(v["candidates"][0]["valid"], false);
    assert!(v["candidates"][0]["reason"].as_str().unwrap().contains("disk vda"), "{v}");
    // A file that is no image among the candidates is refused, not fatal.
    let garbage = lab.dir.path().join("garbage.pbr");
    std::fs::write(&garbage, b"not an image").unwrap();
    let (r, refused) = recover(&[daemons.clone(), garbage.clone(), kernel.clone()], &mut |r, child| {
        assert!(r.chosen.is_some());
        let (head, body) = lab.get();
        assert!(head.contains("X-Pbr-Site: v2"), "{head}");
        assert_eq!(body, "served from the data disk\n");
        lab.write_and_power_off(child);
    });
    assert_eq!(r.chosen.as_ref(), Some(&kernel));
    assert_eq!(refused.iter().map(|x| &x.path).collect::<Vec<_>>(), [&garbage, &daemons]);
    assert!(refused[0].reason.starts_with("does not open"), "{}", refused[0].reason);
    assert!(refused[1].reason.contains("disk vda") && refused[1].reason.contains("changed since capture"));
    lab.fsck_clean();
}

/// Recovers from `image` alone and checks the guest: nginx serves, every
/// unit runs (processes whose file pages were refilled keep running), it
/// writes its data disk and powers off, and both disks are clean.
fn recover_serving(lab: &Lab, image: &std::path::Path, vmm: Vmm) -> Recovery {
    let (r, refused) = recover_with(&[image.to_path_buf()], vmm, &mut |_, child| {
        assert_eq!(lab.get().1, "served from the data disk\n");
        let (state, _) = lab.shell("systemctl is-system-running");
        assert_eq!(state.lines().last().unwrap_or(""), "running", "{state}");
        lab.write_and_power_off(child);
    });
    assert_eq!(r.chosen.as_deref(), Some(image), "refused: {refused:?}");
    lab.fsck_clean();
    r
}

/// With QEMU 10: `daemons` trimmed of its page cache refills exactly, and
/// restores streamed and, flat, with its RAM mapped from the image.
#[test]
fn cache_trimmed_candidate_refills_exactly_streamed_and_mapped() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let (qemu, firmware) = common::vm::qemu10();
    let lab = Lab::with_qemu(512, &qemu, &firmware);
    let (kernel, daemons) = capture(&lab);
    let img = pbr_format::Image::open(&daemons).unwrap();
    // Capture kept the agent's page-cache references that equal the disk.
    let note: serde_json::Value = serde_json::from_str(img.metadata_value(pbr_reboot::CACHE_KEY).unwrap()).unwrap();
    let kept = note["kept"].as_u64().unwrap();
    assert!(kept > 1000, "only {kept} cache pages verified: {note}");
    assert_eq!(img.disk_refs().pages.len() as u64, kept);
    let files = &img.disk_refs().files;
    for f in ["usr/sbin/nginx", "systemd/systemd"] {
        assert!(files.iter().any(|x| x.ends_with(f)), "{f} has no cached page among {} files", files.len());
    }

    let trimmed = lab.out().join("daemons-trimmed.pbr");
    let (d, t) = (daemons.to_str().unwrap(), trimmed.to_str().unwrap());
    let r: serde_json::Value =
        serde_json::from_str(&common::pbr_img_ok(&["trim", d, "-o", t, "--drop", "free,zero,cache", "--json"]))
            .unwrap();
    let dropped = r["cache_pages"].as_u64().unwrap();
    assert!(dropped > 1000, "{r}");
    let small = pbr_format::Image::open(&trimmed).unwrap();
    assert!(small.file_len() < img.file_len(), "{} >= {}", small.file_len(), img.file_len());

    // Every page of the trimmed candidate, refilled, equals the untrimmed
    // candidate's page of the same moment.
    let refill = pbr_tools::refill::Refill::load(&small).unwrap().expect("pages to refill");
    assert_eq!(refill.len() as u64, dropped);
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut compared = 0;
    for e in img.extents() {
        for g in e.gfns() {
            let want = img.read_page(g, &mut a).unwrap();
            let got = match refill.page(g) {
                Some(p) => p,
                None => small.read_page(g, &mut b).unwrap(),
            };
            assert!(want == got, "page {g:#x} differs after refill");
            compared += 1;
        }
    }
    assert_eq!(compared, img.page_count());

    let r = recover_serving(&lab, &trimmed, Vmm::Spawn);
    assert!(!r.ram_mapped);
    assert_eq!(r.refilled_pages, dropped);

    // Flat: QEMU maps the RAM from the image, and the refilled pages,
    // which differ from the image's zeros, come in the stream.
    let flat = lab.out().join("daemons-flat.pbr");
    common::pbr_img_ok(&["unpack", "--flat", t, "-o", flat.to_str().unwrap()]);
    let before = blake3::hash(&std::fs::read(&flat).unwrap());
    let r = recover_serving(&lab, &flat, Vmm::Spawn);
    assert!(r.ram_mapped, "QEMU 10 maps a flat candidate's RAM");
    assert_eq!(r.refilled_pages, dropped);
    // A standby QEMU mapped the flat candidate's RAM and had its stream,
    // refilled pages included, ready before the decision.
    let r = recover_serving(&lab, &flat, Vmm::Standby);
    assert_eq!((r.vmm, r.ram_mapped), (Vmm::Standby, true), "{r:?}");
    assert_eq!(r.refilled_pages, dropped);
    assert_eq!(r.refill, std::time::Duration::ZERO, "the pages were read before the decision");
    assert_eq!(blake3::hash(&std::fs::read(&flat).unwrap()), before, "the flat image changed");

    // QEMU 7.2 may not load what QEMU 10 saved: both candidates are
    // refused for it, the machine boots from scratch, and `recover --json`
    // lists both refusals with their reason.
    let (k, d) = (kernel.to_str().unwrap(), daemons.to_str().unwrap());
    let out = common::pbr_img(&["recover", "--json", "--qemu", "qemu-system-x86_64", d, k]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chosen"], serde_json::Value::Null, "{v}");
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{v}");
    for x in refused {
        assert!(x["reason"].as_str().unwrap().contains("which is older"), "{x}");
    }
}
