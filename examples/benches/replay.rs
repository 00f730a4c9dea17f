//! `cargo bench -p pbr-examples --bench replay`
//!
//! Time from the start of a replay to the guest's first instruction after
//! restore (its first port write), on real /dev/kvm, for images of 1, 4 and
//! 16 GiB of guest memory whose every page holds data: the mmap path maps
//! raw runs instead of reading them, so it should stay flat. Against QEMU's
//! own `-incoming` of a 4 GiB guest of non-zero pages, from its spawn to the
//! guest running. Warm page cache, median of 5. `PBR_BENCH_DIR` picks the
//! scratch directory (about 30 GiB of disk).

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pbr_format::{Image, ImageWriter, PageClass, Phase, Region, Vcpu, WriterOptions};
use pbr_replay::kvm::KvmAdapter;
use pbr_replay::qemu::process::{Io, QemuProcess};
use pbr_replay::replay;
use serde_json::json;

#[path = "../phase_vmm.rs"]
#[allow(dead_code)]
mod vmm;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A `gib` GiB image: the counting guest at 0x1000, every page non-zero.
fn make_image(path: &Path, gib: u64) {
    let size = gib << 30;
    let opts = WriterOptions { sync: false, ..WriterOptions::default() };
    let mut w = ImageWriter::create(path, &[Region::ram("ram", 0, size)], opts).unwrap();
    let mut page = vec![0u8; 4096];
    for gfn in 0..size / 4096 {
        page.fill((gfn % 251) as u8 | 1);
        page[..8].copy_from_slice(&gfn.to_le_bytes());
        if gfn == 0 {
            page[0x500..0x504].copy_from_slice(&0u32.to_le_bytes());
        }
        if gfn == 1 {
            page[..vmm::GUEST.len()].copy_from_slice(&vmm::GUEST);
        }
        w.write_page(gfn, &page, PageClass::Unknown).unwrap();
    }
    w.set_phase(Phase::named("kernel", 1)).unwrap();
    w.add_vcpu(Vcpu::X86_64(Box::new(vmm::boot_vcpu(0x1000)))).unwrap();
    w.finish().unwrap();
}

fn replay_to_first_instruction(path: &Path) -> Duration {
    let t = Instant::now();
    let img = Image::open(path).unwrap();
    let file = File::open(path).unwrap();
    let mut vm = KvmAdapter::new().unwrap();
    replay(&img, &file, &mut vm).unwrap();
    vm.run_until_io(0).unwrap();
    t.elapsed()
}

fn qemu_incoming(dir: &Path, gib: u64) -> Duration {
    let ram = dir.join("ram.bin");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&ram).unwrap());
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..(gib << 10) {
        chunk.fill((i % 251) as u8 | 1);
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let mb = gib << 10;
    let stream = dir.join("guest.qemu");
    let sock = dir.join("src.sock");
    let backend = format!("memory-backend-file,id=ram,size={mb}M,mem-path={},share=off", ram.display());
    let args = machine(mb, &["-S", "-object", &backend]);
    let io = Io { stdin: Stdio::null(), stdout: Stdio::null(), hold_stderr: false };
    let mut src = QemuProcess::launch("qemu-system-x86_64", &args, &sock, io).unwrap();
    let q = src.qmp();
    q.cmd("migrate", json!({"uri": format!("exec:cat > {}", stream.display())})).unwrap();
    q.wait_migration(Duration::from_secs(600)).unwrap();
    src.quit();
    std::fs::remove_file(&ram).unwrap();
    let _ = std::fs::read(&stream).map(|b| b.len());
    let runs = (0..5)
        .map(|i| {
            let sock = dir.join(format!("dst{i}.sock"));
            let t = Instant::now();
            let (backend, incoming) =
                (format!("memory-backend-ram,id=ram,size={mb}M"), format!("exec:cat {}", stream.display()));
            let args = machine(mb, &["-object", &backend, "-incoming", &incoming]);
            let io = Io { stdin: Stdio::null(), stdout: Stdio::null(), hold_stderr: false };
            let mut dst = QemuProcess::launch("qemu-system-x86_64", &args, &sock, io).unwrap();
            let q = dst.qmp();
            q.wait_migration(Duration::from_secs(600)).unwrap();
            q.cmd("cont", json!({})).unwrap();
            let e = t.elapsed();
            dst.quit();
            e
        })
        .collect();
    median(runs)
}

/// QEMU's arguments for a TCG `pc` guest of `mb` MiB whose RAM is the
/// backend `ram`, no devices, then `extra`.
fn machine(mb: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["-machine", "pc,accel=tcg,memory-backend=ram", "-m", &mb.to_string(), "-nodefaults", "-display", "none"]
            .map(str::to_owned)
            .into();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var_os("PBR_BENCH_DIR").unwrap_or_else(|| ".".into())).unwrap();
    let d = dir.path();
    println!("replay to the guest's first instruction, KVM adapter (mmap path), median of 5, warm cache");
    let mut results = Vec::new();
    for gib in [1u64, 4, 16] {
        let path = d.join(format!("{gib}g.pbr"));
        make_image(&path, gib);
        let _ = replay_to_first_instruction(&path);
        let t = median((0..5).map(|_| replay_to_first_instruction(&path)).collect());
        println!(
            "  {gib:>2} GiB image ({} MiB file): {:>8.2} ms",
            std::fs::metadata(&path).unwrap().len() >> 20,
            t.as_secs_f64() * 1e3
        );
        results.push((gib, t));
        if gib != 4 {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let base = results[0].1.as_secs_f64();
    for (gib, t) in &results {
        println!("  {gib:>2} GiB / 1 GiB = {:.2}x", t.as_secs_f64() / base);
    }
    let q = qemu_incoming(d, 4);
    let ours = results[1].1;
    println!("QEMU -incoming of a 4 GiB guest of non-zero pages, spawn to running: {:.2} ms", q.as_secs_f64() * 1e3);
    println!("  QEMU / pbr KVM replay at 4 GiB = {:.1}x (goal >= 10x)", q.as_secs_f64() / ours.as_secs_f64());
}
