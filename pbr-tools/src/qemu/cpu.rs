//! Decoding QEMU's x86 `cpu` (and `apic`) vmstate sections into the `.pbr`
//! x86-64 vCPU record, finding every field through the vmdescription.

use pbr_format::X86Vcpu;
use pbr_format::pod::{KvmSegment, MsrEntry};
use zerocopy::little_endian::{U16, U32, U64};

use super::vmdesc::{DeviceDesc, FieldLoc};

/// Size of the XSAVE area written (`struct kvm_xsave`).
const XSAVE_SIZE: usize = 4096;

/// QEMU descriptor flag bits (`target/i386/cpu.h`).
const DESC_TYPE_SHIFT: u32 = 8;
const DESC_S_MASK: u32 = 1 << 12;
const DESC_DPL_SHIFT: u32 = 13;
const DESC_P_MASK: u32 = 1 << 15;
const DESC_AVL_MASK: u32 = 1 << 20;
const DESC_L_SHIFT: u32 = 21;
const DESC_B_SHIFT: u32 = 22;
const DESC_G_MASK: u32 = 1 << 23;

/// MSRs kept in plain `cpu` fields: (field, MSR index).
const MSR_FIELDS: &[(&str, u32)] = &[
    ("env.sysenter_cs", 0x174),
    ("env.sysenter_esp", 0x175),
    ("env.sysenter_eip", 0x176),
    ("env.star", 0xc000_0081),
    ("env.lstar", 0xc000_0082),
    ("env.cstar", 0xc000_0083),
    ("env.fmask", 0xc000_0084),
    ("env.kernelgsbase", 0xc000_0102),
    ("env.tsc_aux", 0xc000_0103),
    ("env.pat", 0x277),
    ("env.mtrr_deftype", 0x2ff),
    ("env.mcg_cap", 0x179),
    ("env.mcg_status", 0x17a),
    ("env.mcg_ctl", 0x17b),
    ("env.wall_clock_msr", 0x4b56_4d00),
    ("env.system_time_msr", 0x4b56_4d01),
    ("env.async_pf_en_msr", 0x4b56_4d02),
    ("env.steal_time_msr", 0x4b56_4d03),
    ("env.pv_eoi_en_msr", 0x4b56_4d04),
    ("env.poll_control_msr", 0x4b56_4d05),
    ("env.msr_ia32_misc_enable", 0x1a0),
    ("env.msr_ia32_feature_control", 0x3a),
    ("env.msr_smi_count", 0x34),
    ("env.tsc_adjust", 0x3b),
    ("env.spec_ctrl", 0x48),
    ("env.xss", 0xda0),
];

/// Fixed-range MTRR MSRs in the order of `env.mtrr_fixed`.
const MTRR_FIXED: [u32; 11] = [0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f];

struct Body<'a> {
    bytes: &'a [u8],
    desc: &'a DeviceDesc,
}

impl Body<'_> {
    fn loc(&self, name: &str) -> Result<&FieldLoc, String> {
        self.desc.field(name).ok_or_else(|| format!("{} has no field '{name}'", self.desc.name))
    }

    /// Big-endian integer at `offset` of `len` bytes.
    fn int_at(&self, offset: u64, len: u64) -> Result<u64, String> {
        let b = self.bytes.get(offset as usize..(offset + len) as usize).ok_or_else(|| {
            format!("{} field at {offset} runs past the {}-byte body", self.desc.name, self.bytes.len())
        })?;
        Ok(b.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    /// Element `i` of an integer field.
    fn int(&self, name: &str, i: u64) -> Result<u64, String> {
        let l = self.loc(name)?;
        if i >= l.count || l.size > 8 {
            return Err(format!("{name}[{i}] is not an integer element"));
        }
        self.int_at(l.offset + i * l.size, l.size)
    }

    fn opt(&self, name: &str) -> Option<u64> {
        self.int(name, 0).ok()
    }

    /// Byte offset of element `i` of a struct field of `size` bytes.
    fn elem(&self, name: &str, i: u64, size: u64) -> Result<u64, String> {
        let l = self.loc(name)?;
        if i >= l.count || l.size != size {
            return Err(format!("{name}[{i}] is not a {size}-byte element"));
        }
        Ok(l.offset + i * size)
    }
}

fn segment(b: &Body<'_>, name: &str, i: u64) -> Result<KvmSegment, String> {
    let o = b.elem(name, i, 20)?;
    let flags = b.int_at(o + 16, 4)? as u32;
    let present = u8::from(flags & DESC_P_MASK != 0);
    Ok(KvmSegment {
        selector: U16::new(b.int_at(o, 4)? as u16),
        base: U64::new(b.int_at(o + 4, 8)?),
        limit: U32::new(b.int_at(o + 12, 4)? as u32),
        type_: ((flags >> DESC_TYPE_SHIFT) & 15) as u8,
        present,
        dpl: ((flags >> DESC_DPL_SHIFT) & 3) as u8,
        db: ((flags >> DESC_B_SHIFT) & 1) as u8,
        s: u8::from(flags & DESC_S_MASK != 0),
        l: ((flags >> DESC_L_SHIFT) & 1) as u8,
        g: u8::from(flags & DESC_G_MASK != 0),
        avl: u8::from(flags & DESC_AVL_MASK != 0),
        unusable: 1 - present,
        padding: 0,
    })
}

/// QEMU's descriptor flags of a KVM segment (the inverse of how [`decode`] reads them).
pub fn segment_flags(s: &KvmSegment) -> u32 {
    (u32::from(s.type_) << DESC_TYPE_SHIFT)
        | if s.present != 0 { DESC_P_MASK } else { 0 }
        | (u32::from(s.dpl) << DESC_DPL_SHIFT)
        | (u32::from(s.db) << DESC_B_SHIFT)
        | if s.s != 0 { DESC_S_MASK } else { 0 }
        | (u32::from(s.l) << DESC_L_SHIFT)
        | if s.g != 0 { DESC_G_MASK } else { 0 }
        | if s.avl != 0 { DESC_AVL_MASK } else { 0 }
}

/// Decodes vCPU `id` from its `cpu` section body and, when present, its
/// `apic` section body.
pub fn decode(id: u32, cpu: (&[u8], &DeviceDesc), apic: Option<(&[u8], &DeviceDesc)>) -> Result<X86Vcpu, String> {
    let b = Body { bytes: cpu.0, desc: cpu.1 };
    let mut v = X86Vcpu::new(id);
    // QEMU: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15; KVM: RAX RBX RCX RDX RSI RDI RSP RBP R8..R15.
    const QEMU_TO_KVM: [usize; 8] = [0, 3, 1, 2, 6, 7, 4, 5];
    for (kvm, &q) in QEMU_TO_KVM.iter().enumerate() {
        v.regs.gpr[kvm] = U64::new(b.int("env.regs", q as u64)?);
    }
    for i in 8..16 {
        v.regs.gpr[i] = U64::new(b.int("env.regs", i as u64)?);
    }
    v.regs.rip = U64::new(b.int("env.eip", 0)?);
    v.regs.rflags = U64::new(b.int("env.eflags", 0)?);

    let s = &mut v.sregs;
    s.es = segment(&b, "env.segs", 0)?;
    s.cs = segment(&b, "env.segs", 1)?;
    s.ss = segment(&b, "env.segs", 2)?;
    s.ds = segment(&b, "env.segs", 3)?;
    s.fs = segment(&b, "env.segs", 4)?;
    s.gs = segment(&b, "env.segs", 5)?;
    s.ldt = segment(&b, "env.ldt", 0)?;
    s.tr = segment(&b, "env.tr", 0)?;
    for (dt, name) in [(&mut s.gdt, "env.gdt"), (&mut s.idt, "env.idt")] {
        let o = b.elem(name, 0, 20)?;
        dt.base = U64::new(b.int_at(o + 4, 8)?);
        dt.limit = U16::new(b.int_at(o + 12, 4)? as u16);
    }
    s.cr0 = U64::new(b.int("env.cr[0]", 0)?);
    s.cr2 = U64::new(b.int("env.cr[2]", 0)?);
    s.cr3 = U64::new(b.int("env.cr[3]", 0)?);
    s.cr4 = U64::new(b.int("env.cr[4]", 0)?);
    s.efer = U64::new(b.int("env.efer", 0)?);
    let interrupt = b.opt("env.interrupt_injected").map(|x| x as u32 as i32).unwrap_or(-1);
    if interrupt >= 0 {
        s.interrupt_bitmap[(interrupt / 64) as usize % 4] = U64::new(1 << (interrupt % 64));
    }

    let mut dr = pbr_format::pod::KvmDebugregs::default();
    for i in 0..4 {
        dr.db[i] = U64::new(b.int("env.dr", i as u64)?);
    }
    dr.dr6 = U64::new(b.int("env.dr", 6)?);
    dr.dr7 = U64::new(b.int("env.dr", 7)?);
    v.debugregs = Some(dr);

    v.events = Some(events(&b, interrupt));
    v.tsc = Some(b.int("env.tsc", 0)?);
    v.tsc_khz = b.opt("env.tsc_khz").unwrap_or(0) as u32;
    v.mp_state = b.opt("env.mp_state").unwrap_or(0) as u32;
    v.xcr0 = b.opt("env.xcr0").unwrap_or(0);
    v.msrs = msrs(&b);
    v.xsave = xsave(&b)?;

    if let Some((bytes, desc)) = apic {
        let a = Body { bytes, desc };
        let base = a.int("apicbase", 0)?;
        v.sregs.apic_base = U64::new(base);
        let (page, tpr) = lapic(&a)?;
        v.sregs.cr8 = U64::new(u64::from(tpr >> 4));
        v.lapic = Some(page);
    }
    Ok(v)
}

fn events(b: &Body<'_>, interrupt: i32) -> [u8; 64] {
    let mut e = [0u8; 64];
    let exception = b.opt("env.exception_nr").map(|x| x as u32 as i32).unwrap_or(-1);
    if exception >= 0 {
        e[0] = 1;
        e[1] = exception as u8;
        e[2] = b.opt("env.has_error_code").unwrap_or(0) as u8;
    }
    if interrupt >= 0 {
        e[8] = 1;
        e[9] = interrupt as u8;
        e[10] = b.opt("env.soft_interrupt").unwrap_or(0) as u8;
    }
    e[12] = b.opt("env.nmi_injected").unwrap_or(0) as u8;
    e[13] = b.opt("env.nmi_pending").unwrap_or(0) as u8;
    e[16..20].copy_from_slice(&(b.opt("env.sipi_vector").unwrap_or(0) as u32).to_le_bytes());
    // KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR.
    e[20..24].copy_from_slice(&3u32.to_le_bytes());
    e
}

fn msrs(b: &Body<'_>) -> Vec<MsrEntry> {
    let entry = MsrEntry::new;
    let mut out: Vec<MsrEntry> =
        MSR_FIELDS.iter().filter_map(|&(name, index)| b.opt(name).map(|d| entry(index, d))).collect();
    for (i, &index) in MTRR_FIXED.iter().enumerate() {
        if let Ok(d) = b.int("env.mtrr_fixed", i as u64) {
            out.push(entry(index, d));
        }
    }
    for i in 0..8u64 {
        if let Ok(o) = b.elem("env.mtrr_var", i, 16)
            && let (Ok(base), Ok(mask)) = (b.int_at(o, 8), b.int_at(o + 8, 8))
        {
            out.push(entry(0x200 + 2 * i as u32, base));
            out.push(entry(0x201 + 2 * i as u32, mask));
        }
    }
    out
}

fn xsave(b: &Body<'_>) -> Result<Vec<u8>, String> {
    let mut x = vec![0u8; XSAVE_SIZE];
    let put = |x: &mut [u8], at: usize, v: &[u8]| x[at..at + v.len()].copy_from_slice(v);
    let fpus = b.int("env.fpus_vmstate", 0)? as u16;
    put(&mut x, 0, &(b.int("env.fpuc", 0)? as u16).to_le_bytes());
    put(&mut x, 2, &fpus.to_le_bytes());
    // fptag_vmstate has 1 for a valid register (QEMU saves `!fptags[i]`,
    // fptags being 1 for an empty one), as the abridged tag has.
    x[4] = b.int("env.fptag_vmstate", 0)? as u8;
    put(&mut x, 6, &(b.opt("env.fpop").unwrap_or(0) as u16).to_le_bytes());
    put(&mut x, 8, &b.opt("env.fpip").unwrap_or(0).to_le_bytes());
    put(&mut x, 16, &b.opt("env.fpdp").unwrap_or(0).to_le_bytes());
    put(&mut x, 24, &(b.int("env.mxcsr", 0)? as u32).to_le_bytes());
    put(&mut x, 28, &0xffffu32.to_le_bytes());
    let top = u64::from((fpus >> 11) & 7);
    for i in 0..8u64 {
        let o = b.elem("env.fpregs", (top + i) & 7, 10)?;
        put(&mut x, 32 + 16 * i as usize, &b.int_at(o, 8)?.to_le_bytes());
        put(&mut x, 40 + 16 * i as usize, &(b.int_at(o + 8, 2)? as u16).to_le_bytes());
    }
    for (field, at) in [("env.xmm_regs[0]", 160usize), ("env.xmm_regs[1]", 576)] {
        if let Ok(l) = b.loc(field) {
            for i in 0..l.count.min(16) {
                let o = b.elem(field, i, 16)?;
                put(&mut x, at + 16 * i as usize, &b.int_at(o, 8)?.to_le_bytes());
                put(&mut x, at + 8 + 16 * i as usize, &b.int_at(o + 8, 8)?.to_le_bytes());
            }
        }
    }
    put(&mut x, 512, &b.opt("env.xstate_bv").unwrap_or(0).to_le_bytes());
    Ok(x)
}

/// The LAPIC register page built from QEMU's `apic` fields, and the TPR.
fn lapic(a: &Body<'_>) -> Result<(Box<[u8; 1024]>, u32), String> {
    let mut p = Box::new([0u8; 1024]);
    let mut set = |reg: usize, v: u32| p[reg..reg + 4].copy_from_slice(&v.to_le_bytes());
    let tpr = a.int("tpr", 0)? as u32;
    set(0x20, (a.int("id", 0)? as u32) << 24);
    set(0x30, 0x0005_0014);
    set(0x80, tpr);
    set(0xd0, (a.int("log_dest", 0)? as u32) << 24);
    set(0xe0, ((a.int("dest_mode", 0)? as u32) << 28) | 0x0fff_ffff);
    set(0xf0, a.int("spurious_vec", 0)? as u32);
    for i in 0..8u64 {
        set(0x100 + 0x10 * i as usize, a.int("isr", i)? as u32);
        set(0x180 + 0x10 * i as usize, a.int("tmr", i)? as u32);
        set(0x200 + 0x10 * i as usize, a.int("irr", i)? as u32);
    }
    set(0x280, a.int("esr", 0)? as u32);
    set(0x300, a.int("icr", 0)? as u32);
    set(0x310, a.int("icr", 1)? as u32);
    for i in 0..6u64 {
        set(0x320 + 0x10 * i as usize, a.int("lvt", i)? as u32);
    }
    set(0x380, a.int("initial_count", 0)? as u32);
    set(0x3e0, a.int("divide_conf", 0)? as u32);
    Ok((p, tpr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_flags_round_trip() {
        for flags in [0x00cf_9a00u32, 0x00af_9b00, 0x0000_8b00, 0x00c0_9300, 0] {
            let mut body = vec![0u8; 20];
            body[16..20].copy_from_slice(&flags.to_be_bytes());
            let desc = DeviceDesc {
                name: "cpu".into(),
                instance: 0,
                body_len: 20,
                fields: vec![FieldLoc {
                    name: "s".into(),
                    subsection: None,
                    offset: 0,
                    size: 20,
                    count: 1,
                    kind: "buffer".into(),
                }],
            };
            let s = segment(&Body { bytes: &body, desc: &desc }, "s", 0).unwrap();
            assert_eq!(segment_flags(&s), flags & 0x00f0_ff00, "{flags:#x}");
        }
    }
}
