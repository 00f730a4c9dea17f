//! Format detection for `convert`: by magic, never by file name.

/// What an input file is, judged by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// A QEMU migration stream (`QEVM`).
    Qemu,
    /// An `xl save` file.
    Xl,
    /// A libvirt QEMU save file (`virsh save`), complete or partial.
    Libvirt,
    /// Already a `.pbr` image.
    Pbr,
}

/// Writer options of an image a converter writes: `pbr-img` as producer,
/// a blake3 per page when asked, fsync unless the output is scratch.
pub fn writer_options(page_hashes: bool, sync: bool) -> pbr_format::WriterOptions {
    pbr_format::WriterOptions {
        producer_name: "pbr-img".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        page_hashes,
        sync,
        ..pbr_format::WriterOptions::default()
    }
}

/// The `xl save` file magic.
pub const XL_MAGIC: &[u8] = b"Xen saved domain, xl format\n \0 \r";

/// Detects the format from the first bytes of the input (at least 32).
pub fn detect(head: &[u8]) -> Option<InputFormat> {
    if head.starts_with(&crate::qemu::MAGIC) {
        Some(InputFormat::Qemu)
    } else if head.starts_with(XL_MAGIC) {
        Some(InputFormat::Xl)
    } else if head.starts_with(crate::libvirt::header::MAGIC) || head.starts_with(crate::libvirt::header::PARTIAL_MAGIC)
    {
        Some(InputFormat::Libvirt)
    } else if head.starts_with(&pbr_format::pod::MAGIC) {
        Some(InputFormat::Pbr)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(b"QEVM\0\0\0\x03"), Some(InputFormat::Qemu));
        assert_eq!(detect(XL_MAGIC), Some(InputFormat::Xl));
        assert_eq!(detect(b"LibvirtQemudSave\x02"), Some(InputFormat::Libvirt));
        assert_eq!(detect(b"LibvirtQemudPart\x02"), Some(InputFormat::Libvirt));
        assert_eq!(detect(b"\x89PBR\r\n\x1a\n"), Some(InputFormat::Pbr));
        assert_eq!(detect(b"ELF"), None);
    }
}
