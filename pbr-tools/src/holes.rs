//! The holes of a sparse file, as the file system reports them
//! (`lseek(SEEK_HOLE)`/`SEEK_DATA`): byte ranges that read as zeros. A flat
//! image keeps its zero pages as holes; a check of its pages needs not read
//! them ([`pbr_format::Image::check_page_crcs_outside`]).

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;

/// The holes of `file`, sorted, up to its length. A file system that
/// reports none (or an error) gives none: every page is then read.
pub fn holes(file: &File) -> Vec<Range<u64>> {
    let Ok(len) = file.metadata().map(|m| m.len()) else { return Vec::new() };
    let seek = |from: u64, whence: libc::c_int| -> Option<u64> {
        let from = libc::off_t::try_from(from).ok()?;
        #[allow(unsafe_code)]
        // SAFETY: lseek on a descriptor this `File` owns and keeps open for
        // the call; it moves the file offset only, which nothing here
        // relies on (the image is read through its map, not this offset).
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        u64::try_from(at).ok()
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(hole) = seek(at, libc::SEEK_HOLE) else { break };
        if hole >= len {
            break;
        }
        let end = seek(hole, libc::SEEK_DATA).unwrap_or(len).min(len);
        out.push(hole..end);
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sparse_file_has_its_holes_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("s"))
            .unwrap();
        let mib = 1 << 20;
        f.set_len(8 * mib).unwrap();
        f.write_all_at(&[1; 4096], 3 * mib).unwrap();
        f.write_all_at(&[1; 4096], 8 * mib - 4096).unwrap();
        let h = holes(&f);
        // Whatever block size the file system uses, the data is never in a
        // hole, and most of the file is.
        for r in &h {
            assert!(!(r.start..r.end).contains(&(3 * mib)) && r.end <= 8 * mib - 4096, "{h:?}");
        }
        let total: u64 = h.iter().map(|r| r.end - r.start).sum();
        assert!(h.is_empty() || total > 6 * mib, "{h:?}");
    }
}
