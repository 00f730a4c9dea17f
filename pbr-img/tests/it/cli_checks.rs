//! What `pbr-img` checks and how it says so: one exit status per outcome
//! (the table in the README), every damaged page listed by `verify`,
//! classification inputs of the wrong size, `trim` of unclassified and of
//! packed images.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{pbr_img, pbr_img_ok};
use pbr_format::{Image, PageEncoding};

fn counter_image(d: &Path) -> PathBuf {
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let image = d.join("c.pbr");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", image.to_str().unwrap()]);
    image
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn diff_exits_1_when_images_differ_and_0_when_they_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = counter_image(d);
    let same = d.join("same.pbr");
    std::fs::copy(&a, &same).unwrap();
    let (a_s, same_s) = (a.to_str().unwrap(), same.to_str().unwrap());
    assert_eq!(pbr_img(&["diff", a_s, same_s]).status.code(), Some(0));
    assert_eq!(pbr_img(&["diff", "--json", a_s, same_s]).status.code(), Some(0));
    let packed = d.join("p.pbr");
    pbr_img_ok(&["pack", a_s, "-o", packed.to_str().unwrap()]);
    // Packing changes the encoding, not the content: no difference.
    assert_eq!(pbr_img(&["diff", a_s, packed.to_str().unwrap()]).status.code(), Some(0));
    let phased = d.join("phased.pbr");
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", phased.to_str().unwrap(), "--phase", "firmware"]);
    let out = pbr_img(&["diff", a_s, phased.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("phases     (none) -> firmware"));
    // Trouble is 2, as with diff(1).
    assert_eq!(pbr_img(&["diff", a_s, "/nonexistent.pbr"]).status.code(), Some(2));
}

#[test]
fn verify_lists_every_damaged_page_with_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = counter_image(d);
    let img = Image::open(&image).unwrap();
    let raw: Vec<_> = img.extents().filter(|e| e.encoding == PageEncoding::Raw).collect();
    let mut bytes = std::fs::read(&image).unwrap();
    // One flipped byte in each of the first 3 raw extents' first pages.
    let damaged: Vec<u64> = raw.iter().take(3).map(|e| e.data + 100).collect();
    for &at in &damaged {
        bytes[at as usize] ^= 0x40;
    }
    let bad = d.join("bad.pbr");
    std::fs::write(&bad, &bytes).unwrap();
    let out = pbr_img(&["verify", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Three pages, the PAGE_DATA section's crc and the trailer hash.
    assert_eq!(v["damaged"], 5, "{v}");
    let pages: Vec<u64> = v["damage"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["error"].as_str().unwrap().contains("raw page gfn"))
        .map(|x| x["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(pages, raw.iter().take(3).map(|e| e.data).collect::<Vec<_>>());
    assert_eq!(
        v["pages"],
        img.extents().filter(|e| e.encoding.is_stored()).map(|e| u64::from(e.count)).sum::<u64>() - 3
    );

    // Every stored page damaged: the list stops at 100, the count does not.
    let mut bytes = std::fs::read(&image).unwrap();
    let stored: Vec<u64> =
        raw.iter().flat_map(|e| (0..u64::from(e.count)).map(move |i| e.data + i * 4096 + 7)).collect();
    for &at in &stored {
        bytes[at as usize] ^= 1;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let out = pbr_img(&["verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("damaged: ")).count(), 100);
    assert!(text.contains(&format!("... and {} more", stored.len() + 2 - 100)), "{text}");
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn classify_refuses_a_dump_of_the_wrong_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = counter_image(d);
    let frames = 4096; // 16 MiB of guest-physical RAM
    let out_path = d.join("k.pbr");
    // `classify IMAGE --<how> <file holding bytes> -o OUT`.
    let classify = |how: &str, bytes: Vec<u8>| {
        let input = d.join(how);
        std::fs::write(&input, bytes).unwrap();
        let (i, f, o) = (image.to_str().unwrap(), input.to_str().unwrap(), out_path.to_str().unwrap());
        pbr_img(&["classify", i, &format!("--{how}"), f, "-o", o, "--json"])
    };
    for n in [10usize, 100_000] {
        let out = classify("class-map", vec![1u8; n]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains(&format!("the class map covers {n} page frames and the image {frames}")), "{err}");
        let out = classify("kpageflags", vec![0u8; n * 8]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(&format!("kpageflags dump covers {n} page frames and the image {frames}")));
        assert!(!out_path.exists());
    }
    let out = classify("class-map", vec![3u8; frames]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["classes"]["kernel"], frames);
}

#[test]
fn trim_names_an_unclassified_image_and_keeps_packed_pages_packed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = counter_image(d);
    let trimmed = d.join("t.pbr");
    let out = pbr_img(&["trim", image.to_str().unwrap(), "-o", trimmed.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("was never classified") && stderr(&out).contains("pbr-img classify"));

    let packed = d.join("p.pbr");
    pbr_img_ok(&["pack", image.to_str().unwrap(), "-o", packed.to_str().unwrap()]);
    let map = d.join("map");
    // Every other frame free.
    std::fs::write(&map, (0..4096).map(|i| if i % 2 == 0 { 1u8 } else { 3 }).collect::<Vec<_>>()).unwrap();
    let classified = d.join("pc.pbr");
    pbr_img_ok(&[
        "classify",
        packed.to_str().unwrap(),
        "--class-map",
        map.to_str().unwrap(),
        "-o",
        classified.to_str().unwrap(),
    ]);
    let out = pbr_img(&["trim", classified.to_str().unwrap(), "-o", trimmed.to_str().unwrap()]);
    assert!(out.status.success() && !stderr(&out).contains("never classified"), "{}", stderr(&out));
    let (before, after) = (Image::open(&classified).unwrap(), Image::open(&trimmed).unwrap());
    assert!(after.file_len() <= before.file_len(), "{} -> {}", before.file_len(), after.file_len());
    assert!(after.extents().any(|e| e.encoding == PageEncoding::Lz4));
    assert!(!after.extents().any(|e| e.encoding == PageEncoding::Raw && e.class != pbr_format::PageClass::Unknown));
}

#[test]
fn recover_exits_3_when_no_candidate_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let raw = d.join("raw.pbr");
    pbr_img_ok(&[
        "convert",
        stream.to_str().unwrap(),
        "-o",
        raw.to_str().unwrap(),
        "--phase",
        "kernel",
        "--restore-cmdline",
        "-machine q35,accel=tcg -m 16 -nodefaults -netdev user,id=pbrnet",
    ]);
    let root = d.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/app.conf"), "port=8080\n").unwrap();
    std::fs::write(d.join("list"), "etc/app.conf\n").unwrap();
    let cand = d.join("kernel.pbr");
    pbr_img_ok(&[
        "manifest",
        "add",
        raw.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--list",
        d.join("list").to_str().unwrap(),
        "-o",
        cand.to_str().unwrap(),
    ]);
    std::fs::write(root.join("etc/app.conf"), "port=9090\n").unwrap();
    let (r, c) = (root.to_str().unwrap(), cand.to_str().unwrap());
    let out = pbr_img(&["select", "--root", r, c]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = pbr_img(&["recover", "--root", r, c]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no valid candidate"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1);
}
