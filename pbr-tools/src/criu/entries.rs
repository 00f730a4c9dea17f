//! The framing every CRIU image file but the inventory shares: CRIU's
//! image magic (`IMG_COMMON_MAGIC`), the file's own magic, then per entry
//! a little-endian u32 size and a protobuf message of that many bytes.

use super::ImageError;

/// The first word of every CRIU image but the inventory
/// (`criu/include/magic.h`).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;

/// The entries of `img`, a CRIU image whose second word is `magic` (the
/// file `name`'s, for errors): each message's bytes and its offset in the
/// file.
///
/// # Errors
/// [`ImageError`] naming the byte: a wrong magic, an entry that runs past
/// the end.
pub(super) fn entries<'a>(img: &'a [u8], magic: u32, name: &str) -> Result<Vec<(&'a [u8], u64)>, ImageError> {
    let word = |at: usize| img.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (Some(common), Some(own)) = (word(0), word(4)) else {
        return Err(ImageError { offset: 0, what: format!("{} bytes, shorter than the 8-byte magic pair", img.len()) });
    };
    if common != IMG_COMMON_MAGIC {
        return Err(ImageError {
            offset: 0,
            what: format!("magic {common:#010x} is not CRIU's image magic {IMG_COMMON_MAGIC:#010x}"),
        });
    }
    if own != magic {
        return Err(ImageError { offset: 4, what: format!("magic {own:#010x} is not {name}'s {magic:#010x}") });
    }
    let mut out = Vec::new();
    let mut at = 8;
    while at < img.len() {
        let i = out.len();
        let size = word(at)
            .ok_or_else(|| ImageError { offset: at as u64, what: format!("entry {i} ends inside its size") })?;
        let body = (at + 4)..(at + 4).saturating_add(size as usize);
        let msg = img.get(body.clone()).ok_or_else(|| ImageError {
            offset: at as u64,
            what: format!("entry {i} of {size} bytes runs past the end ({} left)", img.len() - at - 4),
        })?;
        out.push((msg, body.start as u64));
        at = body.end;
    }
    Ok(out)
}
