//! Candidates for a fleet: pbr images stored once in an S3-compatible
//! object store, shared across VMs, restored on a host that holds none of
//! them.
//!
//! An image is stored as a small index object ([`mod@index`]: everything but
//! its pages, and its page runs) naming content-addressed chunks of its
//! pages ([`chunk`]); a chunk already in the store is not uploaded again,
//! so the candidates of many VMs booted from one image share most of
//! theirs. Every chunk is checked against its name when it is read, from
//! the store or from the local cache ([`cache`]): a missing or damaged
//! chunk refuses the image. [`push()`], [`pull()`], [`list`] and [`gc`]
//! are what `pbr-img push`, `pull`, `ls` and `gc` do. An image is also
//! restored as it runs ([`lazy`]): its RAM block served by a FUSE mount
//! ([`mount`]) that fetches each page when the guest first touches it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod cache;
pub mod chunk;
pub mod config;
pub mod error;
mod gc;
pub mod index;
pub mod lazy;
pub mod location;
pub mod mount;
pub mod pages;
mod pull;
mod push;
pub mod store;

pub use config::Config;
pub use error::{Error, Result};
pub use gc::{GcReport, Stored, Usage, gc, list, usage};
pub use location::{Location, is_s3};
pub use pull::{PullReport, fetch, index, pull};
pub use push::{PushOptions, PushReport, index_key, push};
pub use store::Store;
