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
