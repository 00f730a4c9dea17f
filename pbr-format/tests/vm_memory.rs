//! vm-memory guest memory built from images: content equal to the pages,
//! guest writes never reach the file, truncated files refused.
#![cfg(feature = "vm-memory")]

mod common;

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
