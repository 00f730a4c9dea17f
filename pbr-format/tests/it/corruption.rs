//! Every single-bit flip and every truncation of small images of each kind
//! is caught: by `open` or by `verify`. All of them, not a sample.

use crate::common;

use pbr_format::{ErrorKind, Image, ImageWriter, PageClass, Region, WriterOptions};

fn check_all_flips_and_truncations(bytes: &[u8]) {
    Image::from_bytes(bytes.to_vec()).unwrap().verify().unwrap();
    let mut buf = bytes.to_vec();
    let mut missed = Vec::new();
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            buf[byte] ^= 1 << bit;
            let caught = Image::from_bytes(buf.clone()).and_then(|i| i.verify()).is_err();
            if !caught {
                missed.push((byte, bit));
            }
            buf[byte] ^= 1 << bit;
        }
    }
    assert!(missed.is_empty(), "{} flips not caught, first {:?}", missed.len(), &missed[..missed.len().min(8)]);
    for len in 0..bytes.len() {
        let err = Image::from_bytes(bytes[..len].to_vec()).expect_err("truncation accepted");
        if len >= 8 {
            assert!(matches!(err.kind(), ErrorKind::Incomplete { .. }), "truncation to {len} bytes: {err}");
        }
    }
}

#[test]
fn raw_image_flips_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.pbr");
    let regions = [Region::ram("pc.ram", 0, 4 * 4096)];
    let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
    w.write_page(1, &common::page(1), PageClass::Kernel).unwrap();
    w.set_phase(pbr_format::Phase::named("kernel", 1)).unwrap();
    w.set_metadata(pbr_format::keys::SOURCE_FORMAT, "vmm").unwrap();
    w.finish().unwrap();
    check_all_flips_and_truncations(&std::fs::read(&path).unwrap());
}

#[test]
fn packed_image_flips_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("packed.pbr");
    let regions = [Region::ram("pc.ram", 0, 4 * 4096)];
    let opts = WriterOptions { page_hashes: true, ..WriterOptions::default() };
    let mut w = ImageWriter::create(&path, &regions, opts).unwrap();
    w.write_page_lz4(0, &common::page(1), PageClass::User).unwrap();
    w.write_page_lz4(1, &[7; 4096], PageClass::User).unwrap();
    w.write_dup(3, 0, PageClass::User).unwrap();
    w.add_vcpu(pbr_format::Vcpu::X86_64(Box::new(pbr_format::X86Vcpu::new(0)))).unwrap();
    w.finish().unwrap();
    check_all_flips_and_truncations(&std::fs::read(&path).unwrap());
}

#[test]
fn diff_image_flips_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("base.pbr");
    let regions = [Region::ram("pc.ram", 0, 2 * 4096)];
    ImageWriter::create(&base_path, &regions, WriterOptions::default()).unwrap().finish().unwrap();
    let base = Image::open(&base_path).unwrap();
    let opts = WriterOptions { unwritten: pbr_format::PageEncoding::Base, ..WriterOptions::default() };
    let path = dir.path().join("diff.pbr");
    let mut w = ImageWriter::create(&path, &regions, opts).unwrap();
    w.set_base(pbr_format::BaseRef {
        blake3: base.content_hash().unwrap(),
        result_blake3: Some([7; 32]),
        page_size: 4096,
        name: "base.pbr".into(),
    })
    .unwrap();
    w.write_page(1, &common::page(9), PageClass::Kernel).unwrap();
    w.finish().unwrap();
    check_all_flips_and_truncations(&std::fs::read(&path).unwrap());
}

#[test]
fn processes_image_flips_and_truncations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("processes.pbr");
    let regions = [Region::ram("pc.ram", 0, 2 * 4096)];
    let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
    w.write_page(1, &common::page(3), PageClass::User).unwrap();
    let mut p = pbr_format::ProcessesBuilder::new("6.1.0", "3.19").unwrap();
    let u = p.add_unit("a.service").unwrap();
    p.add_blob(u, "pstree.img", common::pstree_img(&[(1, 0, 1, 1, &[1])])).unwrap();
    w.set_processes(p).unwrap();
    w.finish().unwrap();
    check_all_flips_and_truncations(&std::fs::read(&path).unwrap());
}
