//! An x86-64 vCPU record described for people and scripts: every general
//! register, segments, descriptor tables, control and debug registers,
//! pending events, MSRs by name, the local APIC's ID, version and timer,
//! and the XSAVE components present (what `pbr-img inspect --vcpus` shows).

use pbr_format::X86Vcpu;
use pbr_format::pod::{KvmDtable, KvmSegment};
use serde_json::{Value, json};

/// General registers in `kvm_regs` order.
pub const GPR_NAMES: [&str; 16] =
    ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// The architectural name of MSR `index`, for the MSRs hypervisors save.
pub fn msr_name(index: u32) -> Option<&'static str> {
    Some(match index {
        0x10 => "IA32_TIME_STAMP_COUNTER",
        0x1b => "IA32_APIC_BASE",
        0x34 => "MSR_SMI_COUNT",
        0x3a => "IA32_FEATURE_CONTROL",
        0x3b => "IA32_TSC_ADJUST",
        0x48 => "IA32_SPEC_CTRL",
        0x174 => "IA32_SYSENTER_CS",
        0x175 => "IA32_SYSENTER_ESP",
        0x176 => "IA32_SYSENTER_EIP",
        0x179 => "IA32_MCG_CAP",
        0x17a => "IA32_MCG_STATUS",
        0x17b => "IA32_MCG_CTL",
        0x1a0 => "IA32_MISC_ENABLE",
        0x200..=0x20f if index.is_multiple_of(2) => "IA32_MTRR_PHYSBASE",
        0x200..=0x20f => "IA32_MTRR_PHYSMASK",
        0x250 => "IA32_MTRR_FIX64K_00000",
        0x258 => "IA32_MTRR_FIX16K_80000",
        0x259 => "IA32_MTRR_FIX16K_A0000",
        0x268..=0x26f => "IA32_MTRR_FIX4K",
        0x277 => "IA32_PAT",
        0x2ff => "IA32_MTRR_DEF_TYPE",
        0x6e0 => "IA32_TSC_DEADLINE",
        0xda0 => "IA32_XSS",
        0xc000_0080 => "IA32_EFER",
        0xc000_0081 => "IA32_STAR",
        0xc000_0082 => "IA32_LSTAR",
        0xc000_0083 => "IA32_CSTAR",
        0xc000_0084 => "IA32_FMASK",
        0xc000_0100 => "IA32_FS_BASE",
        0xc000_0101 => "IA32_GS_BASE",
        0xc000_0102 => "IA32_KERNEL_GS_BASE",
        0xc000_0103 => "IA32_TSC_AUX",
        0x4b56_4d00 => "MSR_KVM_WALL_CLOCK_NEW",
        0x4b56_4d01 => "MSR_KVM_SYSTEM_TIME_NEW",
        0x4b56_4d02 => "MSR_KVM_ASYNC_PF_EN",
        0x4b56_4d03 => "MSR_KVM_STEAL_TIME",
        0x4b56_4d04 => "MSR_KVM_PV_EOI_EN",
        0x4b56_4d05 => "MSR_KVM_POLL_CONTROL",
        _ => return None,
    })
}

/// XSAVE state components by bit of XSTATE_BV.
const XSAVE_COMPONENTS: [&str; 19] = [
    "x87",
    "sse",
    "avx",
    "mpx-bndregs",
    "mpx-bndcsr",
    "avx512-opmask",
    "avx512-zmm-hi256",
    "avx512-hi16-zmm",
    "pt",
    "pkru",
    "pasid",
    "cet-u",
    "cet-s",
    "hdc",
    "uintr",
    "lbr",
    "hwp",
    "amx-tilecfg",
    "amx-tiledata",
];

fn hex(v: u64) -> Value {
    json!(format!("{v:#x}"))
}

fn segment(s: &KvmSegment) -> Value {
    json!({
        "selector": hex(u64::from(s.selector.get())), "base": hex(s.base.get()), "limit": hex(u64::from(s.limit.get())),
        "type": s.type_, "present": s.present, "dpl": s.dpl, "db": s.db, "s": s.s, "l": s.l, "g": s.g,
        "avl": s.avl, "unusable": s.unusable,
    })
}

fn table(t: &KvmDtable) -> Value {
    json!({"base": hex(t.base.get()), "limit": hex(u64::from(t.limit.get()))})
}

/// A little-endian u32 of the LAPIC register page at `offset`.
fn lapic_reg(page: &[u8], offset: usize) -> u64 {
    page.get(offset..offset + 4).map_or(0, |b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

/// The `kvm_vcpu_events` record decoded (its layout is KVM's).
fn events(e: &[u8]) -> Value {
    let u32_at = |o: usize| e.get(o..o + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let byte = |o: usize| e.get(o).copied().unwrap_or(0);
    json!({
        "exception": {"injected": byte(0), "nr": byte(1), "has_error_code": byte(2), "pending": byte(3), "error_code": hex(u64::from(u32_at(4)))},
        "interrupt": {"injected": byte(8), "nr": byte(9), "soft": byte(10), "shadow": byte(11)},
        "nmi": {"injected": byte(12), "pending": byte(13), "masked": byte(14)},
        "sipi_vector": u32_at(16),
        "flags": hex(u64::from(u32_at(20))),
        "smi": {"smm": byte(24), "pending": byte(25), "smm_inside_nmi": byte(26), "latched_init": byte(27)},
    })
}

/// The XSAVE components whose bit is set in the area's XSTATE_BV (the
/// first 8 bytes of the XSAVE header, at byte 512).
pub fn xsave_components(xsave: &[u8]) -> Vec<&'static str> {
    let Some(bv) = xsave.get(512..520) else { return Vec::new() };
    let bv = u64::from_le_bytes(bv.try_into().unwrap_or_default());
    XSAVE_COMPONENTS.iter().enumerate().filter(|(i, _)| bv & (1 << i) != 0).map(|(_, n)| *n).collect()
}

/// Everything the record holds, as JSON (integers as hex strings).
pub fn describe(v: &X86Vcpu) -> Value {
    let r = &v.regs;
    let s = &v.sregs;
    let mut regs = serde_json::Map::new();
    for (name, g) in GPR_NAMES.iter().zip(r.gpr.iter()) {
        regs.insert((*name).into(), hex(g.get()));
    }
    regs.insert("rip".into(), hex(r.rip.get()));
    regs.insert("rflags".into(), hex(r.rflags.get()));
    let mut segments = serde_json::Map::new();
    for (name, seg) in [
        ("cs", &s.cs),
        ("ds", &s.ds),
        ("es", &s.es),
        ("fs", &s.fs),
        ("gs", &s.gs),
        ("ss", &s.ss),
        ("tr", &s.tr),
        ("ldt", &s.ldt),
    ] {
        segments.insert(name.into(), segment(seg));
    }
    let msrs: Vec<Value> = v
        .msrs
        .iter()
        .map(|m| json!({"index": hex(u64::from(m.index.get())), "name": msr_name(m.index.get()), "value": hex(m.data.get())}))
        .collect();
    let lapic = v.lapic.as_deref().map(|p| {
        json!({
            "id": lapic_reg(p, 0x20) >> 24, "version": hex(lapic_reg(p, 0x30)),
            "tpr": hex(lapic_reg(p, 0x80)), "svr": hex(lapic_reg(p, 0xf0)),
            "lvt_timer": hex(lapic_reg(p, 0x320)), "timer_initial_count": hex(lapic_reg(p, 0x380)),
            "timer_current_count": hex(lapic_reg(p, 0x390)), "timer_divide": hex(lapic_reg(p, 0x3e0)),
        })
    });
    json!({
        "id": v.id, "arch": "x86_64",
        "regs": regs,
        "segments": segments,
        "gdt": table(&s.gdt), "idt": table(&s.idt),
        "cr0": hex(s.cr0.get()), "cr2": hex(s.cr2.get()), "cr3": hex(s.cr3.get()), "cr4": hex(s.cr4.get()),
        "cr8": hex(s.cr8.get()), "efer": hex(s.efer.get()), "apic_base": hex(s.apic_base.get()),
        "debug": v.debugregs.as_ref().map(|d| json!({
            "dr0": hex(d.db[0].get()), "dr1": hex(d.db[1].get()), "dr2": hex(d.db[2].get()), "dr3": hex(d.db[3].get()),
            "dr6": hex(d.dr6.get()), "dr7": hex(d.dr7.get()),
        })),
        "events": v.events.as_ref().map(|e| events(e)),
        "msrs": msrs,
        "lapic": lapic,
        "xcr0": hex(v.xcr0),
        "xsave": {"bytes": v.xsave.len(), "components": xsave_components(&v.xsave)},
        "tsc": v.tsc, "tsc_khz": v.tsc_khz, "mp_state": v.mp_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_msrs_lapic_and_xsave_are_named() {
        let mut v = X86Vcpu::new(2);
        v.regs.gpr[0].set(0x1234);
        v.regs.gpr[15].set(0xf00d);
        v.sregs.cs.selector.set(0x10);
        v.sregs.cs.l = 1;
        v.msrs.push(pbr_format::pod::MsrEntry::new(0xc000_0082, 0xffff_ffff_8100_0000));
        v.msrs.push(pbr_format::pod::MsrEntry::new(0x1234_5678, 1));
        let mut page = Box::new([0u8; pbr_format::LAPIC_SIZE]);
        page[0x23] = 2; // ID 2 in bits 24..31
        page[0x30] = 0x14;
        page[0x380..0x384].copy_from_slice(&1000u32.to_le_bytes());
        v.lapic = Some(page);
        v.xsave = vec![0u8; 4096];
        v.xsave[512] = 0b111;
        let d = describe(&v);
        assert_eq!(d["regs"]["rax"], "0x1234");
        assert_eq!(d["regs"]["r15"], "0xf00d");
        assert_eq!(d["segments"]["cs"]["selector"], "0x10");
        assert_eq!(d["segments"]["cs"]["l"], 1);
        assert_eq!(d["msrs"][0]["name"], "IA32_LSTAR");
        assert!(d["msrs"][1]["name"].is_null());
        assert_eq!(d["lapic"]["id"], 2);
        assert_eq!(d["lapic"]["version"], "0x14");
        assert_eq!(d["lapic"]["timer_initial_count"], "0x3e8");
        assert_eq!(d["xsave"]["components"], json!(["x87", "sse", "avx"]));
        assert!(xsave_components(&[0u8; 100]).is_empty());
    }
}
