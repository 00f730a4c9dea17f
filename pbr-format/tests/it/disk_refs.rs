//! `DISK_REFS` (format 1.1): written, read back, and refused when hostile.

use crate::common;

use pbr_format::{DiskRefs, ErrorKind, Image, ImageWriter, Region, WriterOptions};

fn write(path: &std::path::Path, refs: Option<DiskRefs>) {
    match refs {
        Some(_) => common::write_disk_refs(path),
        None => common::write_disk_refs_pages(path),
    }
}

#[test]
fn disk_refs_round_trip_as_format_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("with.pbr");
    let without = dir.path().join("without.pbr");
    write(&with, Some(common::disk_refs()));
    write(&without, None);
    let img = Image::open(&with).unwrap();
    assert_eq!(img.disk_refs(), &common::disk_refs());
    assert_eq!((img.header().version_major, img.header().version_minor), (1, 1));
    img.verify().unwrap();
    let plain = Image::open(&without).unwrap();
    assert!(plain.disk_refs().is_empty());
    assert_eq!(plain.header().version_minor, 0, "images without disk references stay 1.0");
    let s = img.sections().iter().find(|s| s.name() == "DISK_REFS").unwrap();
    assert!(s.raw_kind & 0x8000_0000 != 0, "a reader that cannot refill must not restore zeros");
}

#[test]
fn the_writer_refuses_bad_references() {
    let dir = tempfile::tempdir().unwrap();
    let mut w =
        ImageWriter::create(dir.path().join("x.pbr"), &[Region::ram("ram", 0, 8 * 4096)], WriterOptions::default())
            .unwrap();
    let mut r = common::disk_refs();
    r.pages.swap(0, 1);
    assert!(w.set_disk_refs(r).unwrap_err().to_string().contains("not after"));
    let mut r = common::disk_refs();
    r.pages[2].length = 0;
    assert!(w.set_disk_refs(r).unwrap_err().to_string().contains("length 0"));
    let mut r = common::disk_refs();
    r.files[1] = "../etc/passwd".into();
    assert!(w.set_disk_refs(r).is_err());
    let mut r = common::disk_refs();
    r.pages[2].gfn = 9;
    assert!(w.set_disk_refs(r).is_err(), "page 9 is past the region");
}

/// Offset of record `i` of the `DISK_REFS` table in the file.
fn record_at(img: &Image, i: usize) -> usize {
    let s = img.sections().iter().find(|s| s.name() == "DISK_REFS").unwrap();
    s.offset as usize + 8 + i * 48
}

#[test]
fn hostile_records_are_named_with_their_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with.pbr");
    write(&path, Some(common::disk_refs()));
    let good = std::fs::read(&path).unwrap();
    let img = Image::open(&path).unwrap();
    let cases: [(usize, usize, u64, &str); 3] = [
        (1, 0, 1, "not after"),       // gfn 3 -> 1: out of order
        (2, 28, 5000, "length 5000"), // length over the page size
        (0, 0, 1 << 40, "no region"), // page outside memory
    ];
    for (rec, field, value, want) in cases {
        let mut bytes = good.clone();
        let at = record_at(&img, rec) + field;
        if field == 28 {
            bytes[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
        } else {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        common::reseal(&mut bytes);
        let p = dir.path().join("bad.pbr");
        std::fs::write(&p, &bytes).unwrap();
        let e = Image::open(&p).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Malformed { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("DISK_REFS") && text.contains(want), "{text}");
    }
}
