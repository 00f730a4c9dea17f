//! The phase tag: which restartable point an image is (`spec/format.md` §7.1).

use std::borrow::Cow;

/// Well-known phase names, in boot order.
pub const WELL_KNOWN_PHASES: [&str; 4] = ["firmware", "kernel", "daemons", "service"];

/// Which restartable point of a boot an image holds.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let p: &pbr_format::Phase = image.phase().unwrap();
/// println!("{} (#{}), {} ms after power-on", p.name, p.sequence, p.since_boot_ns / 1_000_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    ///
    /// # Example
    /// ```
    /// let p = pbr_format::Phase::named("kernel", 1);
    /// assert!(p.is_well_known());
    /// assert_eq!(p.since_boot_ns, 0);
    /// ```
    pub fn named(name: &str, sequence: u32) -> Phase<'static> {
        Phase { name: Cow::Owned(name.to_owned()), sequence, since_boot_ns: 0, captured_unix_ns: 0 }
    }

    /// Whether the name is one of [`WELL_KNOWN_PHASES`].
    ///
    /// # Example
    /// ```
    /// use pbr_format::Phase;
    /// assert!(Phase::named("daemons", 2).is_well_known());
    /// assert!(!Phase::named("after-login", 3).is_well_known());
    /// ```
    pub fn is_well_known(&self) -> bool {
        WELL_KNOWN_PHASES.contains(&self.name.as_ref())
    }

    /// An owned copy.
    ///
    /// # Example
    /// ```
    /// let name = String::from("service");
    /// let p = pbr_format::Phase::named(&name, 3).into_owned();
    /// drop(name);
    /// assert_eq!(p.name, "service");
    /// ```
    pub fn into_owned(self) -> Phase<'static> {
        Phase { name: Cow::Owned(self.name.into_owned()), ..self }
    }
}
