//! vm-memory guest memory built from images: content equal to the pages,
//! guest writes never reach the file, truncated files refused.
#![cfg(feature = "vm-memory")]

use crate::common;

use pbr_format::Image;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

#[test]
fn guest_memory_holds_the_pages_and_never_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.pbr");
    common::write_sample(&path, false);
    let before = std::fs::read(&path).unwrap();
    let img = Image::open(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mem = pbr_format::vm_memory::guest_memory(&img, &file).unwrap();
    let physical: u64 = img.regions().iter().filter(|r| !r.synthetic).map(|r| r.length).sum();
    assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), physical);
    let (mut buf, mut got) = (vec![0u8; 4096], vec![0u8; 4096]);
    for r in img.regions().iter().filter(|r| !r.synthetic) {
        for g in r.first_gfn(4096)..r.first_gfn(4096) + r.pages(4096) {
            mem.read_slice(&mut got, GuestAddress(g * 4096)).unwrap();
            assert_eq!(&got[..], img.read_page(g, &mut buf).unwrap(), "gfn {g:#x}");
        }
    }
    // The guest writes: copy on write, the image stays as it was.
    mem.write_slice(&[0xee; 4096], GuestAddress(0x3000)).unwrap();
    mem.write_obj(0xdead_beefu32, GuestAddress(0x1_0000_0000)).unwrap();
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1_0000_0000)).unwrap(), 0xdead_beef);
    drop(mem);
    assert!(std::fs::read(&path).unwrap() == before, "guest writes reached the image file");

    // A file shorter than the image says (cut, or not the same file) is
    // refused before anything is mapped: no SIGBUS when the guest touches it.
    let cut = dir.path().join("cut.pbr");
    std::fs::copy(&path, &cut).unwrap();
    std::fs::OpenOptions::new().write(true).open(&cut).unwrap().set_len(8192).unwrap();
    let img = Image::open(&path).unwrap();
    let err = pbr_format::vm_memory::guest_memory(&img, &std::fs::File::open(&cut).unwrap()).unwrap_err();
    assert!(err.to_string().contains("past the end of the file"), "{err}");
}

#[test]
fn write_full_and_diff_images_from_guest_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.pbr");
    let regions = [pbr_format::Region::ram("pc.ram", 0, 64 * 4096)];
    let mut w = pbr_format::ImageWriter::create(&path, &regions, Default::default()).unwrap();
    for g in 0..64 {
        w.write_page(g, &common::page(g), pbr_format::PageClass::Kernel).unwrap();
    }
    w.finish().unwrap();
    let base = Image::open(&path).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mem = pbr_format::vm_memory::guest_memory(&base, &file).unwrap();

    // A full image written back from guest memory holds the same pages.
    let full = dir.path().join("full.pbr");
    pbr_format::vm_memory::write_image(&mem, &full, Default::default(), None).unwrap();
    let full = Image::open(&full).unwrap();
    assert_eq!(full.regions()[0].name, "ram0");
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    for g in 0..64 {
        assert_eq!(full.read_page(g, &mut x).unwrap(), base.read_page(g, &mut y).unwrap());
    }

    // The guest dirties two pages; the VMM writes a diff from its bitmap.
    mem.write_slice(&[0x11; 4096], GuestAddress(7 * 4096)).unwrap();
    mem.write_slice(&[0x22; 4096], GuestAddress(40 * 4096)).unwrap();
    let dirty = |g: u64| g == 7 || g == 40;
    let diff_path = dir.path().join("diff.pbr");
    pbr_format::vm_memory::write_image(&mem, &diff_path, Default::default(), Some((&base, &dirty))).unwrap();
    let diff = Image::open(&diff_path).unwrap();
    diff.verify().unwrap();
    assert_eq!(diff.base().unwrap().blake3, base.content_hash().unwrap());
    assert_eq!(diff.stored_page_count(), 2);
    let mut buf = vec![0u8; 4096];
    assert_eq!(diff.read_page(40, &mut buf).unwrap(), &[0x22; 4096][..]);
    assert_eq!(diff.extent_of(8).unwrap().encoding, pbr_format::PageEncoding::Base);
}

/// Page-cache pages that must be read back from the guest's disks (or
/// cannot be) are never handed to a guest as zeros; a damaged page is
/// never mapped.
#[test]
fn guest_memory_refuses_pages_it_cannot_give_back_as_captured() {
    let dir = tempfile::tempdir().unwrap();
    let (refs, orphans) = (dir.path().join("refs.pbr"), dir.path().join("orphans.pbr"));
    common::write_disk_refs(&refs);
    common::write_disk_refs_pages(&orphans);
    for (path, what) in [(&refs, "2 page-cache pages must be read back"), (&orphans, "2 cannot be")] {
        let img = Image::open(path).unwrap();
        let file = std::fs::File::open(path).unwrap();
        let e = pbr_format::vm_memory::guest_memory(&img, &file).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    let sample = dir.path().join("s.pbr");
    common::write_sample(&sample, false);
    let img = Image::open(&sample).unwrap();
    let run = img.raw_runs()[0];
    let mut bytes = std::fs::read(&sample).unwrap();
    bytes[run.file_offset as usize + 9] ^= 1;
    std::fs::write(&sample, bytes).unwrap();
    let img = Image::open(&sample).unwrap();
    let file = std::fs::File::open(&sample).unwrap();
    assert!(pbr_format::vm_memory::guest_memory(&img, &file).unwrap_err().is_damage());
}
