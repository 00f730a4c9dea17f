//! `pbr-tools`: converters and tools over `.pbr` restartable images, and the
//! `pbr-img` command line.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod apply;
pub mod classify;
pub mod cleanup;
pub mod convert;
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
pub mod phase;
pub mod progress;
pub mod qemu;
pub mod refill;
pub mod replay;
pub mod rewrite;
pub mod time;
pub mod trim;
pub mod vcpu_state;
pub mod xen;

pub use error::{Error, Result};
