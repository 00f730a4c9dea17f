//! The writer's memory stays bounded: a 16 GiB guest is written with well
//! under 64 MiB of heap. A counting global allocator measures the peak.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::peak;
use pbr_format::{Image, ImageWriter, PageClass, Region, WriterOptions};

#[test]
fn sixteen_gib_guest_writes_under_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pbr");
    let gib = 1u64 << 30;
    let regions = [Region::ram("pc.ram", 0, 2 * gib), Region::ram("pc.ram-high", 4 * gib, 14 * gib)];
    let peak = peak(|| {
        let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
        // A page every 2 MiB across all 16 GiB, in descending order, with classes.
        let page = vec![0xA5u8; 4096];
        for i in (0..8192u64).rev() {
            let gfn = if i < 1024 { i * 512 } else { ((4 * gib) >> 12) + (i - 1024) * 512 };
            w.write_page(gfn, &page, PageClass::ALL[(i % 5) as usize]).unwrap();
        }
        w.finish().unwrap();
    });
    assert!(peak < 64 << 20, "peak heap {} MiB", peak >> 20);
    let img = Image::open(&path).unwrap();
    assert_eq!(img.page_count(), 16 * gib / 4096);
    assert_eq!(img.stored_page_count(), 8192);
    eprintln!("16 GiB guest: peak writer heap {} MiB, file {} KiB", peak >> 20, img.file_len() >> 10);
}

#[test]
fn claimed_memory_is_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claim.pbr");
    let regions = [Region::ram("pc.ram", 0, 1 << 40)];
    let peak = peak(|| {
        let mut w = ImageWriter::create(&path, &regions, WriterOptions::default()).unwrap();
        w.write_page(12345, &[1u8; 4096], PageClass::Kernel).unwrap();
        w.finish().unwrap();
    });
    assert!(peak < 4 << 20, "a 1 TiB region with one page cost {peak} bytes of heap");
    let img = Image::open(&path).unwrap();
    assert_eq!(img.extent_count(), 3);
}
