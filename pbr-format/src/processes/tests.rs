//! The `PROCESSES` reader over hand-made and edited sections: the round
//! trip, and every hostile case with its typed error, never a panic.

use crate::error::{Error, ErrorKind};
use crate::write::ProcessesBuilder;

use super::Processes;

/// Offset of the section in a pretend file: errors name file offsets.
const AT: u64 = 0x10_000;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the index crc32 after an edit, so the edit is the only
/// thing wrong.
fn reseal(b: &mut [u8]) {
    let end = 48
        + u32_at(b, 4) as usize * u32_at(b, 8) as usize
        + u32_at(b, 12) as usize * u32_at(b, 16) as usize
        + u32_at(b, 20) as usize;
    let crc = crc32fast::hash(&b[4..end.min(b.len())]);
    put32(b, 0, crc);
}

/// Two units; the first with three blobs, the second with one.
fn sample() -> Vec<u8> {
    let mut p = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19").unwrap();
    let nginx = p.add_unit("nginx.service").unwrap();
    let redis = p.add_unit("redis.service").unwrap();
    p.add_blob(nginx, "pstree.img", b"tree".to_vec()).unwrap();
    p.add_blob(nginx, "abcd", b"core".to_vec()).unwrap();
    p.add_blob(nginx, "abc", Vec::new()).unwrap();
    p.add_blob(redis, "pages-1.img", vec![0x5a; 300]).unwrap();
    p.to_bytes().unwrap()
}

/// File offset of blob record `j` of [`sample`] (2 units).
fn blob_record(j: usize) -> usize {
    48 + 2 * 16 + j * 32
}

/// Replaces the first `from` in the string area of [`sample`] with `to`
/// (same length).
fn rename(b: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let strings = blob_record(4);
    let at = strings + b[strings..].windows(from.len()).position(|w| w == from).unwrap();
    b[at..at + to.len()].copy_from_slice(to);
    reseal(b);
}

/// Renames blob `j` of [`sample`] to `to` (as long as its name).
fn rename_blob(b: &mut [u8], j: usize, to: &str) {
    let (off, len) = (u32_at(b, blob_record(j) + 4) as usize, u32_at(b, blob_record(j) + 8) as usize);
    assert_eq!(len, to.len());
    let at = blob_record(4) + off;
    b[at..at + len].copy_from_slice(to.as_bytes());
    reseal(b);
}

fn refused(b: &[u8], want: &str) -> Error {
    let e = Processes::parse(b, AT).expect_err("hostile section accepted");
    assert!(matches!(e.kind(), ErrorKind::Malformed(_)), "{e}");
    assert_eq!(e.section(), Some("PROCESSES"));
    assert!(e.to_string().contains(want), "{e} does not say {want:?}");
    e
}

/// A section laid out by hand, nothing checked: `units` names, `blobs`
/// (unit, name, data length) with consecutive data.
fn raw(units: &[&str], blobs: &[(u32, &str, u64)]) -> Vec<u8> {
    let mut strings = b"6.1.03.19".to_vec();
    let mut recs = Vec::new();
    for u in units {
        recs.extend((strings.len() as u32).to_le_bytes());
        recs.extend((u.len() as u32).to_le_bytes());
        recs.extend([0; 8]);
        strings.extend(u.as_bytes());
    }
    let mut off = 0u64;
    for (unit, name, len) in blobs {
        recs.extend(unit.to_le_bytes());
        recs.extend((strings.len() as u32).to_le_bytes());
        recs.extend((name.len() as u32).to_le_bytes());
        recs.extend(crc32fast::hash(&vec![0; *len as usize]).to_le_bytes());
        recs.extend(off.to_le_bytes());
        recs.extend(len.to_le_bytes());
        strings.extend(name.as_bytes());
        off += len;
    }
    let mut b = Vec::new();
    for v in [0, units.len() as u32, 16, blobs.len() as u32, 32, strings.len() as u32, 0, 5, 5, 4, 0, 0] {
        b.extend(v.to_le_bytes());
    }
    b.extend(recs);
    b.extend(strings);
    b.resize(b.len() + off as usize, 0);
    reseal(&mut b);
    b
}

#[test]
fn round_trip() {
    let b = sample();
    let p = Processes::parse(&b, AT).unwrap();
    assert_eq!((p.kernel(), p.criu_version()), ("6.1.0-28-cloud-amd64", "3.19"));
    let units: Vec<(u32, &str, usize, u64)> = p.units().map(|u| (u.index, u.name, u.blobs.len(), u.bytes())).collect();
    assert_eq!(units, [(0, "nginx.service", 3, 8), (1, "redis.service", 1, 300)]);
    let nginx = p.unit("nginx.service").unwrap();
    assert_eq!(nginx.blob("pstree.img").unwrap().bytes().unwrap(), b"tree");
    assert!(nginx.blob("abc").unwrap().is_empty());
    let pages = p.unit("redis.service").unwrap().blobs[0];
    assert_eq!((pages.unit, pages.name, pages.bytes().unwrap()), ("redis.service", "pages-1.img", &[0x5a; 300][..]));
    assert_eq!(&b[(pages.offset - AT) as usize..][..300], &[0x5a; 300][..], "offsets are file offsets");
    assert_eq!(p.total_bytes(), 308);
    assert_eq!(p.blobs().len(), 4);
    assert_eq!(p.to_builder().unwrap().to_bytes().unwrap(), b);
}

#[test]
fn longer_records_of_a_newer_minor_are_read() {
    let b = raw(&["a.service"], &[(0, "x.img", 3)]);
    // Widen each record by 8 bytes, as a newer writer may.
    let mut wide = b[..48].to_vec();
    wide.extend(&b[48..64]);
    wide.extend([0xee; 8]);
    wide.extend(&b[64..96]);
    wide.extend([0xee; 8]);
    wide.extend(&b[96..]);
    put32(&mut wide, 8, 24);
    put32(&mut wide, 16, 40);
    reseal(&mut wide);
    let p = Processes::parse(&wide, 0).unwrap();
    assert_eq!(p.blobs()[0].bytes().unwrap(), [0; 3]);
}

#[test]
fn bad_blob_names_are_refused() {
    let mut b = sample();
    rename_blob(&mut b, 1, "../x");
    let e = refused(&b, "blob 1 of nginx.service: blob name \"../x\"");
    assert_eq!(e.offset(), Some(AT + blob_record(1) as u64));
    let mut b = sample();
    rename_blob(&mut b, 2, "a/b");
    refused(&b, "blob name \"a/b\" has character '/'");
    let mut b = sample();
    rename_blob(&mut b, 0, ".pstree.im");
    refused(&b, "starts with '.'");
}

#[test]
fn bad_unit_names_are_refused() {
    let mut b = sample();
    rename(&mut b, b"nginx.service", b"ngin/.service");
    let e = refused(&b, "unit 0: unit name \"ngin/.service\"");
    assert_eq!(e.offset(), Some(AT + 48));
    let mut b = sample();
    rename(&mut b, b"redis.service", b"nginx.service");
    refused(&b, "unit 1: nginx.service appears twice");
    let mut b = sample();
    rename(&mut b, b"redis.service", b"redis.socketx");
    refused(&b, "not a service");
}

#[test]
fn duplicate_blob_names_are_refused() {
    let mut b = sample();
    // Point blob 2's name at blob 1's.
    let (off, len) = (u32_at(&b, blob_record(1) + 4), u32_at(&b, blob_record(1) + 8));
    put32(&mut b, blob_record(2) + 4, off);
    put32(&mut b, blob_record(2) + 8, len);
    reseal(&mut b);
    let e = refused(&b, "blob 2: nginx.service has two blobs named abcd");
    assert_eq!(e.offset(), Some(AT + blob_record(2) as u64));
    // The same name in two units is two files in two directories: fine.
    let b = raw(&["a.service", "b.service"], &[(0, "x.img", 1), (1, "x.img", 1)]);
    Processes::parse(&b, 0).unwrap();
}

#[test]
fn lengths_past_the_section_are_refused() {
    let mut b = sample();
    put64(&mut b, blob_record(3) + 24, 301);
    reseal(&mut b);
    refused(&b, "blob 3 (pages-1.img of redis.service) at 8+301 lies beyond the 308-byte data area");
    let mut b = sample();
    put64(&mut b, blob_record(3) + 16, u64::MAX);
    reseal(&mut b);
    refused(&b, "lies beyond");
    let mut b = sample();
    put32(&mut b, blob_record(0) + 8, 10_000);
    reseal(&mut b);
    refused(&b, "blob 0's name at");
    let mut b = sample();
    put32(&mut b, 20, u32::MAX);
    reseal(&mut b);
    refused(&b, "string bytes do not fit");
    let mut b = sample();
    put32(&mut b, 12, u32::MAX);
    reseal(&mut b);
    refused(&b, "4294967295 blob records");
    let mut b = sample();
    put32(&mut b, 28, 5000);
    reseal(&mut b);
    refused(&b, "kernel release at 0+5000");
    for len in [0, 4, 47] {
        refused(&sample()[..len], "shorter than its 48-byte head");
    }
}

#[test]
fn crc_mismatches_name_unit_blob_and_offset() {
    let mut b = sample();
    let at = b.len() - 1;
    b[at] ^= 0x80;
    let p = Processes::parse(&b, AT).unwrap();
    let blob = p.unit("redis.service").unwrap().blobs[0];
    let e = blob.bytes().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ChecksumMismatch { what, .. } if what == "blob pages-1.img of unit redis.service"),
        "{e}"
    );
    assert_eq!((e.section(), e.offset()), (Some("PROCESSES"), Some(AT + (b.len() - 300) as u64)));
    assert!(e.is_damage());
    assert!(p.to_builder().is_err(), "a damaged blob is not copied");
    // The other blobs still read.
    assert_eq!(p.unit("nginx.service").unwrap().blobs[0].bytes().unwrap(), b"tree");

    let mut b = sample();
    b[49] ^= 1;
    let e = Processes::parse(&b, AT).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::ChecksumMismatch { what, .. } if what == "PROCESSES index"), "{e}");
    assert_eq!(e.offset(), Some(AT));
}

#[test]
fn counts_over_the_limits_are_refused() {
    let names: Vec<String> = (0..65).map(|i| format!("u{i}.service")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    refused(&raw(&names, &[]), "unit_count 65 is not in 1..=64");
    Processes::parse(&raw(&names[..64], &[]), 0).unwrap();
    refused(&raw(&[], &[]), "unit_count 0");
    let blobs: Vec<String> = (0..4097).map(|i| format!("b{i}")).collect();
    let blobs: Vec<(u32, &str, u64)> = blobs.iter().map(|n| (0, n.as_str(), 0)).collect();
    refused(&raw(&["a.service"], &blobs), "blob_count 4097 exceeds 4096");
    Processes::parse(&raw(&["a.service"], &blobs[..4096]), 0).unwrap();
    let mut b = raw(&["a.service"], &[]);
    put32(&mut b, 8, 15);
    reseal(&mut b);
    refused(&b, "record sizes 15 and 32");
}

#[test]
fn more_than_a_gigabyte_of_blobs_is_refused() {
    // The data is never written: the zeroed pages stay untouched.
    let half = (1u64 << 29) + 1;
    let head = raw(&["a.service"], &[(0, "x", 0), (0, "y", 0)]);
    let mut b = vec![0u8; head.len() + 2 * half as usize];
    b[..head.len()].copy_from_slice(&head);
    put64(&mut b, blob_record(0) - 16 + 24, half);
    put64(&mut b, blob_record(1) - 16 + 16, half);
    put64(&mut b, blob_record(1) - 16 + 24, half);
    reseal(&mut b);
    refused(&b, "blob 1: the blobs hold more than 1073741824 bytes");
}

#[test]
fn unsorted_overlapping_and_orphan_blobs_are_refused() {
    refused(
        &raw(&["a.service", "b.service"], &[(1, "x", 1), (0, "y", 1)]),
        "blob 1 of unit 0 follows a blob of unit 1",
    );
    refused(&raw(&["a.service"], &[(1, "x", 1)]), "blob 0 names unit 1 of 1");
    let mut b = raw(&["a.service"], &[(0, "x", 4), (0, "y", 4)]);
    put64(&mut b, 48 + 16 + 32 + 16, 3);
    reseal(&mut b);
    refused(&b, "the bytes of blobs 0 and 1 overlap");
    // Empty blobs overlap nothing.
    let mut b = raw(&["a.service"], &[(0, "x", 4), (0, "y", 0)]);
    put64(&mut b, 48 + 16 + 32 + 16, 2);
    reseal(&mut b);
    Processes::parse(&b, 0).unwrap();
}

#[test]
fn strings_are_utf8_without_control_characters() {
    let mut b = sample();
    rename(&mut b, b"cloud", b"\x1b[31m");
    refused(&b, "kernel release \"6.1.0-28-\\u{1b}[31m-amd64\" holds the control character");
    let mut b = sample();
    rename(&mut b, b"3.19", b"3.\xff9");
    refused(&b, "CRIU version is not UTF-8");
}

/// Counts and record sizes whose products overflow 64 bits are refused as
/// not fitting, never wrapped into a small index (found by fuzzing).
#[test]
fn index_sizes_past_64_bits_do_not_wrap() {
    let mut head = vec![0u8; 49];
    for at in [4, 8, 12, 16, 20] {
        head[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    let e = Processes::parse(&head, 0).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}
