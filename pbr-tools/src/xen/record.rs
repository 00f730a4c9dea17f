//! Record types of the libxl (v2) and libxc (v2/v3) streams inside an
//! `xl save` file, and the names images give them.

/// libxl record types (`libxl_sr_stream_format.h`).
pub mod libxl {
    /// End of the libxl stream.
    pub const END: u32 = 0;
    /// Marker: a libxc stream follows inline.
    pub const LIBXC_CONTEXT: u32 = 1;
    /// The device model's xenstore keys.
    pub const EMULATOR_XENSTORE_DATA: u32 = 2;
    /// The device model's state (a QEMU device-state stream).
    pub const EMULATOR_CONTEXT: u32 = 3;
    /// End of one checkpoint (Remus/COLO).
    pub const CHECKPOINT_END: u32 = 4;
    /// COLO checkpoint state.
    pub const CHECKPOINT_STATE: u32 = 5;
}

/// libxc record types (`xg_sr_stream_format.h`).
pub mod libxc {
    /// End of the libxc stream.
    pub const END: u32 = 0x00;
    /// Guest pages.
    pub const PAGE_DATA: u32 = 0x01;
    /// PV guest width and paging levels.
    pub const X86_PV_INFO: u32 = 0x02;
    /// PV p2m frame list.
    pub const X86_PV_P2M_FRAMES: u32 = 0x03;
    /// PV `vcpu_guest_context`.
    pub const X86_PV_VCPU_BASIC: u32 = 0x04;
    /// PV extended vCPU context.
    pub const X86_PV_VCPU_EXTENDED: u32 = 0x05;
    /// PV XSAVE state.
    pub const X86_PV_VCPU_XSAVE: u32 = 0x06;
    /// PV shared-info page.
    pub const SHARED_INFO: u32 = 0x07;
    /// TSC mode and frequency.
    pub const X86_TSC_INFO: u32 = 0x08;
    /// `XEN_DOMCTL_gethvmcontext` blob.
    pub const HVM_CONTEXT: u32 = 0x09;
    /// HVM parameters.
    pub const HVM_PARAMS: u32 = 0x0a;
    /// Deprecated toolstack blob.
    pub const TOOLSTACK: u32 = 0x0b;
    /// PV vCPU MSRs.
    pub const X86_PV_VCPU_MSRS: u32 = 0x0c;
    /// Memory is complete; later pages are for comparison.
    pub const VERIFY: u32 = 0x0d;
    /// End of one checkpoint.
    pub const CHECKPOINT: u32 = 0x0e;
    /// COLO back channel.
    pub const CHECKPOINT_DIRTY_PFN_LIST: u32 = 0x0f;
    /// End of the static data (v3).
    pub const STATIC_DATA_END: u32 = 0x10;
    /// CPUID policy (v3).
    pub const X86_CPUID_POLICY: u32 = 0x11;
    /// MSR policy (v3).
    pub const X86_MSR_POLICY: u32 = 0x12;
    /// Bit of an optional record type.
    pub const OPTIONAL: u32 = 0x8000_0000;
}

/// The name of a libxl record type, as kept in image blob names.
pub fn libxl_name(t: u32) -> Option<&'static str> {
    Some(match t {
        libxl::END => "end",
        libxl::LIBXC_CONTEXT => "libxc-context",
        libxl::EMULATOR_XENSTORE_DATA => "emulator-xenstore-data",
        libxl::EMULATOR_CONTEXT => "emulator-context",
        libxl::CHECKPOINT_END => "checkpoint-end",
        libxl::CHECKPOINT_STATE => "checkpoint-state",
        _ => return None,
    })
}

/// The name of a libxc record type, as kept in image blob names.
pub fn libxc_name(t: u32) -> Option<&'static str> {
    Some(match t {
        libxc::END => "end",
        libxc::PAGE_DATA => "page-data",
        libxc::X86_PV_INFO => "x86-pv-info",
        libxc::X86_PV_P2M_FRAMES => "x86-pv-p2m-frames",
        libxc::X86_PV_VCPU_BASIC => "x86-pv-vcpu-basic",
        libxc::X86_PV_VCPU_EXTENDED => "x86-pv-vcpu-extended",
        libxc::X86_PV_VCPU_XSAVE => "x86-pv-vcpu-xsave",
        libxc::SHARED_INFO => "shared-info",
        libxc::X86_TSC_INFO => "x86-tsc-info",
        libxc::HVM_CONTEXT => "hvm-context",
        libxc::HVM_PARAMS => "hvm-params",
        libxc::TOOLSTACK => "toolstack",
        libxc::X86_PV_VCPU_MSRS => "x86-pv-vcpu-msrs",
        libxc::VERIFY => "verify",
        libxc::CHECKPOINT => "checkpoint",
        libxc::CHECKPOINT_DIRTY_PFN_LIST => "checkpoint-dirty-pfn-list",
        libxc::STATIC_DATA_END => "static-data-end",
        libxc::X86_CPUID_POLICY => "x86-cpuid-policy",
        libxc::X86_MSR_POLICY => "x86-msr-policy",
        _ => return None,
    })
}

/// Bytes of zero padding after a record body of `len` bytes.
pub fn padding(len: u32) -> usize {
    ((8 - len % 8) % 8) as usize
}
