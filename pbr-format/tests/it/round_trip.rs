//! proptest: random images, written in random order with pages sent more
//! than once, read back identical to a model.

use crate::common;

use std::collections::BTreeMap;

use pbr_format::{Image, ImageWriter, PageClass, PageEncoding, Region, WriterOptions};
use proptest::prelude::*;

const PS: usize = 4096;

#[derive(Clone, Debug)]
enum Content {
    Zero,
    Pattern(u64),
    Fill(u8),
    Trimmed,
}

#[derive(Clone, Debug)]
struct Op {
    region: usize,
    page: u64,
    content: Content,
    class: u8,
    lz4: bool,
}

fn content_strategy() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::Zero),
        any::<u64>().prop_map(Content::Pattern),
        (1u8..=255).prop_map(Content::Fill),
        Just(Content::Trimmed),
    ]
}

fn bytes_of(c: &Content) -> Vec<u8> {
    match c {
        Content::Zero | Content::Trimmed => vec![0; PS],
        Content::Pattern(s) => common::page(*s),
        Content::Fill(b) => vec![*b; PS],
    }
}

prop_compose! {
    fn layout()(sizes in prop::collection::vec(1u64..40, 1..4), gaps in prop::collection::vec(0u64..5, 4)) -> Vec<Region<'static>> {
        let mut base = 0;
        sizes.iter().enumerate().map(|(i, &pages)| {
            base += gaps[i] * PS as u64;
            let r = Region::ram(&format!("r{i}"), base, pages * PS as u64);
            base += pages * PS as u64;
            r
        }).collect()
    }
}

fn ops(n_regions: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        (0..n_regions, 0u64..40, content_strategy(), 0u8..5, any::<bool>())
            .prop_map(|(region, page, content, class, lz4)| Op { region, page, content, class, lz4 }),
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_images_round_trip((regions, ops) in layout().prop_flat_map(|r| { let n = r.len(); (Just(r), ops(n)) }), hashes in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.pbr");
        let opts = WriterOptions { page_hashes: hashes, ..WriterOptions::default() };
        let mut w = ImageWriter::create(&path, &regions, opts).unwrap();
        // Model: gfn -> (bytes, class).
        let mut model: BTreeMap<u64, (Vec<u8>, PageClass, bool)> = BTreeMap::new();
        let mut lz4_done = std::collections::BTreeSet::new();
        for op in &ops {
            let r = &regions[op.region];
            let gfn = r.base / PS as u64 + op.page % (r.length / PS as u64);
            let class = PageClass::from_u8(op.class).unwrap();
            if lz4_done.contains(&gfn) {
                continue;
            }
            match &op.content {
                Content::Trimmed => w.mark_pages(gfn, 1, PageEncoding::Trimmed, class).unwrap(),
                c if op.lz4 => {
                    w.write_page_lz4(gfn, &bytes_of(c), class).unwrap();
                    lz4_done.insert(gfn);
                }
                c => w.write_page(gfn, &bytes_of(c), class).unwrap(),
            }
            model.insert(gfn, (bytes_of(&op.content), class, matches!(op.content, Content::Trimmed)));
        }
        w.finish().unwrap();

        let img = Image::open(&path).unwrap();
        img.verify().unwrap();
        prop_assert_eq!(img.has_page_hashes(), hashes);
        let mut buf = vec![0u8; PS];
        let mut seen = 0u64;
        for e in img.extents() {
            for gfn in e.gfns() {
                seen += 1;
                let got = img.read_in_extent(&e, gfn, &mut buf).unwrap().to_vec();
                match model.get(&gfn) {
                    Some((bytes, class, trimmed)) => {
                        prop_assert_eq!(&got, bytes, "gfn {}", gfn);
                        prop_assert_eq!(e.class, *class);
                        prop_assert_eq!(e.encoding == PageEncoding::Trimmed, *trimmed);
                        if !*trimmed && bytes.iter().all(|&b| b == 0) {
                            prop_assert_eq!(e.encoding, PageEncoding::Zero);
                        }
                    }
                    None => {
                        prop_assert_eq!(e.encoding, PageEncoding::Zero);
                        prop_assert_eq!(e.class, PageClass::Unknown);
                    }
                }
                prop_assert_eq!(img.expected_crc(&e, gfn), Some(crc32fast::hash(&got)));
            }
        }
        prop_assert_eq!(seen, img.page_count());
        for run in img.raw_runs() {
            prop_assert_eq!(run.file_offset % PS as u64, 0);
        }
    }
}

/// A writer created over the whole address space and narrowed with
/// `set_regions` reads back like one created with the final regions:
/// raw, lz4, dup, zero and classed pages, with page hashes.
#[test]
fn set_regions_narrows_a_wide_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("narrow.pbr");
    let opts = WriterOptions { page_hashes: true, ..WriterOptions::default() };
    let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 1 << 48)], opts).unwrap();
    let page = |b: u8| vec![b; PS];
    w.write_page(0x10, &page(1), PageClass::Kernel).unwrap();
    w.write_page(0x11, &page(2), PageClass::User).unwrap();
    w.write_page_lz4(0x100_0000, &page(3), PageClass::Cache).unwrap();
    w.write_dup(0x100_0001, 0x10, PageClass::Kernel).unwrap();
    w.mark_pages(0x12, 1, PageEncoding::Trimmed, PageClass::Free).unwrap();
    // A page outside the new regions refuses the narrowing.
    w.write_page(0x2000_0000, &page(9), PageClass::Unknown).unwrap();
    let regions = [Region::ram("low", 0, 0x20 * PS as u64), Region::ram("high", 0x100_0000 * PS as u64, 4 * PS as u64)];
    let err = w.set_regions(&regions).unwrap_err();
    assert!(err.to_string().contains("0x20000000"), "{err}");
    let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 1 << 48)], WriterOptions::default()).unwrap();
    w.write_page(0x10, &page(1), PageClass::Kernel).unwrap();
    w.write_page(0x11, &page(2), PageClass::User).unwrap();
    w.write_page_lz4(0x100_0000, &page(3), PageClass::Cache).unwrap();
    w.write_dup(0x100_0001, 0x10, PageClass::Kernel).unwrap();
    w.mark_pages(0x12, 1, PageEncoding::Trimmed, PageClass::Free).unwrap();
    w.set_regions(&regions).unwrap();
    w.finish().unwrap();
    let img = Image::open(&path).unwrap();
    img.verify().unwrap();
    assert_eq!(img.regions().len(), 2);
    assert_eq!(img.page_count(), 0x24);
    let mut buf = vec![0u8; PS];
    for (gfn, byte, class) in [
        (0x10, 1, PageClass::Kernel),
        (0x11, 2, PageClass::User),
        (0x100_0000, 3, PageClass::Cache),
        (0x100_0001, 1, PageClass::Kernel),
        (0x12, 0, PageClass::Free),
        (0x13, 0, PageClass::Unknown),
    ] {
        assert_eq!(img.read_page(gfn, &mut buf).unwrap(), &page(byte)[..], "page {gfn:#x}");
        assert_eq!(img.extent_of(gfn).unwrap().class, class, "page {gfn:#x}");
    }
    assert_eq!(img.extent_of(0x12).unwrap().encoding, PageEncoding::Trimmed);
}
