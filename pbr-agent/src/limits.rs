//! The protocol's bounds on fields inside payloads (`spec/agent.md` §2-4),
//! below every layer that checks them: frames size a `RESUME` by
//! [`MAX_ENTROPY`], the cache codec and the messages bound strings by
//! [`MAX_STRING`].

/// Most entropy bytes a `RESUME` carries after its time.
pub const MAX_ENTROPY: usize = 512;
/// Fewest entropy bytes a `RESUME` carries after its time.
pub const MIN_ENTROPY: usize = 32;
/// Most mounts a `POINT` lists.
pub const MAX_MOUNTS: usize = 256;
/// Longest string field (a path, a mount's field), in bytes.
pub const MAX_STRING: usize = 4096;
/// Most units a `CHECKPOINT` asks for and a `CHECKPOINTED` reports on
/// (`spec/format.md` §8: a `PROCESSES` section holds at most 64).
pub const MAX_UNITS: usize = 64;
/// Longest unit name (a systemd service).
pub const MAX_UNIT_NAME: usize = 255;
/// Longest CRIU image file name.
pub const MAX_FILE_NAME: usize = 64;
/// Longest kernel release or CRIU version.
pub const MAX_RELEASE: usize = 64;
