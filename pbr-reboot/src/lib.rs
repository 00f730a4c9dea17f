//! Phase-based reboot end to end: capture restartable candidates at a
//! guest's boot phases ([`capture()`]) or its agent's points
//! ([`points::capture_points`]), and recover from the latest valid one
//! ([`recover()`]), or boot from scratch ([`boot`](mod@boot)).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod agent;
mod backoff;
mod beside;
pub mod boot;
pub mod capture;
pub mod control;
pub mod error;
pub mod fleet;
pub mod guest;
pub mod machine;
pub mod points;
mod ready;
pub mod recover;
pub mod recovery;
pub mod resident;
pub mod run;
pub mod select;
pub mod service;
mod standby;
pub mod update;
mod updating;
pub mod vmm;

pub use boot::{boot_points, cold_boot};
pub use capture::{CACHE_KEY, Candidate, CaptureOptions, KERNEL_PAGES_KEY, capture};
pub use error::{Error, Result};
pub use recover::{RecoverOptions, recover};
pub use recovery::{Recovery, Refused};
pub use select::phase_order;
pub use vmm::Vmm;
