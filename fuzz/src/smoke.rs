//! Under plain `cargo test`: every target over its seeds, its saved crash
//! regressions, and thousands of mutants of the seeds.

use std::path::{Path, PathBuf};

use crate::mutate::{Rng, mutant};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target)
}

/// Files of `fuzz/<kind>/<target>/`.
pub fn files(kind: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir(kind, target)) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = rd.map(|e| e.expect("dir entry").path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).expect("seed")).collect()
}

fn smoke(target: &str, run: fn(&[u8]), mutants: usize) {
    let seeds = files("seeds", target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for s in seeds.iter().chain(files("regressions", target).iter()) {
        run(s);
    }
    let mut rng = Rng::new(0x5eed ^ target.len() as u64);
    for i in 0..mutants {
        run(&mutant(&seeds[i % seeds.len()], &mut rng));
    }
}

#[test]
fn pbr_image() {
    smoke("pbr_image", crate::pbr_image::run, 4000);
}

#[test]
fn qemu_stream() {
    smoke("qemu_stream", crate::qemu_stream::run, 1500);
}

#[test]
fn xl_save() {
    smoke("xl_save", crate::xl_save::run, 1500);
}

#[test]
fn libvirt_save() {
    smoke("libvirt_save", crate::libvirt_save::run, 1500);
}

#[test]
fn vmdesc() {
    smoke("vmdesc", crate::vmdesc::run, 3000);
}

#[test]
fn kpageflags() {
    smoke("kpageflags", crate::kpageflags::run, 3000);
}

#[test]
fn diff_apply() {
    smoke("diff_apply", crate::diff_apply::run, 1500);
}

#[test]
fn manifest_select() {
    smoke("manifest_select", crate::manifest_select::run, 3000);
}

#[test]
fn agent_port() {
    smoke("agent_port", crate::agent_port::run, 4000);
}

#[test]
fn processes() {
    smoke("processes", crate::processes::run, 4000);
}
