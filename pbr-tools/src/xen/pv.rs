//! PV guests' vCPU records (`X86_PV_VCPU_BASIC`, `_EXTENDED`, `_XSAVE`,
//! `_MSRS`) decoded into the `.pbr` x86-64 vCPU record, for 64-bit guests.
//!
//! A PV vCPU runs on Xen's paravirtual interface, not on hardware
//! segments, so the record holds what `vcpu_guest_context` has: general
//! registers, selectors (no hidden parts), control and debug registers
//! (`cr3` as the saver wrote it, in PFN form), the FS/GS bases as MSRs, the
//! FXSAVE area, and the XSAVE image and MSRs of the other records.
//!
//! A saved PV vCPU is in its kernel (the guest suspended itself), so the
//! GS base in use is the kernel's: `gs_base_kernel` is `IA32_GS_BASE` (and
//! the GS segment's base) and `gs_base_user`, the one SWAPGS brings back on
//! the way to user space, is `IA32_KERNEL_GS_BASE`.

use pbr_format::X86Vcpu;
use pbr_format::pod::MsrEntry;
use zerocopy::little_endian::{U16, U64};

/// `vcpu_guest_context` of a 64-bit guest.
pub const CONTEXT_SIZE: usize = 5168;
/// `cpu_user_regs` inside it.
const USER_REGS: usize = 520;
/// `fs_base`, `gs_base_kernel` and `gs_base_user` in the context.
const FS_BASE: usize = 5144;
const GS_BASE_KERNEL: usize = 5152;
const GS_BASE_USER: usize = 5160;
/// Offsets in `cpu_user_regs` of rax rbx rcx rdx rsi rdi rsp rbp r8..r15,
/// by `kvm_regs.gpr` index.
const GPR_AT: [usize; 16] = [80, 40, 88, 96, 104, 112, 152, 32, 72, 64, 56, 48, 24, 16, 8, 0];

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

/// Decodes the body of an `X86_PV_VCPU_BASIC` record after its 8-byte vCPU
/// header (a 64-bit `vcpu_guest_context`).
///
/// # Errors
/// Another length (32-bit guests' contexts are not decoded).
pub fn decode_basic(id: u32, b: &[u8]) -> Result<X86Vcpu, String> {
    if b.len() != CONTEXT_SIZE {
        return Err(format!(
            "X86_PV_VCPU_BASIC of vCPU {id} holds {} bytes, not the {CONTEXT_SIZE} of a 64-bit vcpu_guest_context",
            b.len()
        ));
    }
    let mut v = X86Vcpu::new(id);
    let u = &b[USER_REGS..USER_REGS + 200];
    for (i, &at) in GPR_AT.iter().enumerate() {
        v.regs.gpr[i] = U64::new(u64_at(u, at));
    }
    v.regs.rip = U64::new(u64_at(u, 128));
    v.regs.rflags = U64::new(u64_at(u, 144));
    let sel = |at: usize| U16::new(u64_at(u, at) as u16);
    v.sregs.cs.selector = sel(136);
    v.sregs.ss.selector = sel(160);
    v.sregs.es.selector = sel(168);
    v.sregs.ds.selector = sel(176);
    v.sregs.fs.selector = sel(184);
    v.sregs.gs.selector = sel(192);
    let ctrl = |i: usize| U64::new(u64_at(b, 4984 + 8 * i));
    v.sregs.cr0 = ctrl(0);
    v.sregs.cr2 = ctrl(2);
    v.sregs.cr3 = ctrl(3);
    v.sregs.cr4 = ctrl(4);
    let mut dr = pbr_format::pod::KvmDebugregs::default();
    for i in 0..4 {
        dr.db[i] = U64::new(u64_at(b, 5048 + 8 * i));
    }
    dr.dr6 = U64::new(u64_at(b, 5048 + 48));
    dr.dr7 = U64::new(u64_at(b, 5048 + 56));
    v.debugregs = Some(dr);
    let (fs, gs_kernel, gs_user) = (u64_at(b, FS_BASE), u64_at(b, GS_BASE_KERNEL), u64_at(b, GS_BASE_USER));
    v.sregs.fs.base = U64::new(fs);
    v.sregs.gs.base = U64::new(gs_kernel);
    v.msrs = vec![
        MsrEntry::new(0xc000_0100, fs),
        MsrEntry::new(0xc000_0101, gs_kernel),
        MsrEntry::new(0xc000_0102, gs_user),
    ];
    let mut x = vec![0u8; 4096];
    x[..512].copy_from_slice(&b[..512]);
    x[512] = 3;
    v.xsave = x;
    v.xcr0 = 1;
    Ok(v)
}

/// Adds an `X86_PV_VCPU_XSAVE` body (after the vCPU header: `xcr0`,
/// `xcr0_accum`, XSAVE image) to `v`.
///
/// # Errors
/// A body too short for an XSAVE image, or too large.
pub fn add_xsave(v: &mut X86Vcpu, b: &[u8]) -> Result<(), String> {
    if b.len() < 16 + 576 || !(b.len() - 16).is_multiple_of(4) || b.len() - 16 > 1 << 20 {
        return Err(format!("X86_PV_VCPU_XSAVE of vCPU {} holds {} bytes, not an XSAVE image", v.id, b.len()));
    }
    v.xcr0 = u64_at(b, 0);
    v.xsave = b[16..].to_vec();
    Ok(())
}

/// Adds an `X86_PV_VCPU_MSRS` body (after the vCPU header: 16-byte
/// `xen_domctl_vcpu_msr` entries) to `v`.
///
/// # Errors
/// A body that is not a whole number of entries.
pub fn add_msrs(v: &mut X86Vcpu, b: &[u8]) -> Result<(), String> {
    if !b.len().is_multiple_of(16) {
        return Err(format!("X86_PV_VCPU_MSRS of vCPU {} holds {} bytes, not 16-byte entries", v.id, b.len()));
    }
    for e in b.chunks_exact(16) {
        v.msrs.push(MsrEntry::new(u32::from_le_bytes([e[0], e[1], e[2], e[3]]), u64_at(e, 8)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_context_fields() {
        let mut b = vec![0u8; CONTEXT_SIZE];
        let put = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut b, USER_REGS + 80, 0xaa); // rax
        put(&mut b, USER_REGS + 128, 0xffff_ffff_8100_0000); // rip
        put(&mut b, USER_REGS + 136, 0xe033); // cs
        put(&mut b, 4984 + 24, 0x1234 << 12); // cr3
        put(&mut b, FS_BASE, 0x7f00_0000);
        put(&mut b, GS_BASE_KERNEL, 0xffff_8880_3fc0_0000);
        put(&mut b, GS_BASE_USER, 0x7f12_3456_7000);
        let v = decode_basic(1, &b).unwrap();
        assert_eq!(v.regs.gpr[0].get(), 0xaa);
        assert_eq!(v.regs.rip.get(), 0xffff_ffff_8100_0000);
        assert_eq!(v.sregs.cs.selector.get(), 0xe033);
        assert_eq!(v.sregs.cr3.get(), 0x1234 << 12);
        assert_eq!(v.msr(0xc000_0100), Some(0x7f00_0000));
        // In its kernel: the kernel's GS base is the one in use.
        assert_eq!(v.msr(0xc000_0101), Some(0xffff_8880_3fc0_0000));
        assert_eq!(v.sregs.gs.base.get(), 0xffff_8880_3fc0_0000);
        assert_eq!(v.msr(0xc000_0102), Some(0x7f12_3456_7000));
        assert!(decode_basic(0, &b[..100]).is_err());
    }
}
