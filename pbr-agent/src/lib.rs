//! The pbr guest agent's protocol (`spec/agent.md`), shared by the guest
//! binary and the host.
//!
//! The guest announces restartable points over a virtio-serial port; the
//! host saves the machine, then tells the guest to carry on, or, in a
//! restored copy, to step its clock and reseed its random generator first.
//! Everything read from the other side is bounded before it is allocated
//! and checked before it is used: [`frame`] reads frames, [`message`]
//! turns them into typed messages (the page-cache payload through
//! [`cache`], a checkpoint for a kernel update through [`checkpoint`], its restore
//! on the new kernel through [`restore`]);
//! the bounds they all check are in [`limits`].

pub mod cache;
pub mod checkpoint;
mod fields;
pub mod frame;
pub mod limits;
pub mod message;
pub mod restore;

pub use cache::{CachedFile, CachedPage};
pub use checkpoint::{Checkpoint, Checkpointed, ProcessFile, UnitOutcome};
pub use frame::{Frame, FrameError, Kind};
pub use message::{Disk, Message, MessageError, Mount, Point, Ready, Resume, Resumed};
pub use restore::{Restore, RestoreOutcome, Restored};

/// The name of the virtio-serial port (`-device virtserialport,name=...`).
pub const PORT_NAME: &str = "org.pbr.agent.0";
