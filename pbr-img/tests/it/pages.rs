//! Page classes, trim, pack, dedup, diff and apply on the real fixtures: a
//! real Linux guest at its `kernel` and `daemons` phases, with the guest's
//! own kpageflags.

use crate::common;

use std::path::{Path, PathBuf};

use common::{fixture_info, fixture_stream, fixtures, kpageflags_counts, pbr_img, pbr_img_ok};
use pbr_format::{DiskRef, DiskRefs, Image, ImageWriter, PageClass, PageEncoding};

/// Converts and classifies fixture `name` into `dir`.
fn classified(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.pbr"));
    let out = dir.join(format!("{name}-classified.pbr"));
    let info = fixture_info(name);
    pbr_img_ok(&[
        "convert",
        fixture_stream(name).to_str().unwrap(),
        "-o",
        raw.to_str().unwrap(),
        "--phase",
        info["phase"].as_str().unwrap(),
    ]);
    let flags = fixtures().join(info["kpageflags"].as_str().unwrap());
    pbr_img_ok(&[
        "classify",
        raw.to_str().unwrap(),
        "--kpageflags",
        flags.to_str().unwrap(),
        "--kernel",
        "6.1.0-56-cloud-amd64",
        "-o",
        out.to_str().unwrap(),
    ]);
    out
}

/// Asserts both images hold the same content in every page.
fn same_pages(a: &Image, b: &Image) {
    assert_eq!(a.regions(), b.regions());
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    for e in a.extents() {
        for g in e.gfns() {
            assert_eq!(a.read_in_extent(&e, g, &mut x).unwrap(), b.read_page(g, &mut y).unwrap(), "gfn {g:#x}");
        }
    }
    assert_eq!(a.content_hash().unwrap(), b.content_hash().unwrap());
}

#[test]
fn classes_from_real_kpageflags() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["q35-128m-kernel", "q35-128m-daemons"] {
        let img = Image::open(classified(dir.path(), name)).unwrap();
        img.verify().unwrap();
        let flags = fixtures().join(fixture_info(name)["kpageflags"].as_str().unwrap());
        let [free, user, other] = kpageflags_counts(&flags);
        let counts = img.page_counts();
        let class = |c: PageClass| counts[c as usize].iter().sum::<u64>();
        // An independent reading of the same dump, mapped onto our classes.
        assert!(free > 10_000 && user > 100 && other > 1000, "{name}: {free} {user} {other}");
        assert_eq!(class(PageClass::Free), free, "{name}");
        assert_eq!(class(PageClass::User), user, "{name}");
        assert_eq!(class(PageClass::Kernel) + class(PageClass::Cache), other, "{name}");
        // Firmware blocks are not guest-physical: left unknown.
        assert_eq!(class(PageClass::Unknown), img.page_count() - (free + user + other));
        assert_eq!(img.metadata_value("classes.source"), Some("kpageflags"));
        assert_eq!(img.metadata_value("guest.kernel"), Some("6.1.0-56-cloud-amd64"));
    }
}

#[test]
fn class_map_and_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("k.pbr");
    pbr_img_ok(&["convert", fixture_stream("q35-128m-kernel").to_str().unwrap(), "-o", raw.to_str().unwrap()]);
    let map = d.join("map.bin");
    let mut bytes = vec![3u8; 32768];
    bytes[..100].fill(1);
    std::fs::write(&map, &bytes).unwrap();
    let out = d.join("m.pbr");
    pbr_img_ok(&["classify", raw.to_str().unwrap(), "--class-map", map.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let img = Image::open(&out).unwrap();
    assert_eq!(img.extent_of(50).unwrap().class, PageClass::Free);
    assert_eq!(img.extent_of(500).unwrap().class, PageClass::Kernel);
    assert_eq!(img.metadata_value("classes.source"), Some("bitmap"));
    bytes[7] = 9;
    std::fs::write(&map, &bytes).unwrap();
    let o = pbr_img(&[
        "classify",
        raw.to_str().unwrap(),
        "--class-map",
        map.to_str().unwrap(),
        "-o",
        d.join("x.pbr").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("byte 9 is not a page class (0..=4) (at offset 0x7)"));
    std::fs::write(&map, b"12345").unwrap();
    let o = pbr_img(&[
        "classify",
        raw.to_str().unwrap(),
        "--kpageflags",
        map.to_str().unwrap(),
        "-o",
        d.join("x.pbr").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a whole number of 8-byte words"));
    assert!(!d.join("x.pbr").exists());
}

#[test]
fn trim_drops_free_pages_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = classified(dir.path(), "q35-128m-kernel");
    let out = dir.path().join("t.pbr");
    let report: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["trim", src_path.to_str().unwrap(), "-o", out.to_str().unwrap(), "--json"]))
            .unwrap();
    let (src, t) = (Image::open(&src_path).unwrap(), Image::open(&out).unwrap());
    t.verify().unwrap();
    let flags = fixtures().join(fixture_info("q35-128m-kernel")["kpageflags"].as_str().unwrap());
    let free = kpageflags_counts(&flags)[0];
    assert_eq!(report["free_pages"], free);
    assert_eq!(report["after_bytes"], t.file_len());
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    for e in src.extents() {
        for g in e.gfns() {
            let te = t.extent_of(g).unwrap();
            assert_eq!(te.class, e.class);
            if e.class == PageClass::Free {
                assert_eq!(te.encoding, PageEncoding::Trimmed);
                assert!(t.read_page(g, &mut y).unwrap().iter().all(|&b| b == 0));
            } else {
                assert_eq!(src.read_in_extent(&e, g, &mut x).unwrap(), t.read_page(g, &mut y).unwrap());
            }
        }
    }
    // Trimmed size against the non-free pages: at most those pages + 1%.
    let non_free = (src.page_count() - free) * 4096;
    assert!((t.file_len() as f64) <= non_free as f64 * 1.01, "{} > {non_free}", t.file_len());
    let inspect = pbr_img_ok(&["inspect", out.to_str().unwrap()]);
    assert!(inspect.contains(&format!("restore    {free} free pages were dropped")), "{inspect}");
}

/// A classified fixture with ten user pages marked as clean cache; the
/// first six have disk references into a disk file that holds their
/// bytes (the fifth's only in part: its file ends inside the page), as
/// capture makes them from the agent's report. Returns the image, the
/// disk, and the ten pages.
fn cache_image(d: &Path) -> (PathBuf, PathBuf, Vec<u64>) {
    let src = Image::open(classified(d, "q35-128m-daemons")).unwrap();
    let user: Vec<u64> = src
        .extents_of_class(PageClass::User)
        .filter(|e| e.encoding == PageEncoding::Raw)
        .flat_map(|e| e.gfns())
        .filter(|&g| !pbr_format::is_zero(src.read_page(g, &mut vec![0u8; 4096]).unwrap()))
        .take(10)
        .collect();
    let disk = d.join("root.raw");
    let mut bytes = vec![0xa5u8; 64 * 4096];
    let mut refs = DiskRefs { files: vec!["usr/lib/libc.so.6".into()], pages: Vec::new() };
    let mut buf = vec![0u8; 4096];
    for (i, &g) in user.iter().take(6).enumerate() {
        let page = src.read_page(g, &mut buf).unwrap().to_vec();
        let at = (8 + 2 * i) * 4096;
        bytes[at..at + 4096].copy_from_slice(&page);
        refs.pages.push(DiskRef {
            gfn: g,
            disk: 0,
            disk_offset: at as u64,
            length: 4096,
            crc32: crc32fast::hash(&page),
            file: 0,
            file_offset: i as u64 * 4096,
        });
    }
    refs.pages.sort_by_key(|r| r.gfn);
    std::fs::write(&disk, &bytes).unwrap();
    let seals = pbr_tools::seal::Seals {
        disks: vec![pbr_tools::seal::DiskSeal {
            drive: "root".into(),
            guest: "vda".into(),
            mounts: vec!["/ ro".into()],
            file: pbr_tools::seal::FileSeal::of(&disk, false).unwrap(),
        }],
        ..Default::default()
    };
    let path = d.join("cache.pbr");
    let mut w =
        ImageWriter::create(&path, src.regions(), pbr_tools::rewrite::options(&src, PageEncoding::Zero)).unwrap();
    pbr_tools::rewrite::copy_state(&src, &mut w).unwrap();
    w.set_metadata(pbr_tools::seal::SEALS_KEY, &seals.to_json()).unwrap();
    for e in src.extents() {
        for g in e.gfns() {
            let class = if user.contains(&g) { PageClass::Cache } else { e.class };
            pbr_tools::rewrite::copy_page(&src, &e, g, &mut w, class, &mut buf).unwrap();
        }
    }
    w.set_disk_refs(refs).unwrap();
    w.finish().unwrap();
    (path, disk, user)
}

#[test]
fn trim_cache_drops_only_pages_a_restore_can_refill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cache_path, disk, user) = cache_image(d);
    let kept = d.join("kept.pbr");
    pbr_img_ok(&["trim", cache_path.to_str().unwrap(), "-o", kept.to_str().unwrap()]);
    assert!(
        user.iter().all(|g| Image::open(&kept).unwrap().extent_of(*g).unwrap().encoding == PageEncoding::Raw),
        "cache is kept by default"
    );
    let out = d.join("nocache.pbr");
    let r: serde_json::Value = serde_json::from_str(&pbr_img_ok(&[
        "trim",
        cache_path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--drop",
        "free,zero,cache",
        "--json",
    ]))
    .unwrap();
    assert_eq!((r["cache_pages"].as_u64(), r["cache_pages_kept"].as_u64()), (Some(6), Some(4)));
    let t = Image::open(&out).unwrap();
    t.verify().unwrap();
    let refd: Vec<u64> = t.disk_refs().pages.iter().map(|r| r.gfn).collect();
    for g in &user {
        let want = if refd.contains(g) { PageEncoding::Trimmed } else { PageEncoding::Raw };
        assert_eq!(t.extent_of(*g).unwrap().encoding, want, "page {g:#x}");
    }
    assert_eq!(t.metadata_value("trim.dropped"), Some("free,zero,cache"));
    let v: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["inspect", "--json", out.to_str().unwrap()])).unwrap();
    assert_eq!(v["restore"]["trimmed_cache"], 6);
    assert_eq!(v["restore"]["refill"]["pages"], 6);
    assert_eq!(v["restore"]["refill"]["disks"][0]["disk"], "vda");
    assert_eq!(v["restore"]["refill"]["files"][0]["path"], "/usr/lib/libc.so.6");
    let human = pbr_img_ok(&["inspect", out.to_str().unwrap()]);
    assert!(human.contains("refill     6 pages from disk vda"), "{human}");

    // Exported memory is that of the image trimmed without cache, byte for
    // byte: every dropped cache page is read back from the disk.
    let free_zero = d.join("free-zero.pbr");
    pbr_img_ok(&["trim", cache_path.to_str().unwrap(), "-o", free_zero.to_str().unwrap(), "--drop", "free,zero"]);
    let (a, b) = (d.join("a.mem"), d.join("b.mem"));
    pbr_img_ok(&["export", "--to", "raw", free_zero.to_str().unwrap(), "-o", a.to_str().unwrap()]);
    pbr_img_ok(&["export", "--to", "raw", out.to_str().unwrap(), "-o", b.to_str().unwrap()]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "refilled memory differs");
    // The flat layout keeps the dropped pages as zero pages; their disk
    // references still mark them to be refilled.
    let flat = d.join("flat.pbr");
    pbr_img_ok(&["unpack", "--flat", out.to_str().unwrap(), "-o", flat.to_str().unwrap()]);
    let v: serde_json::Value =
        serde_json::from_str(&pbr_img_ok(&["inspect", "--json", flat.to_str().unwrap()])).unwrap();
    assert_eq!(v["restore"]["refill"]["pages"], 6);
    let c = d.join("flat.mem");
    pbr_img_ok(&["export", "--to", "raw", flat.to_str().unwrap(), "-o", c.to_str().unwrap()]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&c).unwrap(), "flat refilled memory differs");

    // A page that reads back differently is refused, named with its file.
    let mut bytes = std::fs::read(&disk).unwrap();
    let r0 = t.disk_refs().pages[0];
    bytes[r0.disk_offset as usize + 100] ^= 0xff;
    std::fs::write(&disk, &bytes).unwrap();
    let o = pbr_img(&["export", "--to", "raw", out.to_str().unwrap(), "-o", d.join("c.mem").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("disk vda") && err.contains("changed since capture"), "the seal sees the write: {err}");
    // The same bytes under a fresh seal: the crc32 check is what refuses.
    let resealed = d.join("resealed.pbr");
    reseal_disk(&out, &disk, &resealed);
    let o = pbr_img(&["export", "--to", "raw", resealed.to_str().unwrap(), "-o", d.join("c.mem").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("page {:#x}", r0.gfn))
            && err.contains("/usr/lib/libc.so.6")
            && err.contains("differently"),
        "{err}"
    );
    assert!(!d.join("c.mem").exists(), "nothing is written when a refill fails");

    let o =
        pbr_img(&["trim", cache_path.to_str().unwrap(), "-o", d.join("x.pbr").to_str().unwrap(), "--drop", "dirty"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--drop dirty: expected free, zero or cache"));
}

/// `src` with its disk seal taken again from `disk` as it is now.
fn reseal_disk(src: &Path, disk: &Path, dest: &Path) {
    let img = Image::open(src).unwrap();
    let key = pbr_tools::seal::SEALS_KEY;
    let mut seals = pbr_tools::seal::Seals::from_json(img.metadata_value(key).unwrap()).unwrap();
    seals.disks[0].file = pbr_tools::seal::FileSeal::of(disk, false).unwrap();
    let mut w = pbr_tools::rewrite::derived(&img, dest, pbr_tools::rewrite::options(&img, PageEncoding::Zero)).unwrap();
    w.set_metadata(key, &seals.to_json()).unwrap();
    let mut buf = vec![0u8; 4096];
    for e in img.extents() {
        for g in e.gfns() {
            pbr_tools::rewrite::copy_page(&img, &e, g, &mut w, e.class, &mut buf).unwrap();
        }
    }
    w.finish().unwrap();
}

#[test]
fn trimmed_cache_without_a_disk_reference_is_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = Image::open(classified(d, "q35-128m-daemons")).unwrap();
    let g = src.extents_of_class(PageClass::User).next().unwrap().gfn;
    let path = d.join("orphan.pbr");
    let mut w =
        ImageWriter::create(&path, src.regions(), pbr_tools::rewrite::options(&src, PageEncoding::Zero)).unwrap();
    pbr_tools::rewrite::copy_state(&src, &mut w).unwrap();
    let mut buf = vec![0u8; 4096];
    for e in src.extents() {
        for gfn in e.gfns() {
            if gfn == g {
                w.mark_pages(gfn, 1, PageEncoding::Trimmed, PageClass::Cache).unwrap();
            } else {
                pbr_tools::rewrite::copy_page(&src, &e, gfn, &mut w, e.class, &mut buf).unwrap();
            }
        }
    }
    w.finish().unwrap();
    for to in ["raw", "qemu"] {
        let o = pbr_img(&["export", "--to", to, path.to_str().unwrap(), "-o", d.join("x").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("trimmed with no disk reference"), "{to}: {err}");
    }
    let human = pbr_img_ok(&["inspect", path.to_str().unwrap()]);
    assert!(human.contains("cannot be restored"), "{human}");
}

#[test]
fn pack_and_unpack_are_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src_path = classified(d, "q35-128m-daemons");
    let packed = d.join("p.pbr");
    let unpacked = d.join("u.pbr");
    let r: serde_json::Value = serde_json::from_str(&pbr_img_ok(&[
        "pack",
        src_path.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    pbr_img_ok(&["unpack", packed.to_str().unwrap(), "-o", unpacked.to_str().unwrap()]);
    let (src, p, u) = (Image::open(&src_path).unwrap(), Image::open(&packed).unwrap(), Image::open(&unpacked).unwrap());
    p.verify().unwrap();
    u.verify().unwrap();
    assert!(p.file_len() * 2 < src.file_len(), "pack ratio {} / {}", p.file_len(), src.file_len());
    assert!(r["dup_pages"].as_u64().unwrap() > 0, "the guest has identical pages");
    assert!(
        p.extents().any(|e| e.encoding == PageEncoding::Dup) && p.extents().any(|e| e.encoding == PageEncoding::Lz4)
    );
    assert!(u.extents().all(|e| matches!(e.encoding, PageEncoding::Raw | PageEncoding::Zero)));
    same_pages(&src, &p);
    same_pages(&src, &u);
    for e in src.extents() {
        assert_eq!(p.extent_of(e.gfn).unwrap().class, e.class);
    }
    // The packed image still exports to a stream identical to the original.
    let back = d.join("back.qemu");
    pbr_img_ok(&["export", "--to", "qemu", packed.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(fixture_stream("q35-128m-daemons")).unwrap());
}

#[test]
fn diff_apply_and_chains_on_real_phases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = classified(d, "q35-128m-kernel");
    let dm = classified(d, "q35-128m-daemons");
    let out = pbr_img(&["diff", "--json", k.to_str().unwrap(), dm.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "diff exits 1 when the images differ");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pages = &report["pages"];
    let total: u64 = ["added", "removed", "changed", "unchanged"].iter().map(|f| pages[f].as_u64().unwrap()).sum();
    assert_eq!(total, Image::open(&k).unwrap().page_count());
    assert!(pages["changed"].as_u64().unwrap() > 1000);
    assert_eq!(report["phases"], serde_json::json!(["kernel", "daemons"]));
    assert!(
        report["vcpus"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("rip") || l.as_str().unwrap().contains("rdi"))
    );
    assert!(report["devices"]["changed"].as_array().unwrap().iter().any(|x| x == "qemu-section/cpu.0"));

    // kernel -> daemons as a diff image, applied back.
    let d1 = d.join("k-to-d.pbr");
    pbr_img_ok(&["diff", k.to_str().unwrap(), dm.to_str().unwrap(), "-o", d1.to_str().unwrap()]);
    let diff_img = Image::open(&d1).unwrap();
    diff_img.verify().unwrap();
    assert!(diff_img.file_len() * 5 < Image::open(&dm).unwrap().file_len());
    let rebuilt = d.join("rebuilt.pbr");
    pbr_img_ok(&["apply", k.to_str().unwrap(), d1.to_str().unwrap(), "-o", rebuilt.to_str().unwrap()]);
    let (target, r) = (Image::open(&dm).unwrap(), Image::open(&rebuilt).unwrap());
    r.verify().unwrap();
    same_pages(&target, &r);
    assert_eq!(r.vcpus(), target.vcpus());
    assert_eq!(r.phase().unwrap().name, "daemons");

    // A wrong base is refused and nothing is written.
    let o = pbr_img(&["apply", dm.to_str().unwrap(), d1.to_str().unwrap(), "-o", d.join("bad.pbr").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong base"));
    assert!(!d.join("bad.pbr").exists());

    // A chain: kernel -> daemons -> daemons trimmed.
    let t = d.join("trimmed.pbr");
    pbr_img_ok(&["trim", dm.to_str().unwrap(), "-o", t.to_str().unwrap()]);
    let d2 = d.join("d-to-t.pbr");
    pbr_img_ok(&["diff", dm.to_str().unwrap(), t.to_str().unwrap(), "-o", d2.to_str().unwrap()]);
    let chained = d.join("chained.pbr");
    pbr_img_ok(&[
        "apply",
        k.to_str().unwrap(),
        d1.to_str().unwrap(),
        d2.to_str().unwrap(),
        "-o",
        chained.to_str().unwrap(),
    ]);
    same_pages(&Image::open(&t).unwrap(), &Image::open(&chained).unwrap());
    let o = pbr_img(&[
        "apply",
        k.to_str().unwrap(),
        d2.to_str().unwrap(),
        d1.to_str().unwrap(),
        "-o",
        d.join("x.pbr").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a chain")
            || String::from_utf8_lossy(&o.stderr).contains("wrong base")
    );
    // rebase flattens the chain into one diff against kernel.
    let flat = d.join("flat.pbr");
    pbr_img_ok(&["rebase", d1.to_str().unwrap(), d2.to_str().unwrap(), "-o", flat.to_str().unwrap()]);
    let flat_applied = d.join("flat-applied.pbr");
    pbr_img_ok(&["apply", k.to_str().unwrap(), flat.to_str().unwrap(), "-o", flat_applied.to_str().unwrap()]);
    same_pages(&Image::open(&t).unwrap(), &Image::open(&flat_applied).unwrap());
    // And the rebuilt image restores through QEMU's stream format unchanged.
    let back = d.join("back.qemu");
    pbr_img_ok(&["export", "--to", "qemu", rebuilt.to_str().unwrap(), "-o", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(fixture_stream("q35-128m-daemons")).unwrap());
}
