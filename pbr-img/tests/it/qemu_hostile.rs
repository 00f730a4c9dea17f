//! Truncated and corrupted QEMU streams: a typed error naming the offset,
//! one line, exit status 1, and nothing left under the output name.

use crate::common;

use common::{fixture_stream, offset_in};

fn convert_fails(data: &[u8], expect: &str) -> String {
    common::convert_fails("in.qemu", data, expect)
}

#[test]
fn truncations_name_their_offset() {
    let stream = std::fs::read(fixture_stream("q35-128m-kernel")).unwrap();
    let n = stream.len();
    let mut cuts: Vec<usize> = vec![4, 8, 9, 20, 0x30, 0xbc, 0xc3, 0x1000, n - 1, n - 100, n - 50_000];
    cuts.extend((1..24).map(|i| n / 24 * i + i));
    for cut in cuts {
        let err = convert_fails(&stream[..cut], "truncated");
        assert!(offset_in(&err) <= cut as u64, "cut {cut}: {err}");
    }
}

#[test]
fn corruptions_are_named() {
    let stream = std::fs::read(fixture_stream("q35-128m-kernel")).unwrap();
    let mut s = stream.clone();
    s[0] = b'X';
    convert_fails(&s, "not a QEMU migration stream, libvirt save file or xl save file");
    let mut s = stream.clone();
    s[7] = 2;
    assert_eq!(offset_in(&convert_fails(&s, "version 2 is obsolete")), 4);
    // The first page record after the START section's footer: set XBZRLE.
    let part = 0xc1 + 5;
    let mut s = stream.clone();
    s[part + 7] |= 0x40;
    assert_eq!(offset_in(&convert_fails(&s, "'xbzrle' capability")), part as u64);
    let mut s = stream.clone();
    s[part + 9] = b'X'; // "pc.ram" -> "Xc.ram"
    convert_fails(&s, "unknown ram block 'Xc.ram'");
    // The START section's footer names the wrong section.
    let mut s = stream.clone();
    s[0xbc + 4] ^= 1;
    assert_eq!(offset_in(&convert_fails(&s, "footer names section")), 0xbc);
    // A device section's length no longer matches the vmdescription.
    let mut s = stream.clone();
    let eof = s.len() - 1 - s.iter().rev().position(|&b| b == 0x06).unwrap();
    let json_len = u32::from_be_bytes(s[eof + 1..eof + 5].try_into().unwrap()) as usize;
    assert_eq!(eof + 5 + json_len, s.len());
    let timer = s.windows(6).position(|w| w == b"\x05timer").unwrap();
    s[timer + 1] = b'T';
    convert_fails(&s, "does not match vmdescription");
}
