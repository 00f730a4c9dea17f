//! `cargo bench -p pbr-img --bench qemu_convert`
//!
//! Converts a real 1 GiB QEMU stream of mostly non-zero pages (a guest whose
//! RAM is backed by a file of pseudo-random bytes) and compares, in one run
//! and from a warm page cache:
//! - `pbr-img convert STREAM` against QEMU's own load of the same stream
//!   (`-incoming defer`, then `migrate-incoming`, until `completed`), and
//! - against `cat STREAM > /dev/null`, and against `cp STREAM COPY && sync`
//!   (writing as many bytes durably: the floor for any converter that must
//!   fsync its output).
//!
//! Set `PBR_BENCH_MB` to change the guest size (default 1024).

#[path = "support/timing.rs"]
mod timing;

#[path = "../tests/it/common/vm.rs"]
mod vm;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use timing::runs;

use serde_json::json;

fn fill(path: &Path, mb: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

fn main() {
    let mb: u64 = std::env::var("PBR_BENCH_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir_in(std::env::var_os("PBR_BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let d = dir.path();
    let ram = d.join("ram.bin");
    fill(&ram, mb);
    let machine = vec![
        "-machine".to_string(),
        "q35,accel=tcg,memory-backend=ram".into(),
        "-m".into(),
        format!("{mb}"),
        "-object".into(),
        format!("memory-backend-file,id=ram,size={mb}M,mem-path={},share=off", ram.display()),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
    ];
    let base: Vec<&str> = machine.iter().map(String::as_str).collect();

    let stream = d.join("guest.qemu");
    let mut src = vm::Vm::start(d, "src", &[base.clone(), vec!["-S"]].concat());
    src.cmd("migrate", json!({"uri": format!("exec:cat > {}", stream.display())}));
    src.wait_migration();
    src.quit();
    let len = std::fs::metadata(&stream).unwrap().len();

    let cat = || {
        let t = Instant::now();
        let st = Command::new("cat").arg(&stream).stdout(std::fs::File::create("/dev/null").unwrap()).status().unwrap();
        assert!(st.success());
        t.elapsed()
    };
    cat();
    let bin = env!("CARGO_BIN_EXE_pbr-img");
    let out = d.join("guest.pbr");
    let convert = || {
        let t = Instant::now();
        let o = Command::new(bin).args(["convert", "-q"]).arg(&stream).arg("-o").arg(&out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        t.elapsed()
    };
    let qemu_load = || {
        let mut q = vm::Vm::start(d, "dst", &[base.clone(), vec!["-incoming", "defer"]].concat());
        let t = Instant::now();
        q.cmd("migrate-incoming", json!({"uri": format!("exec:cat {}", stream.display())}));
        q.wait_migration();
        let e = t.elapsed();
        q.quit();
        e
    };
    let copy = d.join("copy.qemu");
    let cp_sync = || {
        let t = Instant::now();
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("cp {} {} && sync {}", stream.display(), copy.display(), copy.display()))
            .status()
            .unwrap();
        assert!(st.success());
        t.elapsed()
    };
    let t_cat = runs(5, cat);
    let t_cp = runs(5, cp_sync);
    let t_convert = runs(5, convert);
    let t_qemu = runs(5, qemu_load);
    let gib = len as f64 / (1u64 << 30) as f64;
    println!("{} MiB guest, stream {:.2} GiB of mostly non-zero pages, warm page cache, median of 5", mb, gib);
    println!("  cat STREAM > /dev/null   {:>8.3} s  {:>7.2} GiB/s", t_cat.as_secs_f64(), gib / t_cat.as_secs_f64());
    println!("  cp STREAM COPY && sync   {:>8.3} s  {:>7.2} GiB/s", t_cp.as_secs_f64(), gib / t_cp.as_secs_f64());
    println!("  QEMU -incoming load      {:>8.3} s  {:>7.2} GiB/s", t_qemu.as_secs_f64(), gib / t_qemu.as_secs_f64());
    println!(
        "  pbr-img convert          {:>8.3} s  {:>7.2} GiB/s",
        t_convert.as_secs_f64(),
        gib / t_convert.as_secs_f64()
    );
    println!(
        "  convert / QEMU load = {:.2} (<= 1 means at least as fast as QEMU)",
        t_convert.as_secs_f64() / t_qemu.as_secs_f64()
    );
    println!("  convert / cat       = {:.2} (<= 2 is the target)", t_convert.as_secs_f64() / t_cat.as_secs_f64());
    println!(
        "  convert / cp+sync   = {:.2} (writing the same bytes durably, the floor for any converter)",
        t_convert.as_secs_f64() / t_cp.as_secs_f64()
    );
}
