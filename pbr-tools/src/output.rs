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
    /// [`crate::cleanup::temp_prefix`] says.
    ///
    /// # Errors
    /// The directory cannot hold a new file.
    pub fn create(dest: &Path) -> Result<AtomicFile> {
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
