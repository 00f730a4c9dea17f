//! Disk references: where a guest page's content sits on one of the
//! guest's disks, so that a trimmed page can be read back from the disk at
//! restore (`spec/format.md` §7.8).

use crate::manifest::check_path;

/// One page whose content, as captured, is `length` bytes of a disk
/// followed by zeros.
///
/// # Example
/// ```
/// use pbr_format::{DiskRef, DiskRefs};
/// let refs = DiskRefs {
///     files: vec!["usr/sbin/nginx".into()],
///     pages: vec![DiskRef { gfn: 7, disk: 0, disk_offset: 1 << 20, length: 4096, crc32: 0x1234, file: 0, file_offset: 0 }],
/// };
/// assert_eq!(refs.files[refs.pages[0].file as usize], "usr/sbin/nginx");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskRef {
    /// Guest frame number of the page.
    pub gfn: u64,
    /// Which disk: an index into the disks the image's metadata
    /// `pbr.seals` lists (`spec/agent.md` §5).
    pub disk: u32,
    /// Byte offset on the disk of the page's first byte.
    pub disk_offset: u64,
    /// Bytes of the page that come from the disk (1 to the page size); the
    /// rest of the page is zero (a file's last page).
    pub length: u32,
    /// crc32 of the whole page as captured.
    pub crc32: u32,
    /// Index of the file in [`DiskRefs::files`].
    pub file: u32,
    /// Byte offset of the page in that file.
    pub file_offset: u64,
}

/// Every disk reference of an image, and the files they name.
///
/// A page with a reference that is stored is unchanged by it; a page with a
/// reference that is `TRIMMED` (class `cache`) must be refilled from the
/// disk before the guest runs.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.1/disk-refs.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let refs = image.disk_refs();
/// for r in &refs.pages {
///     println!("page {:#x}: /{} at byte {}, disk byte {}", r.gfn, refs.files[r.file as usize], r.file_offset, r.disk_offset);
/// }
/// assert!(refs.check(image.page_size()).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskRefs {
    /// Files, as paths relative to the guest's root.
    pub files: Vec<String>,
    /// References, sorted by `gfn`, one per page at most.
    pub pages: Vec<DiskRef>,
}

impl DiskRefs {
    /// Whether there are none.
    ///
    /// # Example
    /// ```
    /// assert!(pbr_format::DiskRefs::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The reference of page `gfn`, if it has one.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{DiskRef, DiskRefs};
    /// let r = DiskRef { gfn: 7, disk: 0, disk_offset: 0, length: 4096, crc32: 0, file: 0, file_offset: 0 };
    /// let refs = DiskRefs { files: vec!["a".into()], pages: vec![r] };
    /// assert_eq!(refs.get(7), Some(&r));
    /// assert_eq!(refs.get(8), None);
    /// ```
    pub fn get(&self, gfn: u64) -> Option<&DiskRef> {
        self.pages.binary_search_by_key(&gfn, |r| r.gfn).ok().map(|i| &self.pages[i])
    }

    /// Checks the rules of §7.8 for pages of `page_size` bytes: sorted and
    /// unique frames, lengths in 1..=page size, file indexes in range,
    /// manifest paths, no disk range that overflows. `Err` names the first
    /// reference that breaks one, by its index.
    ///
    /// # Errors
    /// `(index, message)` of the first bad reference; the index is `None`
    /// for a bad file path.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{DiskRef, DiskRefs};
    /// let r = DiskRef { gfn: 7, disk: 0, disk_offset: 0, length: 5000, crc32: 0, file: 0, file_offset: 0 };
    /// let refs = DiskRefs { files: vec!["etc/hosts".into()], pages: vec![r] };
    /// let (at, why) = refs.check(4096).unwrap_err();
    /// assert_eq!(at, Some(0));
    /// assert!(why.contains("length 5000"));
    /// ```
    pub fn check(&self, page_size: u32) -> Result<(), (Option<usize>, String)> {
        for (i, f) in self.files.iter().enumerate() {
            check_path(f).map_err(|m| (None, format!("file {i}: {m}")))?;
        }
        let mut last: Option<u64> = None;
        for (i, r) in self.pages.iter().enumerate() {
            if last.is_some_and(|g| g >= r.gfn) {
                return Err((Some(i), format!("page {:#x} is not after the previous reference's", r.gfn)));
            }
            last = Some(r.gfn);
            if r.length == 0 || r.length > page_size {
                return Err((Some(i), format!("length {} is not in 1..={page_size}", r.length)));
            }
            if r.file as usize >= self.files.len() {
                return Err((Some(i), format!("file {} of {}", r.file, self.files.len())));
            }
            if r.disk_offset.checked_add(u64::from(r.length)).is_none() {
                return Err((Some(i), format!("disk offset {:#x} overflows", r.disk_offset)));
            }
        }
        Ok(())
    }
}
