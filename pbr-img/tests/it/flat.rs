//! Restore without streaming memory: the real guest of the fixtures,
//! classified, trimmed and unpacked flat, restored by QEMU 10 with its RAM
//! mapped from the image (`memory-backend-file`, private, the file opened
//! read-only); the guest's service answers a client on the host, and the
//! image file is unchanged afterwards.

use crate::common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{fixture_info, fixture_stream, fixtures, pbr_img_ok, vm::qemu10};
use pbr_format::Image;
use pbr_replay::qemu::QemuAdapter;
use pbr_replay::replay;

fn flat_daemons(d: &Path) -> std::path::PathBuf {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (raw, classified, trimmed, flat) = (d.join("r.pbr"), d.join("c.pbr"), d.join("t.pbr"), d.join("f.pbr"));
    pbr_img_ok(&["convert", &s(&fixture_stream("q35-128m-daemons")), "-o", &s(&raw), "--phase", "daemons"]);
    let flags = fixtures().join(fixture_info("q35-128m-daemons")["kpageflags"].as_str().unwrap());
    pbr_img_ok(&["classify", &s(&raw), "--kpageflags", &s(&flags), "-o", &s(&classified)]);
    pbr_img_ok(&["trim", &s(&classified), "-o", &s(&trimmed)]);
    pbr_img_ok(&["unpack", "--flat", &s(&trimmed), "-o", &s(&flat)]);
    flat
}

/// The fixture guest converted as `phase` (with `extra` convert options)
/// into `d`, and that image unpacked flat: `(image, flat image)`.
fn convert_flat(d: &Path, phase: &str, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (raw, flat) = (d.join(format!("{phase}.pbr")), d.join(format!("{phase}-flat.pbr")));
    let (r, f) = (raw.to_str().unwrap(), flat.to_str().unwrap());
    let stream = fixture_stream("q35-128m-daemons");
    let mut args = vec!["convert", stream.to_str().unwrap(), "-o", r, "--phase", phase];
    args.extend_from_slice(extra);
    pbr_img_ok(&args);
    pbr_img_ok(&["unpack", "--flat", r, "-o", f]);
    (raw, flat)
}

/// QEMU 10 and the fixture guest's machine for it (the 7.2 machine type it
/// was saved on, its NIC).
fn qemu10_machine() -> (String, Vec<String>) {
    let (qemu, firmware) = qemu10();
    let machine = firmware
        .into_iter()
        .chain(
            ["-machine", "pc-q35-7.2,accel=tcg", "-cpu", "max", "-m", "128", "-smp", "1", "-display", "none"]
                .map(String::from),
        )
        .chain(["-nodefaults", "-no-user-config"].map(String::from))
        .chain(pbr_reboot::service::nic_args())
        .collect();
    (qemu, machine)
}

/// QEMU 10 and the fixture guest's command line with its two serial ports
/// in `d` (the second, a socket, returned) and its service forwarded to a
/// free host port (returned).
fn qemu10_guest(d: &Path) -> (String, Vec<String>, u16, std::path::PathBuf) {
    let (qemu, mut args) = qemu10_machine();
    let (tty0, tty1) = (d.join("ttyS0.txt"), d.join("ttyS1.sock"));
    let _ = std::fs::remove_file(&tty1);
    let port = pbr_reboot::service::free_port().unwrap();
    pbr_reboot::service::forward(&mut args, port).unwrap();
    args.extend([
        "-serial".into(),
        format!("file:{}", tty0.display()),
        "-serial".into(),
        format!("unix:{},server=on,wait=off", tty1.display()),
    ]);
    (qemu, args, port, tty1)
}

/// Restores `image` with QEMU 10 and waits for the guest's service; returns
/// whether the RAM was mapped.
fn restore(image: &Path, d: &Path) -> bool {
    let (qemu, args, port, tty1) = qemu10_guest(d);
    let img = Image::open(image).unwrap();
    let mut q = QemuAdapter::new(image, &qemu, args).unwrap();
    replay(&img, &File::open(image).unwrap(), &mut q).unwrap();
    // The guest was saved waiting for its "go" on ttyS1.
    let s = UnixStream::connect(&tty1).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    (&s).write_all(b"go\n").unwrap();
    for line in BufReader::new(&s).lines() {
        if line.expect("ttyS1").starts_with("PBR-READY") {
            break;
        }
    }
    common::service_answers_on(port);
    q.ram_mapped()
}

#[test]
fn qemu_10_maps_a_flat_image_and_the_guest_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flat = flat_daemons(d);
    let before = blake3::hash(&std::fs::read(&flat).unwrap());
    let img = Image::open(&flat).unwrap();
    img.verify().unwrap();
    assert!(pbr_replay::qemu::mapped_ram_args(&img, &flat).is_some(), "pc.ram is one range of the file");
    assert!(restore(&flat, d), "QEMU 10 with a flat image maps the RAM");
    assert_eq!(blake3::hash(&std::fs::read(&flat).unwrap()), before, "the image changed");
    // The same image not flat: streamed, as before.
    let streamed = d.join("t.pbr");
    assert!(!restore(&streamed, d), "a non-flat image is streamed");
}

/// `pbr-img recover` with QEMU 10 maps the flat candidate's RAM each way:
/// spawned at the decision, a standby QEMU that mapped it beforehand (and
/// loaded nothing), and prestaged.
#[test]
fn recover_maps_the_ram_each_way() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (qemu, machine) = qemu10_machine();
    let cmdline = serde_json::to_string(&machine).unwrap();
    let (raw, flat) = convert_flat(d, "daemons", &["--restore-cmdline", &cmdline]);
    // What each waiting QEMU held of its own before the decision (KiB).
    let mut own = std::collections::BTreeMap::new();
    for (way, vmm) in [(None, "spawn"), (Some("--standby"), "standby"), (Some("--prestaged"), "prestaged")] {
        let mut args = vec!["recover".to_owned(), "--json".into(), "--qemu".into(), qemu.clone(), s(&flat)];
        args.extend(way.map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v: serde_json::Value = serde_json::from_str(&pbr_img_ok(&args)).unwrap();
        assert_eq!((v["vmm"].as_str(), v["ram"].as_str()), (Some(vmm), Some("mapped")), "{v}");
        assert_eq!(v["held"].is_null(), way.is_none(), "only a waiting QEMU held memory before: {v}");
        own.insert(vmm, v["held"]["anon_kib"].as_u64());
    }
    // The unpacked (not flat) image streams; prestaged, its QEMU holds the
    // guest's pages before the decision, and flat it does not.
    for (way, vmm) in [("--standby", "standby"), ("--prestaged", "prestaged")] {
        let v: serde_json::Value =
            serde_json::from_str(&pbr_img_ok(&["recover", "--json", way, "--qemu", &qemu, &s(&raw)])).unwrap();
        assert_eq!((v["vmm"].as_str(), v["ram"].as_str()), (Some(vmm), Some("streamed")), "{v}");
        own.insert(
            if vmm == "standby" { "standby streamed" } else { "prestaged streamed" },
            v["held"]["anon_kib"].as_u64(),
        );
    }
    let img = pbr_format::Image::open(&raw).unwrap();
    let stored = img.extents().filter(|e| e.encoding.is_stored()).map(|e| e.gfns().count() as u64).sum::<u64>()
        * u64::from(img.page_size())
        / 1024;
    let kib = |k: &str| own[k].unwrap_or_else(|| panic!("{k}: {own:?}"));
    assert!(kib("prestaged streamed") >= kib("prestaged") + stored / 2, "stored {stored} KiB: {own:?}");
    assert!(kib("prestaged streamed") >= kib("standby") + stored / 2, "stored {stored} KiB: {own:?}");
}

/// A standby QEMU that maps one flat candidate's RAM is never given
/// another's device state: that guest would run on the wrong memory.
#[test]
fn standby_mapping_one_image_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let (qemu, machine) = qemu10_machine();
    let flats = ["kernel", "daemons"].map(|phase| convert_flat(dir.path(), phase, &[]).1);
    let (mapped, other) = (Image::open(&flats[1]).unwrap(), Image::open(&flats[0]).unwrap());
    assert_ne!(mapped.image_blake3(), other.image_blake3());
    let mut q = QemuAdapter::standby_for(&qemu, machine, &flats[1], &mapped).unwrap();
    assert_eq!(q.maps(), Some(mapped.image_blake3()));
    q.set_image(&flats[0]);
    let err = replay(&other, &File::open(&flats[0]).unwrap(), &mut q).unwrap_err().to_string();
    assert!(err.contains("maps another image's RAM"), "{err}");
}

/// A flat image with one damaged page of its RAM: QEMU 10 maps it and
/// loads the device state, paused, while the pages are checked; the check
/// fails, the guest is never resumed, and the error names the page.
#[test]
fn a_damaged_flat_image_is_refused_before_its_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flat = flat_daemons(d);
    let img = Image::open(&flat).unwrap();
    let mut buf = vec![0u8; 4096];
    let (gfn, at) = img
        .extents()
        .filter(|e| e.encoding == pbr_format::PageEncoding::Raw && e.gfn < 0x8000)
        .flat_map(|e| e.gfns().map(move |g| (g, e.data + (g - e.gfn) * 4096)))
        .find(|&(g, _)| img.read_page(g, &mut buf).unwrap().iter().any(|&b| b != 0))
        .unwrap();
    drop(img);
    let mut bytes = std::fs::read(&flat).unwrap();
    bytes[at as usize + 7] ^= 0x40;
    std::fs::write(&flat, bytes).unwrap();
    let (qemu, args, _, _) = qemu10_guest(d);
    let img = Image::open(&flat).unwrap();
    let mut q = QemuAdapter::new(&flat, &qemu, args).unwrap();
    let e = replay(&img, &File::open(&flat).unwrap(), &mut q).unwrap_err();
    assert!(q.ram_mapped(), "the RAM was to be mapped");
    assert!(e.is_damage(), "{e}");
    assert!(e.to_string().contains(&format!("gfn {gfn:#x}")), "{e}");
    // QEMU still waits, paused: the guest never ran.
    let qmp = q.process().unwrap().qmp();
    let status = qmp.cmd("query-status", serde_json::json!({})).unwrap();
    assert_eq!(status["running"], false, "{status}");
}
