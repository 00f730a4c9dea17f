//! Processes checkpointed from a guest with CRIU for a kernel update
//! (`spec/format.md` §7.9): the `PROCESSES` section's raw structures
//! (`pod`), what its names may hold (`names`) and its checked, zero-copy
//! view (`read`). The writer's side is [`crate::write::ProcessesBuilder`].

pub(crate) mod names;
pub(crate) mod pod;
mod read;

pub use names::{check_blob_name, check_unit_name};
pub use read::{ProcessBlob, ProcessUnit, Processes};

#[cfg(test)]
mod tests;
