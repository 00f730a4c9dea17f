//! File manifests and page-cache back references (`spec/format.md` §7.5).

use std::borrow::Cow;

use crate::limits::MAX_PATH;

/// One file the guest had read up to the image's phase.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// for f in image.manifest() {
///     println!("{} ({} bytes, mtime {} ns, inode {})", f.path, f.size, f.mtime_ns, f.inode);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry<'a> {
    /// Path relative to the guest root, `/`-separated.
    pub path: Cow<'a, str>,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// blake3 of the content.
    pub blake3: [u8; 32],
    /// Listed only because pages of it are cached: a change makes those
    /// pages stale but does not invalidate the image.
    pub cache_only: bool,
}

/// A page-cache page and the file bytes it holds.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// for c in image.cache_refs() {
///     let file = &image.manifest()[c.file_index as usize];
///     println!("page {:#x} caches {} at byte {}", c.gfn, file.path, c.offset);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheRef {
    /// Guest frame number of the page.
    pub gfn: u64,
    /// Index of the file in the manifest.
    pub file_index: u32,
    /// Byte offset of the page's first byte in the file.
    pub offset: u64,
}

/// Checks that `path` is a manifest path: relative, `/`-separated, with no
/// empty, `.` or `..` component and no NUL.
///
/// # Errors
/// Returns a message naming what is wrong with the path.
///
/// # Example
/// ```
/// use pbr_format::check_path;
/// assert!(check_path("etc/pbr/app.conf").is_ok());
/// assert!(check_path("/etc/passwd").is_err());
/// assert!(check_path("etc/../../x").is_err());
/// ```
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH as usize {
        return Err(format!("path length {} is not in 1..={MAX_PATH}", path.len()));
    }
    if path.starts_with('/') {
        return Err(format!("path '{path}' is absolute"));
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Err(format!("path '{path}' has an empty component")),
            "." | ".." => return Err(format!("path '{path}' has a '{part}' component")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_path;

    #[test]
    fn hostile_paths_are_refused() {
        for p in ["", "/etc/passwd", "../etc", "etc/../../x", "a//b", "./a", "a/", "a\0b"] {
            assert!(check_path(p).is_err(), "{p:?} accepted");
        }
        for p in ["etc/passwd", "a", "usr/lib/x.so.1", "..a/b.."] {
            assert!(check_path(p).is_ok(), "{p:?} refused");
        }
    }
}
