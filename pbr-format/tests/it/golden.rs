//! Golden images: the bytes the writer produces are pinned, so any change to
//! the encoding fails here until the format version is bumped and a new
//! golden file is added (`spec/versions.md`). Files of every released format
//! version under `testdata/` keep loading and verifying.
//!
//! Regenerate after a deliberate format change with `PBR_BLESS=1`.

use crate::common;

use std::path::{Path, PathBuf};

use pbr_format::Image;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn check_golden(name: &str, write: impl FnOnce(&Path)) {
    check_golden_in("v1.0", name, write);
}

fn check_golden_in(version: &str, name: &str, write: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join(name);
    write(&fresh);
    let fresh = std::fs::read(&fresh).unwrap();
    let golden = testdata().join(version).join(name);
    if std::env::var_os("PBR_BLESS").is_some() {
        std::fs::write(&golden, &fresh).unwrap();
    }
    let pinned = std::fs::read(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    assert!(
        fresh == pinned,
        "the writer's output for {name} changed: bump the format version in spec/ and pod.rs, \
         keep the old golden file, and add a new one"
    );
}

#[test]
fn sample_bytes_are_pinned() {
    check_golden("sample.pbr", |p| {
        common::write_sample(p, true);
    });
}

#[test]
fn diff_bytes_are_pinned() {
    check_golden("diff.pbr", |p| {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("sample.pbr");
        common::write_sample(&base, true);
        common::write_diff(p, &Image::open(&base).unwrap());
    });
}

#[test]
fn disk_refs_bytes_are_pinned_as_1_1() {
    check_golden_in("v1.1", "disk-refs.pbr", common::write_disk_refs);
}

#[test]
fn processes_bytes_are_pinned_as_1_2() {
    check_golden_in("v1.2", "processes.pbr", common::write_processes);
}

#[test]
fn every_released_version_still_loads() {
    let mut n = 0;
    for dir in std::fs::read_dir(testdata()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.file_name().unwrap().to_string_lossy().starts_with('v') {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "pbr") {
                let img = Image::open(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                img.verify().unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 4, "golden files missing");
}
