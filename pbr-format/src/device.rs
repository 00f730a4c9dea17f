//! Opaque device-state blobs tagged by origin (`spec/format.md` §7.3).

use std::borrow::Cow;
use std::fmt;

/// Where a device-state blob came from.
///
/// # Example
/// ```
/// use pbr_format::DeviceOrigin;
/// assert_eq!(DeviceOrigin::QEMU_SECTION.to_string(), "qemu-section");
/// assert_eq!(DeviceOrigin(99).to_string(), "unknown(99)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceOrigin(pub u32);

impl DeviceOrigin {
    /// One QEMU vmstate section.
    pub const QEMU_SECTION: DeviceOrigin = DeviceOrigin(1);
    /// A QEMU stream record that is not a device section.
    pub const QEMU_STREAM: DeviceOrigin = DeviceOrigin(2);
    /// One Xen HVM context record.
    pub const XEN_HVM: DeviceOrigin = DeviceOrigin(3);
    /// One Xen libxl record.
    pub const XEN_LIBXL: DeviceOrigin = DeviceOrigin(4);
    /// One Xen libxc record.
    pub const XEN_LIBXC: DeviceOrigin = DeviceOrigin(5);
    /// Defined by the VMM that wrote the image.
    pub const VMM: DeviceOrigin = DeviceOrigin(6);
    /// A libvirt save file's header and domain XML (`spec/libvirt.md`).
    pub const LIBVIRT: DeviceOrigin = DeviceOrigin(7);

    /// A short name for display.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::DeviceOrigin::XEN_HVM.name(), "xen-hvm");
    /// ```
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "qemu-section",
            2 => "qemu-stream",
            3 => "xen-hvm",
            4 => "xen-libxl",
            5 => "xen-libxc",
            6 => "vmm",
            7 => "libvirt",
            _ => "unknown",
        }
    }
}

impl fmt::Display for DeviceOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "unknown({})", self.0),
            n => f.write_str(n),
        }
    }
}

/// One opaque device-state blob.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let d = image.devices().next().unwrap();
/// println!("{} '{}' instance {} v{}: {} bytes", d.origin, d.name, d.instance, d.version, d.data.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBlob<'a> {
    /// Origin tag.
    pub origin: DeviceOrigin,
    /// Name, such as a QEMU section id string.
    pub name: Cow<'a, str>,
    /// Instance number.
    pub instance: u32,
    /// Version.
    pub version: u32,
    /// Origin-defined flags.
    pub flags: u32,
    /// The bytes.
    pub data: Cow<'a, [u8]>,
}
