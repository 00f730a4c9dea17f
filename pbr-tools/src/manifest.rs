//! `manifest add`: record in an image the files a boot read up to its
//! phase, from a guest root directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pbr_format::select::{Mismatch, hash_file, resolve_under};
use pbr_format::{FileEntry, Image, PageEncoding};

use crate::error::{Error, Result};
use crate::rewrite;

/// Paths from a list file: one per line, relative to the root or absolute
/// in the guest's view (`/etc/fstab`); blank lines and `#` comments skipped.
///
/// # Errors
/// The file cannot be read.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').to_owned())
        .collect())
}

/// Regular files under `root` whose access time is after `since_ns`
/// (nanoseconds since the epoch), without following symlinks.
///
/// # Errors
/// A directory that cannot be read.
pub fn accessed_since(root: &Path, since_ns: i128) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        for ent in entries {
            let ent = ent.map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
            let meta = ent.metadata().map_err(|e| Error::io(format!("cannot stat {}", ent.path().display()), e))?;
            if meta.is_dir() {
                stack.push(ent.path());
            } else if meta.is_file()
                && i128::from(meta.atime()) * 1_000_000_000 + i128::from(meta.atime_nsec()) > since_ns
                && let Ok(rel) = ent.path().strip_prefix(root)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One file's manifest entry, read under `root`.
///
/// # Errors
/// A path that leaves the root, a missing or unreadable file.
pub fn entry(root: &Path, rel: &str) -> Result<FileEntry<'static>> {
    let path = resolve_under(root, rel).map_err(|m| match m {
        Mismatch::Deleted => Error::Usage(format!("'{rel}' does not exist under {}", root.display())),
        other => Error::Usage(format!("'{rel}': {other}")),
    })?;
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::Usage(format!("'{rel}' is not a regular file")));
    }
    let blake3 = hash_file(&path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    Ok(FileEntry {
        path: rel.to_owned().into(),
        size: meta.len(),
        mtime_ns: (i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())) as i64,
        inode: meta.ino(),
        blake3,
        cache_only: false,
    })
}

/// Writes `src` with `paths` (read under `root`) added to its manifest;
/// an entry for a path already listed is replaced.
///
/// # Errors
/// A path that leaves the root or cannot be read, I/O.
pub fn add(src: &Image, root: &Path, paths: &[String], dest: &Path) -> Result<usize> {
    let mut new: Vec<FileEntry<'static>> = Vec::new();
    for p in paths {
        let e = entry(root, p)?;
        if !new.iter().any(|x| x.path == e.path) {
            new.push(e);
        }
    }
    let unwritten = if src.base().is_some() { PageEncoding::Base } else { PageEncoding::Zero };
    let mut w = pbr_format::ImageWriter::create(dest, src.regions(), rewrite::options(src, unwritten))?;
    if let Some(b) = src.base() {
        w.set_base(b.clone())?;
    }
    rewrite::copy_machine_state(src, &mut w)?;
    // Existing entries keep their index (cache references point at them).
    for f in src.manifest() {
        let replaced = new.iter().position(|n| n.path == f.path).map(|i| new.remove(i));
        w.add_file(replaced.map_or_else(|| f.clone(), |n| FileEntry { cache_only: f.cache_only, ..n }))?;
    }
    let added = new.len();
    for f in new {
        w.add_file(f)?;
    }
    for c in src.cache_refs() {
        w.add_cache_ref(*c)?;
    }
    let mut buf = vec![0u8; src.page_size() as usize];
    for e in src.extents() {
        for gfn in e.gfns() {
            rewrite::copy_page(src, &e, gfn, &mut w, e.class, &mut buf)?;
        }
    }
    w.finish()?;
    Ok(added)
}
