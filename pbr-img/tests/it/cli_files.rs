//! The files `pbr-img` is given: `-o -`, an output that is an input, a
//! directory or a QEMU stream where an image is wanted, and what an
//! interrupt (SIGINT, SIGTERM) leaves behind: nothing.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{pbr_img, pbr_img_ok};

fn counter_stream() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu")
}

fn counter_image(d: &Path) -> PathBuf {
    let image = d.join("c.pbr");
    pbr_img_ok(&["convert", counter_stream().to_str().unwrap(), "-o", image.to_str().unwrap()]);
    image
}

/// Exit status 2 and one error line on stderr, containing `expect`.
fn refused(out: &Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(expect), "expected '{expect}' in: {err}");
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn dash_output_streams_exports_and_is_refused_for_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = counter_image(d);
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["export", "--to", "qemu", image.to_str().unwrap(), "-o", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == std::fs::read(counter_stream()).unwrap(), "the stream on stdout is the original");
    assert!(!d.join("-").exists());

    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["convert", counter_stream().to_str().unwrap(), "-o", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    refused(&out, "cannot go to standard output");
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["export", "--to", "raw", image.to_str().unwrap(), "-o", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    // A raw export is no .pbr image: it is refused for what it is.
    refused(&out, "`-o -`: a raw export is a sparse file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("seekable regular file"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(".pbr image"));
    assert_eq!(names(d), ["c.pbr"]);
}

#[test]
fn an_output_that_is_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = d.join("s.qemu");
    std::fs::copy(counter_stream(), &stream).unwrap();
    let before = std::fs::read(&stream).unwrap();
    let s = stream.to_str().unwrap();
    refused(&pbr_img(&["convert", s, "-o", s]), "is the input");
    std::os::unix::fs::symlink(&stream, d.join("link")).unwrap();
    std::fs::hard_link(&stream, d.join("hard")).unwrap();
    for other in ["link", "hard"] {
        refused(&pbr_img(&["convert", s, "-o", d.join(other).to_str().unwrap()]), "is the input");
    }
    // Standard input that is the output file.
    let out = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["convert", "-", "-o", s])
        .stdin(std::fs::File::open(&stream).unwrap())
        .output()
        .unwrap();
    refused(&out, "is the input standard input");
    assert!(std::fs::read(&stream).unwrap() == before, "the input is unchanged");

    let image = counter_image(d);
    let i = image.to_str().unwrap();
    for args in [vec!["trim", i, "-o", i], vec!["pack", i, "-o", i], vec!["export", "--to", "qemu", i, "-o", i]] {
        refused(&pbr_img(&args), "inputs are never modified");
    }
    pbr_img_ok(&["verify", i]);
}

#[test]
fn directories_and_streams_given_as_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = d.to_str().unwrap();
    refused(&pbr_img(&["inspect", s]), "is a directory, not an image");
    refused(&pbr_img(&["verify", s]), "is a directory");
    refused(&pbr_img(&["convert", s, "-o", d.join("x.pbr").to_str().unwrap()]), "is a directory, not a stream");
    refused(&pbr_img(&["inspect", "-"]), "`-` cannot stand for an image here");
    let image = counter_image(d);
    refused(&pbr_img(&["trim", image.to_str().unwrap(), "-o", s]), "the output");
    refused(
        &pbr_img(&["inspect", counter_stream().to_str().unwrap()]),
        "is a QEMU migration stream, not a .pbr image: convert it with `pbr-img convert",
    );
    let xl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/xen/hvm-v3-small.xl");
    refused(&pbr_img(&["verify", xl.to_str().unwrap()]), "is an xl save file, not a .pbr image");
}

/// Waits until `ok` holds, for at most 60 s.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(child: &Child, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &child.id().to_string()]).status().unwrap().success());
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        v.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    v
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

#[test]
fn interrupted_convert_leaves_no_temporary_file() {
    let stream = std::fs::read(counter_stream()).unwrap();
    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
            .args(["convert", "-", "-o", d.join("out.pbr").to_str().unwrap()])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Half the stream, then the converter waits for more.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&stream[..stream.len() / 2]).unwrap();
        stdin.flush().unwrap();
        wait_for("the temporary output", || names(d).iter().any(|n| n.starts_with(".pbr-") && n.ends_with(".tmp")));
        kill(&child, sig);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{sig}");
        assert!(names(d).is_empty(), "left behind after SIG{sig}: {:?}", names(d));
        drop(stdin);
    }
}

#[test]
fn interrupted_replay_stops_qemu_and_removes_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let image = counter_image(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["replay", image.to_str().unwrap(), "--adapter", "qemu"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest's console arrives on stdout once it runs.
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("0000004b") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "replay ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let qemu = children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU: {qemu:?}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    let qmp = cmdline.split('\0').find_map(|a| a.strip_prefix("unix:")?.split(',').next()).unwrap().to_owned();
    let qmp_dir = Path::new(&qmp).parent().unwrap().to_path_buf();
    assert!(qmp_dir.is_dir());
    kill(&child, "TERM");
    assert_eq!(child.wait().unwrap().code(), Some(143));
    wait_for("QEMU to stop", || gone(qemu[0]));
    assert!(!qmp_dir.exists(), "{} left behind", qmp_dir.display());
}

#[test]
fn replay_without_serial_or_restore_cmdline_shows_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let image = counter_image(dir.path());
    // The image records no restore.cmdline: -machine and -m come from it,
    // and the console comes here while the state streams on a socket.
    let out = pbr_img(&["replay", image.to_str().unwrap(), "--adapter", "qemu", "--for", "3"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("-machine pc-q35-7.2,accel=tcg -m 16384k"), "{stderr}");
    // The summary first, then the console: the guest was saved after
    // printing 0x49, and carries on.
    assert!(stdout.starts_with("replayed: "), "{stdout}");
    assert!(stdout.contains("\n0000004a\n0000004b\n"), "{stdout}");
}

#[test]
fn interrupted_capture_removes_its_work_directory_and_stops_qemu() {
    let (kernel, initrd) = common::guest();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("candidates");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbr-img"))
        .args(["capture", "--kernel", kernel.to_str().unwrap(), "--initrd", initrd.to_str().unwrap()])
        .args(["--mem", "128", "-o", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the work directory and QEMU", || {
        out.is_dir() && !names(&out).is_empty() && !children(child.id()).is_empty()
    });
    let qemu = children(child.id());
    kill(&child, "INT");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(names(&out).is_empty(), "left behind: {:?}", names(&out));
    wait_for("QEMU to stop", || qemu.iter().all(|&p| gone(p)));
}
