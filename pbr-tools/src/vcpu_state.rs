//! An x86-64 vCPU record described for people and scripts: every general
//! register, segments, descriptor tables, control and debug registers,
//! pending events, MSRs by name, the local APIC's ID, version and timer,
//! and the XSAVE components holding state (what `pbr-img inspect --vcpus`
//! shows), derived from the area when its XSTATE_BV was left 0.

use pbr_format::X86Vcpu;
use pbr_format::pod::{KvmDtable, KvmSegment};
use serde_json::{Value, json};

/// General registers in `kvm_regs` order.
pub const GPR_NAMES: [&str; 16] =
    ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// IA32_MTRR_PHYSBASE0 (0x200), IA32_MTRR_PHYSMASK0, ... IA32_MTRR_PHYSMASK15
/// (0x21f).
const MTRR_PHYS: [&str; 32] = [
    "IA32_MTRR_PHYSBASE0",
    "IA32_MTRR_PHYSMASK0",
    "IA32_MTRR_PHYSBASE1",
    "IA32_MTRR_PHYSMASK1",
    "IA32_MTRR_PHYSBASE2",
    "IA32_MTRR_PHYSMASK2",
    "IA32_MTRR_PHYSBASE3",
    "IA32_MTRR_PHYSMASK3",
    "IA32_MTRR_PHYSBASE4",
    "IA32_MTRR_PHYSMASK4",
    "IA32_MTRR_PHYSBASE5",
    "IA32_MTRR_PHYSMASK5",
    "IA32_MTRR_PHYSBASE6",
    "IA32_MTRR_PHYSMASK6",
    "IA32_MTRR_PHYSBASE7",
    "IA32_MTRR_PHYSMASK7",
    "IA32_MTRR_PHYSBASE8",
    "IA32_MTRR_PHYSMASK8",
    "IA32_MTRR_PHYSBASE9",
    "IA32_MTRR_PHYSMASK9",
    "IA32_MTRR_PHYSBASE10",
    "IA32_MTRR_PHYSMASK10",
    "IA32_MTRR_PHYSBASE11",
    "IA32_MTRR_PHYSMASK11",
    "IA32_MTRR_PHYSBASE12",
    "IA32_MTRR_PHYSMASK12",
    "IA32_MTRR_PHYSBASE13",
    "IA32_MTRR_PHYSMASK13",
    "IA32_MTRR_PHYSBASE14",
    "IA32_MTRR_PHYSMASK14",
    "IA32_MTRR_PHYSBASE15",
    "IA32_MTRR_PHYSMASK15",
];

/// The fixed-range MTRRs 0x268..0x26f, by the first address they cover.
const MTRR_FIX4K: [&str; 8] = [
    "IA32_MTRR_FIX4K_C0000",
    "IA32_MTRR_FIX4K_C8000",
    "IA32_MTRR_FIX4K_D0000",
    "IA32_MTRR_FIX4K_D8000",
    "IA32_MTRR_FIX4K_E0000",
    "IA32_MTRR_FIX4K_E8000",
    "IA32_MTRR_FIX4K_F0000",
    "IA32_MTRR_FIX4K_F8000",
];

/// The architectural name of MSR `index`, for the MSRs hypervisors save.
pub fn msr_name(index: u32) -> Option<&'static str> {
    Some(match index {
        0x10 => "IA32_TIME_STAMP_COUNTER",
        0xfe => "IA32_MTRRCAP",
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
        0x200..=0x21f => MTRR_PHYS[(index - 0x200) as usize],
        0x250 => "IA32_MTRR_FIX64K_00000",
        0x258 => "IA32_MTRR_FIX16K_80000",
        0x259 => "IA32_MTRR_FIX16K_A0000",
        0x268..=0x26f => MTRR_FIX4K[(index - 0x268) as usize],
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

/// Where the user state components from AVX on lie in a standard-format
/// XSAVE area: (XSTATE_BV bit, offset, size), the layout of Intel CPUs
/// that KVM's `kvm_xsave` and QEMU's XSAVE code use.
const XSAVE_AREAS: [(u32, usize, usize); 9] = [
    (2, 576, 256),
    (3, 960, 64),
    (4, 1024, 64),
    (5, 1088, 64),
    (6, 1152, 512),
    (7, 1664, 1024),
    (9, 2688, 8),
    (17, 2752, 64),
    (18, 2816, 8192),
];

/// x87 control word and MXCSR after reset (their init values).
const FCW_INIT: u16 = 0x037f;
const MXCSR_INIT: u32 = 0x1f80;

/// The area's XSTATE_BV (the first 8 bytes of the XSAVE header, at byte
/// 512); 0 for an area too short to have one.
pub fn xstate_bv(xsave: &[u8]) -> u64 {
    xsave.get(512..520).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// The state components whose content in the area is not their init
/// state: x87 and SSE (which exist whatever XCR0 holds) and those `xcr0`
/// enables. x87 for a control word other than 0x37f, a non-zero status
/// word, tag (a register in use), opcode or pointer, or a non-zero
/// register; SSE for an MXCSR other than 0x1f80 or
/// a non-zero XMM register; the others for any non-zero byte of their
/// area. This is what an XSAVE would have set in XSTATE_BV, for areas
/// written with XSTATE_BV left 0 (QEMU under TCG does so).
pub fn xsave_live(xsave: &[u8], xcr0: u64) -> u64 {
    let enabled = xcr0 | 0b11;
    let nonzero = |at: usize, len: usize| xsave.get(at..at + len).is_some_and(|b| b.iter().any(|&x| x != 0));
    let mut live = 0u64;
    if xsave.len() >= 512 {
        let fcw = u16::from_le_bytes([xsave[0], xsave[1]]);
        if fcw != FCW_INIT || nonzero(2, 3) || nonzero(6, 18) || nonzero(32, 128) {
            live |= 1;
        }
        if u32::from_le_bytes([xsave[24], xsave[25], xsave[26], xsave[27]]) != MXCSR_INIT || nonzero(160, 256) {
            live |= 2;
        }
    }
    for (bit, at, len) in XSAVE_AREAS {
        if nonzero(at, len) {
            live |= 1 << bit;
        }
    }
    live & enabled
}

/// The components the area holds: those of its XSTATE_BV, or, when that is
/// 0, those [`xsave_live`] finds; and whether they were derived so.
pub fn xsave_holds(xsave: &[u8], xcr0: u64) -> (u64, bool) {
    match xstate_bv(xsave) {
        0 => {
            let live = xsave_live(xsave, xcr0);
            (live, live != 0)
        }
        bv => (bv, false),
    }
}

/// The area to load into a hypervisor that trusts XSTATE_BV (KVM): the
/// recorded one, or a copy with XSTATE_BV set to the derived components
/// when it was recorded 0 while the area holds state.
pub fn xsave_for_restore(xsave: &[u8], xcr0: u64) -> std::borrow::Cow<'_, [u8]> {
    match xsave_holds(xsave, xcr0) {
        (bv, true) => {
            let mut x = xsave.to_vec();
            x[512..520].copy_from_slice(&bv.to_le_bytes());
            std::borrow::Cow::Owned(x)
        }
        _ => std::borrow::Cow::Borrowed(xsave),
    }
}

/// The names of the components in `bv`.
pub fn component_names(bv: u64) -> Vec<&'static str> {
    XSAVE_COMPONENTS.iter().enumerate().filter(|(i, _)| bv & (1 << i) != 0).map(|(_, n)| *n).collect()
}

/// The XSAVE area described: its size, XSTATE_BV, the components holding
/// state and whether they were derived from the area (XSTATE_BV 0).
fn xsave(v: &X86Vcpu) -> Value {
    let (holds, derived) = xsave_holds(&v.xsave, v.xcr0);
    json!({
        "bytes": v.xsave.len(), "xstate_bv": hex(xstate_bv(&v.xsave)),
        "components": component_names(holds), "derived": derived,
    })
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
        "xsave": xsave(v),
        "tsc": v.tsc, "tsc_khz": v.tsc_khz, "mp_state": v.mp_state,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// vCPU 0 of the real QEMU stream `testdata/qemu/counter-q35-16m.qemu`
    /// (QEMU 7.2 under TCG).
    pub(crate) fn counter_vcpu0() -> X86Vcpu {
        let stream = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/qemu/counter-q35-16m.qemu");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("c.pbr");
        let input = std::fs::File::open(&stream).unwrap();
        crate::qemu::convert(input, None, &out, &Default::default(), &|_| {}).unwrap();
        let img = pbr_format::Image::open(&out).unwrap();
        match &img.vcpus()[0] {
            pbr_format::Vcpu::X86_64(x) => (**x).clone(),
            pbr_format::Vcpu::Other { .. } => panic!("not x86-64"),
        }
    }

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
        for (index, name) in [
            (0xfe, "IA32_MTRRCAP"),
            (0x200, "IA32_MTRR_PHYSBASE0"),
            (0x201, "IA32_MTRR_PHYSMASK0"),
            (0x20e, "IA32_MTRR_PHYSBASE7"),
            (0x21f, "IA32_MTRR_PHYSMASK15"),
            (0x268, "IA32_MTRR_FIX4K_C0000"),
            (0x26b, "IA32_MTRR_FIX4K_D8000"),
            (0x26f, "IA32_MTRR_FIX4K_F8000"),
        ] {
            assert_eq!(msr_name(index), Some(name), "{index:#x}");
        }
        assert_eq!(d["lapic"]["id"], 2);
        assert_eq!(d["lapic"]["version"], "0x14");
        assert_eq!(d["lapic"]["timer_initial_count"], "0x3e8");
        assert_eq!(d["xsave"]["components"], json!(["x87", "sse", "avx"]));
        assert_eq!(d["xsave"]["derived"], false);
        assert_eq!(xsave_holds(&[0u8; 100], 7), (0, false));
    }

    /// QEMU under TCG leaves XSTATE_BV 0; the components come from the
    /// area. The real stream's guest never used x87 or SSE (nothing held);
    /// with SSE state put into its area, SSE is held.
    #[test]
    fn tcg_xsave_components_are_derived_from_the_area() {
        let mut v = counter_vcpu0();
        assert_eq!(xstate_bv(&v.xsave), 0);
        assert_eq!(xsave_live(&v.xsave, v.xcr0), 0);
        let d = describe(&v);
        assert_eq!((&d["xsave"]["xstate_bv"], &d["xsave"]["derived"]), (&json!("0x0"), &json!(false)));
        assert_eq!(d["xsave"]["components"], json!([]));
        v.xsave[160..176].copy_from_slice(&[0xa0, 0x27, 0x5e, 0, 0, 0, 0, 0, 0xa0, 0x27, 0x5e, 0, 0, 0, 0, 0]);
        let d = describe(&v);
        assert_eq!(d["xsave"]["derived"], true);
        assert_eq!(d["xsave"]["components"], json!(["sse"]));
    }

    #[test]
    fn live_components_follow_the_area() {
        let mut x = vec![0u8; 4096];
        x[0..2].copy_from_slice(&FCW_INIT.to_le_bytes());
        x[24..28].copy_from_slice(&MXCSR_INIT.to_le_bytes());
        assert_eq!(xsave_live(&x, 0x21f), 0, "init state holds nothing");
        assert_eq!(xsave_holds(&x, 0x21f), (0, false));
        x[24] = 0xa0; // MXCSR 0x1fa0
        assert_eq!(xsave_live(&x, 0x21f), 0b10);
        x[32 + 3] = 1; // st0
        assert_eq!(xsave_live(&x, 0x21f), 0b11);
        x[576 + 200] = 9; // upper half of a YMM register
        x[2688] = 0x55; // PKRU
        assert_eq!(xsave_live(&x, 0x21f), 0x207);
        // Components xcr0 does not enable are not state; x87 and SSE are.
        assert_eq!(xsave_live(&x, 0x3), 0b11);
        assert_eq!(xsave_live(&x, 0x1), 0b11);
        assert_eq!(component_names(xsave_holds(&x, 0x21f).0), ["x87", "sse", "avx", "pkru"]);
        let restored = xsave_for_restore(&x, 0x21f);
        assert_eq!(xstate_bv(&restored), 0x207);
        // A recorded XSTATE_BV is kept as it is.
        x[512] = 1;
        assert_eq!(xsave_holds(&x, 0x21f), (1, false));
        assert!(matches!(xsave_for_restore(&x, 0x21f), std::borrow::Cow::Borrowed(_)));
        assert!(xsave_live(&x[..100], 0x21f) == 0);
    }
}
