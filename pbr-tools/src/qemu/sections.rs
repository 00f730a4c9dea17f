//! FULL device sections of a QEMU stream: their headers, their footers
//! and the section names of a device-state-only stream.

use pbr_format::DeviceBlob;

use super::format::{MAGIC, VERSION, section};

/// `(section id, idstr, instance, version, offset after the header)` of a
/// FULL section whose type byte ends at `pos`.
pub(crate) fn full_header(b: &[u8], pos: usize) -> Option<(u32, String, u32, u32, usize)> {
    let id = u32::from_be_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
    let len = usize::from(*b.get(pos + 4)?);
    let name = String::from_utf8(b.get(pos + 5..pos + 5 + len)?.to_vec()).ok()?;
    let p = pos + 5 + len;
    let instance = u32::from_be_bytes(b.get(p..p + 4)?.try_into().ok()?);
    let version = u32::from_be_bytes(b.get(p + 4..p + 8)?.try_into().ok()?);
    Some((id, name, instance, version, p + 8))
}

/// Without a vmdescription: the body length up to the first footer for `id`
/// that is followed by something that starts a section.
pub(crate) fn scan_footer(b: &[u8], body: usize, id: u32) -> Option<usize> {
    let mut footer = [section::FOOTER; 5];
    footer[1..].copy_from_slice(&id.to_be_bytes());
    (body..b.len().saturating_sub(4))
        .find(|&p| {
            b[p..p + 5] == footer
                && match b.get(p + 5) {
                    Some(&section::FULL) => full_header(b, p + 6)
                        .is_some_and(|(_, n, ..)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_graphic())),
                    Some(&section::EOF) => p + 6 == b.len(),
                    Some(&section::COMMAND) => true,
                    _ => false,
                }
        })
        .map(|p| p - body)
}

/// The idstrs of the device sections of a device-state-only QEMU stream
/// (what Xen's device model saves for `EMULATOR_CONTEXT`): header,
/// optional configuration, FULL sections with footers, commands, EOF.
///
/// # Errors
/// A message naming the byte offset where the stream stops making sense.
pub fn device_section_names(b: &[u8]) -> std::result::Result<Vec<String>, String> {
    if !b.starts_with(&MAGIC) {
        return Err("not a QEMU stream (no QEVM magic)".into());
    }
    if b.get(4..8) != Some(&VERSION.to_be_bytes()[..]) {
        return Err("not a version 3 QEMU stream".into());
    }
    let be = |p: usize, n: usize| b.get(p..p + n).map(|s| s.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x)));
    let mut names = Vec::new();
    let mut p = 8;
    loop {
        match b.get(p) {
            Some(&section::CONFIGURATION) => p += 5 + be(p + 1, 4).ok_or("truncated configuration")?,
            Some(&section::COMMAND) => p += 5 + be(p + 3, 2).ok_or("truncated command")?,
            Some(&section::FULL) => {
                let (id, name, _, _, body) = full_header(b, p + 1).ok_or(format!("truncated section at byte {p}"))?;
                let len = scan_footer(b, body, id).ok_or(format!("section '{name}' at byte {p} has no footer"))?;
                names.push(name);
                p = body + len + 5;
            }
            Some(&section::EOF) => return Ok(names),
            Some(t) => return Err(format!("section type {t:#04x} at byte {p} in device state")),
            None => return Err("the stream ends before QEMU_VM_EOF".into()),
        }
    }
}

/// Length of the FULL section header for an idstr of `name_len` bytes.
pub fn full_header_len(name_len: usize) -> usize {
    1 + 4 + 1 + name_len + 4 + 4
}

/// The body of a FULL device section blob: its fields, without the section
/// header and footer.
pub fn section_body<'a>(b: &'a DeviceBlob<'_>) -> &'a [u8] {
    let start = full_header_len(b.name.len());
    b.data.get(start..b.data.len().saturating_sub(5)).unwrap_or_default()
}
