//! The phase guest's arguments, shared by `capture` and `boot`.

use std::path::PathBuf;

use clap::Args;
use pbr_reboot::guest::GuestSpec;

/// How to boot the guest (kernel + initramfs + command line).
#[derive(Args, Debug, Clone)]
pub struct GuestArgs {
    /// The guest kernel.
    #[arg(long, required_unless_present = "command")]
    kernel: Option<PathBuf>,
    /// The guest initramfs.
    #[arg(long, required_unless_present = "command")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, default_value = "console=ttyS0", allow_hyphen_values = true)]
    append: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// QEMU machine and accelerator.
    #[arg(long, default_value = "q35,accel=tcg")]
    machine: String,
    /// QEMU CPU model.
    #[arg(long, default_value = "max")]
    cpu: String,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
}

impl GuestArgs {
    /// Whether the kernel command line asks the guest for its kpageflags
    /// (`pbr.kpf=1`): the capture then classifies with them.
    pub fn classify(&self) -> bool {
        self.append.split_whitespace().any(|w| w == "pbr.kpf=1")
    }

    /// The guest as the library starts it.
    pub fn spec(&self) -> GuestSpec {
        GuestSpec {
            qemu: self.qemu.clone(),
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            mem_mb: self.mem,
            smp: self.smp,
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone().unwrap_or_default(),
            append: self.append.clone(),
        }
    }
}
