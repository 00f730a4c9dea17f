//! `cargo bench -p pbr-img --bench xl_convert`
//!
//! Converts 1 GiB HVM `xl save` files (built as Xen's saver writes them;
//! Xen's verifier is not run here, the tests do that) from a warm page
//! cache and compares, in one run:
//! - `pbr-img convert FILE` against `cat FILE > /dev/null` (the target:
//!   convert within 2x of cat), and against `cp FILE COPY && sync`
//!   (writing as many bytes durably), and
//! - the library's conversion without the fsync, to show what the durable
//!   write costs.
//!
//! Two guests: `booted` (the real Linux guest's 128 MiB of memory from the
//! fixtures of `scripts/make-fixtures`, the rest of the 1 GiB zero, as a freshly booted guest
//! is) and `dense` (every page pseudo-random: the worst case).
//! Set `PBR_BENCH_MB` to change the guest size (default 1024).

#[path = "support/timing.rs"]
mod timing;

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use timing::{runs, timed};

use common::xl;

fn sh(cmd: &str) {
    assert!(Command::new("sh").arg("-c").arg(cmd).status().unwrap().success(), "{cmd}");
}

fn bench(name: &str, file: &Path, d: &Path) -> f64 {
    let len = std::fs::metadata(file).unwrap().len();
    let gib = len as f64 / (1u64 << 30) as f64;
    let out = d.join(format!("{name}.pbr"));
    let copy = d.join("copy.xl");
    let bin = env!("CARGO_BIN_EXE_pbr-img");
    sh(&format!("cat {} > /dev/null", file.display()));
    let t_cat = runs(5, || timed(|| sh(&format!("cat {} > /dev/null", file.display()))));
    let t_cp =
        runs(5, || timed(|| sh(&format!("cp {} {} && sync {}", file.display(), copy.display(), copy.display()))));
    let t_convert = runs(5, || {
        timed(|| {
            let o = Command::new(bin).args(["convert", "-q"]).arg(file).arg("-o").arg(&out).output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        })
    });
    let opts = pbr_tools::xen::ConvertOptions { no_sync: true, ..Default::default() };
    let t_nosync = runs(5, || {
        timed(|| {
            let f = std::fs::File::open(file).unwrap();
            pbr_tools::xen::convert(f, &out, &opts, &|_| ()).unwrap();
        })
    });
    let image = std::fs::metadata(&out).unwrap().len();
    println!(
        "{name}: xl file {gib:.2} GiB, image {:.1} MiB, warm page cache, median of 5",
        image as f64 / (1 << 20) as f64
    );
    for (what, t) in [
        ("cat FILE > /dev/null", t_cat),
        ("cp FILE COPY && sync", t_cp),
        ("pbr-img convert", t_convert),
        ("convert, no fsync", t_nosync),
    ] {
        println!("  {what:<22} {:>8.3} s  {:>7.2} GiB/s", t.as_secs_f64(), gib / t.as_secs_f64());
    }
    let ratio = t_convert.as_secs_f64() / t_cat.as_secs_f64();
    println!("  convert / cat          = {ratio:.2} (<= 2 is the target)");
    println!("  convert, no fsync / cat = {:.2}", t_nosync.as_secs_f64() / t_cat.as_secs_f64());
    println!("  convert / cp+sync      = {:.2}", t_convert.as_secs_f64() / t_cp.as_secs_f64());
    ratio
}

fn main() {
    let mb: u64 = std::env::var("PBR_BENCH_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir_in(std::env::var_os("PBR_BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let d = dir.path();
    let pages = mb * 256;

    let mut lab: Vec<Option<Vec<u8>>> = Vec::new();
    for name in ["q35-128m-daemons", "q35-128m-kernel"] {
        let stream = std::fs::read(common::fixture_stream(name)).unwrap();
        let mut ram = common::stream_ram(&stream).remove("pc.ram").unwrap();
        let n = ram.keys().max().unwrap() + 1;
        lab.extend((0..n).map(|i| ram.remove(&i).flatten()));
    }
    let booted = |pfn: u64| lab.get(pfn as usize).cloned().flatten().unwrap_or_else(|| vec![0; xl::PAGE]);
    let dense = |pfn: u64| {
        let mut x = pfn.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut p = vec![0u8; xl::PAGE];
        for w in p.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        p
    };
    let none = |_: usize, _: u64| Vec::new();
    let mut ratios = Vec::new();
    for (name, content) in [("booted", &booted as &dyn Fn(u64) -> Vec<u8>), ("dense", &dense)] {
        let file = d.join(format!("{name}.xl"));
        let spec = xl::Spec {
            hvm: true,
            version: 3,
            pages,
            vcpus: 2,
            content,
            emulator: None,
            checkpoints: Vec::new(),
            resend: &none,
            batch: 1024,
        };
        xl::build(&file, &spec);
        ratios.push((name, bench(name, &file, d)));
        std::fs::remove_file(&file).unwrap();
    }
    for (name, r) in ratios {
        println!("xl convert / cat ({name}, {mb} MiB HVM guest): {r:.2}");
    }
}
