//! The constants of the `xl save` format: the xl header, the libxl and
//! libxc stream identities, their limits, and the names of the blobs an
//! image keeps of a file.

/// The `xl save` file magic: the first 32 bytes of the xl header.
pub const XL_MAGIC: &[u8] = b"Xen saved domain, xl format\n \0 \r";
/// `LibxlFmt`, the libxl stream header's ident (big-endian).
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
/// The libxc image header's marker.
pub const LIBXC_MARKER: u64 = u64::MAX;
/// `XENF`, the libxc image header's id (big-endian).
pub const LIBXC_IDENT: u32 = 0x5845_4e46;
/// The xl header's byte-order marker, as a little-endian host writes it.
pub const BYTE_ORDER_LE: [u8; 4] = [4, 3, 2, 1];
/// libxc's cap on a record body (`REC_LENGTH_MAX`).
pub const REC_LENGTH_MAX: u32 = 128 << 20;
/// Cap on a libxl record body (libxl itself has none).
pub const LIBXL_RECORD_MAX: u32 = 256 << 20;
/// Cap on the xl header's optional data (the domain configuration).
pub const OPTIONAL_DATA_MAX: u32 = 16 << 20;
/// libxc domain types.
pub const DOMAIN_PV: u32 = 1;
/// libxc domain type of HVM and PVH guests.
pub const DOMAIN_HVM: u32 = 2;
/// The xl mandatory flags: JSON config, libxl v2 stream.
pub const XL_FLAG_JSON: u32 = 1;
/// A libxl v2 stream follows the header.
pub const XL_FLAG_STREAM_V2: u32 = 2;
pub(crate) const PAGE: usize = 4096;

/// Names of the blobs that are not records.
pub mod blob {
    /// The xl header and its optional data, verbatim (origin xen-libxl).
    pub const XL_HEADER: &str = "xl-header";
    /// The 16-byte libxl stream header (origin xen-libxl).
    pub const LIBXL_HEADER: &str = "libxl-header";
    /// The libxc image and domain headers, 40 bytes (origin xen-libxc).
    pub const LIBXC_HEADER: &str = "libxc-header";
    /// Bytes after the libxl END record (origin xen-libxl).
    pub const TRAILING: &str = "trailing-bytes";
}
