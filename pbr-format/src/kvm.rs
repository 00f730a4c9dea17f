//! Conversions between the `.pbr` x86-64 vCPU record and `kvm-bindings`
//! structs, both ways (feature `kvm`). The record's layout is KVM's, so
//! every conversion is field for field with nothing lost.

use kvm_bindings::{
    kvm_debugregs, kvm_dtable, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
    kvm_xsave,
};
use zerocopy::little_endian::{U16, U32, U64};

use crate::pod::{KvmDebugregs, KvmDtable, KvmRegs, KvmSegment, KvmSregs, MsrEntry};
use crate::vcpu::{EVENTS_SIZE, LAPIC_SIZE};

impl From<&KvmRegs> for kvm_regs {
    fn from(r: &KvmRegs) -> Self {
        let g = |i: usize| r.gpr[i].get();
        kvm_regs {
            rax: g(0),
            rbx: g(1),
            rcx: g(2),
            rdx: g(3),
            rsi: g(4),
            rdi: g(5),
            rsp: g(6),
            rbp: g(7),
            r8: g(8),
            r9: g(9),
            r10: g(10),
            r11: g(11),
            r12: g(12),
            r13: g(13),
            r14: g(14),
            r15: g(15),
            rip: r.rip.get(),
            rflags: r.rflags.get(),
        }
    }
}

impl From<&kvm_regs> for KvmRegs {
    fn from(r: &kvm_regs) -> Self {
        let gpr = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ];
        KvmRegs { gpr: gpr.map(U64::new), rip: U64::new(r.rip), rflags: U64::new(r.rflags) }
    }
}

impl From<&KvmSegment> for kvm_segment {
    fn from(s: &KvmSegment) -> Self {
        kvm_segment {
            base: s.base.get(),
            limit: s.limit.get(),
            selector: s.selector.get(),
            type_: s.type_,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
            padding: s.padding,
        }
    }
}

impl From<&kvm_segment> for KvmSegment {
    fn from(s: &kvm_segment) -> Self {
        KvmSegment {
            base: U64::new(s.base),
            limit: U32::new(s.limit),
            selector: U16::new(s.selector),
            type_: s.type_,
            present: s.present,
            dpl: s.dpl,
            db: s.db,
            s: s.s,
            l: s.l,
            g: s.g,
            avl: s.avl,
            unusable: s.unusable,
            padding: s.padding,
        }
    }
}

impl From<&KvmDtable> for kvm_dtable {
    fn from(d: &KvmDtable) -> Self {
        kvm_dtable { base: d.base.get(), limit: d.limit.get(), padding: d.padding.map(|p| p.get()) }
    }
}

impl From<&kvm_dtable> for KvmDtable {
    fn from(d: &kvm_dtable) -> Self {
        KvmDtable { base: U64::new(d.base), limit: U16::new(d.limit), padding: d.padding.map(U16::new) }
    }
}

impl From<&KvmSregs> for kvm_sregs {
    fn from(s: &KvmSregs) -> Self {
        kvm_sregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: s.cr0.get(),
            cr2: s.cr2.get(),
            cr3: s.cr3.get(),
            cr4: s.cr4.get(),
            cr8: s.cr8.get(),
            efer: s.efer.get(),
            apic_base: s.apic_base.get(),
            interrupt_bitmap: s.interrupt_bitmap.map(|w| w.get()),
        }
    }
}

impl From<&kvm_sregs> for KvmSregs {
    fn from(s: &kvm_sregs) -> Self {
        KvmSregs {
            cs: (&s.cs).into(),
            ds: (&s.ds).into(),
            es: (&s.es).into(),
            fs: (&s.fs).into(),
            gs: (&s.gs).into(),
            ss: (&s.ss).into(),
            tr: (&s.tr).into(),
            ldt: (&s.ldt).into(),
            gdt: (&s.gdt).into(),
            idt: (&s.idt).into(),
            cr0: U64::new(s.cr0),
            cr2: U64::new(s.cr2),
            cr3: U64::new(s.cr3),
            cr4: U64::new(s.cr4),
            cr8: U64::new(s.cr8),
            efer: U64::new(s.efer),
            apic_base: U64::new(s.apic_base),
            interrupt_bitmap: s.interrupt_bitmap.map(U64::new),
        }
    }
}

impl From<&KvmDebugregs> for kvm_debugregs {
    fn from(d: &KvmDebugregs) -> Self {
        kvm_debugregs {
            db: d.db.map(|x| x.get()),
            dr6: d.dr6.get(),
            dr7: d.dr7.get(),
            flags: d.flags.get(),
            reserved: d.reserved.map(|x| x.get()),
        }
    }
}

impl From<&kvm_debugregs> for KvmDebugregs {
    fn from(d: &kvm_debugregs) -> Self {
        KvmDebugregs {
            db: d.db.map(U64::new),
            dr6: U64::new(d.dr6),
            dr7: U64::new(d.dr7),
            flags: U64::new(d.flags),
            reserved: d.reserved.map(U64::new),
        }
    }
}

impl From<&MsrEntry> for kvm_msr_entry {
    fn from(m: &MsrEntry) -> Self {
        kvm_msr_entry { index: m.index.get(), reserved: m.reserved.get(), data: m.data.get() }
    }
}

impl From<&kvm_msr_entry> for MsrEntry {
    fn from(m: &kvm_msr_entry) -> Self {
        MsrEntry { index: U32::new(m.index), reserved: U32::new(m.reserved), data: U64::new(m.data) }
    }
}

/// The record's LAPIC page as `kvm_lapic_state`.
///
/// # Example
/// ```
/// let page = Box::new([7u8; pbr_format::LAPIC_SIZE]);
/// let k = pbr_format::kvm::lapic_to_kvm(&page);
/// assert_eq!(pbr_format::kvm::lapic_from_kvm(&k), page);
/// ```
pub fn lapic_to_kvm(page: &[u8; LAPIC_SIZE]) -> kvm_lapic_state {
    kvm_lapic_state { regs: page.map(|b| b as std::os::raw::c_char) }
}

/// A `kvm_lapic_state` as the record's LAPIC page.
///
/// # Example
/// ```
/// let k = kvm_bindings::kvm_lapic_state::default();
/// assert_eq!(pbr_format::kvm::lapic_from_kvm(&k)[0x20], 0);
/// ```
pub fn lapic_from_kvm(l: &kvm_lapic_state) -> Box<[u8; LAPIC_SIZE]> {
    Box::new(l.regs.map(|b| b as u8))
}

/// The record's XSAVE bytes (at most 4096 are used) as `kvm_xsave`.
///
/// # Example
/// ```
/// let bytes = vec![1u8; 4096];
/// let x = pbr_format::kvm::xsave_to_kvm(&bytes);
/// assert_eq!(pbr_format::kvm::xsave_from_kvm(&x), bytes);
/// ```
pub fn xsave_to_kvm(bytes: &[u8]) -> kvm_xsave {
    let mut x = kvm_xsave::default();
    for (w, c) in x.region.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    x
}

/// A `kvm_xsave` as the record's XSAVE bytes (4096).
///
/// # Example
/// ```
/// let x = kvm_bindings::kvm_xsave::default();
/// assert_eq!(pbr_format::kvm::xsave_from_kvm(&x).len(), 4096);
/// ```
pub fn xsave_from_kvm(x: &kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The record's events block as `kvm_vcpu_events`.
///
/// # Example
/// ```
/// let mut e = [0u8; pbr_format::EVENTS_SIZE];
/// e[0] = 1; // an exception is injected
/// e[1] = 14; // #PF
/// let k = pbr_format::kvm::events_to_kvm(&e);
/// assert_eq!((k.exception.injected, k.exception.nr), (1, 14));
/// ```
pub fn events_to_kvm(e: &[u8; EVENTS_SIZE]) -> kvm_vcpu_events {
    let u32_at = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
    let mut k = kvm_vcpu_events::default();
    k.exception.injected = e[0];
    k.exception.nr = e[1];
    k.exception.has_error_code = e[2];
    k.exception.pending = e[3];
    k.exception.error_code = u32_at(4);
    k.interrupt.injected = e[8];
    k.interrupt.nr = e[9];
    k.interrupt.soft = e[10];
    k.interrupt.shadow = e[11];
    k.nmi.injected = e[12];
    k.nmi.pending = e[13];
    k.nmi.masked = e[14];
    k.nmi.pad = e[15];
    k.sipi_vector = u32_at(16);
    k.flags = u32_at(20);
    k.smi.smm = e[24];
    k.smi.pending = e[25];
    k.smi.smm_inside_nmi = e[26];
    k.smi.latched_init = e[27];
    k.triple_fault.pending = e[28];
    k.reserved.copy_from_slice(&e[29..55]);
    k.exception_has_payload = e[55];
    k.exception_payload = u64::from_le_bytes(e[56..64].try_into().unwrap_or_default());
    k
}

/// A `kvm_vcpu_events` as the record's events block.
///
/// # Example
/// ```
/// let mut k = kvm_bindings::kvm_vcpu_events::default();
/// k.nmi.pending = 1;
/// let e = pbr_format::kvm::events_from_kvm(&k);
/// assert_eq!(pbr_format::kvm::events_to_kvm(&e).nmi.pending, 1);
/// ```
pub fn events_from_kvm(k: &kvm_vcpu_events) -> [u8; EVENTS_SIZE] {
    let mut e = [0u8; EVENTS_SIZE];
    e[..4].copy_from_slice(&[k.exception.injected, k.exception.nr, k.exception.has_error_code, k.exception.pending]);
    e[4..8].copy_from_slice(&k.exception.error_code.to_le_bytes());
    e[8..12].copy_from_slice(&[k.interrupt.injected, k.interrupt.nr, k.interrupt.soft, k.interrupt.shadow]);
    e[12..16].copy_from_slice(&[k.nmi.injected, k.nmi.pending, k.nmi.masked, k.nmi.pad]);
    e[16..20].copy_from_slice(&k.sipi_vector.to_le_bytes());
    e[20..24].copy_from_slice(&k.flags.to_le_bytes());
    e[24..28].copy_from_slice(&[k.smi.smm, k.smi.pending, k.smi.smm_inside_nmi, k.smi.latched_init]);
    e[28] = k.triple_fault.pending;
    e[29..55].copy_from_slice(&k.reserved);
    e[55] = k.exception_has_payload;
    e[56..64].copy_from_slice(&k.exception_payload.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sregs_and_events_round_trip() {
        let mut s = KvmSregs::default();
        s.cs = KvmSegment {
            base: U64::new(0x1000),
            limit: U32::new(0xffff),
            selector: U16::new(0x100),
            type_: 11,
            present: 1,
            s: 1,
            ..Default::default()
        };
        s.gdt.limit = U16::new(0x7f);
        s.cr0 = U64::new(0x11);
        s.interrupt_bitmap[2] = U64::new(1 << 5);
        let k: kvm_sregs = (&s).into();
        assert_eq!(KvmSregs::from(&k), s);
        let mut e = [0u8; EVENTS_SIZE];
        for (i, b) in e.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(events_from_kvm(&events_to_kvm(&e)), e);
        let r =
            KvmRegs { gpr: core::array::from_fn(|i| U64::new(i as u64 * 3)), rip: U64::new(7), rflags: U64::new(2) };
        assert_eq!(KvmRegs::from(&kvm_regs::from(&r)), r);
        let x: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        assert_eq!(xsave_from_kvm(&xsave_to_kvm(&x)), x);
    }
}
