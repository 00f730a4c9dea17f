//! Builds `xl save` files the way Xen's savers write them (xl header,
//! libxl v2 stream, libxc v2/v3 stream), independently of pbr-tools, for
//! the converter's tests and benchmark. Every file is meant to pass Xen's
//! own `verify-stream-v2` (`xen_verify`).

use std::io::Write;
use std::path::Path;
use std::process::Command;

pub const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
pub const PAGE: usize = 4096;

/// Page types.
pub const NOTAB: u8 = 0;
pub const L1TAB: u8 = 1;
pub const L4TAB: u8 = 4;
pub const L4TAB_PIN: u8 = 0xc;
pub const XALLOC: u8 = 0xe;
pub const XTAB: u8 = 0xf;

/// A record: type, length, body, zero padding to 8.
pub fn rec(t: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&t.to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(body);
    v.resize(v.len() + (8 - body.len() % 8) % 8, 0);
    v
}

pub fn xl_header(config: Option<&str>) -> Vec<u8> {
    let mut v = XL_MAGIC.to_vec();
    let mut opt = Vec::new();
    if let Some(c) = config {
        opt.extend_from_slice(&(c.len() as u32 + 1).to_le_bytes());
        opt.extend_from_slice(c.as_bytes());
        opt.push(0);
    }
    v.extend_from_slice(&0x0102_0304u32.to_le_bytes());
    v.extend_from_slice(&(if config.is_some() { 3u32 } else { 2 }).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&(opt.len() as u32).to_le_bytes());
    v.extend_from_slice(&opt);
    v
}

pub fn libxl_header() -> Vec<u8> {
    let mut v = 0x4c69_6278_6c46_6d74u64.to_be_bytes().to_vec();
    v.extend_from_slice(&2u32.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v
}

pub fn libxc_headers(version: u32, domain: u32) -> Vec<u8> {
    let mut v = u64::MAX.to_be_bytes().to_vec();
    v.extend_from_slice(&0x5845_4e46u32.to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&domain.to_le_bytes());
    v.extend_from_slice(&12u16.to_le_bytes());
    v.extend_from_slice(&[0; 2]);
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&17u32.to_le_bytes());
    v
}

/// A PAGE_DATA record: entries `(pfn, type)`, content of data pages.
pub fn page_data(entries: &[(u64, u8)], content: &dyn Fn(u64) -> Vec<u8>) -> Vec<u8> {
    let data: Vec<u64> = entries.iter().filter(|e| e.1 <= 4 || (9..=12).contains(&e.1)).map(|e| e.0).collect();
    let mut body = Vec::with_capacity(8 + 8 * entries.len() + PAGE * data.len());
    body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for &(pfn, t) in entries {
        body.extend_from_slice(&((u64::from(t) << 60) | pfn).to_le_bytes());
    }
    for pfn in data {
        let c = content(pfn);
        assert_eq!(c.len(), PAGE);
        body.extend_from_slice(&c);
    }
    rec(1, &body)
}

fn le64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The values a test checks after conversion, per vCPU.
#[derive(Clone, Debug)]
pub struct CpuSpec {
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub cr3: u64,
    pub tsc: u64,
    pub apic_id: u32,
    /// PV: `fs_base`, `gs_base_kernel`, `gs_base_user`.
    pub fs_base: u64,
    pub gs_base_kernel: u64,
    pub gs_base_user: u64,
}

impl CpuSpec {
    pub fn new(i: u32) -> CpuSpec {
        CpuSpec {
            rip: 0xffff_ffff_8100_0000 + 0x1000 * u64::from(i),
            rsp: 0xffff_c900_0000_4000 + 0x4000 * u64::from(i),
            rax: 0x1111 * u64::from(i + 1),
            cr3: 0x0100_0000 + 0x1000 * u64::from(i),
            tsc: 0x1_0000_0000 + u64::from(i),
            apic_id: i,
            fs_base: 0x7f3a_0000_0000 + 0x1000 * u64::from(i),
            gs_base_kernel: 0xffff_8880_3fc0_0000 + 0x4_0000 * u64::from(i),
            gs_base_user: 0x7f3b_0000_0000 + 0x1000 * u64::from(i),
        }
    }
}

/// `struct hvm_hw_cpu` (1032 bytes) of a 64-bit Linux vCPU.
pub fn hvm_cpu(c: &CpuSpec) -> Vec<u8> {
    let mut b = vec![0u8; 1032];
    let put = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 0, 0x037f); // FCW
    put32(&mut b, 24, 0x1f80); // MXCSR
    put32(&mut b, 28, 0xffff);
    for i in 0..16 {
        put(&mut b, 160 + 16 * i, 0x0101_0101 * i as u64);
    }
    put(&mut b, 512, c.rax); // rax
    put(&mut b, 520, 0xb); // rbx
    put(&mut b, 536, 0xd); // rdx
    put(&mut b, 544, 0xbb); // rbp
    put(&mut b, 568, c.rsp); // rsp
    put(&mut b, 632, 0xf15); // r15
    put(&mut b, 640, c.rip);
    put(&mut b, 648, 0x246);
    put(&mut b, 656, 0x8005_0033); // cr0
    put(&mut b, 664, 0x7f12_3000); // cr2
    put(&mut b, 672, c.cr3);
    put(&mut b, 680, 0x0037_06f0); // cr4
    put(&mut b, 720, 0xffff_0ff0); // dr6
    put(&mut b, 728, 0x400); // dr7
    // cs ds es fs gs ss tr ldtr
    let sels = [0x10u32, 0x18, 0x18, 0, 0, 0x18, 0x40, 0];
    let ars = [0xa9bu32, 0xc93, 0xc93, 0, 0, 0xc93, 0x8b, 0];
    for i in 0..8 {
        put32(&mut b, 736 + 4 * i, sels[i]);
        put32(&mut b, 768 + 4 * i, if i == 6 { 0x4087 } else { 0xffff_ffff });
        put32(&mut b, 888 + 4 * i, ars[i]);
    }
    put(&mut b, 808 + 8 * 4, 0xffff_8880_0760_0000 + 0x40000 * u64::from(c.apic_id)); // gs base
    put(&mut b, 808 + 8 * 6, 0xffff_fe00_0000_3000); // tr base
    put32(&mut b, 800, 0xfff); // idtr limit
    put32(&mut b, 804, 0x7f); // gdtr limit
    put(&mut b, 872, 0xffff_fe00_0000_0000); // idtr base
    put(&mut b, 880, 0xffff_fe00_0000_1000); // gdtr base
    put(&mut b, 920, 0x10); // sysenter_cs
    put(&mut b, 944, 0); // shadow_gs
    put(&mut b, 960, 0xffff_ffff_8200_0080); // lstar
    put(&mut b, 968, 0x0023_0010_0000_0000); // star
    put(&mut b, 984, 0x47700); // sfmask
    put(&mut b, 992, 0xd01); // efer
    put(&mut b, 1000, u64::from(c.apic_id)); // tsc_aux
    put(&mut b, 1008, c.tsc);
    put32(&mut b, 1024, 1); // flags: FPU initialised
    b
}

fn entry(code: u16, instance: u16, data: &[u8]) -> Vec<u8> {
    let mut v = code.to_le_bytes().to_vec();
    v.extend_from_slice(&instance.to_le_bytes());
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// An HVM context as `XEN_DOMCTL_gethvmcontext` returns it: HEADER, then
/// typecodes ascending, vCPUs inside each, END.
pub fn hvm_context(cpus: &[CpuSpec]) -> Vec<u8> {
    let mut b = Vec::new();
    let mut hdr = 0x5438_1286u32.to_le_bytes().to_vec();
    hdr.extend_from_slice(&1u32.to_le_bytes());
    hdr.extend_from_slice(&0u64.to_le_bytes());
    hdr.extend_from_slice(&0x000a_0f10u32.to_le_bytes());
    hdr.extend_from_slice(&2_400_000u32.to_le_bytes());
    b.extend(entry(1, 0, &hdr));
    for (i, c) in cpus.iter().enumerate() {
        b.extend(entry(2, i as u16, &hvm_cpu(c)));
    }
    b.extend(entry(3, 0, &[0, 0xfb, 0, 0x08, 0, 0, 0, 0]));
    b.extend(entry(3, 1, &[0, 0xff, 0, 0x70, 0, 0, 0, 0]));
    let mut ioapic = vec![0u8; 400];
    ioapic[..8].copy_from_slice(&0xfec0_0000u64.to_le_bytes());
    b.extend(entry(4, 0, &ioapic));
    for c in cpus {
        let mut l = vec![0u8; 32];
        l[..8].copy_from_slice(&(0xfee0_0900u64 | if c.apic_id == 0 { 0x100 } else { 0 }).to_le_bytes());
        b.extend(entry(5, c.apic_id as u16, &l));
    }
    for c in cpus {
        let mut p = vec![0u8; 1024];
        p[0x20..0x24].copy_from_slice(&(c.apic_id << 24).to_le_bytes());
        p[0x30..0x34].copy_from_slice(&0x0005_0014u32.to_le_bytes());
        p[0x80..0x84].copy_from_slice(&0x20u32.to_le_bytes());
        p[0xf0..0xf4].copy_from_slice(&0x1ffu32.to_le_bytes());
        p[0x320..0x324].copy_from_slice(&0x400ecu32.to_le_bytes());
        b.extend(entry(6, c.apic_id as u16, &p));
    }
    b.extend(entry(7, 0, &[0; 16]));
    b.extend(entry(8, 0, &[0; 8]));
    b.extend(entry(9, 0, &[5, 10, 11, 5, 0, 0, 0, 0]));
    b.extend(entry(10, 0, &[0; 56]));
    b.extend(entry(11, 0, &[0; 24]));
    b.extend(entry(12, 0, &[0; 1048]));
    b.extend(entry(13, 0, &[0; 8]));
    for c in cpus {
        let mut m = le64s(&[0x0007_0406_0007_0406]);
        m.extend(le64s(&[0xc000_0000, 0xf_c000_0800, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        m.extend(le64s(&[0x0606_0606_0606_0606; 11]));
        m.extend(le64s(&[0x508, 0xc06]));
        b.extend(entry(14, c.apic_id as u16, &m));
    }
    for c in cpus {
        // xfeature_mask, xcr0, xcr0_accum, then a 576-byte XSAVE image (x87+SSE).
        let mut x = le64s(&[0, 3, 3]);
        let mut img = vec![0u8; 576];
        img[..2].copy_from_slice(&0x037fu16.to_le_bytes());
        img[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        img[160..168].copy_from_slice(&(0xabcd_0000 + u64::from(c.apic_id)).to_le_bytes());
        img[512..520].copy_from_slice(&3u64.to_le_bytes());
        x.extend(img);
        b.extend(entry(16, c.apic_id as u16, &x));
    }
    for c in cpus {
        b.extend(entry(19, c.apic_id as u16, &0u64.to_le_bytes()));
    }
    for c in cpus {
        let mut m = 1u32.to_le_bytes().to_vec();
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&0x48u32.to_le_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&1u64.to_le_bytes());
        b.extend(entry(20, c.apic_id as u16, &m));
    }
    b.extend(entry(0, 0, &[]));
    b
}

pub fn tsc_info() -> Vec<u8> {
    let mut b = 0u32.to_le_bytes().to_vec();
    b.extend_from_slice(&2_400_000u32.to_le_bytes());
    b.extend_from_slice(&123_456_789u64.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    rec(8, &b)
}

pub fn policies() -> Vec<u8> {
    let mut cpuid = Vec::new();
    for (leaf, sub, a) in [(0u32, 0xffff_ffffu32, 0xd_u32), (1, 0xffff_ffff, 0x000a_0f10), (7, 0, 0), (0xd, 1, 1)] {
        for v in [leaf, sub, a, 0x1234, 0x5678, 0x9abc] {
            cpuid.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut msr = Vec::new();
    for (idx, val) in [(0xceu32, 0u64), (0x10a, 0x0c00_0000)] {
        msr.extend_from_slice(&idx.to_le_bytes());
        msr.extend_from_slice(&0u32.to_le_bytes());
        msr.extend_from_slice(&val.to_le_bytes());
    }
    let mut v = rec(0x11, &cpuid);
    v.extend(rec(0x12, &msr));
    v.extend(rec(0x10, &[]));
    v
}

/// What `build` puts in a file.
pub struct Spec<'a> {
    pub hvm: bool,
    pub version: u32,
    pub pages: u64,
    pub vcpus: u32,
    /// Content of a data page.
    pub content: &'a dyn Fn(u64) -> Vec<u8>,
    /// The device model's state (HVM).
    pub emulator: Option<Vec<u8>>,
    /// Checkpoints (Remus): pfns resent before each.
    pub checkpoints: Vec<Vec<u64>>,
    /// Content of resent pages, by checkpoint.
    pub resend: &'a dyn Fn(usize, u64) -> Vec<u8>,
    /// Pages a PAGE_DATA record at most (Xen's saver: 1024).
    pub batch: usize,
}

/// HVM guests: RAM pfns 0..pages except the VGA hole 0xa0..0xc0 (XTAB),
/// plus the eight special pages below 0xff000 (XALLOC for the unused
/// ones); PV guests: pfns 0..pages, the first 4 page-table pages typed.
pub fn entries(s: &Spec<'_>) -> Vec<(u64, u8)> {
    let mut v = Vec::new();
    for pfn in 0..s.pages {
        let t = if s.hvm && (0xa0..0xc0).contains(&pfn) {
            XTAB
        } else if !s.hvm && (1..=4).contains(&pfn) {
            if pfn == 4 { L4TAB_PIN } else { pfn as u8 }
        } else {
            NOTAB
        };
        v.push((pfn, t));
    }
    if s.hvm {
        for i in 0..8u64 {
            v.push((0xfeff8 + i, if [3, 4, 5, 7].contains(&i) { NOTAB } else { XALLOC }));
        }
    } else {
        v.push((s.pages + 1, XTAB));
    }
    v
}

/// Writes the file at `path`.
pub fn build(path: &Path, s: &Spec<'_>) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let name = if s.hvm { "lab-hvm" } else { "lab-pv" };
    let cfg = format!(
        r#"{{"c_info":{{"type":"{}","name":"{name}","uuid":"6c2e8a4e-1f5b-4a8e-9d3c-0a1b2c3d4e5f"}},"b_info":{{"max_vcpus":{},"max_memkb":{},"target_memkb":{}}}}}"#,
        if s.hvm { "hvm" } else { "pv" },
        s.vcpus,
        s.pages * 4,
        s.pages * 4
    );
    w.write_all(&xl_header(Some(&cfg))).unwrap();
    w.write_all(&libxl_header()).unwrap();
    w.write_all(&rec(1, &[])).unwrap();
    w.write_all(&libxc_headers(s.version, if s.hvm { 2 } else { 1 })).unwrap();
    if !s.hvm {
        w.write_all(&rec(2, &[8, 4, 0, 0, 0, 0, 0, 0])).unwrap();
    }
    if s.version >= 3 {
        w.write_all(&policies()).unwrap();
    }
    if !s.hvm {
        let mut p2m = 0u32.to_le_bytes().to_vec();
        p2m.extend_from_slice(&((s.pages - 1) as u32).to_le_bytes());
        p2m.extend(le64s(&[0x10, 0x11]));
        w.write_all(&rec(3, &p2m)).unwrap();
    }
    for batch in entries(s).chunks(s.batch) {
        w.write_all(&page_data(batch, s.content)).unwrap();
    }
    let cpus: Vec<CpuSpec> = (0..s.vcpus).map(CpuSpec::new).collect();
    let state = |w: &mut std::io::BufWriter<std::fs::File>| {
        w.write_all(&tsc_info()).unwrap();
        if s.hvm {
            w.write_all(&rec(9, &hvm_context(&cpus))).unwrap();
            let params: Vec<u64> = vec![1, 0xfeffc, 5, 0xfeffd, 6, 0xfeffb, 17, 0xfefff];
            let mut body = 4u32.to_le_bytes().to_vec();
            body.extend_from_slice(&[0; 4]);
            body.extend(le64s(&params));
            w.write_all(&rec(0x0a, &body)).unwrap();
        } else {
            w.write_all(&rec(7, &vec![0x5a; PAGE])).unwrap();
            for c in &cpus {
                let mut basic = (c.apic_id).to_le_bytes().to_vec();
                basic.extend_from_slice(&[0; 4]);
                let mut ctx = vec![0u8; 5168];
                ctx[520 + 80..520 + 88].copy_from_slice(&c.rax.to_le_bytes());
                ctx[520 + 128..520 + 136].copy_from_slice(&c.rip.to_le_bytes());
                ctx[520 + 152..520 + 160].copy_from_slice(&c.rsp.to_le_bytes());
                ctx[4984 + 24..4984 + 32].copy_from_slice(&c.cr3.to_le_bytes());
                for (at, v) in [(5144, c.fs_base), (5152, c.gs_base_kernel), (5160, c.gs_base_user)] {
                    ctx[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
                basic.extend(ctx);
                w.write_all(&rec(4, &basic)).unwrap();
                let mut ext = (c.apic_id).to_le_bytes().to_vec();
                ext.extend_from_slice(&[0; 4]);
                ext.extend_from_slice(&[0x11; 48]);
                w.write_all(&rec(5, &ext)).unwrap();
                let mut xs = (c.apic_id).to_le_bytes().to_vec();
                xs.extend_from_slice(&[0; 4]);
                xs.extend(le64s(&[3, 3]));
                xs.extend(vec![0u8; 576]);
                w.write_all(&rec(6, &xs)).unwrap();
                let mut msrs = (c.apic_id).to_le_bytes().to_vec();
                msrs.extend_from_slice(&[0; 4]);
                msrs.extend_from_slice(&0x48u32.to_le_bytes());
                msrs.extend_from_slice(&[0; 4]);
                msrs.extend(le64s(&[1]));
                w.write_all(&rec(0x0c, &msrs)).unwrap();
            }
        }
    };
    state(&mut w);
    let emulator = |w: &mut std::io::BufWriter<std::fs::File>| {
        if let Some(e) = &s.emulator {
            let mut xs = 2u32.to_le_bytes().to_vec();
            xs.extend_from_slice(&0u32.to_le_bytes());
            xs.extend_from_slice(b"physmap/f0000000/start_addr\0f0000000\0physmap/f0000000/size\0800000\0physmap/f0000000/name\0vga.vram\0");
            w.write_all(&rec(2, &xs)).unwrap();
            let mut ec = 2u32.to_le_bytes().to_vec();
            ec.extend_from_slice(&0u32.to_le_bytes());
            ec.extend_from_slice(e);
            w.write_all(&rec(3, &ec)).unwrap();
        }
    };
    for (k, resent) in s.checkpoints.iter().enumerate() {
        w.write_all(&rec(0x0e, &[])).unwrap();
        emulator(&mut w);
        w.write_all(&rec(4, &[])).unwrap();
        let ents: Vec<(u64, u8)> = resent.iter().map(|&p| (p, NOTAB)).collect();
        for batch in ents.chunks(1024) {
            w.write_all(&page_data(batch, &|p| (s.resend)(k, p))).unwrap();
        }
        state(&mut w);
    }
    w.write_all(&rec(0, &[])).unwrap();
    emulator(&mut w);
    w.write_all(&rec(0, &[])).unwrap();
    w.flush().unwrap();
}

/// Runs Xen's own stream verifier on `path`: `Ok` or its error text.
pub fn xen_verify(path: &Path) -> Result<(), String> {
    let tool = || {
        let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/xen-verify-stream"));
        // Where the script unpacks the verifier: the target directory's,
        // without asking cargo for it on every call.
        if std::env::var_os("PBR_XEN_TOOLS").is_none() {
            c.env("PBR_XEN_TOOLS", super::target_dir().join("xen-tools"));
        }
        c
    };
    // The first use unpacks Debian's xen-utils: once, not by racing threads.
    static UNPACKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    UNPACKED.get_or_init(|| {
        let out = tool().arg("--fetch").output().expect("scripts/xen-verify-stream");
        assert!(out.status.success(), "cannot fetch Xen's verifier: {}", String::from_utf8_lossy(&out.stderr));
    });
    let out = tool().args(["-f", "xl", "-i"]).arg(path).output().expect("xen-verify-stream");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}
