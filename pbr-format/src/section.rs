//! Section kinds (`spec/format.md` §4.2).

use crate::pod::MUST_UNDERSTAND;

/// A section kind this crate knows.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// use pbr_format::SectionKind;
/// let kinds: Vec<_> = image.sections().iter().filter_map(|s| SectionKind::from_id(s.raw_kind & 0x7fff_ffff)).collect();
/// assert!(kinds.contains(&SectionKind::PageIndex));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionKind {
    /// Guest memory layout.
    Regions,
    /// Page extents.
    PageIndex,
    /// crc32 per stored page.
    PageCrcs,
    /// blake3 per stored page.
    PageHashes,
    /// Raw and lz4 page bytes.
    PageData,
    /// The phase tag.
    Phase,
    /// vCPU state.
    Vcpus,
    /// Device-state blobs.
    Devices,
    /// Key/value strings.
    Metadata,
    /// Files read up to this phase.
    Manifest,
    /// Page-cache back references.
    CacheRefs,
    /// The base image of a diff.
    Base,
    /// Pages whose content sits on a guest disk.
    DiskRefs,
    /// Processes checkpointed with CRIU for a kernel update.
    Processes,
}

impl SectionKind {
    /// Every known kind.
    pub const ALL: [SectionKind; 14] = [
        SectionKind::Regions,
        SectionKind::PageIndex,
        SectionKind::PageCrcs,
        SectionKind::PageHashes,
        SectionKind::PageData,
        SectionKind::Phase,
        SectionKind::Vcpus,
        SectionKind::Devices,
        SectionKind::Metadata,
        SectionKind::Manifest,
        SectionKind::CacheRefs,
        SectionKind::Base,
        SectionKind::DiskRefs,
        SectionKind::Processes,
    ];

    /// The kind id without the must-understand bit.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::SectionKind::from_id(pbr_format::SectionKind::Vcpus.id()), Some(pbr_format::SectionKind::Vcpus));
    /// ```
    pub fn id(self) -> u32 {
        match self {
            SectionKind::Regions => 1,
            SectionKind::PageIndex => 2,
            SectionKind::PageCrcs => 3,
            SectionKind::PageHashes => 4,
            SectionKind::PageData => 5,
            SectionKind::Phase => 6,
            SectionKind::Vcpus => 7,
            SectionKind::Devices => 8,
            SectionKind::Metadata => 9,
            SectionKind::Manifest => 10,
            SectionKind::CacheRefs => 11,
            SectionKind::Base => 12,
            SectionKind::DiskRefs => 13,
            SectionKind::Processes => 14,
        }
    }

    /// Whether a reader that does not know this kind must refuse the file.
    ///
    /// # Example
    /// ```
    /// use pbr_format::SectionKind;
    /// // A reader that does not know page hashes can still restore the image.
    /// assert!(!SectionKind::PageHashes.must_understand());
    /// assert!(SectionKind::PageIndex.must_understand());
    /// ```
    pub fn must_understand(self) -> bool {
        matches!(
            self,
            SectionKind::Regions
                | SectionKind::PageIndex
                | SectionKind::PageCrcs
                | SectionKind::PageData
                | SectionKind::Base
                | SectionKind::DiskRefs
        )
    }

    /// The `kind` word as stored in the section table.
    ///
    /// # Example
    /// ```
    /// use pbr_format::SectionKind;
    /// assert_eq!(SectionKind::PageIndex.raw() & 0x7fff_ffff, SectionKind::PageIndex.id());
    /// ```
    pub fn raw(self) -> u32 {
        self.id() | if self.must_understand() { MUST_UNDERSTAND } else { 0 }
    }

    /// The kind with id `id` (must-understand bit cleared), if known.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::SectionKind::from_id(0x7fff_0000), None);
    /// ```
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// The upper-case name used in errors and `inspect`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::SectionKind::PageIndex.name(), "PAGE_INDEX");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Regions => "REGIONS",
            SectionKind::PageIndex => "PAGE_INDEX",
            SectionKind::PageCrcs => "PAGE_CRCS",
            SectionKind::PageHashes => "PAGE_HASHES",
            SectionKind::PageData => "PAGE_DATA",
            SectionKind::Phase => "PHASE",
            SectionKind::Vcpus => "VCPUS",
            SectionKind::Devices => "DEVICES",
            SectionKind::Metadata => "METADATA",
            SectionKind::Manifest => "MANIFEST",
            SectionKind::CacheRefs => "CACHE_REFS",
            SectionKind::Base => "BASE",
            SectionKind::DiskRefs => "DISK_REFS",
            SectionKind::Processes => "PROCESSES",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        for k in SectionKind::ALL {
            assert_eq!(SectionKind::from_id(k.id()), Some(k));
            assert_eq!(k.raw() & !MUST_UNDERSTAND, k.id());
        }
        assert_eq!(SectionKind::Regions.raw(), 0x8000_0001);
        assert_eq!(SectionKind::Phase.raw(), 6);
    }
}
