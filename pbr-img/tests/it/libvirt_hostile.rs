//! Hostile libvirt save files: every header field out of range, truncations
//! and compressions pbr cannot read are refused in one line naming the
//! offset, with nothing left behind. Built around the bundled counter
//! stream, as libvirt lays them out (`spec/libvirt.md`).

use crate::common;

use std::path::Path;

use common::{convert_fails, offset_in, pbr_img_ok};

const XML: &[u8] = b"<domain type='qemu'>\n  <name>counter</name>\n  <memory>16384</memory>\n</domain>\n\0";

fn save(fields: [u32; 5], stream: &[u8]) -> Vec<u8> {
    let mut v = b"LibvirtQemudSave".to_vec();
    for f in fields {
        v.extend_from_slice(&f.to_le_bytes());
    }
    v.resize(92, 0);
    v.extend_from_slice(XML);
    v.extend_from_slice(&[0u8; 20]);
    v.extend_from_slice(stream);
    v
}

fn area() -> u32 {
    XML.len() as u32 + 20
}

fn stream() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu")).unwrap()
}

#[test]
fn a_good_file_converts_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = save([2, area(), 0, 0, 0], &stream());
    std::fs::write(d.join("c.save"), &good).unwrap();
    let s = |n: &str| d.join(n).to_str().unwrap().to_owned();
    pbr_img_ok(&["convert", &s("c.save"), "-o", &s("c.pbr")]);
    let text = pbr_img_ok(&["inspect", &s("c.pbr")]);
    assert!(text.contains("libvirt.domain.name = counter") && text.contains("libvirt.was_running = 0"), "{text}");
    assert!(text.contains("libvirt.domain.memory = 16384 KiB"), "{text}");
    pbr_img_ok(&["export", "--to", "libvirt", &s("c.pbr"), "-o", &s("back.save")]);
    assert!(std::fs::read(d.join("back.save")).unwrap() == good);
    for c in ["gzip", "bzip2", "xz", "zstd"] {
        let f = format!("{c}.save");
        pbr_img_ok(&["export", "--to", "libvirt", "--compress", c, &s("c.pbr"), "-o", &s(&f)]);
        let img = format!("{c}.pbr");
        let out = pbr_img_ok(&["convert", &s(&f), "-o", &s(&img), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["libvirt"]["compressed"], c);
        // Back to raw: the original bytes again.
        pbr_img_ok(&["export", "--to", "libvirt", "--compress", "raw", &s(&img), "-o", &s("raw-again.save")]);
        assert!(std::fs::read(d.join("raw-again.save")).unwrap() == good, "{c}");
    }
    // Exporting an image that has no libvirt header is refused.
    pbr_img_ok(&["convert", &s("back.save"), "-o", &s("x.pbr")]);
    let plain = d.join("plain.pbr");
    pbr_img_ok(&[
        "convert",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu").to_str().unwrap(),
        "-o",
        plain.to_str().unwrap(),
    ]);
    let out = common::pbr_img(&["export", "--to", "libvirt", plain.to_str().unwrap(), "-o", &s("y.save")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not converted from a libvirt save file"));
}

#[test]
fn bad_headers_are_refused_with_their_offset() {
    let st = stream();
    let n = area();
    for (fields, expect, at) in [
        ([9, n, 0, 0, 0], "version 9", 16),
        ([2, 0, 0, 0, 0], "XML area of 0 bytes", 20),
        ([2, 17 << 20, 0, 0, 0], "XML area of", 20),
        ([2, n, 7, 0, 0], "was_running is 7", 24),
        ([2, n, 0, 9, 0], "unknown compression 9", 28),
        ([1, n, 0, 1, 0], "unknown compression 1", 28),
        ([2, n, 0, 0, n + 5], "cookie offset", 32),
    ] {
        let err = convert_fails("bad.save", &save(fields, &st), expect);
        assert_eq!(offset_in(&err), at, "{err}");
    }
    let mut partial = save([2, n, 0, 0, 0], &st);
    partial[..16].copy_from_slice(b"LibvirtQemudPart");
    convert_fails("partial.save", &partial, "partial libvirt save");
    let mut unused = save([2, n, 0, 0, 0], &st);
    unused[80] = 1;
    assert_eq!(offset_in(&convert_fails("unused.save", &unused, "unused header words")), 80);
    let mut no_nul = save([2, n, 0, 0, 0], &st);
    for b in &mut no_nul[92..92 + n as usize] {
        if *b == 0 {
            *b = b' ';
        }
    }
    convert_fails("nonul.save", &no_nul, "domain XML is not NUL-terminated");
    convert_fails("lzop.save", &save([2, n, 0, 4, 0], &st), "lzop");
    // A gzip header over a raw stream.
    convert_fails("gzip.save", &save([2, n, 0, 1, 0], &st), "");
}

#[test]
fn truncations_are_refused() {
    let good = save([2, area(), 0, 0, 0], &stream());
    for cut in [0usize, 10, 16, 40, 91, 92, 100, 92 + area() as usize - 1, 92 + area() as usize, good.len() - 1] {
        let err = convert_fails("cut.save", &good[..cut], "");
        assert!(err.contains("truncated") || err.contains("unknown magic") || err.contains("ends"), "{cut}: {err}");
    }
}
