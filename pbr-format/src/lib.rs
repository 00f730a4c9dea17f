//! `pbr-format`: the `.pbr` restartable VM image format.
//!
//! A `.pbr` file is one VM snapshot taken at a boot-phase boundary: guest
//! memory with a class (free, cache, kernel, user, unknown) and an encoding
//! (raw, zero, lz4, trimmed, base, dup) for every page, vCPU state laid out
//! like KVM's structures, opaque device-state blobs, a phase tag and a
//! manifest of the files the guest had read. The byte layout is specified
//! in `spec/format.md`.
//!
//! - [`Image`] maps a file and checks its structure in time proportional to
//!   its index; raw pages are borrowed from the map with no copy, and
//!   [`Image::verify`] checks every byte.
//! - [`ImageWriter`] streams an image from pages given in any order and
//!   publishes it atomically.
//! - [`Image::processes`] views the processes checkpointed from a guest
//!   with CRIU for a kernel update (format 1.2), each CRIU image file
//!   handed out only once it matches its crc32; [`ProcessesBuilder`]
//!   writes them.
//!
//! ```
//! use pbr_format::{Image, ImageWriter, PageClass, Phase, Region, WriterOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("kernel.pbr");
//! let mut w = ImageWriter::create(&path, &[Region::ram("pc.ram", 0, 64 * 4096)], WriterOptions::default())?;
//! w.set_phase(Phase::named("kernel", 1))?;
//! for gfn in 0..8 {
//!     w.write_page(gfn, &[gfn as u8 + 1; 4096], PageClass::Kernel)?;
//! }
//! w.finish()?;
//!
//! let image = Image::open(&path)?;
//! assert_eq!(image.phase().unwrap().name, "kernel");
//! // Raw runs can be mapped MAP_PRIVATE as guest memory, once checked.
//! let run = image.raw_runs()[0];
//! assert_eq!((run.gfn, run.pages), (0, 8));
//! image.check_run(&run)?;
//! let mut buf = vec![0u8; 4096];
//! assert_eq!(image.read_page(5, &mut buf)?[0], 6);
//! image.verify()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_errors_doc, clippy::missing_panics_doc)]

mod base;
mod device;
mod error;
mod file_kind;
#[cfg(feature = "kvm")]
pub mod kvm;
pub mod limits;
mod manifest;
mod metadata;
mod page;
mod phase;
pub mod pod;
mod processes;
pub mod read;
mod refill;
mod region;
mod section;
pub mod select;
pub mod vcpu;
#[cfg(feature = "vm-memory")]
pub mod vm_memory;
pub mod write;

pub use base::BaseRef;
pub use device::{DeviceBlob, DeviceOrigin};
pub use error::{Error, ErrorKind, Result};
pub use manifest::{CacheRef, FileEntry, check_path};
pub use metadata::{check_key, keys};
pub use page::{PageClass, PageEncoding, is_zero, zero_page_crc};
pub use phase::{Phase, WELL_KNOWN_PHASES};
pub use processes::{ProcessBlob, ProcessUnit, Processes, check_blob_name, check_unit_name};
pub use read::{CheckReport, ContentHasher, Extent, HeaderInfo, Image, RawRun, SectionInfo, VerifyReport};
pub use refill::{DiskRef, DiskRefs};
pub use region::Region;
pub use section::SectionKind;
pub use vcpu::{EVENTS_SIZE, LAPIC_SIZE, Vcpu, X86Vcpu};
pub use write::{ImageWriter, ProcessesBuilder, WriteReport, WriterOptions};
