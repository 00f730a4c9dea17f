//! QEMU migration streams (`QEVM` version 3, as QEMU 7.2 to 10.x write
//! them): import into `.pbr` and export back.
//!
//! Import reads forward only, so it works on pipes: RAM pages go straight to
//! the image writer; only the device sections after the RAM (a few hundred
//! KiB) and the trailing vmdescription are held in memory, so the JSON can
//! split the sections exactly.

pub mod config;
pub mod cpu;
pub mod devices;
pub mod export;
mod format;
mod import;
pub mod plan;
pub mod ram;
mod sections;
pub mod vmdesc;

pub use format::{MAGIC, VERSION, blob, section};
pub use import::{ConvertOptions, ConvertReport, convert};
pub use sections::{device_section_names, full_header_len, section_body};
