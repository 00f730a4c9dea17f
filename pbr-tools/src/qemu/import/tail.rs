//! The device state after a QEMU stream's RAM: FULL device sections,
//! commands, EOF and the vmdescription, split by the vmdescription's
//! sizes or, without one, by their footers.

use std::borrow::Cow;

use pbr_format::{DeviceBlob, DeviceOrigin};

use super::super::format::{blob, section};
use super::super::sections::{full_header, scan_footer};
use super::super::vmdesc::{self, VmDesc};
use super::{State, command, stream_blob};
use crate::error::{Error, Result};
use crate::stream::StreamReader;

/// Parses the device sections, commands, EOF and vmdescription held in
/// `tail` (which starts at stream offset `base`).
pub(super) fn tail_sections(tail: &[u8], base: u64, st: &mut State<'_>) -> Result<Option<VmDesc>> {
    let err = |off: usize, msg: String| Error::Parse { format: "qemu", offset: base + off as u64, msg };
    let (end, desc) = match find_vmdesc(tail) {
        Some((p, json_end)) => {
            let json = &tail[p + 5..json_end];
            let d = vmdesc::parse(json).map_err(|m| err(p, m))?;
            if json_end < tail.len() {
                st.notes.push(format!(
                    "{} bytes after the end of the stream (its vmdescription at offset {:#x}), ignored as QEMU ignores them",
                    tail.len() - json_end,
                    base + p as u64
                ));
            }
            (p, Some((d, json.to_vec())))
        }
        None => (tail.len(), None),
    };
    // Without a vmdescription nor footers (machine types up to 2.3) the
    // device sections cannot be told apart: they are kept as one blob.
    if desc.is_none() && tail.first() == Some(&section::FULL) {
        let split = full_header(tail, 1).and_then(|(id, _, _, _, body)| scan_footer(tail, body, id));
        if split.is_none() {
            if tail.last() != Some(&section::EOF) {
                return Err(err(tail.len(), "truncated: the stream ends before QEMU_VM_EOF".into()));
            }
            st.blobs.push(stream_blob(blob::DEVICE_STATE, 0, tail[..tail.len() - 1].to_vec()));
            st.blobs.push(stream_blob(blob::EOF, 0, Vec::new()));
            return Ok(None);
        }
    }
    let mut pos = 0usize;
    let mut full = 0usize;
    loop {
        let at = pos;
        let Some(&t) = tail.get(pos) else {
            return Err(err(pos, "truncated: the stream ends before QEMU_VM_EOF".into()));
        };
        pos += 1;
        match t {
            section::FULL => {
                let (id, name, instance, version, hdr_end) =
                    full_header(tail, pos).ok_or_else(|| err(at, "truncated section header".into()))?;
                let body_len = match &desc {
                    Some((d, _)) => {
                        let dd = d.devices.get(full).ok_or_else(|| {
                            err(
                                at,
                                format!(
                                    "section '{name}' has no entry in the vmdescription ({} entries)",
                                    d.devices.len()
                                ),
                            )
                        })?;
                        if dd.name != name || dd.instance != instance {
                            return Err(err(
                                at,
                                format!(
                                    "section '{name}' instance {instance} does not match vmdescription entry {full} ('{}' instance {})",
                                    dd.name, dd.instance
                                ),
                            ));
                        }
                        usize::try_from(dd.body_len).map_err(|_| err(at, "section length overflows".into()))?
                    }
                    None => scan_footer(&tail[..end], hdr_end, id).ok_or_else(|| {
                        err(at, format!("no footer found for section '{name}': the stream is truncated or corrupt (and has no vmdescription to size its sections)"))
                    })?,
                };
                let footer = hdr_end.checked_add(body_len).filter(|f| f + 5 <= end).ok_or_else(|| {
                    err(at, format!("section '{name}' of {body_len} bytes runs past the device state"))
                })?;
                if tail[footer] != section::FOOTER || tail[footer + 1..footer + 5] != id.to_be_bytes() {
                    return Err(err(
                        footer,
                        format!("section '{name}' is not followed by its footer (the vmdescription length disagrees)"),
                    ));
                }
                pos = footer + 5;
                full += 1;
                st.blobs.push(DeviceBlob {
                    origin: DeviceOrigin::QEMU_SECTION,
                    name: Cow::Owned(name),
                    instance,
                    version,
                    flags: u32::from(section::FULL),
                    data: Cow::Owned(tail[at..pos].to_vec()),
                });
            }
            section::COMMAND => {
                let mut r = StreamReader::new("qemu", &tail[pos..end], base + pos as u64);
                let b = command(&mut r, base + at as u64)?;
                pos = (r.pos() - base) as usize;
                st.blobs.push(b);
            }
            section::EOF => {
                st.blobs.push(stream_blob(blob::EOF, 0, Vec::new()));
                if pos != end {
                    return Err(err(pos, format!("{} unexpected bytes after QEMU_VM_EOF", end - pos)));
                }
                break;
            }
            section::START | section::PART | section::END => {
                return Err(err(
                    at,
                    "a ram section after device sections is not supported (postcopy or a resumed stream?)".into(),
                ));
            }
            other => return Err(err(at, format!("unknown section type {other:#04x}"))),
        }
    }
    Ok(desc.map(|(d, json)| {
        st.blobs.push(stream_blob(blob::VMDESCRIPTION, 0, json));
        d
    }))
}

/// Offset of the VMDESCRIPTION type byte in `tail` (`0x00 0x06 be32(len)
/// '{'`) and the end of its JSON: the JSON ending exactly at the end of
/// `tail`, else (bytes follow the stream, which QEMU does not read) the
/// last such section whose JSON fits and parses.
fn find_vmdesc(tail: &[u8]) -> Option<(usize, usize)> {
    let n = tail.len();
    let header = |p: usize| {
        (tail[p] == section::VMDESCRIPTION && tail[p - 1] == section::EOF && tail.get(p + 5) == Some(&b'{'))
            .then(|| u32::from_be_bytes(tail[p + 1..p + 5].try_into().unwrap_or_default()) as usize)
    };
    let candidates = || (1..n.saturating_sub(5)).rev();
    if let Some(p) = candidates().find(|&p| header(p) == Some(n - p - 5)) {
        return Some((p, n));
    }
    candidates().find_map(|p| {
        let json_end = (p + 5).checked_add(header(p)?).filter(|&e| e <= n)?;
        vmdesc::parse(&tail[p + 5..json_end]).is_ok().then_some((p, json_end))
    })
}
