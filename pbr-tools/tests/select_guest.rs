//! Selection against a real boot: the Linux guest of
//! `examples/phase-guest/guest-init.sh` (Debian's cloud kernel, busybox)
//! boots under QEMU, reports the files it read up to each phase, is saved at
//! its `kernel` and `daemons` phases with QEMU's own migration, and `select`
//! judges the two candidates against a root directory standing for the
//! guest's file system.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pbr_img, pbr_img_ok};
use pbr_tools::replay::qemu::Qmp;
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

/// Waits until a stream written by `exec:cat > FILE` is whole (it ends with
/// the vmdescription's closing brace and stops growing).
fn wait_whole(path: &Path) {
    let t = Instant::now();
    let mut last = 0;
    loop {
        let data = std::fs::read(path).unwrap_or_default();
        if data.last() == Some(&b'}') && data.len() == last {
            return;
        }
        last = data.len();
        assert!(t.elapsed() < Duration::from_secs(60), "stream {} never completed", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn select_on_a_real_boot() {
    let (kernel, initrd) = guest();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tty0, tty1, qmp) = (d.join("ttyS0.txt"), d.join("ttyS1.sock"), d.join("qmp.sock"));
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "128", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 pbr.data=1 pbr.anon=1"])
        .arg("-serial")
        .arg(format!("file:{}", tty0.display()))
        .arg("-serial")
        .arg(format!("unix:{},server=on,wait=off", tty1.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut q = Qmp::connect(&qmp).unwrap();
    let ctl = loop {
        if let Ok(s) = UnixStream::connect(&tty1) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ctl.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut writer = ctl.try_clone().unwrap();
    let mut lines = BufReader::new(ctl);
    let mut files: Vec<(String, String)> = Vec::new();
    let mut phases = Vec::new();
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).unwrap() > 0, "the guest closed its control port");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["PBR-FILE", phase, path] => files.push((phase.to_string(), path.trim_start_matches('/').to_string())),
            ["PBR-PHASE", phase, uptime] => {
                q.cmd("stop", json!({})).unwrap();
                let stream = d.join(format!("{phase}.qemu"));
                q.cmd("migrate", json!({"uri": format!("exec:cat > {}", stream.display())})).unwrap();
                q.wait_migration(Duration::from_secs(120)).unwrap();
                wait_whole(&stream);
                phases.push((phase.to_string(), uptime.to_string(), stream));
                q.cmd("cont", json!({})).unwrap();
                writer.write_all(b"go\n").unwrap();
            }
            ["PBR-READY", ..] => break,
            ["PBR-FAILED", ..] => panic!("the guest's service did not come up"),
            _ => {}
        }
    }
    let _ = q.cmd("quit", json!({}));
    qemu.wait().unwrap();
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
    assert_eq!(select(&[]), (Some(1), None));
}
