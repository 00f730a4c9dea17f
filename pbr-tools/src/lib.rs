//! `pbr-tools`: converters and operations over `.pbr` restartable images:
//! QEMU, xl and libvirt streams in and out, trim, pack, diff, classify,
//! manifests, disk seals and page-cache refill. The `pbr-img` command line
//! is a thin shell over these calls.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod apply;
pub mod classify;
pub mod cleanup;
pub mod compat;
pub mod convert;
pub mod criu;
pub mod diff;
pub mod error;
pub mod export;
pub mod extract;
pub mod flat;
pub mod holes;
pub mod libvirt;
pub mod manifest;
pub mod output;
pub mod pack;
pub mod qemu;
pub mod refill;
pub mod rewrite;
pub mod seal;
pub mod stream;
pub mod time;
pub mod trim;
pub mod vcpu_state;
pub mod writer;
pub mod xen;

pub use error::{Error, Result};
