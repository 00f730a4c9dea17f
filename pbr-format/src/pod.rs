//! Raw on-disk structures of format 1.0, exactly as `spec/format.md` lays
//! them out.
//!
//! Every struct is `#[repr(C)]` with alignment 1 and little-endian fields, so
//! it can be viewed in place inside a memory map. Sizes are pinned at compile
//! time. Nothing here validates anything: the checked, safe views live in
//! [`crate::read`].

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub use crate::processes::pod::{ProcessBlobRecord, ProcessUnitRecord, ProcessesHeader};

/// File magic: `\x89PBR\r\n\x1a\n`.
pub const MAGIC: [u8; 8] = *b"\x89PBR\r\n\x1a\n";
/// Trailer magic.
pub const TRAILER_MAGIC: [u8; 8] = *b"PBRTRAIL";
/// Format major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// Format minor version this crate writes for an image without disk
/// references.
pub const VERSION_MINOR: u16 = 0;
/// Format minor version of an image with a `DISK_REFS` section (format 1.1).
pub const VERSION_MINOR_DISK_REFS: u16 = 1;
/// Format minor version of an image with a `PROCESSES` section (format
/// 1.2).
pub const VERSION_MINOR_PROCESSES: u16 = 2;
/// Size of the header in format 1.0.
pub const HEADER_SIZE: usize = 128;
/// Size of the trailer.
pub const TRAILER_SIZE: usize = 64;
/// Size of one section table entry.
pub const SECTION_ENTRY_SIZE: usize = 32;
/// Size of the `count` + `record_size` prefix of a table section.
pub const TABLE_PREFIX_SIZE: usize = 8;
/// The must-understand bit of a section kind.
pub const MUST_UNDERSTAND: u32 = 0x8000_0000;

/// Required feature: the index has lz4 extents.
pub const FEATURE_LZ4: u64 = 1 << 0;
/// Required feature: the index has base extents (a diff image).
pub const FEATURE_DIFF: u64 = 1 << 1;
/// Required feature: the index has dup extents.
pub const FEATURE_DUP: u64 = 1 << 2;
/// Every required feature bit this crate knows.
pub const KNOWN_REQUIRED_FEATURES: u64 = FEATURE_LZ4 | FEATURE_DIFF | FEATURE_DUP;
/// Optional feature: a page-hashes section is present.
pub const FEATURE_PAGE_HASHES: u64 = 1 << 0;

/// Region flag: read-only memory (a ROM).
pub const REGION_READ_ONLY: u32 = 1 << 0;
/// Region flag: the base is not a guest-physical address.
pub const REGION_SYNTHETIC: u32 = 1 << 1;
/// Every region flag this crate knows.
pub const KNOWN_REGION_FLAGS: u32 = REGION_READ_ONLY | REGION_SYNTHETIC;

/// Manifest file flag: listed only because pages of the file are cached.
pub const FILE_CACHE_ONLY: u32 = 1 << 0;

/// vCPU architecture tag for x86-64.
pub const ARCH_X86_64: u32 = 1;
/// x86 vCPU flag: the LAPIC page is valid.
pub const VCPU_LAPIC: u32 = 1 << 0;
/// x86 vCPU flag: the events block is valid.
pub const VCPU_EVENTS: u32 = 1 << 1;
/// x86 vCPU flag: the debug registers are valid.
pub const VCPU_DEBUGREGS: u32 = 1 << 2;
/// x86 vCPU flag: the TSC value is valid.
pub const VCPU_TSC: u32 = 1 << 3;

/// The 128-byte file header.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let (h, _) = pbr_format::pod::Header::read_from_prefix(image.as_bytes()).unwrap();
/// assert_eq!(h.magic, pbr_format::pod::MAGIC);
/// assert_eq!(h.page_size.get(), 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// Format major version.
    pub version_major: U16,
    /// Format minor version.
    pub version_minor: U16,
    /// Size of the header in bytes.
    pub header_size: U32,
    /// Page size: 4096 or 2 MiB.
    pub page_size: U32,
    /// Reserved, zero.
    pub reserved0: U32,
    /// Feature bits a reader must know.
    pub required_features: U64,
    /// Feature bits a reader may ignore.
    pub optional_features: U64,
    /// Producer name, NUL padded.
    pub producer_name: [u8; 32],
    /// Producer version, NUL padded.
    pub producer_version: [u8; 32],
    /// Reserved, zero.
    pub reserved1: [u8; 20],
    /// crc32 of bytes 0..124.
    pub header_crc32: U32,
}
const _: () = assert!(size_of::<Header>() == HEADER_SIZE);

/// The 64-byte trailer at the end of every complete file.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let bytes = image.as_bytes();
/// let (_, t) = pbr_format::pod::Trailer::read_from_suffix(bytes).unwrap();
/// assert_eq!(t.image_blake3, image.image_blake3());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct Trailer {
    /// [`TRAILER_MAGIC`].
    pub magic: [u8; 8],
    /// Offset of the section table.
    pub section_table_offset: U64,
    /// Number of section table entries.
    pub section_count: U32,
    /// crc32 of the section table.
    pub section_table_crc32: U32,
    /// crc32 of trailer bytes 0..24.
    pub trailer_crc32: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// blake3 of every file byte before this field.
    pub image_blake3: [u8; 32],
}
const _: () = assert!(size_of::<Trailer>() == TRAILER_SIZE);

/// One section table entry.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let (_, t) = pbr_format::pod::Trailer::read_from_suffix(image.as_bytes()).unwrap();
/// let at = t.section_table_offset.get() as usize;
/// let (e, _) = pbr_format::pod::SectionEntry::read_from_prefix(&image.as_bytes()[at..]).unwrap();
/// assert_eq!(e.offset.get(), image.sections()[0].offset);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct SectionEntry {
    /// Kind id, bit 31 = must-understand.
    pub kind: U32,
    /// Reserved.
    pub flags: U32,
    /// File offset of the section.
    pub offset: U64,
    /// Length in bytes.
    pub length: U64,
    /// crc32 of the section bytes.
    pub crc32: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<SectionEntry>() == SECTION_ENTRY_SIZE);

/// Prefix of every table section.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let index = image.sections().iter().find(|s| s.name() == "PAGE_INDEX").unwrap();
/// let (p, _) = pbr_format::pod::TablePrefix::read_from_prefix(&image.as_bytes()[index.offset as usize..]).unwrap();
/// assert_eq!(p.count.get() as usize, image.extent_count());
/// assert_eq!(p.record_size.get(), 32);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TablePrefix {
    /// Number of records.
    pub count: U32,
    /// Size of one record.
    pub record_size: U32,
}
const _: () = assert!(size_of::<TablePrefix>() == TABLE_PREFIX_SIZE);

/// A `REGIONS` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "REGIONS").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (r, _) = pbr_format::pod::RegionRecord::read_from_prefix(body).unwrap();
/// assert_eq!(r.base.get(), image.regions()[0].base);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RegionRecord {
    /// First address.
    pub base: U64,
    /// Length in bytes.
    pub length: U64,
    /// Offset inside the source memory object.
    pub source_offset: U64,
    /// Region flags.
    pub flags: U32,
    /// Name offset in the heap.
    pub name_off: U32,
    /// Name length.
    pub name_len: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<RegionRecord>() == 40);

/// A `PAGE_INDEX` record: one extent.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "PAGE_INDEX").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (e, _) = pbr_format::pod::ExtentRecord::read_from_prefix(body).unwrap();
/// assert_eq!(e.gfn.get(), image.extents().next().unwrap().gfn);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ExtentRecord {
    /// First guest frame number.
    pub gfn: U64,
    /// Number of pages.
    pub count: U32,
    /// Page encoding.
    pub encoding: u8,
    /// Page class.
    pub class: u8,
    /// Reserved, zero.
    pub flags: U16,
    /// Encoding-specific data word.
    pub data: U64,
    /// Stored-page number of the first page.
    pub aux: U64,
}
const _: () = assert!(size_of::<ExtentRecord>() == 32);

/// A `PHASE` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "PHASE").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (p, _) = pbr_format::pod::PhaseRecord::read_from_prefix(body).unwrap();
/// assert_eq!(p.sequence.get(), image.phase().unwrap().sequence);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct PhaseRecord {
    /// Position in the boot.
    pub sequence: U32,
    /// Reserved.
    pub reserved: U32,
    /// Nanoseconds since boot start.
    pub since_boot_ns: U64,
    /// Wall-clock capture time, 0 = unknown.
    pub captured_unix_ns: U64,
    /// Name offset in the heap.
    pub name_off: U32,
    /// Name length.
    pub name_len: U32,
}
const _: () = assert!(size_of::<PhaseRecord>() == 32);

/// A `DEVICES` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "DEVICES").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (d, _) = pbr_format::pod::DeviceRecord::read_from_prefix(body).unwrap();
/// assert_eq!(d.origin.get(), image.devices().next().unwrap().origin.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct DeviceRecord {
    /// Origin tag.
    pub origin: U32,
    /// Instance number.
    pub instance: U32,
    /// Version.
    pub version: U32,
    /// Origin-defined flags.
    pub flags: U32,
    /// Name offset in the heap.
    pub name_off: U32,
    /// Name length.
    pub name_len: U32,
    /// Blob offset in the heap.
    pub data_off: U64,
    /// Blob length.
    pub data_len: U64,
}
const _: () = assert!(size_of::<DeviceRecord>() == 40);

/// A `METADATA` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "METADATA").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (m, _) = pbr_format::pod::MetadataRecord::read_from_prefix(body).unwrap();
/// assert_eq!(m.key_len.get() as usize, image.metadata()[0].0.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct MetadataRecord {
    /// Key offset in the heap.
    pub key_off: U32,
    /// Key length.
    pub key_len: U32,
    /// Value offset in the heap.
    pub value_off: U32,
    /// Value length.
    pub value_len: U32,
}
const _: () = assert!(size_of::<MetadataRecord>() == 16);

/// A `MANIFEST` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "MANIFEST").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (f, _) = pbr_format::pod::FileRecord::read_from_prefix(body).unwrap();
/// assert_eq!(f.size.get(), image.manifest()[0].size);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct FileRecord {
    /// File size in bytes.
    pub size: U64,
    /// Modification time, signed nanoseconds since the epoch.
    pub mtime_ns: U64,
    /// Inode number.
    pub inode: U64,
    /// blake3 of the content.
    pub blake3: [u8; 32],
    /// Path offset in the heap.
    pub path_off: U32,
    /// Path length.
    pub path_len: U32,
    /// Reserved.
    pub flags: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<FileRecord>() == 72);

/// A `CACHE_REFS` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "CACHE_REFS").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (c, _) = pbr_format::pod::CacheRefRecord::read_from_prefix(body).unwrap();
/// assert_eq!(c.gfn.get(), image.cache_refs()[0].gfn);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct CacheRefRecord {
    /// Guest frame number of the cache page.
    pub gfn: U64,
    /// Index of the file in `MANIFEST`.
    pub file_index: U32,
    /// Reserved.
    pub flags: U32,
    /// Byte offset inside the file.
    pub offset: U64,
}
const _: () = assert!(size_of::<CacheRefRecord>() == 24);

/// A `DISK_REFS` record (`spec/format.md` §7.8).
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.1/disk-refs.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "DISK_REFS").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (r, _) = pbr_format::pod::DiskRefRecord::read_from_prefix(body).unwrap();
/// assert_eq!(r.gfn.get(), image.disk_refs().pages[0].gfn);
/// assert_eq!(r.length.get(), 4096);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct DiskRefRecord {
    /// Guest frame number of the page.
    pub gfn: U64,
    /// Byte offset on the disk of the page's first byte.
    pub disk_offset: U64,
    /// Byte offset of the page in its file.
    pub file_offset: U64,
    /// Index of the disk in the metadata `pbr.seals`.
    pub disk: U32,
    /// Bytes of the page read from the disk.
    pub length: U32,
    /// crc32 of the page as captured.
    pub crc32: U32,
    /// Heap offset of the file's path.
    pub path_off: U32,
    /// Length of the path.
    pub path_len: U32,
    /// Reserved.
    pub reserved: U32,
}
const _: () = assert!(size_of::<DiskRefRecord>() == 48);

/// A `BASE` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/diff.pbr");
/// let diff = pbr_format::Image::open(path)?;
/// let s = diff.sections().iter().find(|s| s.name() == "BASE").unwrap();
/// let body = &diff.as_bytes()[s.offset as usize + 8..];
/// let (b, _) = pbr_format::pod::BaseRecord::read_from_prefix(body).unwrap();
/// assert_eq!(b.base_blake3, diff.base().unwrap().blake3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BaseRecord {
    /// Content hash of the base image.
    pub base_blake3: [u8; 32],
    /// Content hash of the image this diff rebuilds, all zero if unknown.
    pub result_blake3: [u8; 32],
    /// Page size of the base.
    pub page_size: U32,
    /// Reserved.
    pub reserved: U32,
    /// Name hint offset in the heap.
    pub name_off: U32,
    /// Name hint length.
    pub name_len: U32,
}
const _: () = assert!(size_of::<BaseRecord>() == 80);

/// Header of every `VCPUS` record.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "VCPUS").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8..];
/// let (h, _) = pbr_format::pod::VcpuHeader::read_from_prefix(body).unwrap();
/// assert_eq!(h.arch.get(), 1); // x86-64
/// assert_eq!(h.id.get(), image.vcpus()[0].id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct VcpuHeader {
    /// Architecture tag.
    pub arch: U32,
    /// vCPU index.
    pub id: U32,
    /// Whole record length.
    pub length: U32,
    /// Validity flags.
    pub flags: U32,
}
const _: () = assert!(size_of::<VcpuHeader>() == 16);

/// Linux `struct kvm_regs`.
///
/// # Example
/// ```
/// let mut regs = pbr_format::pod::KvmRegs::default();
/// regs.rip.set(0xffff_ffff_8100_0000);
/// regs.gpr[0].set(1); // rax
/// assert_eq!(zerocopy::IntoBytes::as_bytes(&regs).len(), 144);
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KvmRegs {
    /// rax rbx rcx rdx rsi rdi rsp rbp r8..r15, in this order.
    pub gpr: [U64; 16],
    /// Instruction pointer.
    pub rip: U64,
    /// Flags.
    pub rflags: U64,
}
const _: () = assert!(size_of::<KvmRegs>() == 144);

/// Linux `struct kvm_segment`.
///
/// # Example
/// ```
/// let mut cs = pbr_format::pod::KvmSegment::default();
/// cs.selector.set(0x10);
/// (cs.type_, cs.s, cs.present, cs.l, cs.g) = (0xb, 1, 1, 1, 1); // 64-bit code
/// assert_eq!(zerocopy::IntoBytes::as_bytes(&cs).len(), 24);
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KvmSegment {
    /// Base address (hidden part).
    pub base: U64,
    /// Limit (hidden part).
    pub limit: U32,
    /// Selector.
    pub selector: U16,
    /// Type field of the descriptor.
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size.
    pub db: u8,
    /// Descriptor type (code/data vs system).
    pub s: u8,
    /// 64-bit code segment.
    pub l: u8,
    /// Granularity.
    pub g: u8,
    /// Available bit.
    pub avl: u8,
    /// Segment unusable.
    pub unusable: u8,
    /// Padding.
    pub padding: u8,
}
const _: () = assert!(size_of::<KvmSegment>() == 24);

/// Linux `struct kvm_dtable`.
///
/// # Example
/// ```
/// let mut gdt = pbr_format::pod::KvmDtable::default();
/// gdt.base.set(0xffff_fe00_0000_1000);
/// gdt.limit.set(0x7f);
/// assert_eq!(zerocopy::IntoBytes::as_bytes(&gdt).len(), 16);
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KvmDtable {
    /// Base address.
    pub base: U64,
    /// Limit.
    pub limit: U16,
    /// Padding.
    pub padding: [U16; 3],
}
const _: () = assert!(size_of::<KvmDtable>() == 16);

/// Linux `struct kvm_sregs`.
///
/// # Example
/// ```
/// let mut s = pbr_format::pod::KvmSregs::default();
/// s.cr0.set(0x8005_0033);
/// s.efer.set(0xd01);
/// assert_eq!(zerocopy::IntoBytes::as_bytes(&s).len(), 312);
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KvmSregs {
    /// Code segment.
    pub cs: KvmSegment,
    /// Data segment.
    pub ds: KvmSegment,
    /// Extra segment.
    pub es: KvmSegment,
    /// FS.
    pub fs: KvmSegment,
    /// GS.
    pub gs: KvmSegment,
    /// Stack segment.
    pub ss: KvmSegment,
    /// Task register.
    pub tr: KvmSegment,
    /// Local descriptor table.
    pub ldt: KvmSegment,
    /// Global descriptor table register.
    pub gdt: KvmDtable,
    /// Interrupt descriptor table register.
    pub idt: KvmDtable,
    /// CR0.
    pub cr0: U64,
    /// CR2.
    pub cr2: U64,
    /// CR3.
    pub cr3: U64,
    /// CR4.
    pub cr4: U64,
    /// CR8.
    pub cr8: U64,
    /// EFER.
    pub efer: U64,
    /// IA32_APIC_BASE.
    pub apic_base: U64,
    /// Pending external interrupts.
    pub interrupt_bitmap: [U64; 4],
}
const _: () = assert!(size_of::<KvmSregs>() == 312);

/// Linux `struct kvm_debugregs`.
///
/// # Example
/// ```
/// let mut d = pbr_format::pod::KvmDebugregs::default();
/// d.dr7.set(0x400);
/// assert_eq!(zerocopy::IntoBytes::as_bytes(&d).len(), 128);
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KvmDebugregs {
    /// DR0..DR3.
    pub db: [U64; 4],
    /// DR6.
    pub dr6: U64,
    /// DR7.
    pub dr7: U64,
    /// Flags.
    pub flags: U64,
    /// Reserved.
    pub reserved: [U64; 9],
}
const _: () = assert!(size_of::<KvmDebugregs>() == 128);

/// The fixed part of an x86-64 `VCPUS` record, after the record header.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s = image.sections().iter().find(|s| s.name() == "VCPUS").unwrap();
/// let body = &image.as_bytes()[s.offset as usize + 8 + 16..];
/// let (f, _) = pbr_format::pod::X86VcpuFixed::read_from_prefix(body).unwrap();
/// let pbr_format::Vcpu::X86_64(v) = &image.vcpus()[0] else { panic!() };
/// assert_eq!(f.regs, v.regs);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct X86VcpuFixed {
    /// General registers.
    pub regs: KvmRegs,
    /// Special registers.
    pub sregs: KvmSregs,
    /// Debug registers.
    pub debugregs: KvmDebugregs,
    /// `struct kvm_vcpu_events`, verbatim.
    pub events: [u8; 64],
    /// `struct kvm_lapic_state`, verbatim.
    pub lapic: [u8; 1024],
    /// Guest TSC.
    pub tsc: U64,
    /// TSC frequency in kHz.
    pub tsc_khz: U32,
    /// KVM multiprocessing state.
    pub mp_state: U32,
    /// XCR0.
    pub xcr0: U64,
    /// Number of MSR entries that follow.
    pub msr_count: U32,
    /// Length of the XSAVE area that follows the MSRs.
    pub xsave_len: U32,
}
const _: () = assert!(size_of::<X86VcpuFixed>() == 1720 - 16);

/// Linux `struct kvm_msr_entry`.
///
/// # Example
/// ```
/// let lstar = pbr_format::pod::MsrEntry::new(0xc000_0082, 0xffff_ffff_8200_0080);
/// let mut v = pbr_format::X86Vcpu::new(0);
/// v.msrs.push(lstar);
/// assert_eq!(v.msr(0xc000_0082), Some(0xffff_ffff_8200_0080));
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MsrEntry {
    /// MSR index.
    pub index: U32,
    /// Reserved.
    pub reserved: U32,
    /// Value.
    pub data: U64,
}
const _: () = assert!(size_of::<MsrEntry>() == 16);

impl MsrEntry {
    /// MSR `index` holding `data` (reserved zero).
    ///
    /// # Example
    /// ```
    /// let efer = pbr_format::pod::MsrEntry::new(0xc000_0080, 0xd01);
    /// assert_eq!((efer.index.get(), efer.reserved.get(), efer.data.get()), (0xc000_0080, 0, 0xd01));
    /// ```
    pub fn new(index: u32, data: u64) -> MsrEntry {
        MsrEntry { index: U32::new(index), reserved: U32::new(0), data: U64::new(data) }
    }
}
