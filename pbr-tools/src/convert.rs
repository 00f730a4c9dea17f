//! Format detection for `convert`: by magic, never by file name. The one
//! place that tells a QEMU migration stream, a libvirt save file, an
//! `xl save` file and a `.pbr` image apart; the importers below it
//! (`qemu`, `libvirt`, `xen`) each read one format.

use std::io::{Chain, Cursor, Read};

use crate::error::{Error, Result};

/// The `xl save` file magic ([`crate::xen::XL_MAGIC`]).
pub use crate::xen::XL_MAGIC;

/// Bytes read from the start of an input to find its format: enough for
/// every magic above.
pub const HEAD_LEN: u64 = 64;

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

/// Detects the format from the first bytes of the input (at least 32).
pub fn detect(head: &[u8]) -> Option<InputFormat> {
    use crate::libvirt::header::{MAGIC as LIBVIRT, PARTIAL_MAGIC as LIBVIRT_PARTIAL};
    if head.starts_with(&crate::qemu::MAGIC) {
        Some(InputFormat::Qemu)
    } else if head.starts_with(XL_MAGIC) {
        Some(InputFormat::Xl)
    } else if head.starts_with(LIBVIRT) || head.starts_with(LIBVIRT_PARTIAL) {
        Some(InputFormat::Libvirt)
    } else if head.starts_with(&pbr_format::pod::MAGIC) {
        Some(InputFormat::Pbr)
    } else {
        None
    }
}

/// The whole of an input again after its head was read to detect it: the
/// bytes read, then the rest.
pub type Rewound<R> = Chain<Cursor<Vec<u8>>, R>;

/// Reads the first [`HEAD_LEN`] bytes of `input` (a file or a pipe) and
/// detects its format. Returns the format and a reader of the whole input
/// again: the bytes read, then the rest. `name` names the input in the
/// error.
///
/// # Errors
/// An input of no known magic ([`Error::Usage`]); I/O.
pub fn detect_input<R: Read>(mut input: R, name: &str) -> Result<(InputFormat, Rewound<R>)> {
    let mut head = Vec::with_capacity(HEAD_LEN as usize);
    (&mut input).take(HEAD_LEN).read_to_end(&mut head).map_err(|e| Error::io("cannot read the input", e))?;
    let format = detect(&head).ok_or_else(|| {
        Error::Usage(format!("{name}: not a QEMU migration stream, libvirt save file or xl save file (unknown magic)"))
    })?;
    Ok((format, Cursor::new(head).chain(input)))
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

    #[test]
    fn detect_input_gives_back_every_byte() {
        let mut input = b"QEVM\0\0\0\x03".to_vec();
        input.extend((0..200u8).cycle().take(1000));
        let (format, mut r) = detect_input(&input[..], "x").unwrap();
        assert_eq!(format, InputFormat::Qemu);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn detect_input_names_an_unknown_input() {
        let e = detect_input(&b"\x7fELF"[..], "/bin/true").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "/bin/true: not a QEMU migration stream, libvirt save file or xl save file (unknown magic)"
        );
    }
}
