//! `xl save` files: import and export, checked by Xen's own stream
//! verifier. The files are built by `common::xl` the way Xen's savers write
//! them, with real Linux guest memory (the RAM of the QEMU fixtures that `scripts/make-fixtures` makes) as
//! page content; each is accepted by `verify-stream-v2` before it is
//! converted, and every file `export --to xl` writes is checked again.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::xl::{self, Spec, xen_verify};
use common::{fixture_stream, pbr_img, pbr_img_ok, stream_ram};
use pbr_format::{DeviceOrigin, Image, PageClass, PageEncoding, Vcpu};

/// Pages of the real Linux guest (128 MiB at `daemons`, then 128 MiB at
/// `kernel`), zero records as `None`.
fn lab_pages() -> &'static Vec<Option<Vec<u8>>> {
    static PAGES: OnceLock<Vec<Option<Vec<u8>>>> = OnceLock::new();
    PAGES.get_or_init(|| {
        let mut out = Vec::new();
        for name in ["q35-128m-daemons", "q35-128m-kernel"] {
            let stream = std::fs::read(fixture_stream(name)).unwrap();
            let mut ram: HashMap<String, HashMap<u64, Option<Vec<u8>>>> = stream_ram(&stream);
            let mut pc = ram.remove("pc.ram").unwrap();
            let n = pc.keys().max().unwrap() + 1;
            out.extend((0..n).map(|i| pc.remove(&i).flatten()));
        }
        out
    })
}

fn lab_content(pfn: u64) -> Vec<u8> {
    let pages = lab_pages();
    match pages.get((pfn % pages.len() as u64) as usize) {
        Some(Some(p)) => p.clone(),
        _ => vec![0; xl::PAGE],
    }
}

/// The real guest's device state as a QEMU device-state stream, as Xen's
/// device model writes it for EMULATOR_CONTEXT.
fn emulator_state() -> Vec<u8> {
    static STATE: OnceLock<Vec<u8>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("dev.pbr");
            let fixture = fixture_stream("q35-128m-kernel");
            pbr_img_ok(&["convert", fixture.to_str().unwrap(), "-o", img.to_str().unwrap()]);
            let img = Image::open(&img).unwrap();
            let mut s = b"QEVM\0\0\0\x03".to_vec();
            for d in img.devices().filter(|d| d.origin == DeviceOrigin::QEMU_SECTION) {
                s.extend_from_slice(&d.data);
            }
            s.push(0);
            s
        })
        .clone()
}

fn no_resend(_: usize, _: u64) -> Vec<u8> {
    unreachable!()
}

/// A guest of the real Linux memory, saved as Xen's saver does.
fn lab(hvm: bool, version: u32, pages: u64, vcpus: u32) -> Spec<'static> {
    Spec {
        hvm,
        version,
        pages,
        vcpus,
        content: &lab_content,
        emulator: None,
        checkpoints: Vec::new(),
        resend: &no_resend,
        batch: 1024,
    }
}

struct Built {
    _dir: tempfile::TempDir,
    xl: PathBuf,
    pbr: PathBuf,
}

/// Builds a file, has Xen's verifier accept it, converts it.
fn build_and_convert(spec: &Spec<'_>) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let xl = dir.path().join("guest.xl");
    xl::build(&xl, spec);
    if spec.checkpoints.is_empty() {
        xen_verify(&xl).unwrap_or_else(|e| panic!("Xen's verifier refuses the built file: {e}"));
    }
    let pbr = dir.path().join("guest.pbr");
    pbr_img_ok(&["convert", xl.to_str().unwrap(), "-o", pbr.to_str().unwrap(), "--phase", "kernel"]);
    Built { _dir: dir, xl, pbr }
}

fn export_xl(img: &Path, out: &Path) {
    pbr_img_ok(&["export", "--to", "xl", img.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    xen_verify(out).unwrap_or_else(|e| panic!("Xen's verifier refuses the exported file: {e}"));
}

fn x86(img: &Image) -> Vec<&pbr_format::X86Vcpu> {
    img.vcpus()
        .iter()
        .map(|v| match v {
            Vcpu::X86_64(x) => &**x,
            Vcpu::Other { .. } => panic!("not x86"),
        })
        .collect()
}

/// Every page of the image against the spec, and the layout.
fn check_pages(img: &Image, spec: &Spec<'_>) {
    let mut buf = vec![0u8; xl::PAGE];
    let entries = xl::entries(spec);
    let mut data = 0;
    for &(pfn, t) in &entries {
        match t {
            xl::XTAB => assert!(img.extent_of(pfn).is_err(), "hole {pfn:#x} is in the image"),
            xl::XALLOC => assert_eq!(img.extent_of(pfn).unwrap().encoding, PageEncoding::Zero),
            _ => {
                data += 1;
                assert_eq!(img.read_page(pfn, &mut buf).unwrap(), &(spec.content)(pfn)[..], "page {pfn:#x}");
                if t != xl::NOTAB {
                    assert_eq!(img.extent_of(pfn).unwrap().class, PageClass::Kernel, "page table {pfn:#x}");
                }
            }
        }
    }
    let populated = entries.iter().filter(|e| e.1 != xl::XTAB).count() as u64;
    assert_eq!(img.page_count(), populated);
    assert!(data > 0);
}

#[test]
fn hvm_v3_converts_and_exports_byte_identical() {
    let spec = Spec { emulator: Some(emulator_state()), ..lab(true, 3, 65536, 4) };
    let b = build_and_convert(&spec);
    let img = Image::open(&b.pbr).unwrap();
    img.verify().unwrap();
    check_pages(&img, &spec);
    // The VGA hole splits low RAM; the special pages are their own region.
    let bases: Vec<u64> = img.regions().iter().map(|r| r.base / 4096).collect();
    assert_eq!(bases, [0, 0xc0, 0xfeff8]);
    assert_eq!(img.metadata_value("source.format"), Some("xl"));
    assert_eq!(img.metadata_value("xen.guest_type"), Some("hvm"));
    assert_eq!(img.metadata_value("xen.libxc_version"), Some("3"));
    assert_eq!(img.metadata_value("xen.version"), Some("4.17"));
    assert!(img.metadata_value("xl.config").unwrap().contains("\"name\":\"lab-hvm\""));
    // vCPUs: Xen's packed segment attributes and the LAPIC.
    let v = x86(&img);
    assert_eq!(v.len(), 4);
    for (i, v) in v.iter().enumerate() {
        let c = xl::CpuSpec::new(i as u32);
        assert_eq!((v.regs.rip.get(), v.regs.gpr[0].get(), v.regs.gpr[6].get()), (c.rip, c.rax, c.rsp));
        assert_eq!(v.regs.gpr[7].get(), 0xbb, "rbp");
        assert_eq!((v.sregs.cr0.get(), v.sregs.cr3.get(), v.sregs.efer.get()), (0x8005_0033, c.cr3, 0xd01));
        let cs = v.sregs.cs;
        assert_eq!((cs.selector.get(), cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g), (0x10, 0xb, 1, 1, 1, 0, 1));
        assert_eq!((v.sregs.tr.type_, v.sregs.tr.s, v.sregs.tr.limit.get()), (0xb, 0, 0x4087));
        assert_eq!(v.sregs.fs.unusable, 1);
        assert_eq!((v.sregs.gdt.limit.get(), v.sregs.idt.base.get()), (0x7f, 0xffff_fe00_0000_0000));
        assert_eq!(v.sregs.apic_base.get() & 0xffff_f000, 0xfee0_0000);
        assert_eq!(v.sregs.cr8.get(), 2, "TPR 0x20");
        let lapic = v.lapic.as_ref().unwrap();
        assert_eq!(u32::from_le_bytes(lapic[0x20..0x24].try_into().unwrap()), c.apic_id << 24);
        assert_eq!(v.tsc, Some(c.tsc));
        assert_eq!(v.tsc_khz, 2_400_000);
        assert_eq!(v.msr(0xc000_0082), Some(0xffff_ffff_8200_0080), "LSTAR");
        assert_eq!(v.msr(0x277), Some(0x0007_0406_0007_0406), "PAT from MTRR");
        assert_eq!(v.msr(0x48), Some(1), "SPEC_CTRL from CPU_MSR");
        assert_eq!(v.xcr0, 3);
        assert_eq!(u64::from_le_bytes(v.xsave[160..168].try_into().unwrap()), 0xabcd_0000 + i as u64);
    }
    // Device state: HVM entries as blobs, the device model's state whole.
    let devs: Vec<_> = img.devices().collect();
    assert!(devs.iter().any(|d| d.origin == DeviceOrigin::XEN_HVM && d.name == "IOAPIC"));
    assert_eq!(devs.iter().filter(|d| d.origin == DeviceOrigin::XEN_HVM && d.name == "CPU").count(), 4);
    let ec = devs.iter().find(|d| d.name == "emulator-context").unwrap();
    assert_eq!(&ec.data[8..], &emulator_state()[..]);
    // inspect names the emulator context's QEMU sections.
    let js: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["inspect", "--json", b.pbr.to_str().unwrap()])).unwrap();
    let sections = js["xen"]["emulator_context"]["sections"].as_array().unwrap();
    assert!(sections.iter().any(|s| s == "cpu"), "{sections:?}");
    // Back out: byte for byte, and Xen's verifier accepts it.
    let back = b.xl.with_extension("back.xl");
    export_xl(&b.pbr, &back);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&b.xl).unwrap(), "export differs from the original");
    // From a pipe: the same image.
    let piped = b.pbr.with_extension("pipe.pbr");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["convert", "-", "-o", piped.to_str().unwrap(), "--phase", "kernel"])
        .stdin(std::fs::File::open(&b.xl).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = Image::open(&piped).unwrap();
    assert_eq!(p.content_hash().unwrap(), img.content_hash().unwrap());
}

/// A v2 stream (Xen 4.6-4.13) whose PAGE_DATA records hold 2048 pages,
/// more than Xen's saver puts in one.
#[test]
fn hvm_v2_converts_and_exports_byte_identical() {
    let spec = Spec { batch: 2048, ..lab(true, 2, 16384, 2) };
    let b = build_and_convert(&spec);
    let img = Image::open(&b.pbr).unwrap();
    check_pages(&img, &spec);
    assert_eq!(img.metadata_value("xen.libxc_version"), Some("2"));
    let js: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["inspect", "--json", b.pbr.to_str().unwrap()])).unwrap();
    assert_eq!(js["xen"]["page_data_records"], 9);
    assert_eq!(x86(&img).len(), 2);
    let back = b.xl.with_extension("back.xl");
    export_xl(&b.pbr, &back);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&b.xl).unwrap());
}

#[test]
fn pv_v3_and_v2_convert_and_export_byte_identical() {
    for version in [3, 2] {
        let spec = Spec {
            hvm: false,
            version,
            pages: 32768,
            vcpus: 3,
            content: &lab_content,
            emulator: None,
            checkpoints: Vec::new(),
            resend: &no_resend,
            batch: 1024,
        };
        let b = build_and_convert(&spec);
        let img = Image::open(&b.pbr).unwrap();
        img.verify().unwrap();
        check_pages(&img, &spec);
        assert_eq!(img.metadata_value("xen.guest_type"), Some("pv"));
        let v = x86(&img);
        assert_eq!(v.len(), 3);
        for (i, v) in v.iter().enumerate() {
            let c = xl::CpuSpec::new(i as u32);
            assert_eq!((v.regs.rip.get(), v.regs.gpr[0].get(), v.regs.gpr[6].get()), (c.rip, c.rax, c.rsp));
            assert_eq!(v.sregs.cr3.get(), c.cr3);
            assert_eq!(v.msr(0x48), Some(1));
            assert_eq!((v.msr(0xc000_0101), v.msr(0xc000_0102)), (Some(c.gs_base_kernel), Some(c.gs_base_user)));
            assert_eq!(v.xcr0, 3);
        }
        // inspect --json shows vCPU0's registers, as the saver wrote them.
        let m: serde_json::Value =
            serde_json::from_str(&pbr_img_ok(&["inspect", "--json", b.pbr.to_str().unwrap()])).unwrap();
        let c = xl::CpuSpec::new(0);
        let regs = &m["vcpus"][0]["regs"];
        assert_eq!(regs["rip"], format!("{:#x}", c.rip));
        assert_eq!(regs["rax"], format!("{:#x}", c.rax));
        assert_eq!(regs["rsp"], format!("{:#x}", c.rsp));
        assert_eq!(m["vcpus"][0]["cr3"], format!("{:#x}", c.cr3));
        let text = pbr_img_ok(&["inspect", "--vcpus", b.pbr.to_str().unwrap()]);
        assert!(text.contains(&format!("rip={:#x}", c.rip)) && text.contains("IA32_SPEC_CTRL"), "{text}");
        let names: Vec<String> = img.devices().map(|d| d.name.into_owned()).collect();
        for n in ["x86-pv-info", "x86-pv-p2m-frames", "shared-info", "x86-pv-vcpu-basic", "x86-pv-vcpu-extended"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let back = b.xl.with_extension("back.xl");
        export_xl(&b.pbr, &back);
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&b.xl).unwrap(), "v{version}");
    }
}

/// A saved PV vCPU is in its kernel (spec/xen.md): `gs_base_kernel` is
/// IA32_GS_BASE and the GS base, `gs_base_user` IA32_KERNEL_GS_BASE; the
/// export gives the saved context back unchanged. Needs no fixture.
#[test]
fn pv_gs_bases_are_the_kernel_s() {
    let content = |pfn: u64| vec![pfn as u8; xl::PAGE];
    for version in [3, 2] {
        let spec = Spec { hvm: false, version, pages: 64, vcpus: 2, content: &content, ..lab(false, version, 64, 2) };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pv.xl");
        xl::build(&file, &spec);
        let pbr = dir.path().join("pv.pbr");
        pbr_img_ok(&["convert", file.to_str().unwrap(), "-o", pbr.to_str().unwrap()]);
        let img = Image::open(&pbr).unwrap();
        for (i, v) in x86(&img).iter().enumerate() {
            let c = xl::CpuSpec::new(i as u32);
            assert_eq!(v.msr(0xc000_0100), Some(c.fs_base), "v{version} vcpu{i}");
            assert_eq!(v.msr(0xc000_0101), Some(c.gs_base_kernel), "v{version} vcpu{i}");
            assert_eq!(v.msr(0xc000_0102), Some(c.gs_base_user), "v{version} vcpu{i}");
            assert_eq!((v.sregs.fs.base.get(), v.sregs.gs.base.get()), (c.fs_base, c.gs_base_kernel));
        }
        // inspect --vcpus: `msr INDEX NAME VALUE` lines, vCPU0's first.
        let text = pbr_img_ok(&["inspect", "--vcpus", pbr.to_str().unwrap()]);
        let msr = |name: &str| {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|w| w.len() == 4 && w[0] == "msr" && w[2] == name)
                .map(|w| w[3].to_owned())
        };
        let c = xl::CpuSpec::new(0);
        assert_eq!(msr("IA32_GS_BASE"), Some(format!("{:#x}", c.gs_base_kernel)), "{text}");
        assert_eq!(msr("IA32_KERNEL_GS_BASE"), Some(format!("{:#x}", c.gs_base_user)), "{text}");
        // A PV context has no TSC.
        assert!(text.contains("tsc: not recorded") && !text.contains("tsc=null"), "{text}");
        let back = dir.path().join("back.xl");
        pbr_img_ok(&["export", "--to", "xl", pbr.to_str().unwrap(), "-o", back.to_str().unwrap()]);
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&file).unwrap(), "v{version}");
    }
}

/// An image edited with pbr-format (a page, a register) exports to a file
/// Xen accepts that carries the edit; a trimmed image too.
#[test]
fn edited_and_trimmed_images_export_to_valid_files() {
    let spec = Spec { emulator: Some(emulator_state()), ..lab(true, 3, 8192, 2) };
    let b = build_and_convert(&spec);
    let src = Image::open(&b.pbr).unwrap();
    let edited = b.pbr.with_extension("edited.pbr");
    let opts = pbr_tools::rewrite::options(&src, PageEncoding::Zero);
    let mut w = pbr_format::ImageWriter::create(&edited, src.regions(), opts).unwrap();
    let mut buf = vec![0u8; 4096];
    for e in src.extents() {
        for gfn in e.gfns() {
            pbr_tools::rewrite::copy_page(&src, &e, gfn, &mut w, e.class, &mut buf).unwrap();
        }
    }
    w.write_page(0x1234, &[0xee; 4096], PageClass::Unknown).unwrap();
    for v in src.vcpus() {
        let mut v = v.clone();
        if let Vcpu::X86_64(x) = &mut v
            && x.id == 1
        {
            x.regs.rip = zerocopy::little_endian::U64::new(0xffff_ffff_8123_4567);
        }
        w.add_vcpu(v).unwrap();
    }
    for d in src.devices() {
        w.add_device(d).unwrap();
    }
    for (k, v) in src.metadata() {
        w.set_metadata(k, v).unwrap();
    }
    w.finish().unwrap();
    let out = b.xl.with_extension("edited.xl");
    export_xl(&edited, &out);
    let again = b.pbr.with_extension("again.pbr");
    pbr_img_ok(&["convert", out.to_str().unwrap(), "-o", again.to_str().unwrap()]);
    let again = Image::open(&again).unwrap();
    assert_eq!(again.read_page(0x1234, &mut buf).unwrap(), &[0xee; 4096][..]);
    let v = x86(&again);
    assert_eq!(v[1].regs.rip.get(), 0xffff_ffff_8123_4567);
    assert_eq!(v[0].regs.rip.get(), xl::CpuSpec::new(0).rip);
    // Trim (zero pages dropped) and export: still a valid file.
    let trimmed = b.pbr.with_extension("trim.pbr");
    pbr_img_ok(&["trim", b.pbr.to_str().unwrap(), "-o", trimmed.to_str().unwrap(), "--drop", "zero"]);
    export_xl(&trimmed, &b.xl.with_extension("trim.xl"));
    // Not from xl: refused with one line.
    let out = pbr_img(&["export", "--to", "xl", "../testdata/v1.0/sample.pbr", "-o", "/tmp/never.xl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not from an xl save file"));
}

/// A Remus-style checkpointed stream: the last checkpoint wins, or each
/// becomes its own image.
#[test]
fn checkpointed_streams() {
    let resend = |k: usize, pfn: u64| vec![(k as u8 + 1) ^ (pfn as u8); xl::PAGE];
    let spec = Spec {
        emulator: Some(emulator_state()),
        checkpoints: vec![vec![5, 6, 7], vec![6, 0x200]],
        resend: &resend,
        ..lab(true, 3, 4096, 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let xl = dir.path().join("remus.xl");
    xl::build(&xl, &spec);
    let out = dir.path().join("remus.pbr");
    let js =
        pbr_img_ok(&["convert", xl.to_str().unwrap(), "-o", out.to_str().unwrap(), "--checkpoints", "each", "--json"]);
    let js: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(js["checkpoints"], 2);
    let mut buf = vec![0u8; 4096];
    let page = |img: &Image, pfn: u64, buf: &mut Vec<u8>| img.read_page(pfn, buf).unwrap().to_vec();
    let cp1 = Image::open(dir.path().join("remus.cp1.pbr")).unwrap();
    let cp2 = Image::open(dir.path().join("remus.cp2.pbr")).unwrap();
    let last = Image::open(&out).unwrap();
    cp1.verify().unwrap();
    assert_eq!(cp1.metadata_value("xen.checkpoint"), Some("1"));
    // Before checkpoint 1 nothing was resent.
    assert_eq!(page(&cp1, 5, &mut buf), lab_content(5));
    // After it, pages 5..7 carry checkpoint 1's copies; after 2, 6 and 0x200 checkpoint 2's.
    assert_eq!(page(&cp2, 5, &mut buf), resend(0, 5));
    assert_eq!(page(&cp2, 6, &mut buf), resend(0, 6));
    assert_eq!(page(&last, 6, &mut buf), resend(1, 6));
    assert_eq!(page(&last, 0x200, &mut buf), resend(1, 0x200));
    assert_eq!(page(&last, 5, &mut buf), resend(0, 5));
    assert_eq!(page(&last, 9, &mut buf), lab_content(9));
    // Default: one image, the last state.
    let only = dir.path().join("only.pbr");
    pbr_img_ok(&["convert", xl.to_str().unwrap(), "-o", only.to_str().unwrap()]);
    assert_eq!(Image::open(&only).unwrap().content_hash().unwrap(), last.content_hash().unwrap());
    assert!(!dir.path().join("only.cp1.pbr").exists());
}

/// The bundled `testdata/xen` file: Xen's verifier accepts it, the CLI
/// converts it (JSON report), inspects it and exports it back byte for byte.
#[test]
fn bundled_file_through_the_cli() {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/xen/hvm-v3-small.xl");
    xen_verify(&bundled).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pbr = dir.path().join("small.pbr");
    let js: serde_json::Value = serde_json::from_str(&pbr_img_ok(&[
        "convert",
        bundled.to_str().unwrap(),
        "-o",
        pbr.to_str().unwrap(),
        "--phase",
        "daemons",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        (js["format"].as_str(), js["guest_type"].as_str(), js["libxc_version"].as_u64()),
        (Some("xl"), Some("hvm"), Some(3))
    );
    assert_eq!((js["vcpus"].as_u64(), js["domain_name"].as_str()), (Some(2), Some("lab-hvm")));
    let text = pbr_img_ok(&["inspect", pbr.to_str().unwrap()]);
    assert!(text.contains("xen        hvm guest, libxc stream v3"), "{text}");
    let back = dir.path().join("back.xl");
    let js: serde_json::Value = serde_json::from_str(&pbr_img_ok(&[
        "export",
        "--to",
        "xl",
        pbr.to_str().unwrap(),
        "-o",
        back.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(js["stream_bytes"].as_u64(), Some(std::fs::metadata(&bundled).unwrap().len()));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&bundled).unwrap());
    // Refusals are one line with exit status 2: a QEMU option on an xl file.
    let out = pbr_img(&["convert", bundled.to_str().unwrap(), "-o", pbr.to_str().unwrap(), "--qemu-version", "7.2"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}
