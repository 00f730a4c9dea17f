//! The full-featured sample image reads back as written.

use crate::common;

use common::{PS, page, sample_vcpu, write_diff, write_sample};
use pbr_format::{DeviceOrigin, Image, PageClass, PageEncoding, Vcpu};

#[test]
fn sample_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.pbr");
    let report = write_sample(&path, true);
    let img = Image::open(&path).unwrap();
    assert_eq!(report.file_len, img.file_len());
    assert_eq!(report.image_blake3, img.image_blake3());
    img.verify().unwrap();

    assert_eq!(img.header().producer_name, "pbr-tests");
    assert_eq!(img.regions().len(), 3);
    assert_eq!(img.page_count(), 36);
    let phase = img.phase().unwrap();
    assert_eq!((phase.name.as_ref(), phase.sequence, phase.since_boot_ns), ("daemons", 2, 3_500_000_000));
    assert!(img.has_page_hashes());

    let mut buf = vec![0u8; PS];
    for gfn in 0..10 {
        let want = if gfn == 4 { page(400) } else { page(gfn) };
        assert_eq!(img.read_page(gfn, &mut buf).unwrap(), &want[..], "gfn {gfn}");
    }
    assert_eq!(img.extent_of(4).unwrap().class, PageClass::User);
    assert_eq!(img.extent_of(12).unwrap().encoding, PageEncoding::Zero);
    assert_eq!(img.extent_of(15).unwrap().encoding, PageEncoding::Trimmed);
    assert_eq!(img.read_page(15, &mut buf).unwrap(), &[0u8; PS][..]);
    let dup = img.extent_of(18).unwrap();
    assert_eq!((dup.encoding, dup.count, dup.data), (PageEncoding::Dup, 2, 2));
    assert_eq!(img.read_page(19, &mut buf).unwrap(), &page(2)[..]);
    for gfn in 0x10_0000..0x10_0004 {
        assert_eq!(img.extent_of(gfn).unwrap().encoding, PageEncoding::Lz4);
        assert_eq!(img.read_page(gfn, &mut buf).unwrap(), &page(gfn)[..]);
    }
    assert_eq!(img.read_page(0x1000_0003, &mut buf).unwrap(), &[0x5a; PS][..]);
    // Pages nobody wrote are zero.
    assert_eq!(img.extent_of(0x10_0005).unwrap().encoding, PageEncoding::Zero);
    assert!(img.extent_of(0x20_0000).is_err());

    // Out-of-order writes: 0..10 arrived in reverse, so no two are
    // contiguous in the file; every raw run is still page-aligned.
    for run in img.raw_runs() {
        assert_eq!(run.file_offset % PS as u64, 0);
    }

    let vcpus = img.vcpus();
    assert_eq!(vcpus.len(), 2);
    assert_eq!(vcpus[0], Vcpu::X86_64(Box::new(sample_vcpu(0))));
    assert_eq!(vcpus[1], Vcpu::X86_64(Box::new(sample_vcpu(1))));

    let devs: Vec<_> = img.devices().collect();
    assert_eq!(devs.len(), 2);
    assert_eq!(
        (devs[0].origin, devs[0].name.as_ref(), &devs[0].data[..]),
        (DeviceOrigin::QEMU_SECTION, "timer", &[1u8, 2, 3, 4, 5][..])
    );
    assert_eq!(devs[1].origin, DeviceOrigin::XEN_HVM);
    assert_eq!(img.metadata_value(pbr_format::keys::GUEST_RAM_SIZE), Some("131072"));
    assert_eq!(img.manifest()[0].path, "etc/hostname");
    assert_eq!(img.manifest()[0].mtime_ns, -5);
    assert_eq!(img.cache_refs()[0].gfn, 19);
}

#[test]
fn pages_in_guest_order_form_one_mappable_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordered.pbr");
    let regions = [pbr_format::Region::ram("pc.ram", 0, 64 * PS as u64)];
    let mut w = pbr_format::ImageWriter::create(&path, &regions, Default::default()).unwrap();
    for gfn in 0..64 {
        let class = if gfn % 2 == 0 { PageClass::Kernel } else { PageClass::User };
        w.write_page(gfn, &page(gfn), class).unwrap();
    }
    w.finish().unwrap();
    let img = Image::open(&path).unwrap();
    // 64 extents (classes alternate) but one run in the file.
    assert_eq!(img.extent_count(), 64);
    let runs = img.raw_runs();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].gfn, runs[0].pages, runs[0].file_offset), (0, 64, PS as u64));
    let e = img.extent_of(10).unwrap();
    let mapped = img.raw_bytes(&e).unwrap();
    assert!(
        std::ptr::eq(mapped.as_ptr(), img.as_bytes()[e.data as usize..].as_ptr()),
        "raw bytes are borrowed from the map"
    );
    assert_eq!(img.extents_in(8..12).count(), 4);
    assert_eq!(img.extents_of_class(PageClass::User).count(), 32);
}

#[test]
fn diff_image_names_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let base_path = dir.path().join("sample.pbr");
    write_sample(&base_path, false);
    let base = Image::open(&base_path).unwrap();
    let diff_path = dir.path().join("diff.pbr");
    write_diff(&diff_path, &base);
    let diff = Image::open(&diff_path).unwrap();
    diff.verify().unwrap();
    assert_eq!(diff.base().unwrap().blake3, base.content_hash().unwrap());
    assert_eq!(diff.extent_of(0).unwrap().encoding, PageEncoding::Base);
    let mut buf = vec![0u8; PS];
    assert_eq!(diff.read_page(3, &mut buf).unwrap(), &page(3000)[..]);
    assert!(diff.read_page(0, &mut buf).unwrap_err().to_string().contains("base image"));
}

#[test]
fn unfinished_writer_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.pbr");
    {
        let regions = [pbr_format::Region::ram("pc.ram", 0, 4 * PS as u64)];
        let mut w = pbr_format::ImageWriter::create(&path, &regions, Default::default()).unwrap();
        w.write_page(0, &page(0), PageClass::Kernel).unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, no temp file");
}

#[test]
fn finish_replaces_an_existing_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.pbr");
    std::fs::write(&path, b"old").unwrap();
    let regions = [pbr_format::Region::ram("pc.ram", 0, 4 * PS as u64)];
    let w = pbr_format::ImageWriter::create(&path, &regions, Default::default()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old", "the old file stays until finish");
    w.finish().unwrap();
    Image::open(&path).unwrap().verify().unwrap();
}

#[test]
fn huge_pages_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.pbr");
    const HP: usize = 2 << 20;
    let regions = [pbr_format::Region::ram("pc.ram", 0, 8 * HP as u64)];
    let opts = pbr_format::WriterOptions { page_size: HP as u32, page_hashes: true, ..Default::default() };
    let mut w = pbr_format::ImageWriter::create(&path, &regions, opts).unwrap();
    let big: Vec<u8> = (0..HP).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
    w.write_page(1, &big, PageClass::User).unwrap();
    w.write_page(2, &big, PageClass::User).unwrap();
    w.write_page_lz4(5, &vec![9u8; HP], PageClass::Kernel).unwrap();
    w.finish().unwrap();
    let img = Image::open(&path).unwrap();
    img.verify().unwrap();
    assert_eq!(img.page_size(), HP as u32);
    let mut buf = vec![0u8; HP];
    assert_eq!(img.read_page(2, &mut buf).unwrap(), &big[..]);
    assert_eq!(img.read_page(5, &mut buf).unwrap(), &vec![9u8; HP][..]);
    let run = img.raw_runs()[0];
    assert_eq!((run.gfn, run.pages, run.file_offset % HP as u64), (1, 2, 0));
}
