//! Restore with zero copy into a `vm-memory` guest memory, the way a
//! rust-vmm VMM (Firecracker, Cloud Hypervisor, ...) holds guest RAM.
//!
//! `cargo run --release -p pbr-examples --example vm_memory_restore -- IMAGE.pbr`

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: vm_memory_restore IMAGE.pbr")?;
    let image = pbr_format::Image::open(&path)?;
    let file = std::fs::File::open(&path)?;
    // Raw pages are mapped MAP_PRIVATE from the image: nothing is read yet.
    let mem = pbr_format::vm_memory::guest_memory(&image, &file)?;
    for region in mem.iter() {
        println!(
            "guest {:#x}+{:#x} (file-backed: {})",
            region.start_addr().0,
            region.len(),
            region.file_offset().is_some()
        );
    }
    let word: u32 = mem.read_obj(GuestAddress(0x500))?;
    println!("guest word at 0x500: {word:#x}");
    for v in image.vcpus() {
        if let pbr_format::Vcpu::X86_64(x) = v {
            let regs: kvm_bindings::kvm_regs = (&x.regs).into();
            println!("vcpu{}: rip {:#x}, ready for KVM_SET_REGS", x.id, regs.rip);
        }
    }
    Ok(())
}
