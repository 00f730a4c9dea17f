//! `PROCESSES` (format 1.2) in a whole image: written, read back, checked
//! by verification, and a damaged one never keeps the image from opening.

use crate::common;

use pbr_format::{ErrorKind, Image, ImageWriter, Region, SectionKind, WriterOptions};

fn bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.pbr");
    common::write_processes(&path);
    std::fs::read(path).unwrap()
}

#[test]
fn processes_round_trip_as_format_1_2() {
    let img = Image::from_bytes(bytes()).unwrap();
    assert_eq!((img.header().version_major, img.header().version_minor), (1, 2));
    img.verify().unwrap();
    let p = img.processes().unwrap().unwrap();
    assert_eq!((p.kernel(), p.criu_version()), ("6.1.0-28-cloud-amd64", "3.19"));
    let units: Vec<(&str, usize)> = p.units().map(|u| (u.name, u.blobs.len())).collect();
    assert_eq!(units, [("nginx.service", 3), ("redis-server.service", 2)]);
    let tree = p.unit("nginx.service").unwrap().blob("pstree.img").unwrap().bytes().unwrap();
    assert_eq!(&tree[..8], &[0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50]);
    assert_eq!(p.to_builder().unwrap(), common::processes());
    let s = img.sections().iter().find(|s| s.kind == Some(SectionKind::Processes)).unwrap();
    assert_eq!(s.raw_kind, 14, "not must-understand: an old reader restores the machine as saved");
}

#[test]
fn a_damaged_blob_is_found_by_verify_not_by_open() {
    let mut b = bytes();
    let img = Image::from_bytes(b.clone()).unwrap();
    let p = img.processes().unwrap().unwrap();
    let at = p.unit("nginx.service").unwrap().blob("core-812.img").unwrap().offset;
    b[at as usize + 7] ^= 0x10;
    let img = Image::from_bytes(b).unwrap();
    let p = img.processes().unwrap().unwrap();
    let e = p.unit("nginx.service").unwrap().blob("core-812.img").unwrap().bytes().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ChecksumMismatch { what, .. } if what == "blob core-812.img of unit nginx.service")
    );
    assert_eq!(e.offset(), Some(at));
    assert!(img.verify().is_err());
    let report = img.check(16, &|_| {});
    let named = report.damage.iter().any(|e| e.to_string().contains("blob core-812.img of unit nginx.service"));
    assert!(named, "{:?}", report.damage);
    // The machine's own pages still read.
    img.verify_pages().unwrap();
}

#[test]
fn a_damaged_index_is_found_by_verify_not_by_open() {
    let mut b = bytes();
    let (_, off, _) = common::section_offset(&b, 14).unwrap();
    b[off + 60] ^= 1;
    let img = Image::from_bytes(b).unwrap();
    let e = img.processes().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ChecksumMismatch { .. }), "{e}");
    assert_eq!((e.section(), e.offset()), (Some("PROCESSES"), Some(off as u64)));
    assert!(img.verify().is_err());
}

#[test]
fn a_sealed_hostile_index_is_refused_by_verify() {
    // Every crc recomputed: only the structure is wrong (a blob name that
    // would leave its directory).
    let mut b = bytes();
    let (_, off, _) = common::section_offset(&b, 14).unwrap();
    let at = off + b[off..].windows(10).position(|w| w == b"pstree.img").unwrap();
    b[at..at + 10].copy_from_slice(b"../../.img");
    let end = off + 48 + 2 * 16 + 5 * 32 + u32::from_le_bytes(b[off + 20..off + 24].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&b[off + 4..end]);
    b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
    common::reseal(&mut b);
    let img = Image::from_bytes(b).unwrap();
    let e = img.verify().unwrap_err();
    assert!(e.to_string().contains("blob name \"../../.img\""), "{e}");
}

#[test]
fn images_without_processes_keep_their_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.pbr");
    ImageWriter::create(&path, &[Region::ram("ram", 0, 4096)], WriterOptions::default()).unwrap().finish().unwrap();
    let img = Image::open(&path).unwrap();
    assert_eq!(img.header().version_minor, 0);
    assert!(img.processes().unwrap().is_none());
}
