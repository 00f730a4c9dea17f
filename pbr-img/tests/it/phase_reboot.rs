//! Phase-based reboot end to end on a real Linux guest: capture candidates
//! at its boot phases (classified from its own kpageflags, trimmed, with the
//! files each phase read), then recover from the latest valid one; the
//! guest's service answers a client on the host again (through QEMU's user
//! network), sooner than after a cold boot.

use crate::common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use pbr_format::{Image, ImageWriter, PageClass, PageEncoding, Phase, Region, WriterOptions};
use pbr_reboot::guest::GuestSpec;
use pbr_reboot::{CaptureOptions, RecoverOptions, Vmm, capture, cold_boot, recover};

#[test]
fn capture_then_recover_beats_a_cold_boot() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-guest");
    let out = Command::new(script).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut p = text.split_whitespace();
    let (kernel, initrd) = (p.next().unwrap().into(), p.next().unwrap().into());
    let spec = GuestSpec {
        qemu: "qemu-system-x86_64".into(),
        machine: "q35,accel=tcg".into(),
        cpu: "max".into(),
        mem_mb: 256,
        smp: 1,
        kernel,
        initrd,
        append: "console=ttyS0 pbr.data=1 pbr.anon=1 pbr.kpf=1".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let st = Command::new("cp").arg("-a").arg(common::target_dir().join("guest/root")).arg(&root).status().unwrap();
    assert!(st.success());
    let out = dir.path().join("candidates");
    let list =
        capture(&spec, &out, &CaptureOptions { classify: true, root: Some(root.clone()), keep_streams: None }).unwrap();
    assert_eq!(list.iter().map(|c| c.phase.as_str()).collect::<Vec<_>>(), ["kernel", "daemons"]);
    for c in &list {
        let img = Image::open(&c.path).unwrap();
        img.verify().unwrap();
        assert_eq!(img.metadata_value("classes.source"), Some("kpageflags"));
        let free = img.page_counts()[PageClass::Free as usize][PageEncoding::Trimmed as usize];
        assert!(free > 10_000, "free pages trimmed: {free}");
        assert!(c.image_bytes < c.untrimmed_bytes);
        assert!(img.manifest().iter().any(|f| f.path == "etc/pbr/kernel.conf"));
    }
    // A later "candidate" for the same machine (command line and machine
    // type) that opens but cannot be
    // restored (no QEMU state at all), recording the daemons' configuration
    // as it is now: what a prestaged QEMU finds when the latest image is bad.
    let later = dir.path().join("later.pbr");
    let daemons = Image::open(&list[1].path).unwrap();
    let staged = dir.path().join("later-staging.pbr");
    let mut w = ImageWriter::create(&staged, &[Region::ram("pc.ram", 0, 1 << 20)], WriterOptions::default()).unwrap();
    w.set_phase(Phase::named("later", 3)).unwrap();
    w.set_metadata("restore.cmdline", daemons.metadata_value("restore.cmdline").unwrap()).unwrap();
    w.set_metadata("qemu.machine", daemons.metadata_value("qemu.machine").unwrap()).unwrap();
    w.finish().unwrap();
    pbr_tools::manifest::add(&Image::open(&staged).unwrap(), &root, &["etc/pbr/app.conf".into()], &later).unwrap();
    let spec = GuestSpec { append: "console=ttyS0 pbr.data=1 pbr.anon=1".into(), ..spec };
    let paths: Vec<_> = list.iter().map(|c| c.path.clone()).collect();
    for vmm in [Vmm::Spawn, Vmm::Standby, Vmm::Prestaged] {
        let cold = cold_boot(&spec, vmm).unwrap();
        let r = recover(&paths, &at(&root, vmm), &mut |_| {}, &mut |_, _| {}).unwrap();
        assert!(r.chosen.as_ref().unwrap().ends_with("daemons.pbr"), "{:?}", r.chosen);
        assert_eq!(r.vmm, vmm, "the QEMU ready before the decision served the recovery");
        assert!(r.downtime < cold, "{vmm:?}: recovery {:?} is not shorter than a cold boot {cold:?}", r.downtime);
        assert!(r.downtime >= r.select + r.restore);
        assert!(r.signal.starts_with("HTTP/1.1 200 OK on the host's port"), "{}", r.signal);
    }
    // A configuration only the daemons read changes: recover from kernel
    // (the standby QEMU serves it: both candidates record one machine; the
    // prestaged one holds daemons, so a new QEMU is started), and its
    // service answers once the daemons started again.
    std::fs::write(root.join("etc/pbr/app.conf"), "port=9090\n").unwrap();
    for (vmm, used) in [(Vmm::Spawn, Vmm::Spawn), (Vmm::Standby, Vmm::Standby), (Vmm::Prestaged, Vmm::Spawn)] {
        let r = recover(&paths, &at(&root, vmm), &mut |_| {}, &mut |_, _| {}).unwrap();
        assert!(r.chosen.as_ref().unwrap().ends_with("kernel.pbr"), "{vmm:?}: {:?}", r.chosen);
        assert_eq!(r.vmm, used, "{vmm:?}");
        assert!(r.signal.contains("200 OK"), "{}", r.signal);
    }
    // The later image is invalid now too, and could not be prestaged: the
    // QEMU prepared for it stays a plain standby, which serves kernel.
    let mut with_later = paths.clone();
    with_later.push(later);
    let r = recover(&with_later, &at(&root, Vmm::Prestaged), &mut |_| {}, &mut |_, _| {}).unwrap();
    assert!(r.chosen.as_ref().unwrap().ends_with("kernel.pbr"), "{:?}", r.chosen);
    assert_eq!(r.vmm, Vmm::Standby);
}

/// Linux pads `/proc/kpageflags` to the end of its 128 MiB memory section:
/// a 160 MiB guest's dump covers 65536 page frames, the 24576 past its RAM
/// "no page". `capture` classifies such a guest, and so does `classify`
/// from the dump it kept.
#[test]
fn a_guest_of_160_mib_classifies_from_its_padded_kpageflags() {
    let (kernel, initrd) = common::guest();
    let dir = tempfile::tempdir().unwrap();
    let (streams, out) = (dir.path().join("streams"), dir.path().join("candidates"));
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    common::pbr_img_ok(&[
        "capture",
        "--kernel",
        &p(&kernel),
        "--initrd",
        &p(&initrd),
        "--append",
        "console=ttyS0 pbr.data=1 pbr.anon=1 pbr.kpf=1",
        "--mem",
        "160",
        "--machine",
        "q35,accel=tcg",
        "--keep-streams",
        &p(&streams),
        "-o",
        &p(&out),
    ]);
    let frames = 160 << 8;
    for phase in ["kernel", "daemons"] {
        let dump = streams.join(format!("{phase}.kpageflags.gz"));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&dump).unwrap()).read_to_end(&mut raw).unwrap();
        let words: Vec<u64> = raw.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect();
        assert_eq!(words.len(), 65536, "{phase}: the dump runs to the end of the memory section");
        assert!(words[frames..].iter().all(|&f| f == 1 << 20), "{phase}: the padding is no-page frames");

        let img = Image::open(out.join(format!("{phase}.pbr"))).unwrap();
        assert_eq!(img.metadata_value("classes.source"), Some("kpageflags"));
        let free = img.page_counts()[PageClass::Free as usize][PageEncoding::Trimmed as usize];
        assert!(free > 10_000, "{phase}: free pages trimmed: {free}");

        // The CLI, from the stream and the dump `capture` kept.
        let converted = dir.path().join(format!("{phase}-raw.pbr"));
        let classified = dir.path().join(format!("{phase}-classified.pbr"));
        common::pbr_img_ok(&["convert", &p(&streams.join(format!("{phase}.qemu"))), "-o", &p(&converted)]);
        let text = common::pbr_img_ok(&[
            "classify",
            &p(&converted),
            "--kpageflags",
            &p(&dump),
            "-o",
            &p(&classified),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["input_pages"], frames, "{text}");
    }
}

/// Recovery against `root` with QEMU started the way `vmm` says.
fn at(root: &std::path::Path, vmm: Vmm) -> RecoverOptions<'_> {
    RecoverOptions { root: Some(root), qemu: Some("qemu-system-x86_64"), vmm, served: &[] }
}
