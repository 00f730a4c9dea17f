//! Hand-made hostile files: each gets the typed error that names the
//! problem and where it is.

use crate::common;

use common::{reseal, section_offset, write_sample};
use pbr_format::{ErrorKind, Image};

fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.pbr");
    write_sample(&path, false);
    std::fs::read(path).unwrap()
}

fn open(bytes: Vec<u8>) -> pbr_format::Error {
    Image::from_bytes(bytes).and_then(|i| i.verify().map(|_| ())).expect_err("hostile file accepted")
}

#[test]
fn test_bad_magic() {
    let mut b = sample_bytes();
    b[0] = b'X';
    assert!(matches!(open(b).kind(), ErrorKind::BadMagic { .. }));
    assert!(matches!(open(b"hello".to_vec()).kind(), ErrorKind::BadMagic { .. }));
    assert!(matches!(open(Vec::new()).kind(), ErrorKind::BadMagic { .. }));
}

#[test]
fn test_bad_version() {
    let mut b = sample_bytes();
    b[8] = 2;
    reseal(&mut b);
    let e = open(b);
    assert!(matches!(e.kind(), ErrorKind::UnsupportedVersion { major: 2, .. }), "{e}");
    assert_eq!(e.offset(), Some(8));
}

#[test]
fn newer_minor_version_is_read() {
    let mut b = sample_bytes();
    b[10] = 7;
    reseal(&mut b);
    let img = Image::from_bytes(b).unwrap();
    img.verify().unwrap();
    assert_eq!(img.header().version_minor, 7);
}

#[test]
fn test_bad_crc_names_section_and_offset() {
    let mut b = sample_bytes();
    let (_, off, _) = section_offset(&b, 0x8000_0001).unwrap();
    b[off + 8] ^= 1;
    let e = Image::from_bytes(b).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ChecksumMismatch { .. }), "{e}");
    assert_eq!(e.section(), Some("REGIONS"));
    assert_eq!(e.offset(), Some(off as u64));
}

#[test]
fn corrupt_page_is_named_by_verify() {
    let mut b = sample_bytes();
    let img = Image::from_bytes(b.clone()).unwrap();
    let e = img.extent_of(7).unwrap();
    let at = e.data as usize + 100;
    drop(img);
    b[at] ^= 0x80;
    let err = Image::from_bytes(b).unwrap().verify().unwrap_err();
    assert_eq!(err.section(), Some("PAGE_DATA"));
    assert_eq!(err.offset(), Some(e.data));
    assert!(err.to_string().contains("gfn 0x7"), "{err}");
}

#[test]
fn truncated_file_is_incomplete() {
    let b = sample_bytes();
    let e = Image::from_bytes(b[..b.len() - 1].to_vec()).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Incomplete { .. }));
    assert!(e.to_string().contains("incomplete image"), "{e}");
}

#[test]
fn unknown_required_feature_is_refused() {
    let mut b = sample_bytes();
    b[24 + 7] = 0x80;
    reseal(&mut b);
    assert!(matches!(open(b).kind(), ErrorKind::UnsupportedFeature { .. }));
}

#[test]
fn unknown_sections_are_skipped_or_refused_by_their_bit() {
    let mut b = sample_bytes();
    // Re-label the PHASE section (optional) as an unknown optional kind.
    let (entry, _, _) = section_offset(&b, 6).unwrap();
    b[entry..entry + 4].copy_from_slice(&0x0000_0777u32.to_le_bytes());
    reseal(&mut b);
    let img = Image::from_bytes(b.clone()).unwrap();
    img.verify().unwrap();
    assert!(img.phase().is_none());
    assert!(img.sections().iter().any(|s| s.kind.is_none() && s.raw_kind == 0x777));

    b[entry..entry + 4].copy_from_slice(&0x8000_0777u32.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(open(b).kind(), ErrorKind::UnknownRequiredSection { kind: 0x8000_0777 }));
}

#[test]
fn must_understand_bit_must_match_the_kind() {
    let mut b = sample_bytes();
    let (entry, _, _) = section_offset(&b, 0x8000_0001).unwrap();
    b[entry..entry + 4].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut b);
    let e = open(b);
    assert!(e.to_string().contains("must-understand"), "{e}");
}

#[test]
fn overlapping_extents_are_refused() {
    let mut b = sample_bytes();
    let (_, off, _) = section_offset(&b, 0x8000_0002).unwrap();
    // Extent 1's gfn := extent 0's gfn.
    let first = off + 8;
    let second = first + 32;
    let g = b[first..first + 8].to_vec();
    b[second..second + 8].copy_from_slice(&g);
    reseal(&mut b);
    let e = open(b);
    assert_eq!(e.section(), Some("PAGE_INDEX"));
    assert!(e.to_string().contains("extent 1"), "{e}");
}

#[test]
fn huge_counts_do_not_allocate() {
    let mut b = sample_bytes();
    let (_, off, _) = section_offset(&b, 0x8000_0002).unwrap();
    b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    let e = open(b);
    assert!(e.to_string().contains("do not fit"), "{e}");

    let mut b = sample_bytes();
    let (_, off, _) = section_offset(&b, 7).unwrap();
    b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert!(open(b).to_string().contains("exceeds the limit"));
}

#[test]
fn hostile_manifest_path_is_refused() {
    let mut b = sample_bytes();
    let (_, off, len) = section_offset(&b, 10).unwrap();
    let s = &mut b[off..off + len];
    let at = s.windows(12).position(|w| w == b"etc/hostname").unwrap();
    s[at..at + 12].copy_from_slice(b"../../passwd");
    reseal(&mut b);
    let e = open(b);
    assert_eq!(e.section(), Some("MANIFEST"));
    assert!(e.to_string().contains("'..'"), "{e}");
}
