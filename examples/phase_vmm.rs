//! A small VMM on KVM that writes restartable images and restarts from them.
//!
//! `cargo run --release -p pbr-examples --example phase_vmm -- OUTDIR`
//! writes `OUTDIR/<phase>.pbr`, then replays each with the KVM adapter.
//!
//! 1. Boot: a real-mode guest program (it counts and reports each count on
//!    I/O port 0x10) runs in 1 MiB of guest memory.
//! 2. Capture: at three phase points (counts 1000, 2000, 3000) the VMM reads
//!    the vCPU state from KVM and the guest memory, and writes a
//!    phase-tagged `.pbr` with `pbr-format`'s `ImageWriter`.
//! 3. Restart: each image is replayed into a fresh VM through
//!    `pbr-tools`' KVM adapter (raw pages mapped `MAP_PRIVATE` from the
//!    image, no copy) and the guest carries on from its count.

use std::fs::File;
use std::path::{Path, PathBuf};

use pbr_format::pod::KvmSegment;
use pbr_format::{Image, ImageWriter, PageClass, Phase, Region, Vcpu, WriterOptions, X86Vcpu};
use pbr_replay::kvm::{Exit, KvmAdapter};
use pbr_replay::replay;

/// Guest-physical layout: 1 MiB of RAM, code at 0x1000, counter at 0x500.
const RAM: u64 = 1 << 20;
const CODE: u64 = 0x1000;
/// The port the guest reports its count on.
const PORT: u16 = 0x10;

/// The guest: `xor ax,ax; mov ds,ax; l: inc dword [0x500];
/// mov eax,[0x500]; out 0x10,eax; jmp l`.
pub const GUEST: [u8; 18] =
    [0x31, 0xc0, 0x8e, 0xd8, 0x66, 0xff, 0x06, 0x00, 0x05, 0x66, 0xa1, 0x00, 0x05, 0x66, 0xe7, 0x10, 0xeb, 0xf2];

/// Phase points: (name, count at which to capture).
pub const PHASES: [(&str, u32); 3] = [("firmware", 1000), ("kernel", 2000), ("daemons", 3000)];

fn real_mode_segment(code: bool) -> KvmSegment {
    KvmSegment { limit: 0xffff.into(), type_: if code { 0xb } else { 0x3 }, present: 1, s: 1, ..Default::default() }
}

/// A vCPU at `rip` in real mode with flat 64 KiB segments at 0.
pub fn boot_vcpu(rip: u64) -> X86Vcpu {
    let mut v = X86Vcpu::new(0);
    v.regs.rip = rip.into();
    v.regs.rflags = 2.into();
    v.sregs.cs = real_mode_segment(true);
    for s in [&mut v.sregs.ds, &mut v.sregs.es, &mut v.sregs.fs, &mut v.sregs.gs, &mut v.sregs.ss] {
        *s = real_mode_segment(false);
    }
    v.sregs.tr = KvmSegment { limit: 0xffff.into(), type_: 0xb, present: 1, ..Default::default() };
    v.sregs.ldt = KvmSegment { limit: 0xffff.into(), type_: 0x2, present: 1, ..Default::default() };
    v.sregs.gdt.limit = 0xffff.into();
    v.sregs.idt.limit = 0xffff.into();
    v
}

/// The count the guest reported, if `exit` is its report.
fn count(exit: &Exit) -> Option<u32> {
    match exit {
        Exit::IoOut { port: PORT, data } if data.len() == 4 => {
            Some(u32::from_le_bytes([data[0], data[1], data[2], data[3]]))
        }
        _ => None,
    }
}

/// Writes the VM's current state as a phase image.
fn capture(vm: &KvmAdapter, path: &Path, phase: &str, sequence: u32, count: u32) -> pbr_format::Result<()> {
    let fd = vm.vcpu_fd(0).expect("vcpu 0");
    let mut v = X86Vcpu::new(0);
    v.regs = (&fd.get_regs().expect("get regs")).into();
    v.sregs = (&fd.get_sregs().expect("get sregs")).into();
    let (gpa, mem) = vm.slot_memory(0).expect("guest memory");
    let mut w = ImageWriter::create(path, &[Region::ram("ram", gpa, RAM)], WriterOptions::default())?;
    w.set_phase(Phase { since_boot_ns: u64::from(count), ..Phase::named(phase, sequence) })?;
    w.set_metadata(pbr_format::keys::SOURCE_FORMAT, "vmm")?;
    w.set_metadata("vmm.name", "pbr-examples/phase_vmm")?;
    for (i, page) in mem.chunks_exact(4096).enumerate() {
        let class = if (i as u64) * 4096 == CODE { PageClass::Kernel } else { PageClass::Unknown };
        w.write_page(i as u64, page, class)?;
    }
    w.add_vcpu(Vcpu::X86_64(Box::new(v)))?;
    w.finish()?;
    Ok(())
}

/// Boots the guest and captures one image per phase into `dir`.
pub fn boot_and_capture(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut vm = KvmAdapter::new().expect("KVM");
    vm.add_ram(0, RAM).expect("guest memory");
    vm.write_guest(CODE, &GUEST).expect("guest program");
    vm.add_vcpu(&boot_vcpu(CODE)).expect("vcpu");
    let mut images = Vec::new();
    let mut next = 0;
    while next < PHASES.len() {
        let exit = vm.run_until_io(0).expect("run");
        let Some(n) = count(&exit) else { panic!("unexpected exit {exit:?}") };
        if n == PHASES[next].1 {
            let (name, _) = PHASES[next];
            let path = dir.join(format!("{name}.pbr"));
            capture(&vm, &path, name, next as u32 + 1, n).expect("capture");
            images.push((path, n));
            next += 1;
        }
    }
    images
}

/// Replays `image` into a fresh VM and returns what replay did and the
/// next `n` counts.
pub fn restart(image: &Path, n: usize) -> (pbr_replay::ReplayReport, Vec<u32>) {
    let img = Image::open(image).expect("image");
    let file = File::open(image).expect("image file");
    let mut vm = KvmAdapter::new().expect("KVM");
    let report = replay(&img, &file, &mut vm).expect("replay");
    let counts = (0..n).filter_map(|_| count(&vm.run_until_io(0).expect("run"))).collect();
    (report, counts)
}

fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).expect("output directory");
    for (path, at) in boot_and_capture(&dir) {
        let img = Image::open(&path).expect("image");
        let phase = img.phase().expect("phase");
        println!(
            "captured {} (phase {} #{}) at count {at}: {} bytes",
            path.display(),
            phase.name,
            phase.sequence,
            img.file_len()
        );
        let (report, next) = restart(&path, 5);
        println!(
            "  restarted ({} bytes mapped from the image, {} pages copied): the guest carries on with {next:?}",
            report.mapped_bytes, report.copied_pages
        );
    }
}
