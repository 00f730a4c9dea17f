//! Replay: the driver's order (recording adapter), and the QEMU adapter on
//! a converted real stream (the guest carries on).

use crate::common;

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use common::pbr_img_ok;
use common::vm::counter_disk;
use pbr_format::{DeviceOrigin, Image};
use pbr_replay::qemu::QemuAdapter;
use pbr_replay::recording::{Call, Recording};
use pbr_replay::replay;

fn bundled() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu")
}

#[test]
fn replay_calls_adapters_in_order_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("c.pbr");
    pbr_img_ok(&["convert", bundled().to_str().unwrap(), "-o", image.to_str().unwrap()]);
    let img = Image::open(&image).unwrap();
    let mut rec = Recording { refuse: vec![DeviceOrigin::QEMU_STREAM.0], ..Default::default() };
    let report = replay(&img, &File::open(&image).unwrap(), &mut rec).unwrap();
    let regions = img.regions().len();
    assert!(rec.calls[..regions].iter().all(|c| matches!(c, Call::Memory(..))));
    assert_eq!(rec.calls[regions], Call::Vcpu(0));
    assert!(rec.calls[regions + 1..rec.calls.len() - 1].iter().all(|c| matches!(c, Call::Device(..))));
    assert_eq!(rec.calls.last(), Some(&Call::Resume));
    let streams = img.devices().filter(|d| d.origin == DeviceOrigin::QEMU_STREAM).count();
    assert_eq!(report.not_taken.len(), streams);
    assert_eq!(report.devices + streams, img.devices().count());
    assert_eq!(report.mapped_bytes / 4096 + report.copied_pages + report.zero_pages, img.page_count());
}

#[test]
fn qemu_adapter_restores_a_converted_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = d.join("boot.img");
    counter_disk(&disk);
    let serial = d.join("serial.txt");
    let cmdline = format!(
        "-machine q35,accel=tcg -m 16 -nodefaults -display none -drive file={},format=raw,if=ide -serial file:{}",
        disk.display(),
        serial.display()
    );
    let image = d.join("c.pbr");
    pbr_img_ok(&["convert", bundled().to_str().unwrap(), "-o", image.to_str().unwrap(), "--restore-cmdline", &cmdline]);
    let img = Image::open(&image).unwrap();
    let args = pbr_replay::qemu::args::recorded_args(&img).unwrap();
    let mut q = QemuAdapter::new(&image, "qemu-system-x86_64", args).unwrap();
    let report = replay(&img, &File::open(&image).unwrap(), &mut q).unwrap();
    assert!(report.not_taken.is_empty(), "{:?}", report.not_taken);
    // The stream was saved when the guest had printed 0x49.
    let t = Instant::now();
    let counts = loop {
        let c: Vec<u32> = std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| u32::from_str_radix(l, 16).ok())
            .collect();
        if c.len() >= 3 {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "guest printed {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(&counts[..3], &[0x4a, 0x4b, 0x4c], "the restored guest carries on from 0x49");
}

/// The real Linux guest of the fixtures, converted and replayed
/// through the QEMU adapter (no -kernel needed: it is all in the image),
/// answers its phase handshake and reaches service-ready.
#[test]
fn qemu_adapter_restores_the_real_linux_fixture() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = d.join("daemons.pbr");
    pbr_img_ok(&[
        "convert",
        common::fixture_stream("q35-128m-daemons").to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
        "--phase",
        "daemons",
    ]);
    let (tty0, tty1) = (d.join("ttyS0.txt"), d.join("ttyS1.sock"));
    // The fixture's machine, with the NIC the guest was captured with.
    let args: Vec<String> = [
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "128",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(pbr_reboot::service::nic_args())
    .chain([
        "-serial".into(),
        format!("file:{}", tty0.display()),
        "-serial".into(),
        format!("unix:{},server=on,wait=off", tty1.display()),
    ])
    .collect();
    let img = Image::open(&image).unwrap();
    let mut q = QemuAdapter::new(&image, "qemu-system-x86_64", args).unwrap();
    replay(&img, &File::open(&image).unwrap(), &mut q).unwrap();
    // The guest was saved blocked on ttyS1 waiting for the host's "go".
    let mut s = std::os::unix::net::UnixStream::connect(&tty1).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"go\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("PBR-READY") {
        let n = s.read(&mut buf).expect("the restored guest answers on ttyS1");
        assert!(n > 0, "ttyS1 closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let console = std::fs::read_to_string(&tty0).unwrap();
    assert!(console.contains("phase daemons: host said 'go'"), "{console}");
}

/// `pbr-img replay --adapter qemu` when QEMU cannot load the image exits
/// 2 with one line of ours holding QEMU's own message and the likely
/// cause (QEMU's standard error is held back while it loads), not a QMP
/// read error.
#[test]
fn a_load_qemu_refuses_names_its_message_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let machine = ["-machine", "q35,accel=tcg", "-m", "16", "-nodefaults", "-display", "none"];
    // An xl save converted: its device state is Xen's; a counter image
    // restored on another machine type.
    let xl = d.join("xl.pbr");
    let xl_save = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/xen/hvm-v3-small.xl");
    pbr_img_ok(&["convert", xl_save.to_str().unwrap(), "-o", xl.to_str().unwrap()]);
    let counter = d.join("c.pbr");
    pbr_img_ok(&["convert", bundled().to_str().unwrap(), "-o", counter.to_str().unwrap()]);
    let other_machine = ["-machine", "pc,accel=tcg", "-m", "16", "-nodefaults", "-display", "none"];
    for (image, args) in [(&xl, &machine), (&counter, &other_machine)] {
        let mut all = vec!["replay", "--adapter", "qemu", image.to_str().unwrap(), "--"];
        all.extend(args.iter().copied());
        let out = common::pbr_img(&all);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{image:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{image:?}: QEMU's lines are held back: {err}");
        assert!(err.starts_with("pbr-img: error: qemu-system-x86_64 exited"), "{err}");
        assert!(err.contains("QEMU said: ") && !err.contains("QMP read"), "{err}");
        assert!(err.contains("likely cause: ") && err.contains("-machine"), "{err}");
    }
}
