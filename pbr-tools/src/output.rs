//! Output files created atomically: written to a temporary file beside the
//! destination, synced, then renamed over it. An interrupted run leaves the
//! destination as it was.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// A file that appears at its destination only when [`AtomicFile::commit`]
/// is called.
pub struct AtomicFile {
    tmp: NamedTempFile,
    dest: PathBuf,
    _interrupt: crate::cleanup::Registration,
}

impl AtomicFile {
    /// Creates the temporary file in the destination's directory, named as
    /// [`crate::cleanup::temp_prefix`] says. The destination is `dest`, or
    /// the file a link there points to ([`pbr_format::write::destination`]).
    ///
    /// # Errors
    /// Something other than a regular file is at `dest` (a device, a named
    /// pipe: it is never replaced), or the directory cannot hold a new file.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
        let dest = &pbr_format::write::destination(dest)?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(&crate::cleanup::temp_prefix())
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(|e| Error::io(format!("cannot create a temporary file in {}", dir.display()), e))?;
        let _interrupt = crate::cleanup::remove_on_interrupt(tmp.path());
        Ok(AtomicFile { tmp, dest: dest.to_path_buf(), _interrupt })
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Syncs the file and renames it to its destination.
    ///
    /// # Errors
    /// The sync or the rename failed; the destination is then unchanged.
    pub fn commit(self) -> Result<PathBuf> {
        self.tmp.as_file().sync_all().map_err(|e| Error::io(format!("cannot sync {}", self.dest.display()), e))?;
        let dest = self.dest;
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::io(format!("cannot rename the output to {}", dest.display()), e.error))?;
        Ok(dest)
    }
}

/// Writes `bytes` to `dest` atomically (temporary file, sync, rename).
///
/// # Errors
/// The temporary file cannot be created, written, synced or renamed.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let out = AtomicFile::create(dest)?;
    out.file().write_all(bytes).map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
    out.commit()
}

/// Writes a stream made from `image` to `dest` with `write`: atomically to
/// a regular file; directly to a character device or named pipe, after
/// every stored page of `image` passed its crc32 (a damaged page found half
/// way could not be taken back there).
///
/// # Errors
/// As [`AtomicFile::create`] and [`AtomicFile::commit`], a device or pipe
/// that does not open, a damaged page, or what `write` returns.
pub fn write_stream<T>(image: &pbr_format::Image, dest: &Path, write: impl FnOnce(&File) -> Result<T>) -> Result<T> {
    if !is_device_or_pipe(dest) {
        let out = AtomicFile::create(dest)?;
        let r = write(out.file())?;
        out.commit()?;
        return Ok(r);
    }
    // Before the pipe is opened: its reader gets nothing at all.
    image.check_page_crcs()?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|e| Error::io(format!("cannot open {} for writing", dest.display()), e))?;
    write(&out)
}

/// Whether `path` is a character device or a named pipe: a stream is
/// written into it directly.
pub fn is_device_or_pipe(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_fifo())
}
