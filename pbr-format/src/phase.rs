//! The phase tag: which restartable point an image is (`spec/format.md` §7.1).

use std::borrow::Cow;

/// Well-known phase names, in boot order.
pub const WELL_KNOWN_PHASES: [&str; 4] = ["firmware", "kernel", "daemons", "service"];

/// Which restartable point of a boot an image holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase<'a> {
    /// Name: a well-known one or free-form.
    pub name: Cow<'a, str>,
    /// Position of the phase in its boot, from 0.
    pub sequence: u32,
    /// Nanoseconds from boot start to the capture.
    pub since_boot_ns: u64,
    /// Wall-clock capture time in nanoseconds since the epoch, 0 = unknown.
    pub captured_unix_ns: u64,
}

impl Phase<'_> {
    /// A phase named `name` at `sequence`, with no times recorded.
    pub fn named(name: &str, sequence: u32) -> Phase<'static> {
        Phase { name: Cow::Owned(name.to_owned()), sequence, since_boot_ns: 0, captured_unix_ns: 0 }
    }

    /// Whether the name is one of [`WELL_KNOWN_PHASES`].
    pub fn is_well_known(&self) -> bool {
        WELL_KNOWN_PHASES.contains(&self.name.as_ref())
    }

    /// An owned copy.
    pub fn into_owned(self) -> Phase<'static> {
        Phase { name: Cow::Owned(self.name.into_owned()), ..self }
    }
}
