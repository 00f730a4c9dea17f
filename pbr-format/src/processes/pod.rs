//! The raw structures of a `PROCESSES` section (`spec/format.md` §7.9),
//! exactly as laid out on disk; [`crate::pod`] re-exports them.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The 48-byte head of a `PROCESSES` section.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// use pbr_format::ProcessesBuilder;
/// let mut b = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// b.add_unit("nginx.service")?;
/// let bytes = b.to_bytes()?;
/// let (h, _) = pbr_format::pod::ProcessesHeader::read_from_prefix(&bytes[..]).unwrap();
/// assert_eq!((h.unit_count.get(), h.blob_count.get()), (1, 0));
/// assert_eq!(h.index_crc32.get(), crc32fast::hash(&bytes[4..]));
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ProcessesHeader {
    /// crc32 of the section's bytes from offset 4 to the end of the string
    /// area.
    pub index_crc32: U32,
    /// Unit records.
    pub unit_count: U32,
    /// Bytes per unit record.
    pub unit_record_size: U32,
    /// Blob records.
    pub blob_count: U32,
    /// Bytes per blob record.
    pub blob_record_size: U32,
    /// Bytes of the string area.
    pub strings_len: U32,
    /// Offset of the kernel release in the string area.
    pub kernel_off: U32,
    /// Length of the kernel release.
    pub kernel_len: U32,
    /// Offset of the CRIU version in the string area.
    pub criu_off: U32,
    /// Length of the CRIU version.
    pub criu_len: U32,
    /// Reserved.
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<ProcessesHeader>() == 48);

/// A `PROCESSES` unit record: one systemd unit.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// use pbr_format::ProcessesBuilder;
/// let mut b = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// b.add_unit("nginx.service")?;
/// let bytes = b.to_bytes()?;
/// let (u, _) = pbr_format::pod::ProcessUnitRecord::read_from_prefix(&bytes[48..]).unwrap();
/// assert_eq!(u.name_len.get(), 13);
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ProcessUnitRecord {
    /// Offset of the unit name in the string area.
    pub name_off: U32,
    /// Length of the unit name.
    pub name_len: U32,
    /// Reserved.
    pub reserved: [u8; 8],
}
const _: () = assert!(size_of::<ProcessUnitRecord>() == 16);

/// A `PROCESSES` blob record: one CRIU image file of one unit.
///
/// # Example
/// ```
/// use zerocopy::FromBytes;
/// use pbr_format::ProcessesBuilder;
/// let mut b = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// let unit = b.add_unit("nginx.service")?;
/// b.add_blob(unit, "inventory.img", b"\x16\x31\x31\x58".to_vec())?;
/// let bytes = b.to_bytes()?;
/// let (r, _) = pbr_format::pod::ProcessBlobRecord::read_from_prefix(&bytes[48 + 16..]).unwrap();
/// assert_eq!((r.unit.get(), r.data_len.get()), (0, 4));
/// assert_eq!(r.crc32.get(), crc32fast::hash(b"\x16\x31\x31\x58"));
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ProcessBlobRecord {
    /// Index of the unit record the blob belongs to.
    pub unit: U32,
    /// Offset of the blob name in the string area.
    pub name_off: U32,
    /// Length of the blob name.
    pub name_len: U32,
    /// crc32 of the blob's bytes.
    pub crc32: U32,
    /// Offset of the bytes in the data area.
    pub data_off: U64,
    /// Length of the bytes.
    pub data_len: U64,
}
const _: () = assert!(size_of::<ProcessBlobRecord>() == 32);
