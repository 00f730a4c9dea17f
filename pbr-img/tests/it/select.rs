//! Manifests and restartable-point selection on real directory trees.

use crate::common;

use crate::format_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{pbr_img, pbr_img_ok};
use pbr_format::{CacheRef, FileEntry, Image};

/// `pbr-img manifest add IMAGE --root ROOT --list LIST -o OUT`.
fn manifest_add(image: &Path, root: &Path, list: &Path, out: &Path) -> std::process::Output {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let args = [
        "manifest".into(),
        "add".into(),
        s(image),
        "--root".into(),
        s(root),
        "--list".into(),
        s(list),
        "-o".into(),
        s(out),
    ];
    pbr_img(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Three candidates of one boot over the bundled QEMU stream, with the
/// files each phase had read.
fn candidates(d: &Path, root: &Path) -> Vec<PathBuf> {
    let stream = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
    let phases = [
        ("kernel", vec!["etc/fstab", "sbin/init"]),
        ("daemons", vec!["etc/fstab", "sbin/init", "etc/syslog.conf", "etc/crontab"]),
        ("service", vec!["etc/fstab", "sbin/init", "etc/syslog.conf", "etc/crontab", "srv/www/index.html"]),
    ];
    let mut out = Vec::new();
    // Given in an order that is not the boot order.
    for (phase, files) in [&phases[1], &phases[2], &phases[0]] {
        let raw = d.join(format!("{phase}-raw.pbr"));
        pbr_img_ok(&["convert", stream.to_str().unwrap(), "-o", raw.to_str().unwrap(), "--phase", phase]);
        let list = d.join(format!("{phase}.list"));
        std::fs::write(&list, files.iter().map(|f| format!("/{f}\n")).collect::<String>()).unwrap();
        let img = d.join(format!("{phase}.pbr"));
        assert!(manifest_add(&raw, root, &list, &img).status.success());
        out.push(img);
    }
    out
}

fn select(root: &Path, images: &[PathBuf], extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["select", "--json", "--root", root.to_str().unwrap()];
    args.extend(extra);
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let out = pbr_img(&args);
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
}

fn chosen(v: &serde_json::Value) -> Option<String> {
    v["chosen"].as_str().map(|s| Path::new(s).file_stem().unwrap().to_string_lossy().into_owned())
}

#[test]
fn select_follows_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    for (f, c) in [
        ("etc/fstab", "proc /proc proc defaults 0 0\n"),
        ("sbin/init", "#!/bin/sh\n"),
        ("etc/syslog.conf", "*.* /var/log/messages\n"),
        ("etc/crontab", "* * * * * true\n"),
        ("srv/www/index.html", "ok\n"),
    ] {
        write(&root, f, c);
    }
    let imgs = candidates(d, &root);
    let m = Image::open(&imgs[1]).unwrap();
    assert_eq!(m.manifest().len(), 5);
    assert_eq!(m.manifest()[4].path, "srv/www/index.html");
    assert_eq!(m.manifest()[0].blake3, *blake3::hash(b"proc /proc proc defaults 0 0\n").as_bytes());

    let (code, v) = select(&root, &imgs, &[]);
    assert_eq!((code, chosen(&v).as_deref()), (Some(0), Some("service")));

    // Touched, same content: still valid; re-hashed on the slow path.
    let f = std::fs::File::options().write(true).open(root.join("etc/crontab")).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60)).unwrap();
    let (code, v) = select(&root, &imgs, &[]);
    assert_eq!((code, chosen(&v).as_deref()), (Some(0), Some("service")));
    assert!(v["candidates"][0]["files_hashed"].as_u64().unwrap() >= 1);
    let (code, v) = select(&root, &imgs, &["--strict"]);
    assert_eq!((code, chosen(&v).as_deref()), (Some(0), Some("service")));
    assert_eq!(v["candidates"][0]["files_hashed"], 5, "--strict hashes everything");

    // A file read only from the daemons phase on changes: kernel is chosen.
    write(&root, "etc/syslog.conf", "*.* /var/log/other\n");
    let (code, v) = select(&root, &imgs, &[]);
    assert_eq!((code, chosen(&v).as_deref()), (Some(0), Some("kernel")));
    let first = &v["candidates"][0];
    assert_eq!(first["phase"]["name"], "service");
    assert_eq!(first["first_mismatch"]["path"], "etc/syslog.conf");
    assert_eq!(first["first_mismatch"]["why"], "changed");
    let human = String::from_utf8(
        pbr_img(&["select", "--root", root.to_str().unwrap(), imgs[0].to_str().unwrap(), imgs[2].to_str().unwrap()])
            .stdout,
    )
    .unwrap();
    assert!(
        human.contains("invalid: etc/syslog.conf changed")
            && human.contains("chosen: ")
            && human.contains("kernel.pbr"),
        "{human}"
    );

    // A file every phase read is deleted: nothing is valid.
    std::fs::remove_file(root.join("etc/fstab")).unwrap();
    let (code, v) = select(&root, &imgs, &[]);
    assert_eq!((code, chosen(&v)), (Some(3), None), "exit 3: no valid candidate");
    assert_eq!(v["candidates"][2]["first_mismatch"]["why"], "deleted");
}

#[test]
fn hostile_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    write(&root, "etc/ok.conf", "ok\n");
    write(&root, "etc/hostname", "guest\n");
    write(d, "outside.conf", "secret\n");
    std::os::unix::fs::symlink(d.join("outside.conf"), root.join("etc/link.conf")).unwrap();
    let img = d.join("s.pbr");
    format_common::write_sample(&img, false);

    // manifest add refuses paths that leave the root.
    for bad in ["../outside.conf", "etc/link.conf"] {
        let list = d.join("bad.list");
        std::fs::write(&list, format!("{bad}\n")).unwrap();
        let out = manifest_add(&img, &root, &list, &d.join("x.pbr"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("'..' component") || err.contains("outside the root"), "{bad}: {err}");
        assert!(!d.join("x.pbr").exists());
    }

    // An image whose manifest names ../ is refused by select, clearly.
    let mut bytes = std::fs::read(&img).unwrap();
    let (_, off, len) = format_common::section_offset(&bytes, 10).unwrap();
    let at = off + bytes[off..off + len].windows(12).position(|w| w == b"etc/hostname").unwrap();
    bytes[at..at + 12].copy_from_slice(b"../../passwd");
    format_common::reseal(&mut bytes);
    let hostile = d.join("hostile.pbr");
    std::fs::write(&hostile, &bytes).unwrap();
    let (code, v) = select(&root, &[hostile], &[]);
    assert_eq!(code, Some(3));
    let refused = v["candidates"][0]["refused"].as_str().unwrap();
    assert!(refused.contains("MANIFEST") && refused.contains("'..' component"), "{refused}");

    // A listed file later replaced by a symlink out of the root.
    let list = d.join("ok.list");
    std::fs::write(&list, "etc/ok.conf\n").unwrap();
    let good = d.join("good.pbr");
    assert!(manifest_add(&img, &root, &list, &good).status.success());
    std::fs::remove_file(root.join("etc/ok.conf")).unwrap();
    std::os::unix::fs::symlink(d.join("outside.conf"), root.join("etc/ok.conf")).unwrap();
    let (code, v) = select(&root, &[good], &[]);
    assert_eq!(code, Some(3));
    let why = v["candidates"][0]["first_mismatch"]["why"].as_str().unwrap();
    assert!(why.starts_with("refused:") && why.contains("outside the root"), "{why}");
}

#[test]
fn changed_cache_only_files_leave_stale_pages_not_invalid_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    write(&root, "usr/lib/libc.so.6", "libc v1");
    write(&root, "etc/app.conf", "port=80\n");
    let entry =
        |rel: &str, cache_only: bool| FileEntry { cache_only, ..pbr_tools::manifest::entry(&root, rel).unwrap() };
    let path = d.join("c.pbr");
    let regions = [pbr_format::Region::ram("pc.ram", 0, 16 * 4096)];
    let mut w = pbr_format::ImageWriter::create(&path, &regions, Default::default()).unwrap();
    w.set_phase(pbr_format::Phase::named("daemons", 2)).unwrap();
    w.add_file(entry("etc/app.conf", false)).unwrap();
    let lib = w.add_file(entry("usr/lib/libc.so.6", true)).unwrap();
    for gfn in [3, 4] {
        w.write_page(gfn, &[gfn as u8; 4096], pbr_format::PageClass::Cache).unwrap();
        w.add_cache_ref(CacheRef { gfn, file_index: lib, offset: (gfn - 3) * 4096 }).unwrap();
    }
    w.finish().unwrap();
    let img = Image::open(&path).unwrap();
    write(&root, "usr/lib/libc.so.6", "libc v2");
    let s = pbr_format::select::select(&[&img], &root, false);
    assert_eq!(s.chosen, Some(0));
    assert_eq!(s.verdicts[0].stale_cache.iter().map(|c| c.gfn).collect::<Vec<_>>(), [3, 4]);
    write(&root, "etc/app.conf", "port=8080\n");
    let s = pbr_format::select::select(&[&img], &root, false);
    assert_eq!(s.chosen, None);
}

#[test]
fn accessed_since_lists_files_read_after_boot_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(&root, "etc/old.conf", "old");
    write(&root, "etc/new.conf", "new");
    let boot = SystemTime::now() - Duration::from_secs(100);
    let old = std::fs::File::options().write(true).open(root.join("etc/old.conf")).unwrap();
    old.set_times(std::fs::FileTimes::new().set_accessed(boot - Duration::from_secs(100))).unwrap();
    let new = std::fs::File::options().write(true).open(root.join("etc/new.conf")).unwrap();
    new.set_times(std::fs::FileTimes::new().set_accessed(boot + Duration::from_secs(10))).unwrap();
    let since = boot.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i128;
    assert_eq!(pbr_tools::manifest::accessed_since(&root, since).unwrap(), ["etc/new.conf"]);
}
