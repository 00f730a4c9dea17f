//! The local chunk cache: a directory of chunk objects as the store holds
//! them (`ab/abcd...`), so that a host fetches a chunk once for all the
//! images that share it. What is read from it is checked as what is read
//! from the store; a damaged entry is removed and fetched again.

use std::path::{Path, PathBuf};

use crate::chunk;
use crate::error::{Error, Result};
use crate::index::ChunkRef;

/// A chunk cache in a directory.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache in `dir` (created when missing).
    ///
    /// # Errors
    /// It cannot be created.
    pub fn open(dir: &Path) -> Result<Cache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        Ok(Cache { dir: dir.to_path_buf() })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, c: &ChunkRef) -> PathBuf {
        let n = chunk::name(&c.hash);
        self.dir.join(&n[..2]).join(n)
    }

    /// Chunk `c`'s pages if the cache holds it whole; a damaged entry is
    /// removed.
    pub fn get(&self, c: &ChunkRef, page_size: u32) -> Option<Vec<u8>> {
        let path = self.path(c);
        let object = std::fs::read(&path).ok()?;
        match chunk::decode(&object, c, page_size) {
            Ok(pages) => Some(pages),
            Err(_) => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Keeps chunk `c`'s object (written to a temporary name, then
    /// renamed: a reader never sees half of it).
    ///
    /// # Errors
    /// I/O.
    pub fn put(&self, c: &ChunkRef, object: &[u8]) -> Result<()> {
        let path = self.path(c);
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io("chunk cache", e))?;
        std::io::Write::write_all(&mut tmp, object).map_err(|e| Error::io("chunk cache", e))?;
        tmp.persist(&path).map_err(|e| Error::io(format!("cannot keep {}", path.display()), e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_entry_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("c")).unwrap();
        let (c, object) = chunk::encode(&[7u8; 8192], 4096);
        assert!(cache.get(&c, 4096).is_none());
        cache.put(&c, &object).unwrap();
        assert_eq!(cache.get(&c, 4096).unwrap(), vec![7u8; 8192]);
        std::fs::write(cache.path(&c), b"junk").unwrap();
        assert!(cache.get(&c, 4096).is_none());
        assert!(!cache.path(&c).exists(), "removed, to be fetched again");
    }
}
