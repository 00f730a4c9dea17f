//! CRIU's `pstree.img`: the tree of the processes a dump holds. The file
//! is CRIU's image magic pair (`IMG_COMMON_MAGIC`, then `PSTREE_MAGIC`),
//! then per process a little-endian u32 size and a protobuf `pstree_entry`
//! (CRIU's `images/pstree.proto`: pid 1, ppid 2, pgid 3, sid 4, threads 5
//! repeated).

use super::ImageError;
pub use super::entries::IMG_COMMON_MAGIC;
use super::entries::entries;
use super::protobuf::{Reader, Wire};

/// The file's name in a CRIU dump.
pub const FILE_NAME: &str = "pstree.img";
/// The second word of `pstree.img`.
pub const PSTREE_MAGIC: u32 = 0x5027_3030;

/// One process of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its session.
    pub sid: u32,
    /// Its threads' ids.
    pub threads: Vec<u32>,
}

/// Decodes a `pstree.img`: its processes in file order (CRIU writes a
/// parent before its children).
///
/// # Errors
/// [`ImageError`] naming the byte: a wrong magic, an entry that runs past
/// the end, a malformed message, a required field missing or a value over
/// 32 bits.
///
/// # Example
/// ```
/// use pbr_tools::criu::pstree::{decode, IMG_COMMON_MAGIC, PSTREE_MAGIC};
/// let mut img = [IMG_COMMON_MAGIC.to_le_bytes(), PSTREE_MAGIC.to_le_bytes()].concat();
/// let entry = [0x08, 42, 0x10, 1, 0x18, 42, 0x20, 42, 0x28, 42];
/// img.extend((entry.len() as u32).to_le_bytes());
/// img.extend(entry);
/// let tree = decode(&img)?;
/// assert_eq!((tree[0].pid, tree[0].ppid, tree[0].threads.as_slice()), (42, 1, &[42][..]));
/// assert!(decode(&img[..img.len() - 1]).is_err());
/// # Ok::<(), pbr_tools::criu::ImageError>(())
/// ```
pub fn decode(img: &[u8]) -> Result<Vec<Process>, ImageError> {
    entries(img, PSTREE_MAGIC, "pstree")?.into_iter().enumerate().map(|(i, (msg, at))| entry(msg, at, i)).collect()
}

/// One `pstree_entry` message found at file offset `base`.
fn entry(msg: &[u8], base: u64, i: usize) -> Result<Process, ImageError> {
    const NAMES: [&str; 5] = ["pid", "ppid", "pgid", "sid", "threads"];
    let mut r = Reader::new(msg, base);
    let mut ids: [Option<u32>; 4] = [None; 4];
    let mut threads = Vec::new();
    let u32_of = |v: u64, field: u32, at: u64| {
        u32::try_from(v).map_err(|_| ImageError {
            offset: at,
            what: format!("entry {i}: {} {v} does not fit 32 bits", NAMES[field as usize - 1]),
        })
    };
    while let Some((field, wire)) = r.key()? {
        let at = r.offset();
        match (field, wire) {
            (1..=4, Wire::Varint) => ids[field as usize - 1] = Some(u32_of(r.varint()?, field, at)?),
            (5, Wire::Varint) => threads.push(u32_of(r.varint()?, 5, at)?),
            // A packed list, as a writer may send a repeated field.
            (5, Wire::Len) => {
                let (bytes, base) = r.bytes()?;
                let mut packed = Reader::new(bytes, base);
                while !packed.is_done() {
                    let at = packed.offset();
                    threads.push(u32_of(packed.varint()?, 5, at)?);
                }
            }
            (1..=5, _) => {
                return Err(ImageError {
                    offset: at,
                    what: format!("entry {i}: {} has wire type {wire:?}, not a varint", NAMES[field as usize - 1]),
                });
            }
            _ => r.skip(wire)?,
        }
    }
    let mut get = |f: usize| {
        ids[f].take().ok_or_else(|| ImageError { offset: base, what: format!("entry {i} has no {}", NAMES[f]) })
    };
    Ok(Process { pid: get(0)?, ppid: get(1)?, pgid: get(2)?, sid: get(3)?, threads })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pstree.img of `entries`, each given as its message's bytes.
    fn img(entries: &[&[u8]]) -> Vec<u8> {
        let mut v = [IMG_COMMON_MAGIC.to_le_bytes(), PSTREE_MAGIC.to_le_bytes()].concat();
        for e in entries {
            v.extend((e.len() as u32).to_le_bytes());
            v.extend(*e);
        }
        v
    }

    #[test]
    fn a_tree_decodes() {
        // 812 with one thread; 813 (a child) with threads 813 and 70000
        // packed; an unknown field 9 (a string) skipped.
        let parent = [0x08, 0xac, 0x06, 0x10, 1, 0x18, 0xac, 0x06, 0x20, 0xac, 0x06, 0x28, 0xac, 0x06];
        let child = [
            0x08, 0xad, 0x06, 0x10, 0xac, 0x06, 0x18, 0xac, 0x06, 0x20, 0xac, 0x06, 0x2a, 5, 0xad, 0x06, 0xf0, 0xa2,
            0x04, 0x4a, 2, b'n', b's',
        ];
        let tree = decode(&img(&[&parent, &child])).unwrap();
        let p = |pid, ppid, pgid, sid, threads: &[u32]| Process { pid, ppid, pgid, sid, threads: threads.to_vec() };
        assert_eq!(tree, [p(812, 1, 812, 812, &[812]), p(813, 812, 812, 812, &[813, 70000])]);
        assert_eq!(decode(&img(&[])).unwrap(), []);
    }

    #[test]
    fn hostile_bytes_name_where() {
        let ok = [0x08, 1, 0x10, 0, 0x18, 1, 0x20, 1];
        let mut truncated_size = img(&[&ok]);
        truncated_size.extend([9, 0]);
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (Vec::new(), 0, "0 bytes, shorter than the 8-byte magic pair"),
            (img(&[])[..7].to_vec(), 0, "shorter than"),
            ([0u32.to_le_bytes(), PSTREE_MAGIC.to_le_bytes()].concat(), 0, "is not CRIU's image magic"),
            ([IMG_COMMON_MAGIC.to_le_bytes(), 0x5621_3732u32.to_le_bytes()].concat(), 4, "is not pstree's"),
            (truncated_size, 20, "entry 1 ends inside its size"),
            (img(&[&ok])[..15].to_vec(), 8, "entry 0 of 8 bytes runs past the end (3 left)"),
            (img(&[&[0x08, 1, 0x10, 0, 0x18, 1]]), 12, "entry 0 has no sid"),
            (img(&[&[0x08, 0xff, 0xff, 0xff, 0xff, 0x10]]), 13, "entry 0: pid 4563402751 does not fit 32 bits"),
            (img(&[&[0x0d, 1, 0, 0, 0]]), 13, "entry 0: pid has wire type Fixed32"),
            (img(&[&[0x08, 0x80]]), 13, "ends inside a varint"),
            (img(&[&[0x2a, 2, 1, 0x80]]), 15, "ends inside a varint"),
            (img(&[&[0x0b]]), 12, "wire type 3"),
            (img(&[&[0x32, 9]]), 14, "a value of 9 bytes runs past"),
        ];
        for (bytes, offset, want) in cases {
            let e = decode(&bytes).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.offset, offset, "{e}");
        }
        let huge = [IMG_COMMON_MAGIC.to_le_bytes(), PSTREE_MAGIC.to_le_bytes(), u32::MAX.to_le_bytes()].concat();
        assert!(decode(&huge).unwrap_err().to_string().contains("runs past the end"));
    }
}
