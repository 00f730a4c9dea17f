//! `ls` and `gc`: the images a store holds, and removing the chunks no
//! image names.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::chunk;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::store::Store;

/// One image a store holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// Its name.
    pub name: String,
    /// Its index object's size.
    pub index_bytes: u64,
    /// When it was pushed.
    pub modified: SystemTime,
}

/// The images `store` holds, by name.
///
/// # Errors
/// The store failed.
pub fn list(store: &Store) -> Result<Vec<Stored>> {
    let mut out: Vec<Stored> = store
        .list("images/")?
        .into_iter()
        .filter_map(|l| {
            let name = l.key.strip_prefix("images/")?.strip_suffix(".idx")?.to_owned();
            Some(Stored { name, index_bytes: l.size, modified: l.modified })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a store holds in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Chunk objects.
    pub chunks: usize,
    /// Their bytes.
    pub chunk_bytes: u64,
    /// Bytes of the images' indexes.
    pub index_bytes: u64,
}

/// What `store` holds: its chunks and indexes.
///
/// # Errors
/// The store failed.
pub fn usage(store: &Store) -> Result<Usage> {
    let chunks = store.list("chunks/")?;
    let index_bytes = store.list("images/")?.iter().map(|l| l.size).sum();
    Ok(Usage { chunks: chunks.len(), chunk_bytes: chunks.iter().map(|c| c.size).sum(), index_bytes })
}

/// What a gc did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcReport {
    /// Images whose chunks were kept.
    pub images: usize,
    /// Chunks the store held.
    pub chunks: usize,
    /// Of those, chunks removed: no image names them.
    pub removed: usize,
    /// Their bytes.
    pub removed_bytes: u64,
    /// Chunks no image names, kept because they are younger than the
    /// grace period (a push may be uploading them).
    pub young: usize,
}

/// Removes the chunks of `store` that no image names and that are older
/// than `grace` (a push uploads its chunks before its index; a push that
/// finds a chunk already there does not renew it, so a push must not take
/// longer than the grace period while a gc runs).
///
/// # Errors
/// An index does not read (nothing is removed then: its chunks would go
/// with it), or the store failed.
pub fn gc(store: &Store, grace: Duration) -> Result<GcReport> {
    let images = list(store)?;
    let mut named: HashSet<String> = HashSet::new();
    for image in &images {
        let index: Index = crate::pull::index(store, &image.name)
            .map_err(|e| Error::Damaged(format!("image {}: {e}; nothing was removed", image.name)))?;
        named.extend(index.chunks.iter().map(|c| chunk::key(&c.hash)));
    }
    let now = SystemTime::now();
    let all = store.list("chunks/")?;
    let mut report = GcReport { images: images.len(), chunks: all.len(), removed: 0, removed_bytes: 0, young: 0 };
    let mut doomed = Vec::new();
    // Only what has a chunk's name: another store may nest under chunks/.
    for c in all.into_iter().filter(|c| is_chunk_key(&c.key) && !named.contains(&c.key)) {
        if now.duration_since(c.modified).unwrap_or_default() < grace {
            report.young += 1;
            continue;
        }
        report.removed += 1;
        report.removed_bytes += c.size;
        doomed.push(c.key);
    }
    store.delete_many(&doomed)?;
    Ok(report)
}

/// Whether `key` is a chunk's: `chunks/HH/` and 64 lowercase hex digits
/// starting with HH.
fn is_chunk_key(key: &str) -> bool {
    let Some((hh, name)) = key.strip_prefix("chunks/").and_then(|k| k.split_once('/')) else { return false };
    name.len() == 64
        && name.starts_with(hh)
        && hh.len() == 2
        && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunk_names_are_collected() {
        let hash = [0xab; 32];
        assert!(is_chunk_key(&chunk::key(&hash)));
        assert!(!is_chunk_key("chunks/ab/ab"));
        assert!(!is_chunk_key(&format!("chunks/ab/{}", "A".repeat(64))));
        assert!(!is_chunk_key(&format!("chunks/other/images/{}", "a".repeat(64))));
        assert!(!is_chunk_key(&format!("chunks/cd/{}", "a".repeat(64))));
    }
}
