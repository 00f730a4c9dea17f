//! Publishing the output file atomically: a temporary file beside the
//! destination, the header, section table and trailer with their
//! checksums written last, fsync, then a rename over the destination
//! ([`destination`] says which paths may be replaced).

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use tempfile::NamedTempFile;
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::error::{Error, Result};
use crate::pod::{self, Header, SectionEntry, TRAILER_MAGIC, Trailer};
use crate::section::SectionKind;

use super::sink::Sink;

/// A new temporary file in the directory of `dest`, named
/// `.pbr-<process ID>-<random>.tmp`.
pub(super) fn temp_beside(dest: &Path) -> Result<NamedTempFile> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The process ID in the name lets a tool that is interrupted remove
    // its own temporary files, and only those.
    tempfile::Builder::new()
        .prefix(&format!(".pbr-{}-", std::process::id()))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(format!("cannot create a temporary file in {}", dir.display()), e))
}

/// Writes the table of `sections` (kind, offset, length) and the trailer
/// after what `sink` holds, writes `header` over the placeholder at the
/// start, checksums, syncs (if `sync`) and renames `tmp` to `dest`.
/// Returns the file length and the trailer hash.
pub(super) fn publish(
    tmp: NamedTempFile,
    dest: &Path,
    mut sink: Sink,
    header: &Header,
    sections: &[(SectionKind, u64, u64)],
    sync: bool,
) -> Result<(u64, [u8; 32])> {
    sink.pad_to(8)?;
    let table_offset = sink.pos();
    // Placeholder table: the crcs are computed from the file below.
    sink.write(&vec![0u8; sections.len() * pod::SECTION_ENTRY_SIZE])?;
    let file = sink.into_file()?;
    file.write_all_at(header.as_bytes(), 0).map_err(|e| Error::io("cannot write the header", e))?;
    #[allow(unsafe_code)]
    // SAFETY: the temporary file is private to this writer (created
    // with a random name, not yet published) and is not resized while
    // the read-only map lives.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot map the image to checksum it", e))?;
    let table: Vec<SectionEntry> = sections
        .iter()
        .map(|&(kind, offset, length)| SectionEntry {
            kind: U32::new(kind.raw()),
            flags: U32::new(0),
            offset: U64::new(offset),
            length: U64::new(length),
            crc32: U32::new(parallel_crc(&map[offset as usize..(offset + length) as usize])),
            reserved: U32::new(0),
        })
        .collect();
    file.write_all_at(table.as_bytes(), table_offset).map_err(|e| Error::io("cannot write the section table", e))?;
    let mut trailer = Trailer {
        magic: TRAILER_MAGIC,
        section_table_offset: U64::new(table_offset),
        section_count: U32::new(table.len() as u32),
        section_table_crc32: U32::new(crc32fast::hash(table.as_bytes())),
        trailer_crc32: U32::new(0),
        reserved: U32::new(0),
        image_blake3: [0; 32],
    };
    trailer.trailer_crc32 = U32::new(crc32fast::hash(&trailer.as_bytes()[..24]));
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(&map);
    hasher.update(&trailer.as_bytes()[..32]);
    trailer.image_blake3 = *hasher.finalize().as_bytes();
    drop(map);
    let file_len = table_offset + (table.len() * pod::SECTION_ENTRY_SIZE + pod::TRAILER_SIZE) as u64;
    file.write_all_at(trailer.as_bytes(), file_len - pod::TRAILER_SIZE as u64)
        .map_err(|e| Error::io("cannot write the trailer", e))?;
    if sync {
        file.sync_all().map_err(|e| Error::io("cannot sync the image", e))?;
    }
    tmp.persist(dest).map_err(|e| Error::io(format!("cannot rename the image to {}", dest.display()), e.error))?;
    if let Some(dir) = dest.parent().filter(|p| sync && !p.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        // Best effort: makes the rename durable on file systems that need it.
        let _ = d.sync_all();
    }
    Ok((file_len, trailer.image_blake3))
}

/// crc32 of `b`, computed on several threads and combined.
fn parallel_crc(b: &[u8]) -> u32 {
    const CHUNK: usize = 8 << 20;
    if b.len() <= CHUNK {
        return crc32fast::hash(b);
    }
    b.par_chunks(CHUNK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect::<Vec<_>>()
        .into_iter()
        .reduce(|mut a, b| {
            a.combine(&b);
            a
        })
        .map_or(0, crc32fast::Hasher::finalize)
}

/// The path an atomically written output is renamed to: `path`, or the
/// file a symbolic link at `path` points to (the link is kept). Only a
/// regular file is ever replaced: anything else already at `path` (a
/// device, a named pipe, a directory, a socket) is refused.
///
/// # Errors
/// [`crate::error::ErrorKind::InvalidInput`] naming what is at `path`.
///
/// # Example
/// ```
/// let dir = tempfile::tempdir()?;
/// let out = dir.path().join("guest.pbr");
/// assert_eq!(pbr_format::write::destination(&out)?, out);
/// assert!(pbr_format::write::destination("/dev/null".as_ref()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn destination(path: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        // Nothing there: the rename creates the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(path).is_err() => {
            return Ok(path.to_path_buf());
        }
        // A link to nothing would be replaced by a file: refused, as is
        // a path that cannot be looked at.
        Err(e) => return Err(Error::io(format!("the output {} cannot be replaced", path.display()), e)),
    };
    if meta.is_file() {
        let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if !link {
            return Ok(path.to_path_buf());
        }
        return std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("cannot resolve the link {}", path.display()), e));
    }
    let what = crate::file_kind::describe(meta.file_type());
    Err(Error::invalid(format!(
        "the output {} is {what}: this output is written to a regular file (a temporary file renamed over it), never over {what}",
        path.display()
    )))
}
