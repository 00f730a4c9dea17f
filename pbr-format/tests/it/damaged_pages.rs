//! A damaged stored page never leaves the reader: every way a page is
//! handed out (read, raw slice, run check, content hash, guest memory)
//! refuses it with its gfn and offset, for every stored page of an image
//! holding raw, lz4 and duplicate pages. Opening still works: it reads no
//! page data, and a damaged page is damage to report, not a broken file.

use crate::common;

use pbr_format::{ErrorKind, Image, PageEncoding};

/// The file offset of the stored bytes of each stored page of `img`, with
/// its gfn and encoding.
fn stored_pages(img: &Image) -> Vec<(u64, u64, PageEncoding)> {
    let bytes = img.as_bytes();
    let end = |e: &pbr_format::Extent, i: u64| {
        let o = (e.data + 4 * i) as usize;
        u64::from(u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()))
    };
    let mut out = Vec::new();
    for e in img.extents().filter(|e| e.encoding.is_stored()) {
        for gfn in e.gfns() {
            let i = gfn - e.gfn;
            let at = match e.encoding {
                PageEncoding::Raw => e.data + i * 4096,
                // An lz4 extent: a table of end offsets, then the pages;
                // a byte in the middle of page i's stored bytes.
                _ => {
                    let start = if i == 0 { 0 } else { end(&e, i - 1) };
                    e.data + 4 * u64::from(e.count) + (start + end(&e, i)) / 2
                }
            };
            out.push((gfn, at, e.encoding));
        }
    }
    out
}

fn assert_damage(e: &pbr_format::Error, what: &str) {
    assert!(e.is_damage(), "{what}: not reported as damage: {e}");
    assert!(matches!(e.kind(), ErrorKind::ChecksumMismatch { .. }), "{what}: {e}");
    assert_eq!(e.section(), Some("PAGE_DATA"), "{what}: {e}");
    assert!(e.to_string().contains("page gfn 0x"), "{what}: the page is not named: {e}");
}

#[test]
fn every_reader_refuses_every_damaged_page() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.pbr");
    common::write_sample(&path, false);
    let good = std::fs::read(&path).unwrap();
    let pages = stored_pages(&Image::open(&path).unwrap());
    assert!(pages.iter().any(|p| p.2 == PageEncoding::Raw) && pages.iter().any(|p| p.2 == PageEncoding::Lz4));
    let mut buf = vec![0u8; 4096];
    for &(gfn, at, encoding) in &pages {
        let mut bytes = good.clone();
        bytes[at as usize] ^= 0x10;
        let img = Image::from_bytes(bytes).expect("a damaged page does not stop open");
        let what = format!("{encoding} page {gfn:#x} damaged at {at:#x}");
        // lz4 damage may break the decoding itself: that is refused too.
        let e = img.read_page(gfn, &mut buf).expect_err(&what);
        if encoding == PageEncoding::Raw {
            assert_damage(&e, &what);
            assert_eq!(e.offset(), Some(at), "{what}: {e}");
            let ext = img.extent_of(gfn).unwrap();
            assert_damage(&img.raw_bytes(&ext).unwrap_err(), &what);
            assert_damage(&img.raw_pages(&ext, gfn..gfn + 1).unwrap_err(), &what);
            let run = img.raw_runs().into_iter().find(|r| (r.gfn..r.gfn + r.pages).contains(&gfn)).unwrap();
            assert_damage(&img.check_run(&run).unwrap_err(), &what);
        }
        // Every duplicate of the page is refused with it.
        for e in img.extents().filter(|e| e.encoding == PageEncoding::Dup && e.data == gfn) {
            assert!(img.read_page(e.gfn, &mut buf).is_err(), "{what}: its duplicate {:#x} was read", e.gfn);
        }
        assert!(img.verify_pages().is_err(), "{what}: verify_pages passed");
        assert!(img.check_page_crcs().is_err(), "{what}: check_page_crcs passed");
        assert!(img.content_hash().is_err(), "{what}: content_hash passed");
        assert!(img.verify().is_err(), "{what}: verify passed");
    }
}

#[test]
fn the_pages_of_other_runs_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.pbr");
    common::write_sample(&path, false);
    let img = Image::open(&path).unwrap();
    let (gfn, at, _) = stored_pages(&img).into_iter().find(|p| p.2 == PageEncoding::Raw).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at as usize] ^= 1;
    let img = Image::from_bytes(bytes).unwrap();
    let mut buf = vec![0u8; 4096];
    let other = img.extents().find(|e| e.encoding == PageEncoding::Lz4).unwrap();
    img.read_page(other.gfn, &mut buf).expect("an undamaged page reads");
    assert!(img.read_page(gfn, &mut buf).is_err());
}

#[test]
fn endless_inputs_are_refused_before_reading() {
    for dev in ["/dev/zero", "/dev/urandom"] {
        let e = Image::open(dev).unwrap_err();
        assert!(e.to_string().contains("character device"), "{dev}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // Opening a FIFO for reading would block without a writer: it is
    // refused before that.
    let e = Image::open(&fifo).unwrap_err();
    assert!(e.to_string().contains("named pipe"), "{e}");
}

#[test]
fn outputs_never_replace_what_is_not_a_regular_file() {
    let regions = [pbr_format::Region::ram("ram", 0, 4096)];
    let Err(e) = pbr_format::ImageWriter::create("/dev/null", &regions, pbr_format::WriterOptions::default()) else {
        panic!("an image writer was created over /dev/null");
    };
    assert!(e.to_string().contains("character device"), "{e}");
    assert!(!std::fs::metadata("/dev/null").unwrap().file_type().is_file());
    // A link to a regular file: the file behind it is replaced, the link kept.
    let dir = tempfile::tempdir().unwrap();
    let (target, link) = (dir.path().join("target.pbr"), dir.path().join("link.pbr"));
    std::fs::write(&target, b"old").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut w = pbr_format::ImageWriter::create(&link, &regions, pbr_format::WriterOptions::default()).unwrap();
    w.write_page(0, &[1; 4096], pbr_format::PageClass::Kernel).unwrap();
    w.finish().unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    Image::open(&target).unwrap().verify().unwrap();
}
