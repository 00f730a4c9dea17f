//! `pbr-tools`: converters and tools over `.pbr` restartable images, and the
//! `pbr-img` command line.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod convert;
pub mod error;
pub mod export;
pub mod output;
pub mod progress;
pub mod qemu;

pub use error::{Error, Result};
