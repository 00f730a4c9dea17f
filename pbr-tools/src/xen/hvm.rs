//! The `HVM_CONTEXT` record: Xen's typed save records
//! (`public/arch-x86/hvm/save.h`), split into entries, and the `CPU`,
//! `LAPIC`, `LAPIC_REGS`, `MTRR`, `CPU_XSAVE`, `CPU_MSR` and `TSC_ADJUST`
//! entries of each vCPU decoded into the `.pbr` x86-64 vCPU record.

use std::collections::BTreeMap;

use pbr_format::X86Vcpu;
use pbr_format::pod::{KvmSegment, MsrEntry};
use zerocopy::little_endian::{U16, U32, U64};

/// HVM save typecodes.
pub mod code {
    /// Terminator.
    pub const END: u16 = 0;
    /// Save header.
    pub const HEADER: u16 = 1;
    /// `struct hvm_hw_cpu`.
    pub const CPU: u16 = 2;
    /// Local APIC state.
    pub const LAPIC: u16 = 5;
    /// Local APIC register page.
    pub const LAPIC_REGS: u16 = 6;
    /// MTRRs and PAT.
    pub const MTRR: u16 = 14;
    /// XSAVE state.
    pub const CPU_XSAVE: u16 = 16;
    /// TSC_ADJUST.
    pub const TSC_ADJUST: u16 = 19;
    /// Other MSRs.
    pub const CPU_MSR: u16 = 20;
}

/// `HEADER.magic`.
pub const HEADER_MAGIC: u32 = 0x5438_1286;
/// `struct hvm_hw_cpu` today, and before Xen 4.7 / 3.4 (`msr_tsc_aux`).
pub const CPU_SIZES: [usize; 2] = [1032, 1016];

/// The name of a typecode.
pub fn name(code: u16) -> String {
    const NAMES: [&str; 21] = [
        "END",
        "HEADER",
        "CPU",
        "PIC",
        "IOAPIC",
        "LAPIC",
        "LAPIC_REGS",
        "PCI_IRQ",
        "ISA_IRQ",
        "PCI_LINK",
        "PIT",
        "RTC",
        "HPET",
        "PMTIMER",
        "MTRR",
        "VIRIDIAN_DOMAIN",
        "CPU_XSAVE",
        "VIRIDIAN_VCPU",
        "VMCE_VCPU",
        "TSC_ADJUST",
        "CPU_MSR",
    ];
    NAMES.get(usize::from(code)).map_or_else(|| format!("TYPE_{code}"), |n| (*n).to_owned())
}

/// One entry of an HVM context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Typecode.
    pub code: u16,
    /// Instance (vCPU id for per-vCPU types).
    pub instance: u16,
    /// Payload (for `END`: the bytes after its descriptor, if any).
    pub data: &'a [u8],
}

/// Splits an HVM context into its entries, `END` last.
///
/// # Errors
/// A message naming the byte offset inside the record that is wrong: no
/// `HEADER` first, a length past the end, no `END`.
pub fn entries(b: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let mut out = Vec::new();
    let mut p = 0usize;
    loop {
        let d = b.get(p..p + 8).ok_or_else(|| format!("entry descriptor at byte {p} is truncated (no END entry)"))?;
        let code = u16::from_le_bytes([d[0], d[1]]);
        let instance = u16::from_le_bytes([d[2], d[3]]);
        let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]) as usize;
        p += 8;
        if out.is_empty() && (code != code::HEADER || len != 24) {
            return Err(format!("the first entry is {} of {len} bytes, not a 24-byte HEADER", name(code)));
        }
        if code == code::END {
            if len != 0 {
                return Err(format!("END entry at byte {} has length {len}", p - 8));
            }
            out.push(Entry { code, instance, data: &b[p..] });
            return Ok(out);
        }
        let data = b
            .get(p..p.saturating_add(len))
            .ok_or_else(|| format!("{} entry at byte {} of {len} bytes runs past the record", name(code), p - 8))?;
        if code == code::HEADER {
            if !out.is_empty() {
                return Err(format!("a second HEADER entry at byte {}", p - 8));
            }
            let magic = u32_at(data, 0);
            if magic != HEADER_MAGIC {
                return Err(format!("HEADER magic {magic:#x}, expected {HEADER_MAGIC:#x}"));
            }
        }
        out.push(Entry { code, instance, data });
        p += len;
    }
}

/// The HVM context rebuilt from entries (the inverse of [`entries`]).
pub fn assemble<'a>(entries: impl IntoIterator<Item = (u16, u16, &'a [u8])>) -> Vec<u8> {
    let mut b = Vec::new();
    for (code, instance, data) in entries {
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(&instance.to_le_bytes());
        let len = if code == code::END { 0 } else { data.len() as u32 };
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(data);
    }
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Offsets in `struct hvm_hw_cpu` of rax rbx rcx rdx rbp rsi rdi rsp r8..r15,
/// by `kvm_regs.gpr` index (rax rbx rcx rdx rsi rdi rsp rbp r8..r15).
const GPR_AT: [usize; 16] = [512, 520, 528, 536, 552, 560, 568, 544, 576, 584, 592, 600, 608, 616, 624, 632];
/// cs ds es fs gs ss tr ldtr: selector, limit, base and arbytes offsets.
const SEG_SEL: usize = 736;
const SEG_LIMIT: usize = 768;
const SEG_BASE: usize = 808;
const SEG_AR: usize = 888;
/// MSRs held in plain `hvm_hw_cpu` fields: (offset, index).
const CPU_MSRS: [(usize, u32); 8] = [
    (920, 0x174),
    (928, 0x175),
    (936, 0x176),
    (944, 0xc000_0102),
    (960, 0xc000_0082),
    (968, 0xc000_0081),
    (976, 0xc000_0083),
    (984, 0xc000_0084),
];
const MSR_TSC_AUX: u32 = 0xc000_0103;
const MSR_TSC_ADJUST: u32 = 0x3b;
const MSR_PAT: u32 = 0x277;
const MSR_MTRR_CAP: u32 = 0xfe;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_FIXED: [u32; 11] = [0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f];

/// A `kvm_segment` from Xen's packed attribute bits (0-3 type, 4 S, 5-6
/// DPL, 7 P, 8 AVL, 9 L, 10 D/B, 11 G).
pub fn segment(sel: u32, limit: u32, base: u64, ar: u32) -> KvmSegment {
    let bit = |n: u32| ((ar >> n) & 1) as u8;
    KvmSegment {
        base: U64::new(base),
        limit: U32::new(limit),
        selector: U16::new(sel as u16),
        type_: (ar & 0xf) as u8,
        present: bit(7),
        dpl: ((ar >> 5) & 3) as u8,
        db: bit(10),
        s: bit(4),
        l: bit(9),
        g: bit(11),
        avl: bit(8),
        unusable: u8::from(bit(7) == 0),
        padding: 0,
    }
}

/// Xen's packed attribute bits of a `kvm_segment` (the inverse of
/// [`segment`]).
pub fn attributes(s: &KvmSegment) -> u32 {
    u32::from(s.type_ & 0xf)
        | u32::from(s.s & 1) << 4
        | u32::from(s.dpl & 3) << 5
        | u32::from(s.present & 1) << 7
        | u32::from(s.avl & 1) << 8
        | u32::from(s.l & 1) << 9
        | u32::from(s.db & 1) << 10
        | u32::from(s.g & 1) << 11
}

fn segments(v: &mut X86Vcpu) -> [&mut KvmSegment; 8] {
    let s = &mut v.sregs;
    [&mut s.cs, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss, &mut s.tr, &mut s.ldt]
}

/// Decodes a `CPU` entry (1032 or 1016 bytes) of vCPU `id`.
///
/// # Errors
/// Another length.
pub fn decode_cpu(id: u32, b: &[u8]) -> Result<X86Vcpu, String> {
    if !CPU_SIZES.contains(&b.len()) {
        return Err(format!("CPU entry of vCPU {id} is {} bytes; Xen writes 1032 (1016 before 4.7)", b.len()));
    }
    let compat = b.len() == 1016;
    let mut v = X86Vcpu::new(id);
    for (i, &at) in GPR_AT.iter().enumerate() {
        v.regs.gpr[i] = U64::new(u64_at(b, at));
    }
    v.regs.rip = U64::new(u64_at(b, 640));
    v.regs.rflags = U64::new(u64_at(b, 648));
    v.sregs.cr0 = U64::new(u64_at(b, 656));
    v.sregs.cr2 = U64::new(u64_at(b, 664));
    v.sregs.cr3 = U64::new(u64_at(b, 672));
    v.sregs.cr4 = U64::new(u64_at(b, 680));
    let mut dr = pbr_format::pod::KvmDebugregs::default();
    for i in 0..4 {
        dr.db[i] = U64::new(u64_at(b, 688 + 8 * i));
    }
    dr.dr6 = U64::new(u64_at(b, 720));
    dr.dr7 = U64::new(u64_at(b, 728));
    v.debugregs = Some(dr);
    for (i, s) in segments(&mut v).into_iter().enumerate() {
        *s = segment(
            u32_at(b, SEG_SEL + 4 * i),
            u32_at(b, SEG_LIMIT + 4 * i),
            u64_at(b, SEG_BASE + 8 * i),
            u32_at(b, SEG_AR + 4 * i),
        );
    }
    v.sregs.idt.limit = U16::new(u32_at(b, 800) as u16);
    v.sregs.gdt.limit = U16::new(u32_at(b, 804) as u16);
    v.sregs.idt.base = U64::new(u64_at(b, 872));
    v.sregs.gdt.base = U64::new(u64_at(b, 880));
    v.sregs.efer = U64::new(u64_at(b, 992));
    let msr = MsrEntry::new;
    v.msrs = CPU_MSRS.iter().map(|&(at, index)| msr(index, u64_at(b, at))).collect();
    let (tsc_at, event_at) = if compat { (1000, 1008) } else { (1008, 1016) };
    if !compat {
        v.msrs.push(msr(MSR_TSC_AUX, u64_at(b, 1000)));
    }
    v.tsc = Some(u64_at(b, tsc_at));
    v.events = Some(events(u32_at(b, event_at), u32_at(b, event_at + 4)));
    let mut x = vec![0u8; 4096];
    x[..512].copy_from_slice(&b[..512]);
    // The legacy FPU/SSE state is valid in the XSAVE header's xstate_bv.
    put64(&mut x, 512, 3);
    v.xsave = x;
    v.xcr0 = 1;
    Ok(v)
}

/// `struct kvm_vcpu_events` from Xen's `pending_event` and `error_code`.
fn events(pending: u32, error: u32) -> [u8; 64] {
    let mut e = [0u8; 64];
    if pending & (1 << 31) != 0 {
        let vector = pending as u8;
        let has_error = (pending >> 11) & 1;
        match (pending >> 8) & 7 {
            // External interrupt, software interrupt.
            0 | 4 => {
                e[8] = 1;
                e[9] = vector;
                e[10] = u8::from((pending >> 8) & 7 == 4);
            }
            // NMI.
            2 => e[12] = 1,
            // Hardware, privileged software and software exceptions.
            _ => {
                e[0] = 1;
                e[1] = vector;
                e[2] = has_error as u8;
                e[4..8].copy_from_slice(&error.to_le_bytes());
            }
        }
    }
    e
}

/// Writes the fields of `v` that a `CPU` entry holds into `b` (a copy of
/// the entry it was decoded from). Fields the vCPU record has no room for
/// (`msr_flags`, `flags`, the high bits of descriptor-table limits, a
/// pending event) keep their saved bytes.
pub fn encode_cpu(b: &mut [u8], v: &X86Vcpu) {
    let compat = b.len() == 1016;
    for (i, &at) in GPR_AT.iter().enumerate() {
        put64(b, at, v.regs.gpr[i].get());
    }
    put64(b, 640, v.regs.rip.get());
    put64(b, 648, v.regs.rflags.get());
    for (i, cr) in [v.sregs.cr0, v.sregs.cr2, v.sregs.cr3, v.sregs.cr4].iter().enumerate() {
        put64(b, 656 + 8 * i, cr.get());
    }
    if let Some(dr) = &v.debugregs {
        for i in 0..4 {
            put64(b, 688 + 8 * i, dr.db[i].get());
        }
        put64(b, 720, dr.dr6.get());
        put64(b, 728, dr.dr7.get());
    }
    let r = &v.sregs;
    for (i, s) in [r.cs, r.ds, r.es, r.fs, r.gs, r.ss, r.tr, r.ldt].iter().enumerate() {
        put32(b, SEG_SEL + 4 * i, u32::from(s.selector.get()));
        put32(b, SEG_LIMIT + 4 * i, s.limit.get());
        put64(b, SEG_BASE + 8 * i, s.base.get());
        put32(b, SEG_AR + 4 * i, attributes(s));
    }
    let high = |at: usize, b: &[u8]| u32_at(b, at) & 0xffff_0000;
    put32(b, 800, high(800, b) | u32::from(v.sregs.idt.limit.get()));
    put32(b, 804, high(804, b) | u32::from(v.sregs.gdt.limit.get()));
    put64(b, 872, v.sregs.idt.base.get());
    put64(b, 880, v.sregs.gdt.base.get());
    put64(b, 992, v.sregs.efer.get());
    for &(at, index) in &CPU_MSRS {
        if let Some(d) = v.msr(index) {
            put64(b, at, d);
        }
    }
    if !compat && let Some(d) = v.msr(MSR_TSC_AUX) {
        put64(b, 1000, d);
    }
    if let Some(t) = v.tsc {
        put64(b, if compat { 1000 } else { 1008 }, t);
    }
    if v.xsave.len() >= 512 {
        b[..512].copy_from_slice(&v.xsave[..512]);
    }
}

/// Decodes the vCPUs of an HVM context: a record per `CPU` entry, with the
/// APIC base, TPR and register page from `LAPIC`/`LAPIC_REGS`, MSRs from
/// `MTRR`, `CPU_MSR` and `TSC_ADJUST`, and the XSAVE image from
/// `CPU_XSAVE`. `tsc_khz` comes from the stream's `X86_TSC_INFO`.
///
/// # Errors
/// A per-vCPU entry of an impossible size, naming the entry and vCPU.
pub fn decode_vcpus(entries: &[Entry<'_>], tsc_khz: u32) -> Result<Vec<X86Vcpu>, String> {
    let mut vcpus: BTreeMap<u16, X86Vcpu> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.code == code::CPU) {
        let mut v = decode_cpu(u32::from(e.instance), e.data)?;
        v.tsc_khz = tsc_khz;
        if vcpus.insert(e.instance, v).is_some() {
            return Err(format!("two CPU entries for vCPU {}", e.instance));
        }
    }
    let msr = MsrEntry::new;
    for e in entries {
        let Some(v) = vcpus.get_mut(&e.instance) else { continue };
        let what = |n: &str| format!("{} entry of vCPU {} is {} bytes, {n}", name(e.code), e.instance, e.data.len());
        match e.code {
            code::LAPIC => {
                if e.data.len() > 32 {
                    return Err(what("more than 32"));
                }
                let mut l = [0u8; 32];
                l[..e.data.len()].copy_from_slice(e.data);
                v.sregs.apic_base = U64::new(u64_at(&l, 0));
            }
            code::LAPIC_REGS => {
                let page: Box<[u8; 1024]> =
                    Box::new(e.data.get(..1024).and_then(|s| s.try_into().ok()).ok_or_else(|| what("not 1024"))?);
                v.sregs.cr8 = U64::new(u64::from(u32_at(&page[..], 0x80) >> 4));
                v.lapic = Some(page);
            }
            code::MTRR => {
                if e.data.len() != 240 {
                    return Err(what("not 240"));
                }
                v.msrs.push(msr(MSR_PAT, u64_at(e.data, 0)));
                for i in 0..16 {
                    v.msrs.push(msr(0x200 + i as u32, u64_at(e.data, 8 + 8 * i)));
                }
                for (i, &index) in MTRR_FIXED.iter().enumerate() {
                    v.msrs.push(msr(index, u64_at(e.data, 136 + 8 * i)));
                }
                v.msrs.push(msr(MSR_MTRR_CAP, u64_at(e.data, 224)));
                v.msrs.push(msr(MSR_MTRR_DEF_TYPE, u64_at(e.data, 232)));
            }
            code::TSC_ADJUST => {
                if e.data.len() != 8 {
                    return Err(what("not 8"));
                }
                v.msrs.push(msr(MSR_TSC_ADJUST, u64_at(e.data, 0)));
            }
            code::CPU_MSR => {
                let n = u32_at(e.data, 0) as usize;
                if e.data.len() < 8 || (e.data.len() - 8) / 16 != n || (e.data.len() - 8) % 16 != 0 {
                    return Err(what(&format!("not 8 + 16 x its count {n}")));
                }
                for i in 0..n {
                    v.msrs.push(msr(u32_at(e.data, 8 + 16 * i), u64_at(e.data, 16 + 16 * i)));
                }
            }
            code::CPU_XSAVE if !e.data.is_empty() => {
                if e.data.len() < 24 + 576 || (e.data.len() - 24) % 4 != 0 || e.data.len() - 24 > 1 << 20 {
                    return Err(what("not 24 + an XSAVE image"));
                }
                v.xcr0 = u64_at(e.data, 8);
                v.xsave = e.data[24..].to_vec();
            }
            _ => {}
        }
    }
    Ok(vcpus.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_segment_attributes_round_trip() {
        // 64-bit code, flat data, busy TSS (the notes' examples).
        for ar in [0xa9b, 0xc93, 0x8b, 0] {
            let s = segment(0x10, 0xffff_ffff, 0, ar);
            assert_eq!(attributes(&s), ar);
        }
        let cs = segment(0x10, 0xffff_ffff, 0, 0xa9b);
        assert_eq!((cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g), (0xb, 1, 1, 1, 0, 1));
    }

    #[test]
    fn events_from_pending_event() {
        // #PF with error code 2.
        let e = events((1 << 31) | (1 << 11) | (3 << 8) | 14, 2);
        assert_eq!(&e[..8], &[1, 14, 1, 0, 2, 0, 0, 0]);
        assert_eq!(events(0x20, 0), [0; 64], "not valid");
        assert_eq!(events((1 << 31) | 0x30, 0)[8..10], [1, 0x30]);
    }

    #[test]
    fn context_walk_refuses_hostile_entries() {
        let header = |len: u32| {
            let mut b = vec![1, 0, 0, 0];
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
            b.resize(8 + 24, 0);
            b
        };
        let mut ok = header(24);
        ok.extend_from_slice(&[0; 8]);
        assert_eq!(entries(&ok).unwrap().len(), 2);
        assert!(entries(&header(24)).unwrap_err().contains("no END"));
        assert!(entries(&header(23)).unwrap_err().contains("HEADER"));
        let mut long = header(24);
        long.extend_from_slice(&[2, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
        assert!(entries(&long).unwrap_err().contains("runs past"));
        // A second, empty HEADER (found by fuzzing: it indexed past its payload).
        let mut two = header(24);
        two.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(entries(&two).unwrap_err().contains("second HEADER"));
        let blob = assemble(entries(&ok).unwrap().iter().map(|e| (e.code, e.instance, e.data)));
        assert_eq!(blob, ok);
    }
}
