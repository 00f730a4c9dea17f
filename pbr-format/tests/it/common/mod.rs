//! Helpers shared by the integration tests: a full-featured sample image and
//! a way to re-seal a hand-edited file so that only the edit is wrong.

#![allow(dead_code)]

use std::borrow::Cow;
use std::path::Path;

use pbr_format::pod::{KvmSegment, MsrEntry};
use pbr_format::{
    BaseRef, CacheRef, DeviceBlob, DeviceOrigin, FileEntry, ImageWriter, PageClass, PageEncoding, Phase, Region, Vcpu,
    WriterOptions, X86Vcpu,
};
use zerocopy::little_endian::{U16, U32, U64};

pub const PS: usize = 4096;

/// Deterministic page content: mostly compressible text with a seed.
pub fn page(seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(PS);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < PS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            v.extend_from_slice(&x.to_le_bytes());
        } else {
            v.extend_from_slice(b"pbr page ");
        }
    }
    v.truncate(PS);
    v
}

pub fn sample_vcpu(id: u32) -> X86Vcpu {
    let mut v = X86Vcpu::new(id);
    for (i, r) in v.regs.gpr.iter_mut().enumerate() {
        *r = U64::new(0x1000 * u64::from(id) + i as u64);
    }
    v.regs.rip = U64::new(0xffff_ffff_8100_0000);
    v.regs.rflags = U64::new(0x246);
    v.sregs.cs = KvmSegment {
        base: U64::new(0),
        limit: U32::new(0xffff_ffff),
        selector: U16::new(0x10),
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    v.sregs.cr0 = U64::new(0x8005_0033);
    v.sregs.cr3 = U64::new(0x1_0000);
    v.sregs.cr4 = U64::new(0x3406f0);
    v.sregs.efer = U64::new(0xd01);
    v.sregs.gdt.base = U64::new(0xfffffe0000001000);
    v.sregs.gdt.limit = U16::new(0x7f);
    v.lapic = Some(Box::new([id as u8; 1024]));
    v.tsc = Some(123_456_789);
    v.tsc_khz = 2_000_000;
    v.xcr0 = 7;
    v.msrs = vec![
        MsrEntry { index: U32::new(0xc000_0080), reserved: U32::new(0), data: U64::new(0xd01) },
        MsrEntry { index: U32::new(0x10), reserved: U32::new(0), data: U64::new(987_654) },
    ];
    v.xsave = (0..4096u32).map(|i| (i % 251) as u8).collect();
    v
}

/// Layout of the sample image: pc.ram 0..32 pages, a gap, high ram, and a
/// synthetic read-only ROM.
pub fn sample_regions() -> Vec<Region<'static>> {
    vec![
        Region::ram("pc.ram", 0, 24 * PS as u64),
        Region { source_offset: 24 * PS as u64, ..Region::ram("pc.ram", 0x1_0000_0000, 8 * PS as u64) },
        Region { read_only: true, synthetic: true, ..Region::ram("pc.bios", 0x100_0000_0000, 4 * PS as u64) },
    ]
}

/// Writes an image exercising every encoding but base, every section but
/// `BASE`, with pages given out of order and one page sent twice.
pub fn write_sample(path: &Path, hashes: bool) -> pbr_format::WriteReport {
    let opts = WriterOptions {
        producer_name: "pbr-tests".into(),
        producer_version: "1".into(),
        page_hashes: hashes,
        ..WriterOptions::default()
    };
    let mut w = ImageWriter::create(path, &sample_regions(), opts).unwrap();
    w.set_phase(Phase {
        name: Cow::Borrowed("daemons"),
        sequence: 2,
        since_boot_ns: 3_500_000_000,
        captured_unix_ns: 1_700_000_000_000_000_000,
    })
    .unwrap();
    for gfn in (0..10).rev() {
        w.write_page(gfn, &page(gfn), PageClass::Kernel).unwrap();
    }
    w.write_page(4, &page(400), PageClass::User).unwrap();
    w.write_page(12, &[0; PS], PageClass::Free).unwrap();
    w.mark_pages(14, 3, PageEncoding::Trimmed, PageClass::Free).unwrap();
    w.write_dup(18, 2, PageClass::Cache).unwrap();
    w.write_dup(19, 2, PageClass::Cache).unwrap();
    for gfn in 0x10_0000..0x10_0004 {
        w.write_page_lz4(gfn, &page(gfn), PageClass::User).unwrap();
    }
    w.write_page(0x10_0006, &page(77), PageClass::Unknown).unwrap();
    w.write_page(0x1000_0000, &page(1), PageClass::Unknown).unwrap();
    w.write_page(0x1000_0003, &[0x5a; PS], PageClass::Unknown).unwrap();
    w.add_vcpu(Vcpu::X86_64(Box::new(sample_vcpu(1)))).unwrap();
    w.add_vcpu(Vcpu::X86_64(Box::new(sample_vcpu(0)))).unwrap();
    w.add_device(DeviceBlob {
        origin: DeviceOrigin::QEMU_SECTION,
        name: "timer".into(),
        instance: 0,
        version: 2,
        flags: 4,
        data: Cow::Owned(vec![1, 2, 3, 4, 5]),
    })
    .unwrap();
    w.add_device(DeviceBlob {
        origin: DeviceOrigin::XEN_HVM,
        name: "".into(),
        instance: 1,
        version: 0,
        flags: 0,
        data: Cow::Owned(vec![]),
    })
    .unwrap();
    w.set_metadata(pbr_format::keys::SOURCE_FORMAT, "vmm").unwrap();
    w.set_metadata(pbr_format::keys::GUEST_RAM_SIZE, "131072").unwrap();
    let f = w
        .add_file(FileEntry {
            path: "etc/hostname".into(),
            size: 6,
            mtime_ns: -5,
            inode: 42,
            blake3: *blake3::hash(b"guest\n").as_bytes(),
            cache_only: false,
        })
        .unwrap();
    w.add_cache_ref(CacheRef { gfn: 19, file_index: f, offset: 0 }).unwrap();
    w.finish().unwrap()
}

/// Writes a diff image against the sample image at `base`.
pub fn write_diff(path: &Path, base: &pbr_format::Image) {
    let opts = WriterOptions { unwritten: PageEncoding::Base, ..WriterOptions::default() };
    let mut w = ImageWriter::create(path, base.regions(), opts).unwrap();
    w.set_base(BaseRef {
        blake3: base.content_hash().unwrap(),
        result_blake3: None,
        page_size: 4096,
        name: "sample.pbr".into(),
    })
    .unwrap();
    w.write_page(3, &page(3000), PageClass::Kernel).unwrap();
    w.mark_pages(5, 1, PageEncoding::Zero, PageClass::Free).unwrap();
    w.finish().unwrap();
}

/// Recomputes every crc32, the trailer crc and the trailer hash of `bytes`
/// so that a test's edit is the only thing wrong with the file.
pub fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    let t = n - 64;
    let table = u64::from_le_bytes(bytes[t + 8..t + 16].try_into().unwrap()) as usize;
    let count = u32::from_le_bytes(bytes[t + 16..t + 20].try_into().unwrap()) as usize;
    let hcrc = crc32fast::hash(&bytes[..124]);
    bytes[124..128].copy_from_slice(&hcrc.to_le_bytes());
    for i in 0..count {
        let e = table + i * 32;
        let off = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap()) as usize;
        if off + len <= n {
            let c = crc32fast::hash(&bytes[off..off + len]);
            bytes[e + 24..e + 28].copy_from_slice(&c.to_le_bytes());
        }
    }
    let c = crc32fast::hash(&bytes[table..table + count * 32]);
    bytes[t + 20..t + 24].copy_from_slice(&c.to_le_bytes());
    let c = crc32fast::hash(&bytes[t..t + 24]);
    bytes[t + 24..t + 28].copy_from_slice(&c.to_le_bytes());
    let h = blake3::hash(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(h.as_bytes());
}

/// File offset of the section of `kind` (raw kind word) in `bytes`.
pub fn section_offset(bytes: &[u8], raw_kind: u32) -> Option<(usize, usize, usize)> {
    let n = bytes.len();
    let t = n - 64;
    let table = u64::from_le_bytes(bytes[t + 8..t + 16].try_into().unwrap()) as usize;
    let count = u32::from_le_bytes(bytes[t + 16..t + 20].try_into().unwrap()) as usize;
    (0..count).find_map(|i| {
        let e = table + i * 32;
        let kind = u32::from_le_bytes(bytes[e..e + 4].try_into().unwrap());
        (kind == raw_kind).then(|| {
            let off = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap()) as usize;
            let len = u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap()) as usize;
            (e, off, len)
        })
    })
}

/// The disk references of [`write_disk_refs`]: pages 2 and 3 of a library,
/// page 5 the last 1200 bytes of a settings file.
pub fn disk_refs() -> pbr_format::DiskRefs {
    let page = |gfn: u64, file, length| pbr_format::DiskRef {
        gfn,
        disk: 0,
        disk_offset: gfn * 4096 + 512,
        length,
        crc32: gfn as u32,
        file,
        file_offset: (gfn - 2) * 4096,
    };
    pbr_format::DiskRefs {
        files: vec!["usr/lib/libc.so.6".into(), "etc/nginx/nginx.conf".into()],
        pages: vec![page(2, 0, 4096), page(3, 0, 4096), page(5, 1, 1200)],
    }
}

/// The pages of [`write_disk_refs`] without the references.
pub fn write_disk_refs_pages(path: &Path) {
    disk_refs_writer(path).finish().unwrap();
}

/// A format 1.1 image: one stored and two trimmed cache pages with disk
/// references.
pub fn write_disk_refs(path: &Path) {
    let mut w = disk_refs_writer(path);
    w.set_disk_refs(disk_refs()).unwrap();
    w.finish().unwrap();
}

fn disk_refs_writer(path: &Path) -> ImageWriter {
    let opts =
        WriterOptions { producer_name: "pbr-tests".into(), producer_version: "1".into(), ..WriterOptions::default() };
    let mut w = ImageWriter::create(path, &[Region::ram("ram", 0, 8 * 4096)], opts).unwrap();
    w.write_page(2, &[7; 4096], PageClass::Cache).unwrap();
    w.mark_pages(3, 1, PageEncoding::Trimmed, PageClass::Cache).unwrap();
    w.mark_pages(5, 1, PageEncoding::Trimmed, PageClass::Cache).unwrap();
    w
}

/// A CRIU `pstree.img` made by hand: the image magic pair, then per
/// process a little-endian u32 size and a protobuf `pstree_entry` (pid 1,
/// ppid 2, pgid 3, sid 4, threads 5 repeated, unpacked as CRIU writes it).
/// `entries` are (pid, ppid, pgid, sid, threads).
pub fn pstree_img(entries: &[(u32, u32, u32, u32, &[u32])]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut img = Vec::new();
    img.extend(0x5456_4319u32.to_le_bytes()); // IMG_COMMON_MAGIC
    img.extend(0x5027_3030u32.to_le_bytes()); // PSTREE_MAGIC
    for &(pid, ppid, pgid, sid, threads) in entries {
        let mut m = Vec::new();
        for (tag, v) in [(0x08, pid), (0x10, ppid), (0x18, pgid), (0x20, sid)] {
            m.push(tag);
            varint(&mut m, v);
        }
        for &t in threads {
            m.push(0x28);
            varint(&mut m, t);
        }
        img.extend((m.len() as u32).to_le_bytes());
        img.extend(m);
    }
    img
}

/// The processes of [`write_processes`]: nginx (a master and two workers,
/// one with two threads) and redis, with some of the files CRIU writes.
pub fn processes() -> pbr_format::ProcessesBuilder {
    let mut p = pbr_format::ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19").unwrap();
    let nginx = p.add_unit("nginx.service").unwrap();
    let tree =
        pstree_img(&[(812, 1, 812, 812, &[812]), (813, 812, 812, 812, &[813, 820]), (814, 812, 812, 812, &[814])]);
    p.add_blob(nginx, "pstree.img", tree).unwrap();
    p.add_blob(nginx, "core-812.img", page(812)[..1500].to_vec()).unwrap();
    p.add_blob(nginx, "pages-1.img", page(1)).unwrap();
    let redis = p.add_unit("redis-server.service").unwrap();
    p.add_blob(redis, "pstree.img", pstree_img(&[(900, 1, 900, 900, &[900, 901, 902, 903])])).unwrap();
    p.add_blob(redis, "inventory.img", vec![0x16, 0x31, 0x31, 0x58]).unwrap();
    p
}

/// A format 1.2 image: one stored page and the [`processes`] of a guest
/// checkpointed for a kernel update.
pub fn write_processes(path: &Path) {
    let opts =
        WriterOptions { producer_name: "pbr-tests".into(), producer_version: "1".into(), ..WriterOptions::default() };
    let mut w = ImageWriter::create(path, &[Region::ram("ram", 0, 8 * 4096)], opts).unwrap();
    w.write_page(1, &page(1), PageClass::User).unwrap();
    w.set_phase(Phase::named("service", 3)).unwrap();
    w.set_processes(processes()).unwrap();
    w.finish().unwrap();
}
