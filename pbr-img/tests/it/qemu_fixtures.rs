//! The real QEMU streams of a real Linux guest (`scripts/make-fixtures`):
//! converted, every page checked against the stream, exported back byte for
//! byte.

use crate::common;

use common::{fixture_info, fixture_stream, pbr_img_ok, stream_ram};
use pbr_format::{Image, Vcpu};

fn check_fixture(name: &str) {
    let stream_path = fixture_stream(name);
    let info = fixture_info(name);
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join(format!("{name}.pbr"));
    let out = pbr_img_ok(&[
        "convert",
        stream_path.to_str().unwrap(),
        "-o",
        image_path.to_str().unwrap(),
        "--phase",
        info["phase"].as_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // QEMU's own counters: duplicate = ZERO records, normal = PAGE records.
    assert_eq!(report["zero_records"], info["ram_zero_pages"], "{name}");
    assert_eq!(report["page_records"], info["ram_normal_pages"], "{name}");
    assert_eq!(report["machine"], info["machine_resolved"]);

    let img = Image::open(&image_path).unwrap();
    img.verify().unwrap();
    assert_eq!(img.phase().unwrap().name, info["phase"].as_str().unwrap());
    assert_eq!(img.metadata_value("qemu.machine"), info["machine_resolved"].as_str());
    assert_eq!(img.metadata_value("qemu.version_at_least"), Some("7.2"));
    let ram_mb = info["memory_mb"].as_u64().unwrap();
    assert_eq!(img.metadata_value("guest.ram_size"), Some((ram_mb << 20).to_string().as_str()));

    // Every page of every block against an independent reading of the stream.
    let stream = std::fs::read(&stream_path).unwrap();
    let ram = stream_ram(&stream);
    let mut buf = vec![0u8; 4096];
    let mut checked = 0;
    for region in img.regions() {
        let block = &ram[region.name.as_ref()];
        for i in 0..region.pages(4096) {
            let page = region.source_offset / 4096 + i;
            let got = img.read_page(region.first_gfn(4096) + i, &mut buf).unwrap();
            match block.get(&page) {
                Some(Some(data)) => assert_eq!(got, &data[..], "{name} {} page {page}", region.name),
                _ => assert!(got.iter().all(|&b| b == 0), "{name} {} page {page} should be zero", region.name),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, img.page_count());
    // pc.ram sits at its guest-physical addresses: page n at gfn n.
    let pc = img.regions().iter().find(|r| r.name == "pc.ram").unwrap();
    assert_eq!((pc.base, pc.length, pc.synthetic), (0, ram_mb << 20, false));

    // Index and metadata stay under 0.25% of guest memory.
    let index: u64 = img
        .sections()
        .iter()
        .filter(|s| {
            !matches!(
                s.kind,
                Some(
                    pbr_format::SectionKind::PageData
                        | pbr_format::SectionKind::Devices
                        | pbr_format::SectionKind::Vcpus
                )
            )
        })
        .map(|s| s.length)
        .sum();
    assert!((index as f64) < 0.0025 * img.guest_size() as f64, "{name}: index+metadata {index} bytes");

    // The vCPU: a 64-bit Linux guest, paging on, in long mode. The save
    // stops it wherever it is: in the kernel (ring 0, a kernel-half
    // address) or in a 64-bit busybox (ring 3, a user-half address).
    let Vcpu::X86_64(v) = &img.vcpus()[0] else { panic!("not x86") };
    let rip = v.regs.rip.get();
    let ring = if rip >= 0xffff_ffff_8000_0000 {
        0
    } else {
        assert!(rip < 0x0000_8000_0000_0000, "{name}: rip {rip:#x} is not canonical");
        3
    };
    assert_eq!(v.sregs.cr0.get() & 0x8000_0001, 0x8000_0001);
    assert_eq!(v.sregs.efer.get() & 0x500, 0x500, "LME|LMA");
    assert_eq!((v.sregs.cs.l, v.sregs.cs.present, v.sregs.cs.dpl), (1, 1, ring), "{name}: cs at rip {rip:#x}");
    assert_eq!(v.sregs.apic_base.get() & 0xffff_f000, 0xfee0_0000);
    assert!(v.lapic.is_some() && v.msr(0xc000_0082).is_some_and(|lstar| lstar >= 0xffff_ffff_8000_0000));

    // Export gives back the same bytes.
    let back = dir.path().join("back.qemu");
    pbr_img_ok(&["export", "--to", "qemu", image_path.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == stream, "{name}: exported stream differs from the original");
}

#[test]
fn q35_kernel() {
    check_fixture("q35-128m-kernel");
}

#[test]
fn q35_daemons() {
    check_fixture("q35-128m-daemons");
}

#[test]
fn pc_daemons() {
    check_fixture("pc-128m-daemons");
}

#[test]
fn convert_from_a_pipe() {
    let stream_path = fixture_stream("q35-128m-kernel");
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("f.pbr");
    let from_pipe = dir.path().join("p.pbr");
    pbr_img_ok(&["convert", stream_path.to_str().unwrap(), "-o", from_file.to_str().unwrap()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["convert", "-", "-o", from_pipe.to_str().unwrap()])
        .stdin(std::fs::File::open(&stream_path).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (Image::open(&from_file).unwrap(), Image::open(&from_pipe).unwrap());
    assert_eq!(a.extent_count(), b.extent_count());
    let mut x = vec![0u8; 4096];
    let mut y = vec![0u8; 4096];
    for e in a.extents() {
        for g in e.gfns() {
            assert_eq!(a.read_page(g, &mut x).unwrap(), b.read_page(g, &mut y).unwrap());
        }
    }
}

#[test]
fn bundled_counter_stream() {
    let stream = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("c.pbr");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", image.to_str().unwrap(), "--phase", "firmware"]);
    let img = Image::open(&image).unwrap();
    img.verify().unwrap();
    let mut buf = vec![0u8; 4096];
    let page = img.read_page(0, &mut buf).unwrap();
    assert_eq!(u32::from_le_bytes(page[0x500..0x504].try_into().unwrap()), 0x49);
    let Vcpu::X86_64(v) = &img.vcpus()[0] else { panic!() };
    // Real mode, running the boot sector's delay loop at 0x7c00.
    assert_eq!(v.sregs.cr0.get() & 1, 0);
    assert!((0x7c00..0x7c39).contains(&v.regs.rip.get()), "rip {:#x}", v.regs.rip.get());
    let back = dir.path().join("back.qemu");
    pbr_img_ok(&["export", "--to", "qemu", image.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(std::fs::read(back).unwrap() == std::fs::read(stream).unwrap());
}

/// `inspect --json --devices` of the real guest: every general register of
/// vCPU0, and the cpu section's fields decoded through the vmdescription
/// agree with them; `inspect --vcpus` prints them; `extract` gives a
/// section and a page back.
#[test]
fn inspect_shows_the_machine_state() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("d.pbr");
    let stream = fixture_stream("q35-128m-daemons");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let i = image.to_str().unwrap();
    let m: serde_json::Value = serde_json::from_str(&pbr_img_ok(&["inspect", "--json", "--devices", i])).unwrap();
    let regs = &m["vcpus"][0]["regs"];
    let cpu = m["devices"]["sections"].as_array().unwrap().iter().find(|s| s["name"] == "cpu").unwrap();
    let field =
        |name: &str| cpu["fields"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["value"].clone();
    let gprs = field("env.regs");
    // QEMU keeps them in the instruction set's register numbering.
    let qemu_order =
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    for (k, name) in qemu_order.iter().enumerate() {
        assert_eq!(regs[*name], gprs[k], "{name}");
    }
    assert_eq!(regs["rip"], field("env.eip"));
    // Kernel half in ring 0, user half in ring 3: the save stops the vCPU
    // wherever it was.
    let rip = u64::from_str_radix(regs["rip"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let v = &m["vcpus"][0];
    let ring = if rip >= 0xffff_ffff_8000_0000 { 0 } else { 3 };
    assert!(ring == 0 || rip < 0x0000_8000_0000_0000, "rip {rip:#x}");
    assert_eq!(v["segments"]["cs"]["dpl"], ring, "{}", v["segments"]["cs"]);
    assert_eq!(v["segments"]["cs"]["l"], 1);
    assert_eq!(v["lapic"]["id"], 0);
    assert!(v["msrs"].as_array().unwrap().iter().any(|x| x["name"] == "IA32_LSTAR"));
    let serial = m["devices"]["sections"].as_array().unwrap().iter().find(|s| s["name"] == "serial").unwrap();
    assert!(serial["fields"].as_array().is_some_and(|f| !f.is_empty()));

    // QEMU under TCG leaves XSTATE_BV 0 over live SSE state (xcr0 0x21f):
    // the components are derived from the area.
    assert_eq!((&v["xcr0"], &v["xsave"]["xstate_bv"]), (&serde_json::json!("0x21f"), &serde_json::json!("0x0")));
    assert_eq!(v["xsave"]["derived"], true);
    assert!(v["xsave"]["components"].as_array().unwrap().contains(&serde_json::json!("sse")), "{}", v["xsave"]);

    let text = pbr_img_ok(&["inspect", "--vcpus", i]);
    assert!(text.contains(&format!("rip={}", regs["rip"].as_str().unwrap())), "{text}");
    assert!(text.contains("sse (XSTATE_BV recorded 0; derived from the area)"), "{text}");
    assert!(text.contains("gdt base=") && text.contains("lapic id=0") && text.contains("IA32_LSTAR"), "{text}");

    // extract: the serial section blob, and two pages equal to the image's.
    let blob = dir.path().join("serial.bin");
    pbr_img_ok(&["extract", i, "--device", "serial.0", "-o", blob.to_str().unwrap()]);
    let img = Image::open(&image).unwrap();
    let want = img.devices().find(|d| d.name == "serial" && d.instance == 0).unwrap();
    assert_eq!(std::fs::read(&blob).unwrap(), &want.data[..]);
    let pages = dir.path().join("pages.bin");
    pbr_img_ok(&["extract", i, "--pages", "0x1000+2", "-o", pages.to_str().unwrap()]);
    let got = std::fs::read(&pages).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(&got[..4096], img.read_page(0x1000, &mut buf).unwrap());
    assert_eq!(&got[4096..], img.read_page(0x1001, &mut buf).unwrap());
    let out = common::pbr_img(&["extract", i, "--device", "ram", "-o", blob.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name one as #K"));
}
