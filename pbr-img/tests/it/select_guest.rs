//! Selection against a real boot: the Linux guest of
//! `examples/phase-guest/guest-init.sh` (Debian's cloud kernel, busybox)
//! boots under QEMU, reports the files it read up to each phase, is saved at
//! its `kernel` and `daemons` phases with QEMU's own migration, and `select`
//! judges the two candidates against a root directory standing for the
//! guest's file system.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{pbr_img, pbr_img_ok};
use pbr_reboot::guest::{Event, Guest, GuestSpec};
use serde_json::json;

/// Kernel and initramfs built by `scripts/fetch-guest`.
fn guest() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-guest");
    let out = Command::new(script).stderr(Stdio::inherit()).output().expect("scripts/fetch-guest");
    assert!(out.status.success(), "scripts/fetch-guest failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace();
    (PathBuf::from(parts.next().unwrap()), PathBuf::from(parts.next().unwrap()))
}

#[test]
fn select_on_a_real_boot() {
    let (kernel, initrd) = guest();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = GuestSpec {
        qemu: "qemu-system-x86_64".into(),
        machine: "q35,accel=tcg".into(),
        cpu: "max".into(),
        mem_mb: 128,
        smp: 1,
        kernel,
        initrd: initrd.clone(),
        append: "console=ttyS0 pbr.data=1 pbr.anon=1".into(),
    };
    let mut g = Guest::boot(&spec, d, false).unwrap();
    let mut files: Vec<(String, String)> = Vec::new();
    let mut phases = Vec::new();
    loop {
        match g.control.next_event().unwrap() {
            Event::File(phase, path) => files.push((phase, path)),
            Event::Phase(phase, uptime) => {
                g.qemu.qmp().cmd("stop", json!({})).unwrap();
                let stream = d.join(format!("{phase}.qemu"));
                g.save(&stream).unwrap();
                phases.push((phase, uptime.to_string(), stream));
                g.qemu.qmp().cmd("cont", json!({})).unwrap();
                g.control.go().unwrap();
            }
            Event::Ready(_) => break,
            Event::Kpf(..) => {}
        }
    }
    g.quit();
    assert_eq!(phases.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["kernel", "daemons"]);

    // The root directory standing for the guest's file system: the
    // initramfs tree. Files made at run time (logs, tmpfs data) are not in
    // it and are not part of the manifest.
    let root = d.join("root");
    let st = Command::new("cp").arg("-a").arg(initrd.parent().unwrap().join("root")).arg(&root).status().unwrap();
    assert!(st.success());
    let mut images = Vec::new();
    for (i, (phase, uptime, stream)) in phases.iter().enumerate() {
        let list: Vec<&str> =
            files.iter().filter(|(p, f)| p == phase && root.join(f).is_file()).map(|(_, f)| f.as_str()).collect();
        let list_path = d.join(format!("{phase}.list"));
        std::fs::write(&list_path, list.join("\n")).unwrap();
        let raw = d.join(format!("{phase}-raw.pbr"));
        let ms = (uptime.parse::<f64>().unwrap() * 1000.0) as u64;
        pbr_img_ok(&[
            "convert",
            stream.to_str().unwrap(),
            "-o",
            raw.to_str().unwrap(),
            "--phase",
            phase,
            "--phase-seq",
            &(i + 1).to_string(),
            "--since-boot-ms",
            &ms.to_string(),
        ]);
        let img = d.join(format!("{phase}.pbr"));
        pbr_img_ok(&[
            "manifest",
            "add",
            raw.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--list",
            list_path.to_str().unwrap(),
            "-o",
            img.to_str().unwrap(),
        ]);
        images.push(img);
    }
    let kernel_files =
        &pbr_format::Image::open(&images[0]).unwrap().manifest().iter().map(|f| f.path.to_string()).collect::<Vec<_>>();
    let daemon_files =
        &pbr_format::Image::open(&images[1]).unwrap().manifest().iter().map(|f| f.path.to_string()).collect::<Vec<_>>();
    assert!(
        kernel_files.contains(&"etc/pbr/kernel.conf".to_string())
            && !kernel_files.contains(&"etc/pbr/app.conf".to_string()),
        "{kernel_files:?}"
    );
    assert!(daemon_files.contains(&"etc/pbr/app.conf".to_string()), "{daemon_files:?}");

    let select = |extra: &[&str]| {
        let mut args = vec!["select", "--json", "--root", root.to_str().unwrap()];
        args.extend(extra);
        args.extend([images[1].to_str().unwrap(), images[0].to_str().unwrap()]);
        let out = pbr_img(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            out.status.code(),
            v["chosen"].as_str().map(|s| Path::new(s).file_stem().unwrap().to_string_lossy().into_owned()),
        )
    };
    assert_eq!(select(&[]), (Some(0), Some("daemons".to_string())));
    // The administrator changes what only the daemons read: kernel it is.
    std::fs::write(root.join("etc/pbr/app.conf"), "port=9090\n").unwrap();
    assert_eq!(select(&[]), (Some(0), Some("kernel".to_string())));
    // Restored content with a new mtime: valid again after a re-hash.
    std::fs::write(root.join("etc/pbr/app.conf"), "port=8080\n").unwrap();
    assert_eq!(select(&["--strict"]), (Some(0), Some("daemons".to_string())));
    // What every phase read changes: nothing is valid, reboot.
    std::fs::write(root.join("etc/pbr/kernel.conf"), "console=ttyS1\n").unwrap();
    assert_eq!(select(&[]), (Some(3), None));
}
