//! The page-cache message: which guest page frames hold which bytes of
//! which files, and where those bytes sit on the disk (`spec/agent.md` §3.1).
//!
//! Binary, little-endian, one record per file until the payload ends:
//!
//! ```text
//! u16 path length, path (UTF-8, absolute in the guest)
//! u8  disk name length, disk name (the guest's whole-disk name, `vda`)
//! u64 file size
//! u32 pages n
//! n x (u64 file offset, u64 page frame number, u64 byte offset on the disk)
//! ```

use crate::limits::MAX_STRING;

/// Bytes of one page entry.
pub const PAGE_ENTRY: usize = 24;

/// One page of a file in the guest's page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPage {
    /// Byte offset of the page in the file (a multiple of the page size).
    pub file_offset: u64,
    /// The page frame that holds it.
    pub pfn: u64,
    /// Where the page's first byte sits on the whole disk.
    pub disk_offset: u64,
}

/// A file with pages in the guest's page cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    /// Its path in the guest.
    pub path: String,
    /// The whole disk it lives on (`vda`).
    pub disk: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its cached pages that sit on the disk as they are.
    pub pages: Vec<CachedPage>,
}

/// Encodes `files` as the message's payload.
pub fn encode(files: &[CachedFile]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        out.extend_from_slice(&(f.path.len() as u16).to_le_bytes());
        out.extend_from_slice(f.path.as_bytes());
        out.push(f.disk.len() as u8);
        out.extend_from_slice(f.disk.as_bytes());
        out.extend_from_slice(&f.size.to_le_bytes());
        out.extend_from_slice(&(f.pages.len() as u32).to_le_bytes());
        for p in &f.pages {
            out.extend_from_slice(&p.file_offset.to_le_bytes());
            out.extend_from_slice(&p.pfn.to_le_bytes());
            out.extend_from_slice(&p.disk_offset.to_le_bytes());
        }
    }
    out
}

/// Decodes a payload; the error names the byte offset and the field.
///
/// # Errors
/// A truncated record, a string that is not UTF-8 or too long, a page
/// count over the bytes present, a file offset that is not page-aligned.
pub fn decode(p: &[u8]) -> Result<Vec<CachedFile>, String> {
    let mut c = Cursor { p, at: 0 };
    let mut out = Vec::new();
    while c.at < p.len() {
        let start = c.at;
        let path_len = usize::from(c.u16("path length")?);
        let path = c.string(path_len, "path")?;
        if !path.starts_with('/') || path_len > MAX_STRING {
            return Err(format!("byte {start}: path {path:?} is not absolute or over {MAX_STRING} bytes"));
        }
        let disk_len = usize::from(c.u8("disk name length")?);
        let disk = c.string(disk_len, "disk name")?;
        let size = c.u64("size")?;
        let n = c.u32("page count")? as usize;
        if n > (p.len() - c.at) / PAGE_ENTRY {
            return Err(format!("byte {start}: {path}: {n} pages, more than the {} bytes left hold", p.len() - c.at));
        }
        let mut pages = Vec::with_capacity(n);
        for _ in 0..n {
            let page = CachedPage {
                file_offset: c.u64("file offset")?,
                pfn: c.u64("pfn")?,
                disk_offset: c.u64("disk offset")?,
            };
            if !page.file_offset.is_multiple_of(4096) {
                return Err(format!("byte {start}: {path}: file offset {} is not page-aligned", page.file_offset));
            }
            pages.push(page);
        }
        out.push(CachedFile { path, disk, size, pages });
    }
    Ok(out)
}

struct Cursor<'a> {
    p: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], String> {
        let b = self.p.get(self.at..self.at.saturating_add(n)).ok_or_else(|| {
            format!("byte {}: {what} is cut off ({n} bytes, {} left)", self.at, self.p.len() - self.at)
        })?;
        self.at += n;
        Ok(b)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default()))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap_or_default()))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap_or_default()))
    }

    fn string(&mut self, n: usize, what: &str) -> Result<String, String> {
        let at = self.at;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("byte {at}: {what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<CachedFile> {
        vec![
            CachedFile {
                path: "/usr/sbin/nginx".into(),
                disk: "vda".into(),
                size: 9000,
                pages: vec![
                    CachedPage { file_offset: 0, pfn: 0x1234, disk_offset: 1 << 20 },
                    CachedPage { file_offset: 8192, pfn: 0x99, disk_offset: (1 << 20) + 8192 },
                ],
            },
            CachedFile { path: "/etc/hostname".into(), disk: "vda".into(), size: 4, pages: vec![] },
        ]
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
        assert!(decode(&[]).unwrap().is_empty());
    }

    #[test]
    fn hostile_payloads_are_named() {
        let good = encode(&sample());
        for cut in 1..good.len() {
            if decode(&good[..cut]).is_ok() {
                // Only the boundary between the two files decodes.
                assert_eq!(cut, good.len() - (2 + 13 + 1 + 3 + 8 + 4));
            }
        }
        let mut huge = good.clone();
        // The first file's page count, after its path, disk and size.
        let at = 2 + 15 + 1 + 3 + 8;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("more than the"), "a count is not an allocation");
        let mut rel = good.clone();
        rel[2] = b'u';
        assert!(decode(&rel).unwrap_err().contains("not absolute"));
        let mut odd = good.clone();
        odd[at + 4] = 1;
        assert!(decode(&odd).unwrap_err().contains("not page-aligned"));
        let mut bad = good;
        bad[3] = 0xff;
        assert!(decode(&bad).unwrap_err().contains("not UTF-8"));
    }
}
