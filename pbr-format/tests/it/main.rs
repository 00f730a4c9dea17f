//! The end-to-end tests of `pbr-format`: one test binary, since each one
//! links the crate again. `tests/memory.rs` stays apart: it counts the
//! allocations of its whole process.

mod common;

mod corruption;
mod damaged_pages;
mod disk_refs;
mod golden;
mod hostile;
mod processes;
mod round_trip;
mod sample;
mod vm_memory;
