//! The constants of the QEMU migration stream format: its magic, version,
//! section types, and the names of the blobs an image keeps of a stream.

/// First four bytes of a QEMU migration stream.
pub const MAGIC: [u8; 4] = *b"QEVM";
/// The only stream version QEMU still reads.
pub const VERSION: u32 = 3;
/// x86 target page size.
pub(crate) const PAGE_SIZE: u64 = 4096;

/// Section type bytes (`migration/savevm.h`).
pub mod section {
    /// End of device state.
    pub const EOF: u8 = 0x00;
    /// First part of an iterative section.
    pub const START: u8 = 0x01;
    /// Middle part of an iterative section.
    pub const PART: u8 = 0x02;
    /// Last part of an iterative section.
    pub const END: u8 = 0x03;
    /// A whole device section.
    pub const FULL: u8 = 0x04;
    /// The JSON description after EOF.
    pub const VMDESCRIPTION: u8 = 0x06;
    /// The configuration section.
    pub const CONFIGURATION: u8 = 0x07;
    /// A command.
    pub const COMMAND: u8 = 0x08;
    /// The footer after each section.
    pub const FOOTER: u8 = 0x7e;
}

/// Names of the stream-level blobs kept in the image.
pub mod blob {
    /// The configuration section body.
    pub const CONFIGURATION: &str = "configuration";
    /// The shape of one RAM section ([`crate::qemu::plan::RamSection`]).
    pub const RAM: &str = "ram";
    /// A command's payload; flags hold the command number.
    pub const COMMAND: &str = "command";
    /// The end of device state.
    pub const EOF: &str = "eof";
    /// Device sections that could not be split (no vmdescription, no
    /// footers), kept whole.
    pub const DEVICE_STATE: &str = "device-state";
    /// The vmdescription JSON.
    pub const VMDESCRIPTION: &str = "vmdescription";
    /// Flag of a ram blob: the section had a footer.
    pub const RAM_FOOTER: u32 = 1;
}
