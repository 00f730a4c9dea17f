//! `cargo bench -p pbr-img --bench pages`
//!
//! On the real fixtures (a Linux guest at its `kernel` and `daemons`
//! phases, classified from its own kpageflags):
//! - sizes: trimmed image against guest memory and against the non-free
//!   pages; packed image against `lz4` and `zstd -1` of the raw guest
//!   memory (the CLIs, measured in the same run);
//! - speeds of trim, diff (image) and apply, in GB/s of guest memory, warm
//!   cache, median of 5, outputs fsynced.

#[path = "support/timing.rs"]
mod timing;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use timing::median;

use pbr_format::{Image, PageClass};

/// The fixtures `scripts/make-fixtures` makes.
fn fixtures() -> PathBuf {
    let p = std::env::var_os("PBR_FIXTURES").map(PathBuf::from).unwrap_or_else(|| {
        // Under cargo's target directory, the one pbr-img was built in.
        let target = Path::new(env!("CARGO_BIN_EXE_pbr-img")).ancestors().nth(2).expect("TARGET/release/pbr-img");
        target.join("fixtures/qemu")
    });
    assert!(p.join("fixtures.json").is_file(), "no fixtures at {}: run scripts/make-fixtures", p.display());
    p
}

fn time(mut f: impl FnMut()) -> Duration {
    median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn compressed_len(tool: &str, args: &[&str], input: &Path) -> Option<u64> {
    let out = Command::new(tool).args(args).arg(input).output().ok()?;
    out.status.success().then_some(out.stdout.len() as u64)
}

fn prepare(d: &Path, name: &str) -> PathBuf {
    let stream = fixtures().join(format!("{name}.qemu"));
    let raw = d.join(format!("{name}.pbr"));
    pbr_tools::qemu::convert(std::fs::File::open(&stream).unwrap(), None, &raw, &Default::default(), &|_| {}).unwrap();
    let flags = pbr_tools::classify::read_words(&fixtures().join(format!("{name}.kpageflags.gz")), 1 << 24).unwrap();
    let out = d.join(format!("{name}-c.pbr"));
    pbr_tools::classify::apply(
        &Image::open(&raw).unwrap(),
        &out,
        &pbr_tools::classify::classes(&flags, None),
        "kpageflags",
        None,
    )
    .unwrap();
    out
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var_os("PBR_BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let d = dir.path();
    let kernel = prepare(d, "q35-128m-kernel");
    let daemons = prepare(d, "q35-128m-daemons");
    println!("sizes (real 128 MiB guest)");
    for (name, path) in [("kernel", &kernel), ("daemons", &daemons)] {
        let img = Image::open(path).unwrap();
        let guest = img.guest_size();
        let free: u64 = img.page_counts()[PageClass::Free as usize].iter().sum();
        let non_free = (img.page_count() - free) * 4096;
        let trimmed = d.join(format!("{name}-t.pbr"));
        let t = pbr_tools::trim::trim(&img, &trimmed, Default::default()).unwrap();
        let packed = d.join(format!("{name}-p.pbr"));
        let p = pbr_tools::pack::pack(&Image::open(&trimmed).unwrap(), &packed, &|_| {}).unwrap();
        let raw = d.join(format!("{name}.raw"));
        pbr_tools::export::raw::export_raw(&img, &raw, &|_| {}).unwrap();
        let lz4 = compressed_len("lz4", &["-1", "-c"], &raw);
        let zstd = compressed_len("zstd", &["-1", "-c"], &raw);
        println!(
            "  {name:<8} guest {:>6.1} MiB, non-free pages {:>6.1} MiB",
            guest as f64 / 1048576.0,
            non_free as f64 / 1048576.0
        );
        println!(
            "           trimmed {:>6.1} MiB = {:.3} of guest, {:.3} of non-free (goal <= 1.01)",
            t.after_bytes as f64 / 1048576.0,
            t.after_bytes as f64 / guest as f64,
            t.after_bytes as f64 / non_free as f64
        );
        let ratio = |x: Option<u64>| {
            x.map_or("n/a (tool missing)".to_string(), |x| format!("{:.3}", p.after_bytes as f64 / x as f64))
        };
        println!(
            "           packed (trimmed + lz4 + dedup) {:>6.1} MiB; against lz4 -1 of raw memory {}, against zstd -1 {}",
            p.after_bytes as f64 / 1048576.0,
            ratio(lz4),
            ratio(zstd)
        );
        let full = d.join(format!("{name}-pf.pbr"));
        let pf = pbr_tools::pack::pack(&img, &full, &|_| {}).unwrap();
        let ratio =
            |x: Option<u64>| x.map_or("n/a".to_string(), |x| format!("{:.3}", pf.after_bytes as f64 / x as f64));
        println!(
            "           packed untrimmed {:>6.1} MiB; against lz4 -1 {}, against zstd -1 {}",
            pf.after_bytes as f64 / 1048576.0,
            ratio(lz4),
            ratio(zstd)
        );
    }
    let (k, dm) = (Image::open(&kernel).unwrap(), Image::open(&daemons).unwrap());
    let gb = dm.guest_size() as f64 / 1e9;
    let out = d.join("out.pbr");
    let t_trim = time(|| {
        pbr_tools::trim::trim(&dm, &out, Default::default()).unwrap();
    });
    let diff_path = d.join("diff.pbr");
    let t_diff = time(|| {
        pbr_tools::diff::write_diff(&k, &dm, "kernel", &diff_path).unwrap();
    });
    let diff = Image::open(&diff_path).unwrap();
    let t_apply = time(|| {
        pbr_tools::apply::apply(&k, &[&diff], &out).unwrap();
    });
    let t_report = time(|| {
        pbr_tools::diff::diff(&k, &dm).unwrap();
    });
    // The pipeline as phase capture runs it: classified, trimmed, then diffed.
    let (kt, dt) = (d.join("kernel-t.pbr"), d.join("daemons-t.pbr"));
    let (kt, dt) = (Image::open(&kt).unwrap(), Image::open(&dt).unwrap());
    let tdiff_path = d.join("tdiff.pbr");
    let t_tdiff = time(|| {
        pbr_tools::diff::write_diff(&kt, &dt, "kernel", &tdiff_path).unwrap();
    });
    let tdiff = Image::open(&tdiff_path).unwrap();
    let t_tapply = time(|| {
        pbr_tools::apply::apply(&kt, &[&tdiff], &out).unwrap();
    });
    println!("speed (GB/s of guest memory, {:.3} GB guest, median of 5, outputs fsynced)", gb);
    for (n, t) in [
        ("trim", t_trim),
        ("diff -o", t_diff),
        ("apply", t_apply),
        ("diff report", t_report),
        ("diff -o, trimmed images", t_tdiff),
        ("apply, trimmed images", t_tapply),
    ] {
        println!("  {n:<24} {:>7.3} s  {:>6.2} GB/s (goal >= 1)", t.as_secs_f64(), gb / t.as_secs_f64());
    }
}
