//! Real QEMU end to end: a counting guest runs, is saved with QEMU's own
//! migration, converted, checked page by page, exported, and restored into
//! a fresh QEMU with `-incoming`, where it carries on counting from where it
//! was (not from 1). A second restore from an edited image proves export
//! takes its pages from the image.

use crate::common;

use std::path::Path;

use common::vm::{COUNTER_ADDR, Vm, counter_disk};
use common::{pbr_img_ok, stream_ram};
use pbr_format::{Image, ImageWriter, PageClass, WriterOptions};
use serde_json::json;

fn machine_args(disk: &Path) -> Vec<String> {
    ["-machine", "q35,accel=tcg", "-m", "32", "-smp", "2", "-nodefaults", "-display", "none", "-drive"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("file={},format=raw,if=ide", disk.display())])
        .collect()
}

fn args<'a>(v: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    v.iter().map(String::as_str).chain(extra.iter().copied()).collect()
}

/// Restores `stream` into a fresh QEMU and returns what the guest prints.
fn restore(dir: &Path, name: &str, base: &[String], stream: &Path) -> Vec<u32> {
    let incoming = format!("exec:cat {}", stream.display());
    let mut vm = Vm::start(dir, name, &args(base, &["-incoming", &incoming]));
    vm.wait_migration();
    vm.cmd("cont", json!({}));
    let counts = vm.wait_counts(3);
    vm.quit();
    counts
}

/// A copy of `src` with the counter in guest memory set to `value`.
fn with_counter(src: &Image, dest: &Path, value: u32) {
    let mut w = ImageWriter::create(dest, src.regions(), WriterOptions::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    for e in src.extents() {
        for gfn in e.gfns() {
            let mut page = src.read_in_extent(&e, gfn, &mut buf).unwrap().to_vec();
            if gfn == (COUNTER_ADDR / 4096) as u64 {
                page[COUNTER_ADDR % 4096..COUNTER_ADDR % 4096 + 4].copy_from_slice(&value.to_le_bytes());
            }
            w.write_page(gfn, &page, PageClass::Unknown).unwrap();
        }
    }
    for d in src.devices() {
        w.add_device(d).unwrap();
    }
    for (k, v) in src.metadata() {
        w.set_metadata(k, v).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn saved_guest_carries_on_after_convert_export_restore() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("boot.img");
    counter_disk(&disk);
    let base = machine_args(&disk);

    let mut vm = Vm::start(d, "src", &args(&base, &[]));
    vm.wait_counts(5);
    vm.cmd("stop", json!({}));
    let printed = *vm.counts().last().unwrap();
    let saved = d.join("saved.qemu");
    vm.cmd("migrate", json!({"uri": format!("exec:cat > {}", saved.display())}));
    vm.wait_migration();
    vm.quit();

    // Convert and check every page against the stream.
    let image = d.join("saved.pbr");
    pbr_img_ok(&["convert", saved.to_str().unwrap(), "-o", image.to_str().unwrap(), "--phase", "firmware"]);
    pbr_img_ok(&["verify", image.to_str().unwrap()]);
    let img = Image::open(&image).unwrap();
    let stream = std::fs::read(&saved).unwrap();
    let ram = stream_ram(&stream);
    let mut buf = vec![0u8; 4096];
    for r in img.regions() {
        for i in 0..r.pages(4096) {
            let page = r.source_offset / 4096 + i;
            let got = img.read_page(r.first_gfn(4096) + i, &mut buf).unwrap();
            match ram[r.name.as_ref()].get(&page) {
                Some(Some(data)) => assert_eq!(got, &data[..], "{} page {page}", r.name),
                _ => assert!(got.iter().all(|&b| b == 0)),
            }
        }
    }
    let counter =
        u32::from_le_bytes(img.read_page(0, &mut buf).unwrap()[COUNTER_ADDR..COUNTER_ADDR + 4].try_into().unwrap());
    assert!(counter == printed || counter == printed + 1, "counter {counter} in memory, {printed} printed");

    // Unchanged: export is the same bytes, and the guest carries on.
    let exported = d.join("exported.qemu");
    pbr_img_ok(&["export", "--to", "qemu", image.to_str().unwrap(), "-o", exported.to_str().unwrap()]);
    assert!(std::fs::read(&exported).unwrap() == stream, "export differs from the saved stream");
    let after = restore(d, "restored", &base, &exported);
    assert!(after[0] > printed && after[0] <= counter + 1, "restored guest printed {after:?} after {printed}");
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    // Edited image: the restored guest counts on from the image's value.
    let edited = d.join("edited.pbr");
    with_counter(&img, &edited, 0x5000_0000);
    let edited_stream = d.join("edited.qemu");
    pbr_img_ok(&["export", "--to", "qemu", edited.to_str().unwrap(), "-o", edited_stream.to_str().unwrap()]);
    let after = restore(d, "edited", &base, &edited_stream);
    assert!(after[0] == 0x5000_0001 || after[0] == 0x5000_0000, "{after:?}");
}

#[test]
fn live_migration_with_resent_pages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("boot.img");
    counter_disk(&disk);
    let base = machine_args(&disk);
    let mut vm = Vm::start(d, "live", &args(&base, &[]));
    vm.wait_counts(3);
    // Migrate while the guest runs: the counter page is dirtied and sent
    // again in later iterations; the last copy wins.
    let saved = d.join("live.qemu");
    vm.cmd("migrate-set-parameters", json!({"max-bandwidth": 1_000_000, "downtime-limit": 300}));
    vm.cmd("migrate", json!({"uri": format!("exec:cat > {}", saved.display())}));
    vm.wait_migration();
    vm.quit();
    let image = d.join("live.pbr");
    let out = pbr_img_ok(&["convert", "--json", saved.to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let img = Image::open(&image).unwrap();
    let records = report["page_records"].as_u64().unwrap() + report["zero_records"].as_u64().unwrap();
    assert!(records > img.page_count(), "no page was sent twice ({records} records, {} pages)", img.page_count());
    let stream = std::fs::read(&saved).unwrap();
    let ram = stream_ram(&stream);
    let mut buf = vec![0u8; 4096];
    let last = ram["pc.ram"][&0].clone().unwrap();
    assert_eq!(img.read_page(0, &mut buf).unwrap(), &last[..], "page 0 is not the last copy sent");
    let exported = d.join("live-export.qemu");
    pbr_img_ok(&["export", "--to", "qemu", image.to_str().unwrap(), "-o", exported.to_str().unwrap()]);
    let counter = u32::from_le_bytes(last[COUNTER_ADDR..COUNTER_ADDR + 4].try_into().unwrap());
    let after = restore(d, "live-restored", &base, &exported);
    assert!(after[0] > counter.saturating_sub(2) && after[0] <= counter + 1, "{after:?} after {counter}");
}

/// QEMU 10.0: its streams carry SWITCHOVER_START; its mapped-ram files keep
/// pages at fixed offsets. Both convert, and both restore into QEMU 10.0
/// after export (mapped-ram as a plain stream).
#[test]
fn qemu_10_streams_and_mapped_ram() {
    let (bin, firmware) = common::vm::qemu10();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("boot.img");
    counter_disk(&disk);
    // SeaBIOS 1.16.2 does not boot from AHCI under QEMU 10, so this uses pc.
    let mut base: Vec<String> = firmware;
    base.extend(
        ["-machine", "pc,accel=tcg", "-m", "32", "-nodefaults", "-display", "none", "-drive"]
            .iter()
            .map(|s| s.to_string()),
    );
    base.push(format!("file={},format=raw,if=ide", disk.display()));

    for mapped in [false, true] {
        let tag = if mapped { "mapped" } else { "plain" };
        let mut vm = Vm::start_bin(&bin, d, &format!("q10-{tag}"), &args(&base, &[]));
        vm.wait_counts(3);
        vm.cmd("stop", json!({}));
        let printed = *vm.counts().last().unwrap();
        let saved = d.join(format!("q10-{tag}.qemu"));
        if mapped {
            vm.cmd("migrate-set-capabilities", json!({"capabilities": [{"capability": "mapped-ram", "state": true}]}));
            vm.cmd("migrate", json!({"uri": format!("file:{}", saved.display())}));
        } else {
            vm.cmd("migrate", json!({"uri": format!("exec:cat > {}", saved.display())}));
        }
        vm.wait_migration();
        vm.quit();

        let image = d.join(format!("q10-{tag}.pbr"));
        let out = pbr_img_ok(&["convert", "--json", saved.to_str().unwrap(), "-o", image.to_str().unwrap()]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(report["machine"].as_str().unwrap().starts_with("pc-i440fx-10."), "{report}");
        let img = Image::open(&image).unwrap();
        img.verify().unwrap();
        let mut buf = vec![0u8; 4096];
        let counter =
            u32::from_le_bytes(img.read_page(0, &mut buf).unwrap()[COUNTER_ADDR..COUNTER_ADDR + 4].try_into().unwrap());
        assert!(counter == printed || counter == printed + 1, "{tag}: counter {counter}, printed {printed}");
        assert_eq!(img.metadata_value("qemu.version_at_least"), Some("10.0"));
        let commands: Vec<u32> = img.devices().filter(|b| b.name == "command").map(|b| b.flags).collect();
        if mapped {
            assert_eq!(report["capabilities"], json!(["mapped-ram"]));
            assert!(report["mapped_pages"].as_u64().unwrap() > 0);
        } else {
            assert_eq!(commands, [0x0b], "SWITCHOVER_START");
        }

        let exported = d.join(format!("q10-{tag}-export.qemu"));
        pbr_img_ok(&["export", "--to", "qemu", image.to_str().unwrap(), "-o", exported.to_str().unwrap()]);
        if !mapped {
            assert!(std::fs::read(&exported).unwrap() == std::fs::read(&saved).unwrap());
        }
        let incoming = format!("exec:cat {}", exported.display());
        let mut vm = Vm::start_bin(&bin, d, &format!("q10-{tag}-restored"), &args(&base, &["-incoming", &incoming]));
        vm.wait_migration();
        vm.cmd("cont", json!({}));
        let after = vm.wait_counts(3);
        vm.quit();
        assert!(after[0] > printed && after[0] <= counter + 1, "{tag}: {after:?} after {printed}");
    }
}

/// A machine type up to 2.3 writes no configuration section, no footers and
/// no vmdescription: the device sections are kept whole, and the stream
/// still converts, exports to the same bytes and restores.
#[test]
fn old_machine_type_without_configuration_footers_or_vmdescription() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("boot.img");
    counter_disk(&disk);
    let mut base = machine_args(&disk);
    base[1] = "pc-i440fx-2.2,accel=tcg".into();
    let mut vm = Vm::start(d, "old", &args(&base, &[]));
    vm.wait_counts(3);
    vm.cmd("stop", json!({}));
    let printed = *vm.counts().last().unwrap();
    let saved = d.join("old.qemu");
    vm.cmd("migrate", json!({"uri": format!("exec:cat > {}", saved.display())}));
    vm.wait_migration();
    vm.quit();
    let image = d.join("old.pbr");
    pbr_img_ok(&["convert", saved.to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let img = Image::open(&image).unwrap();
    assert!(img.devices().any(|b| b.name == "device-state"));
    assert!(img.metadata_value("qemu.machine").is_none());
    let exported = d.join("old-export.qemu");
    pbr_img_ok(&["export", "--to", "qemu", image.to_str().unwrap(), "-o", exported.to_str().unwrap()]);
    assert!(std::fs::read(&exported).unwrap() == std::fs::read(&saved).unwrap());
    let after = restore(d, "old-restored", &base, &exported);
    assert!(after[0] > printed && after[0] <= printed + 2, "{after:?} after {printed}");
}
