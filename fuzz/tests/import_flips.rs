//! Bit flips of a real QEMU stream: every flip either errors or gives an
//! image that verifies, exports and re-imports to the same content; a flip
//! inside page data changes only the page it fell in. Exhaustive over the
//! stream's head (configuration, RAM block list, first records) and tail
//! (device sections, vmdescription); sampled in between.

use std::path::Path;

use pbr_format::Image;
use pbr_tools::qemu::{ConvertOptions, convert, export::export_qemu};

fn convert_bytes(data: &[u8], out: &Path) -> Option<Image> {
    let opts = ConvertOptions { no_sync: true, ..Default::default() };
    convert(data, None, out, &opts, &|_| {}).ok()?;
    Some(Image::open(out).expect("converted image opens"))
}

/// The pages of `original` whose content differs in `img`, with the number
/// of differing bits of each.
fn changed_bits(original: &Image, img: &Image) -> Vec<(u64, u32)> {
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
    let mut out = Vec::new();
    for e in original.extents() {
        for g in e.gfns() {
            let x = original.read_in_extent(&e, g, &mut a).unwrap();
            let y = img.read_page(g, &mut b).unwrap();
            let bits: u32 = x.iter().zip(y).map(|(p, q)| (p ^ q).count_ones()).sum();
            if bits > 0 {
                out.push((g, bits));
            }
        }
    }
    out
}

/// Checks one flipped stream; returns whether it was accepted.
fn check(flipped: &[u8], original: &Image, dir: &Path, payload: bool) -> bool {
    let Some(img) = convert_bytes(flipped, &dir.join("f.pbr")) else { return false };
    img.verify().expect("accepted flip gives an image that verifies");
    let back = dir.join("f.qemu");
    export_qemu(&img, &back).expect("accepted image exports");
    let again = convert_bytes(&std::fs::read(&back).unwrap(), &dir.join("g.pbr")).expect("export re-imports");
    assert_eq!(img.content_hash().unwrap(), again.content_hash().unwrap());
    if payload {
        let changed = changed_bits(original, &img);
        assert!(changed.len() <= 1 && changed.iter().all(|c| c.1 == 1), "a flip in page data changed {changed:x?}");
        for (x, y) in img.devices().zip(original.devices()) {
            assert!(
                x == y,
                "a flip in page data changed device blob '{}' ({} vs {} bytes)",
                x.name,
                x.data.len(),
                y.data.len()
            );
        }
    }
    true
}

/// Flips each bit of `work` in `file` in turn (on two threads, each with
/// its own scratch directory) and returns how many flipped files `check`
/// accepted.
fn flip_each<W: Copy + Send + Sync>(
    file: &[u8],
    work: &[(usize, W)],
    check: &(dyn Fn(&[u8], &Path, W) -> bool + Sync),
) -> usize {
    std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(work.len().div_ceil(2))
            .map(|chunk| {
                s.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    let mut buf = file.to_vec();
                    let mut accepted = 0;
                    for &(bit, w) in chunk {
                        buf[bit / 8] ^= 1 << (bit % 8);
                        accepted += usize::from(check(&buf, dir.path(), w));
                        buf[bit / 8] ^= 1 << (bit % 8);
                    }
                    accepted
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn every_flip_errors_or_round_trips() {
    let stream =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu")).unwrap();
    let n = stream.len();
    let dir = tempfile::tempdir().unwrap();
    let original = convert_bytes(&stream, &dir.path().join("o.pbr")).unwrap();
    // Where one non-zero page of pc.bios sits in the stream: found by its
    // content, so the flips below land inside page data and nowhere else.
    let bios_region = original.regions().iter().find(|r| r.name == "pc.bios").unwrap();
    let mut page = vec![0u8; 4096];
    let gfn = bios_region.first_gfn(4096) + 60;
    let content = original.read_page(gfn, &mut page).unwrap().to_vec();
    assert!(content.iter().any(|&b| b != 0));
    let bios = stream
        .windows(64)
        .enumerate()
        .find(|(i, w)| *w == &content[..64] && stream[*i..].starts_with(&content))
        .map(|(i, _)| i)
        .expect("the page's bytes in the stream");
    let mut work: Vec<(usize, bool)> = Vec::new();
    work.extend((0..512.min(n)).flat_map(|b| (0..8).map(move |i| (b * 8 + i, false))));
    work.extend((n - 1024..n).flat_map(|b| (0..8).map(move |i| (b * 8 + i, false))));
    let mut rng = pbr_fuzz::mutate::Rng::new(99);
    work.extend((0..300).map(|_| ((bios + rng.below(4096)) * 8 + rng.below(8), true)));
    work.extend((0..300).map(|_| ((4096 + rng.below(n - 8192)) * 8 + rng.below(8), false)));
    let accepted = flip_each(&stream, &work, &|buf, dir, payload| check(buf, &original, dir, payload));
    eprintln!("{} flips, {accepted} accepted and round-tripped, the rest refused", work.len());
    assert!(accepted > 0);
}

/// Byte ranges of page contents in an xl file, each with the offset of its
/// PAGE_DATA record: walks the xl header, the libxl header and
/// LIBXC_CONTEXT, the libxc headers and records up to the libxc END.
fn xl_records(f: &[u8]) -> Vec<(usize, std::ops::Range<usize>)> {
    let le = |p: usize| u32::from_le_bytes(f[p..p + 4].try_into().unwrap()) as usize;
    let mut p = 48 + le(44) + 16 + 8 + 40;
    let mut out = Vec::new();
    loop {
        let (t, len) = (le(p), le(p + 4));
        if t == 1 {
            let count = le(p + 8);
            out.push((p, p + 16 + 8 * count..p + 8 + len));
        }
        if t == 0 {
            return out;
        }
        p += 8 + len.div_ceil(8) * 8;
    }
}

fn xl_convert_bytes(data: &[u8], out: &Path) -> Option<Image> {
    let opts = pbr_tools::xen::ConvertOptions { no_sync: true, ..Default::default() };
    pbr_tools::xen::convert(data, out, &opts, &|_| {}).ok()?;
    Some(Image::open(out).expect("converted image opens"))
}

/// Byte ranges of page contents in an xl file.
fn xl_page_bytes(f: &[u8]) -> Vec<std::ops::Range<usize>> {
    xl_records(f).into_iter().map(|(_, r)| r).collect()
}

/// Where a flipped bit lies in an xl file.
#[derive(Clone, Copy, PartialEq)]
enum Where {
    /// Inside a page's contents.
    Page,
    /// In a PAGE_DATA record's header or pfn list.
    PageLayout,
    /// Anywhere else: the pages cannot change.
    Other,
}

fn xl_where(records: &[(usize, std::ops::Range<usize>)], byte: usize) -> Where {
    for (start, data) in records {
        if data.contains(&byte) {
            return Where::Page;
        }
        if (*start..data.start).contains(&byte) {
            return Where::PageLayout;
        }
    }
    Where::Other
}

/// Checks one flipped xl file; returns whether it was accepted.
fn xl_check_at(flipped: &[u8], original: &Image, dir: &Path, at: Where) -> bool {
    let accepted = xl_check(flipped, original, dir, at == Where::Page);
    if accepted && at == Where::Other {
        let img = Image::open(dir.join("f.pbr")).unwrap();
        assert_eq!(
            img.content_hash().unwrap(),
            original.content_hash().unwrap(),
            "a flip outside the PAGE_DATA records changed the guest memory"
        );
    }
    accepted
}

/// Checks one flipped xl file; returns whether it was accepted.
fn xl_check(flipped: &[u8], original: &Image, dir: &Path, payload: bool) -> bool {
    let Some(img) = xl_convert_bytes(flipped, &dir.join("f.pbr")) else { return false };
    img.verify().expect("accepted flip gives an image that verifies");
    let back = dir.join("f.xl");
    pbr_tools::xen::export::export_xl(&img, &back).expect("accepted image exports");
    let exported = std::fs::read(&back).unwrap();
    let again = xl_convert_bytes(&exported, &dir.join("g.pbr")).expect("export re-imports");
    assert_eq!(img.content_hash().unwrap(), again.content_hash().unwrap());
    if payload {
        // A flip inside page data: the same file back, and exactly that bit
        // of one page changed.
        assert!(exported == flipped, "a flip in page data does not export to the flipped file");
        let changed = changed_bits(original, &img);
        assert!(changed.len() == 1 && changed[0].1 == 1, "a flip in page data changed {changed:x?}");
        assert!(img.devices().eq(original.devices()), "a flip in page data changed a device blob");
        assert_eq!(img.vcpus(), original.vcpus());
    }
    true
}

/// Bit flips of an `xl save` file (the HVM v3 seed, accepted by Xen's
/// verifier): every bit of its first and last KiB (headers, policies; the
/// emulator records and ENDs) and of the 200 bytes before each record's
/// pages (its header and pfns), 3,000 elsewhere outside page contents (the
/// HVM context), and 400 inside page contents.
#[test]
fn every_xl_flip_errors_or_round_trips() {
    let file = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/xl_save/hvm-v3.xl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let original = xl_convert_bytes(&file, &dir.path().join("o.pbr")).unwrap();
    let records = xl_records(&file);
    let pages = xl_page_bytes(&file);
    let in_pages = |b: usize| pages.iter().any(|r| r.contains(&b));
    let n = file.len();
    let heads: Vec<usize> = pages.iter().flat_map(|r| r.start.saturating_sub(200)..r.start).collect();
    let exhaustive = |b: usize| b < 1024 || b >= n - 1024 || heads.contains(&b);
    let mut work: Vec<(usize, bool)> =
        (0..n).filter(|&b| exhaustive(b)).flat_map(|b| (0..8).map(move |i| (b * 8 + i, false))).collect();
    let others: Vec<usize> = (0..n).filter(|&b| !exhaustive(b) && !in_pages(b)).collect();
    let page_bytes: Vec<usize> = pages.iter().flat_map(|r| r.clone()).collect();
    let mut rng = pbr_fuzz::mutate::Rng::new(7);
    work.extend((0..3000).map(|_| (others[rng.below(others.len())] * 8 + rng.below(8), false)));
    work.extend((0..400).map(|_| (page_bytes[rng.below(page_bytes.len())] * 8 + rng.below(8), true)));
    let work: Vec<(usize, Where)> = work.into_iter().map(|(bit, _)| (bit, xl_where(&records, bit / 8))).collect();
    let accepted = flip_each(&file, &work, &|buf, dir, at| xl_check_at(buf, &original, dir, at));
    eprintln!("xl: {} flips, {accepted} accepted and round-tripped, the rest refused", work.len());
    assert!(accepted >= 400);
}

/// Every single-bit flip of a whole `xl save` file (`tiny-hvm.xl`: Xen's
/// verifier accepts it; one data page, a hole, an allocate-only page, one
/// vCPU): each one either fails cleanly or gives an image that verifies and
/// round-trips; a flip inside the page changes exactly that bit of it, and
/// a flip outside the PAGE_DATA record leaves the guest memory as it was.
#[test]
fn every_flip_of_a_small_xl_file() {
    let file = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/xl_save/tiny-hvm.xl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let original = xl_convert_bytes(&file, &dir.path().join("o.pbr")).unwrap();
    let records = xl_records(&file);
    let work: Vec<(usize, Where)> = (0..file.len() * 8).map(|bit| (bit, xl_where(&records, bit / 8))).collect();
    let accepted = flip_each(&file, &work, &|buf, dir, at| xl_check_at(buf, &original, dir, at));
    eprintln!("xl (every bit of {} bytes): {} flips, {accepted} accepted and round-tripped", file.len(), work.len());
    assert!(accepted >= 4096 * 8);
}
