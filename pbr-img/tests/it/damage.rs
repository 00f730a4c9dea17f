//! A damaged image is never passed on, and an output never replaces a
//! device or a named pipe: every command that reads a stored page of an
//! image converted from a real QEMU stream, with one bit of one page
//! flipped, exits 2 with one line naming the page and its offset, and
//! leaves nothing under its output name.

use crate::common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{pbr_img, pbr_img_ok};
use pbr_format::{Image, PageEncoding};

/// The bundled real QEMU stream, converted, and a copy with one bit of
/// the last raw page of its RAM flipped: (good, damaged, its gfn, its
/// offset).
fn good_and_damaged(d: &Path) -> (PathBuf, PathBuf, u64, u64) {
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let good = d.join("good.pbr");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", good.to_str().unwrap(), "--phase", "kernel"]);
    let img = Image::open(&good).unwrap();
    // The last raw page of guest RAM (what every command, raw export
    // included, reads).
    let ram = |gfn: u64| {
        img.regions()
            .iter()
            .any(|r| !r.synthetic && (r.first_gfn(4096)..r.first_gfn(4096) + r.pages(4096)).contains(&gfn))
    };
    let e = img.extents().filter(|e| e.encoding == PageEncoding::Raw && ram(e.gfn)).last().unwrap();
    let (gfn, at) = (e.gfn, e.data);
    let mut bytes = std::fs::read(&good).unwrap();
    bytes[at as usize + 100] ^= 0x04;
    let bad = d.join("bad.pbr");
    std::fs::write(&bad, bytes).unwrap();
    (good, bad, gfn, at)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 2, one line naming the damaged page and its offset.
fn refused(out: &Output, gfn: u64, at: u64, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.contains("crc32 mismatch") && err.contains(&format!("gfn {gfn:#x}")), "{what}: {err}");
    assert!(err.contains(&format!("{at:#x}")), "{what}: the offset is not named: {err}");
}

#[test]
fn no_command_passes_a_damaged_page_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, bad, gfn, at) = good_and_damaged(d);
    let out = d.join("out");
    let o = s(&out);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("trim", vec!["trim", s(&bad), "-o", o, "--drop", "zero"]),
        ("pack", vec!["pack", s(&bad), "-o", o]),
        ("unpack", vec!["unpack", s(&bad), "-o", o]),
        ("unpack --flat", vec!["unpack", "--flat", s(&bad), "-o", o]),
        ("export qemu", vec!["export", "--to", "qemu", s(&bad), "-o", o]),
        ("export raw", vec!["export", "--to", "raw", s(&bad), "-o", o]),
        ("extract", vec!["extract", s(&bad), "--pages", "0-0xfff", "-o", o]),
        ("diff -o", vec!["diff", s(&good), s(&bad), "-o", o]),
    ];
    for (what, args) in cases {
        let r = pbr_img(&args);
        refused(&r, gfn, at, what);
        assert!(!out.exists(), "{what}: an output was left");
    }
    // To standard output: refused before the first byte.
    for args in
        [vec!["export", "--to", "qemu", s(&bad), "-o", "-"], vec!["extract", s(&bad), "--pages", "0-0xfff", "-o", "-"]]
    {
        let r = pbr_img(&args);
        refused(&r, gfn, at, &args.join(" "));
        assert!(r.stdout.is_empty(), "{}: {} bytes written before the refusal", args.join(" "), r.stdout.len());
    }
    // verify lists it, exit 1, and so does the pages-only check a restore
    // makes; the undamaged image passes everything.
    assert_eq!(pbr_img(&["verify", s(&bad)]).status.code(), Some(1));
    let r = pbr_img(&["verify", "--pages", s(&bad)]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains(&format!("gfn {gfn:#x}")), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_str(&pbr_img_ok(&["verify", "--pages", "--json", s(&good)])).unwrap();
    assert_eq!(v["pages"].as_u64(), Some(Image::open(&good).unwrap().stored_page_count()), "{v}");
    assert!(v["check_s"].as_f64().is_some(), "{v}");
    pbr_img_ok(&["trim", s(&good), "-o", o, "--drop", "zero"]);
    pbr_img_ok(&["verify", o]);
}

#[test]
fn select_refuses_a_damaged_candidate_unless_fast() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, _, gfn, _) = good_and_damaged(d);
    let root = d.join("root");
    std::fs::create_dir(&root).unwrap();
    // Later phase first: the damaged `daemons` would be chosen on its files.
    let later = d.join("daemons.pbr");
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", s(&later), "--phase", "daemons"]);
    let img = Image::open(&later).unwrap();
    let e = img.extents().find(|e| e.encoding == PageEncoding::Raw && e.gfn == gfn).unwrap();
    let mut bytes = std::fs::read(&later).unwrap();
    bytes[e.data as usize + 100] ^= 0x04;
    std::fs::write(&later, bytes).unwrap();
    let r = pbr_img(&["select", "--json", "--root", s(&root), s(&later), s(&good)]);
    assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["chosen"], s(&good));
    let daemons = v["candidates"].as_array().unwrap().iter().find(|c| c["image"] == s(&later)).unwrap();
    assert_eq!(daemons["valid"], false);
    assert!(daemons["damage"].as_str().unwrap().contains(&format!("gfn {gfn:#x}")), "{daemons}");
    // --fast says it did not look, and takes the later one on its files.
    let r = pbr_img(&["select", "--fast", "--root", s(&root), s(&later), s(&good)]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains(&format!("chosen: {}", s(&later))) && text.contains("--fast"), "{text}");
}

#[test]
fn streams_go_into_devices_and_pipes_images_never_replace_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, bad, gfn, at) = good_and_damaged(d);
    // A character device takes the stream and stays a device.
    pbr_img_ok(&["export", "--to", "qemu", s(&good), "-o", "/dev/null"]);
    pbr_img_ok(&["extract", s(&good), "--pages", "0-3", "-o", "/dev/null"]);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // An image output is refused there in one line.
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    for args in [
        vec!["trim", s(&good), "-o", "/dev/null"],
        vec!["convert", s(&stream), "-o", "/dev/null"],
        vec!["export", "--to", "raw", s(&good), "-o", "/dev/null"],
    ] {
        let r = pbr_img(&args);
        assert_eq!(r.status.code(), Some(2), "{}: {}", args.join(" "), stderr(&r));
        assert!(stderr(&r).contains("character device"), "{}: {}", args.join(" "), stderr(&r));
        assert_eq!(stderr(&r).lines().count(), 1);
    }
    // A named pipe: the stream arrives through it, byte for byte as in a file.
    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let file = d.join("stream.qemu");
    pbr_img_ok(&["export", "--to", "qemu", s(&good), "-o", s(&file)]);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    pbr_img_ok(&["export", "--to", "qemu", s(&good), "-o", s(&fifo)]);
    assert_eq!(reader.join().unwrap(), std::fs::read(&file).unwrap());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A damaged image is refused before the pipe is opened: a reader
    // started after the refusal would wait forever, so none is.
    let r = pbr_img(&["export", "--to", "qemu", s(&bad), "-o", s(&fifo)]);
    refused(&r, gfn, at, "export into a pipe");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn endless_inputs_are_refused_in_one_line() {
    for cmd in ["inspect", "verify"] {
        let r = pbr_img(&[cmd, "/dev/zero"]);
        assert_eq!(r.status.code(), Some(2), "{cmd}: {}", stderr(&r));
        assert!(stderr(&r).contains("character device"), "{cmd}: {}", stderr(&r));
        assert_eq!(stderr(&r).lines().count(), 1, "{cmd}: {}", stderr(&r));
    }
}

/// A flat image's zero pages are holes, which the check a restore makes
/// takes as zeros without reading: a page whose bytes were punched out is
/// a hole whose crc32 is not a zero page's, and is refused.
#[test]
fn a_page_punched_out_of_a_flat_image_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (good, _, _, _) = good_and_damaged(d);
    let flat = d.join("flat.pbr");
    pbr_img_ok(&["unpack", "--flat", s(&good), "-o", s(&flat)]);
    pbr_img_ok(&["verify", "--pages", s(&flat)]);
    let img = Image::open(&flat).unwrap();
    let mut buf = vec![0u8; 4096];
    let (gfn, at) = img
        .extents()
        .filter(|e| e.encoding == PageEncoding::Raw)
        .flat_map(|e| e.gfns().map(move |g| (g, e.data + (g - e.gfn) * 4096)))
        .find(|&(g, _)| img.read_page(g, &mut buf).unwrap().iter().any(|&b| b != 0))
        .unwrap();
    drop(img);
    let punched = std::process::Command::new("fallocate")
        .args(["--punch-hole", "--offset", &at.to_string(), "--length", "4096"])
        .arg(&flat)
        .status()
        .unwrap();
    assert!(punched.success());
    let r = pbr_img(&["verify", "--pages", s(&flat)]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains(&format!("gfn {gfn:#x}")), "{}", stderr(&r));
}
