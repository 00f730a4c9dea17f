//! The header of a libvirt QEMU save file (`spec/libvirt.md`): 92 bytes,
//! host byte order (little-endian on x86), then the domain XML and the
//! cookie, then QEMU's migration stream, raw or compressed.

use crate::error::{Error, Result};

/// The magic of a complete save file.
pub const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// The magic libvirt writes first and replaces when the save completes.
pub const PARTIAL_MAGIC: &[u8; 16] = b"LibvirtQemudPart";
/// Header length: magic, 5 fields, 14 unused words.
pub const HEADER_LEN: usize = 16 + 4 * 5 + 4 * 14;
/// Largest XML and cookie area accepted (libvirt's own XML limit is 10 MB).
pub const MAX_DATA_LEN: u32 = 16 << 20;

/// How the QEMU stream after the XML is compressed (libvirt's
/// `virQEMUSaveFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw.
    Raw,
    /// gzip.
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz.
    Xz,
    /// lzop.
    Lzop,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The value of the header's `compressed` field.
    pub fn code(self) -> u32 {
        match self {
            Compression::Raw => 0,
            Compression::Gzip => 1,
            Compression::Bzip2 => 2,
            Compression::Xz => 3,
            Compression::Lzop => 4,
            Compression::Zstd => 5,
        }
    }

    /// The format for a `compressed` field value.
    pub fn from_code(code: u32) -> Option<Compression> {
        [Compression::Raw, Compression::Gzip, Compression::Bzip2, Compression::Xz, Compression::Lzop, Compression::Zstd]
            .into_iter()
            .find(|c| c.code() == code)
    }

    /// libvirt's name (`save_image_format` in `qemu.conf`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Raw => "raw",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzop => "lzop",
            Compression::Zstd => "zstd",
        }
    }
}

/// The parsed header and the XML area after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version: 1 (no compression) or 2.
    pub version: u32,
    /// Length of the XML and cookie area after the header.
    pub data_len: u32,
    /// Whether the domain was running when saved (1) or paused (0).
    pub was_running: u32,
    /// The stream's compression.
    pub compressed: Compression,
    /// Offset of the cookie in the XML area (0: none).
    pub cookie_offset: u32,
    /// The domain XML.
    pub xml: String,
    /// The cookie (CPU model and more), when present.
    pub cookie: Option<String>,
}

fn err(offset: u64, msg: impl Into<String>) -> Error {
    Error::Parse { format: "libvirt", offset, msg: msg.into() }
}

fn word(b: &[u8], i: usize) -> u32 {
    let at = 16 + 4 * i;
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The NUL-terminated UTF-8 text at the start of `area`.
fn text(area: &[u8], at: u64, what: &str) -> Result<String> {
    let end = area.iter().position(|&b| b == 0).ok_or_else(|| err(at, format!("the {what} is not NUL-terminated")))?;
    String::from_utf8(area[..end].to_vec())
        .map_err(|e| err(at + e.utf8_error().valid_up_to() as u64, format!("the {what} is not UTF-8")))
}

impl Header {
    /// Checks the fixed 92 bytes; returns the area length to read next.
    ///
    /// # Errors
    /// Not a libvirt save file, a partial one, or fields out of range.
    pub fn check_fixed(b: &[u8; HEADER_LEN]) -> Result<u32> {
        if b[..16] == PARTIAL_MAGIC[..] {
            return Err(err(0, "a partial libvirt save (LibvirtQemudPart): libvirt never finished writing it"));
        }
        if b[..16] != MAGIC[..] {
            return Err(err(0, "not a libvirt save file (magic)"));
        }
        let version = word(b, 0);
        if !(1..=2).contains(&version) {
            return Err(err(16, format!("save format version {version}: versions 1 and 2 are known")));
        }
        let data_len = word(b, 1);
        if data_len == 0 || data_len > MAX_DATA_LEN {
            return Err(err(20, format!("XML area of {data_len} bytes (1 to {MAX_DATA_LEN} accepted)")));
        }
        if word(b, 2) > 1 {
            return Err(err(24, format!("was_running is {}, not 0 or 1", word(b, 2))));
        }
        if Compression::from_code(word(b, 3)).is_none() || (version == 1 && word(b, 3) != 0) {
            return Err(err(28, format!("unknown compression {} (0 raw .. 5 zstd)", word(b, 3))));
        }
        if word(b, 4) >= data_len {
            return Err(err(32, format!("cookie offset {} beyond the {data_len}-byte XML area", word(b, 4))));
        }
        if let Some(i) = (5..19).find(|&i| word(b, i) != 0) {
            return Err(err(16 + 4 * i as u64, "unused header words are not zero"));
        }
        Ok(data_len)
    }

    /// Parses the fixed header `b` and the XML area `area` after it.
    ///
    /// # Errors
    /// As [`Header::check_fixed`]; an XML or cookie without its NUL or not
    /// UTF-8.
    pub fn parse(b: &[u8; HEADER_LEN], area: &[u8]) -> Result<Header> {
        let data_len = Header::check_fixed(b)?;
        if area.len() != data_len as usize {
            return Err(err(HEADER_LEN as u64 + area.len() as u64, "truncated in the XML area"));
        }
        let base = HEADER_LEN as u64;
        let cookie_offset = word(b, 4);
        let xml_end = if cookie_offset > 0 { cookie_offset as usize } else { area.len() };
        let xml = text(&area[..xml_end], base, "domain XML")?;
        let cookie = if cookie_offset > 0 {
            Some(text(&area[cookie_offset as usize..], base + u64::from(cookie_offset), "cookie")?)
        } else {
            None
        };
        Ok(Header {
            version: word(b, 0),
            data_len,
            was_running: word(b, 2),
            compressed: Compression::from_code(word(b, 3)).unwrap_or(Compression::Raw),
            cookie_offset,
            xml,
            cookie,
        })
    }

    /// The value of element `tag` in the domain XML's top level (`name`,
    /// `uuid`, `memory`), with its `unit` attribute if any.
    pub fn element(&self, tag: &str) -> Option<(String, Option<String>)> {
        let open = self.xml.find(&format!("<{tag}"))?;
        let rest = &self.xml[open + tag.len() + 1..];
        let close = rest.find('>')?;
        let attrs = &rest[..close];
        if !(attrs.is_empty() || attrs.starts_with(' ')) {
            return None;
        }
        let body = &rest[close + 1..];
        let value = body[..body.find('<')?].trim().to_owned();
        let unit = attrs
            .split_once("unit=")
            .and_then(|(_, u)| u.get(1..).and_then(|u| u.split(['\'', '"']).next()).map(str::to_owned));
        Some((value, unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(fields: [u32; 5]) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..16].copy_from_slice(MAGIC);
        for (i, f) in fields.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        b
    }

    #[test]
    fn fields_are_checked() {
        let xml = b"<domain type='qemu'>\n  <name>web</name>\n  <uuid>u-1</uuid>\n  <memory unit='KiB'>131072</memory>\n</domain>\n\0<cookie/>\0\0\0";
        let cookie = xml.iter().position(|&b| b == 0).unwrap() as u32 + 1;
        let h = Header::parse(&fixed([2, xml.len() as u32, 1, 1, cookie]), xml).unwrap();
        assert_eq!((h.version, h.was_running, h.compressed), (2, 1, Compression::Gzip));
        assert_eq!(h.cookie.as_deref(), Some("<cookie/>"));
        assert_eq!(h.element("name"), Some(("web".into(), None)));
        assert_eq!(h.element("memory"), Some(("131072".into(), Some("KiB".into()))));
        assert_eq!(h.element("uuid").unwrap().0, "u-1");
        let n = xml.len() as u32;
        for (bad, what) in [
            (fixed([3, n, 1, 0, 0]), "version 3"),
            (fixed([2, 0, 1, 0, 0]), "XML area of 0"),
            (fixed([2, MAX_DATA_LEN + 1, 1, 0, 0]), "XML area"),
            (fixed([2, n, 2, 0, 0]), "was_running is 2"),
            (fixed([2, n, 1, 6, 0]), "unknown compression 6"),
            (fixed([1, n, 1, 1, 0]), "unknown compression 1"),
            (fixed([2, n, 1, 0, n]), "cookie offset"),
        ] {
            let e = Header::parse(&bad, xml).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
        let mut partial = fixed([2, n, 1, 0, 0]);
        partial[..16].copy_from_slice(PARTIAL_MAGIC);
        assert!(Header::parse(&partial, xml).unwrap_err().to_string().contains("partial"));
        let mut unused = fixed([2, n, 1, 0, 0]);
        unused[60] = 1;
        assert!(Header::parse(&unused, xml).unwrap_err().to_string().contains("unused"));
        assert!(Header::parse(&fixed([2, 4, 1, 0, 0]), b"<a>").unwrap_err().to_string().contains("truncated"));
        assert!(Header::parse(&fixed([2, 3, 1, 0, 0]), b"<a>").unwrap_err().to_string().contains("NUL"));
    }
}
