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
