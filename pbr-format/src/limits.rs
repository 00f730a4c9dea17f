//! Named caps from `spec/format.md` §8, checked before anything is allocated.

/// Section table entries.
pub const MAX_SECTIONS: u32 = 64;
/// Regions.
pub const MAX_REGIONS: u32 = 4096;
/// vCPU records.
pub const MAX_VCPUS: u32 = 4096;
/// MSR entries per vCPU.
pub const MAX_MSRS: u32 = 4096;
/// XSAVE area bytes per vCPU.
pub const MAX_XSAVE: u32 = 1 << 20;
/// Region and phase names, metadata keys.
pub const MAX_NAME: u32 = 255;
/// Manifest paths and device names.
pub const MAX_PATH: u32 = 4096;
/// Page sizes the format allows.
pub const PAGE_SIZES: [u32; 2] = [4096, 2 << 20];
/// Units of a `PROCESSES` section.
pub const MAX_PROCESS_UNITS: u32 = 64;
/// Blobs (CRIU image files) of a `PROCESSES` section.
pub const MAX_PROCESS_BLOBS: u32 = 4096;
/// Bytes of all the blobs of a `PROCESSES` section together.
pub const MAX_PROCESS_BYTES: u64 = 1 << 30;
/// A blob's name (a CRIU image file name).
pub const MAX_BLOB_NAME: u32 = 64;
/// The kernel release and the CRIU version of a `PROCESSES` section.
pub const MAX_RELEASE: u32 = 64;
