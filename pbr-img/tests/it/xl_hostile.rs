//! Malformed `xl save` files: a typed error naming the record and offset,
//! one line, exit status 2, nothing left under the output name; and every
//! truncation refused.

use crate::common;

use common::pbr_img;
use common::xl::{self, rec};

fn content(pfn: u64) -> Vec<u8> {
    (0..xl::PAGE).map(|i| (pfn as usize * 7 + i) as u8).collect()
}

/// A small HVM v3 file; returns it and the offset of its first PAGE_DATA.
fn small() -> (Vec<u8>, usize) {
    let mut v = xl::xl_header(Some(r#"{"c_info":{"type":"hvm","name":"h"}}"#));
    v.extend(xl::libxl_header());
    v.extend(rec(1, &[]));
    v.extend(xl::libxc_headers(3, 2));
    v.extend(xl::policies());
    let pd = v.len();
    let entries: Vec<(u64, u8)> = (0..40).map(|p| (p, if p == 3 { xl::XTAB } else { xl::NOTAB })).collect();
    v.extend(xl::page_data(&entries[..20], &content));
    v.extend(xl::page_data(&entries[20..], &content));
    v.extend(xl::tsc_info());
    v.extend(rec(9, &xl::hvm_context(&[xl::CpuSpec::new(0)])));
    v.extend(rec(0, &[]));
    v.extend(rec(3, &[2, 0, 0, 0, 0, 0, 0, 0, b'Q', b'E', b'V', b'M', 0, 0, 0, 3, 0]));
    v.extend(rec(0, &[]));
    (v, pd)
}

fn convert_fails(data: &[u8], expect: &str) -> String {
    common::convert_fails("in.xl", data, expect)
}

fn offset_in(err: &str) -> usize {
    common::offset_in(err) as usize
}

#[test]
fn the_small_file_is_valid() {
    let (v, _) = small();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.xl");
    std::fs::write(&p, &v).unwrap();
    xl::xen_verify(&p).unwrap();
    let out = dir.path().join("ok.pbr");
    let r = pbr_img(&["convert", p.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn headers() {
    let (v, _) = small();
    let mut b = v.clone();
    b[3] = b'X';
    // Not an xl file at all: detected by magic.
    convert_fails(&b, "unknown magic");
    let mut b = v.clone();
    b[32..36].copy_from_slice(&[1, 2, 3, 4]);
    assert_eq!(offset_in(&convert_fails(&b, "big-endian host")), 32);
    b[32..36].copy_from_slice(&[9, 9, 9, 9]);
    convert_fails(&b, "bad byte-order marker");
    let mut b = v.clone();
    b[36] = 1;
    convert_fails(&b, "convert-legacy-stream");
    b[36] = 7;
    convert_fails(&b, "newer xl");
    let mut b = v.clone();
    b[44..48].copy_from_slice(&(u32::MAX).to_le_bytes());
    convert_fails(&b, "optional data");
    let mut b = v.clone();
    b[48..52].copy_from_slice(&1000u32.to_le_bytes());
    convert_fails(&b, "cannot hold the config length");
    let mut b = v.clone();
    b[53] = b'[';
    convert_fails(&b, "not valid JSON");
    let libxl = 48 + u32::from_le_bytes(v[44..48].try_into().unwrap()) as usize;
    let mut b = v.clone();
    b[libxl] = b'l';
    assert_eq!(offset_in(&convert_fails(&b, "LibxlFmt")), libxl);
    let mut b = v.clone();
    b[libxl + 15] = 1;
    convert_fails(&b, "big-endian libxl stream");
    b[libxl + 15] = 4;
    convert_fails(&b, "reserved bits");
    let libxc = libxl + 24;
    let mut b = v.clone();
    b[libxc + 3] = 0;
    convert_fails(&b, "legacy (pre-Xen-4.6) libxc image");
    let mut b = v.clone();
    b[libxc + 15] = 4;
    convert_fails(&b, "libxc stream version 4");
    let mut b = v.clone();
    b[libxc + 24] = 3;
    convert_fails(&b, "domain type 3");
    let mut b = v.clone();
    b[libxc + 28] = 13;
    convert_fails(&b, "page shift 13");
}

#[test]
fn records() {
    let (v, pd) = small();
    let libxl = 48 + u32::from_le_bytes(v[44..48].try_into().unwrap()) as usize;
    // An unknown libxl record instead of LIBXC_CONTEXT.
    let mut b = v.clone();
    b[libxl + 16] = 9;
    assert_eq!(offset_in(&convert_fails(&b, "unknown libxl record type 0x9")), libxl + 16);
    // Non-zero padding: the emulator record near the end has a 17-byte
    // body and 7 bytes of padding.
    let mut b = v.clone();
    let n = b.len();
    b[n - 8 - 2] = 1;
    convert_fails(&b, "padding of libxl record emulator-context");
    // An oversized libxc record.
    let mut b = v.clone();
    b[pd + 4..pd + 8].copy_from_slice(&(129u32 << 20).to_le_bytes());
    assert_eq!(offset_in(&convert_fails(&b, "exceeds libxc's 128 MiB cap")), pd);
    // An unknown mandatory libxc record.
    let mut b = v.clone();
    b[pd] = 0x13;
    convert_fails(&b, "unknown mandatory libxc record type 0x13");
    // PAGE_DATA: reserved word, reserved pfn bits, bad type, duplicate, range, length.
    let entry = |i: usize| pd + 16 + 8 * i;
    let mut b = v.clone();
    b[pd + 12] = 1;
    convert_fails(&b, "reserved word is not zero");
    let mut b = v.clone();
    b[entry(5) + 6] = 0x10;
    assert_eq!(offset_in(&convert_fails(&b, "reserved bits 59..52")), entry(5));
    let mut b = v.clone();
    b[entry(5) + 7] = 0x60;
    convert_fails(&b, "page type 0x6 does not exist");
    let mut b = v.clone();
    b[entry(6)] = 5;
    assert_eq!(offset_in(&convert_fails(&b, "pfn 0x5 appears twice")), entry(6));
    let mut b = v.clone();
    b[entry(7) + 5] = 0x01;
    convert_fails(&b, "beyond a 52-bit physical address space");
    let mut b = v.clone();
    b[entry(7) + 7] = 0x10;
    convert_fails(&b, "PV page-table type in an HVM stream");
    let mut b = v.clone();
    b[pd + 8..pd + 12].copy_from_slice(&19u32.to_le_bytes());
    convert_fails(&b, "pfns with");
    let mut b = v.clone();
    b[pd + 8..pd + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    convert_fails(&b, "does not fit");
    // STATIC_DATA_END missing in a v3 stream: PAGE_DATA comes first.
    let mut b = v.clone();
    let sde = pd - 8;
    b[sde] = 0x12;
    b[sde + 4] = 0;
    convert_fails(&b, "x86-msr-policy record of 0 bytes");
}

#[test]
fn wrong_record_for_the_guest_type() {
    let (v, pd) = small();
    let mut b = v[..pd].to_vec();
    b.extend(rec(7, &vec![0; 4096]));
    b.extend_from_slice(&v[pd..]);
    convert_fails(&b, "a PV record in an HVM stream");
    let mut b = v[..pd].to_vec();
    b.extend(rec(0x0b, &[1, 2, 3]));
    b.extend_from_slice(&v[pd..]);
    convert_fails(&b, "TOOLSTACK");
    let mut b = v[..pd].to_vec();
    b.extend(rec(0x10, &[]));
    b.extend_from_slice(&v[pd..]);
    convert_fails(&b, "a second STATIC_DATA_END");
    // A PV stream must send its p2m frames before its pages.
    let mut pv = xl::xl_header(None);
    pv.extend(xl::libxl_header());
    pv.extend(rec(1, &[]));
    pv.extend(xl::libxc_headers(3, 1));
    pv.extend(rec(2, &[8, 4, 0, 0, 0, 0, 0, 0]));
    pv.extend(xl::policies());
    pv.extend(xl::page_data(&[(0, xl::NOTAB)], &content));
    convert_fails(&pv, "X86_PV_P2M_FRAMES before its pages");
}

/// Every truncation is refused (library call, no process per case), and the
/// error names an offset inside the file.
#[test]
fn every_truncation_is_refused() {
    let (v, _) = small();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.pbr");
    let opts = pbr_tools::xen::ConvertOptions { no_sync: true, ..Default::default() };
    let mut cuts: Vec<usize> = (0..v.len()).filter(|i| i % 8 == 0 || *i < 800 || v.len() - i < 2000).collect();
    cuts.extend((0..v.len()).step_by(97));
    for cut in cuts {
        match pbr_tools::xen::convert(&v[..cut], &out, &opts, &|_| ()) {
            Ok(_) => panic!("a file cut at {cut} of {} was accepted", v.len()),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("xl stream:") && msg.contains("at offset 0x"), "cut {cut}: {msg}");
            }
        }
        assert!(!out.exists());
    }
}
