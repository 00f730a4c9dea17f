//! The phase VMM example, run as a test on real /dev/kvm: images written at
//! each phase restart a guest that carries on counting from that phase.

#[path = "../phase_vmm.rs"]
#[allow(dead_code)]
mod vmm;

/// Whether KVM tests can run: with `PBR_REQUIRE_KVM=1` (set by `.ci/run`
/// when /dev/kvm exists) a missing KVM fails the test; otherwise it skips,
/// saying so.
fn kvm_available() -> bool {
    match pbr_replay::kvm::KvmAdapter::new() {
        Ok(_) => true,
        Err(e) if std::env::var_os("PBR_REQUIRE_KVM").is_some_and(|v| v == "1") => {
            panic!("PBR_REQUIRE_KVM=1 but KVM is not usable: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: KVM is not usable here ({e}); set PBR_REQUIRE_KVM=1 to make this a failure");
            false
        }
    }
}

#[test]
fn every_phase_image_restarts_where_it_was() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = vmm::boot_and_capture(dir.path());
    assert_eq!(images.len(), 3);
    for (i, (path, at)) in images.iter().enumerate() {
        let img = pbr_format::Image::open(path).unwrap();
        img.verify().unwrap();
        assert_eq!(img.phase().unwrap().name, vmm::PHASES[i].0);
        let (report, next) = vmm::restart(path, 5);
        assert!(report.mapped_bytes > 0 && report.copied_pages == 0, "raw pages are mapped, not copied");
        assert_eq!(next, (at + 1..at + 6).collect::<Vec<_>>(), "phase {} did not carry on from {at}", vmm::PHASES[i].0);
        // Packed (lz4) pages take the copy path and restart the same way.
        let packed = dir.path().join(format!("packed-{i}.pbr"));
        pbr_tools::pack::pack(&img, &packed, &|_| {}).unwrap();
        let (report, next) = vmm::restart(&packed, 5);
        assert!(report.copied_pages > 0 && report.mapped_bytes == 0);
        assert_eq!(next, (at + 1..at + 6).collect::<Vec<_>>());
        // The image file is never written by a restart (MAP_PRIVATE).
        assert!(pbr_format::Image::open(path).unwrap().verify().is_ok());
    }
}

/// `recover` restores the project's own VMM images on /dev/kvm: the latest
/// candidate is chosen, its raw pages are mapped, and the guest's first
/// port write after the restore carries on from the phase it was saved at.
#[test]
fn recover_uses_kvm_for_vmm_images() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let images = vmm::boot_and_capture(dir.path());
    let paths: Vec<_> = images.iter().map(|(p, _)| p.clone()).collect();
    let mut called = false;
    let opts = pbr_reboot::RecoverOptions::default();
    let r = pbr_reboot::recover(&paths, &opts, &mut |_| {}, &mut |_, child| {
        assert!(child.is_none(), "no QEMU for a VMM image");
        called = true;
    })
    .unwrap();
    assert!(called);
    let (last, at) = images.last().unwrap();
    assert_eq!(r.chosen.as_ref(), Some(last));
    assert_eq!(r.adapter, "kvm");
    // The first port write after the restore is the count after `at`.
    let want: Vec<String> = (at + 1).to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(r.signal.ends_with(&want.join(" ")), "{} after {at}", r.signal);
    assert!(r.downtime < std::time::Duration::from_secs(1), "{:?}", r.downtime);
}
