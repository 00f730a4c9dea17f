//! The trailer and the section table (`spec/format.md` §4).

use std::ops::Range;

use zerocopy::FromBytes;

use crate::error::{Error, ErrorKind, Result};
use crate::limits::MAX_SECTIONS;
use crate::pod::{
    HEADER_SIZE, MUST_UNDERSTAND, SECTION_ENTRY_SIZE, SectionEntry, TRAILER_MAGIC, TRAILER_SIZE, Trailer,
};
use crate::section::SectionKind;

/// Where the section table is, from the trailer.
pub(crate) struct TableLoc {
    pub offset: u64,
    pub count: u32,
    pub crc32: u32,
}

/// One section table entry, checked.
///
/// # Example
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
/// let image = pbr_format::Image::open(path)?;
/// let s: &pbr_format::SectionInfo = &image.sections()[0];
/// println!("{} at {:#x}, crc32 {:#010x}", s.name(), s.offset, s.crc32);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    /// The kind, when this crate knows it.
    pub kind: Option<SectionKind>,
    /// The raw `kind` word.
    pub raw_kind: u32,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// crc32 of the section.
    pub crc32: u32,
}

impl SectionInfo {
    /// The display name: the kind's name, or `unknown(0x…)`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.sections()[0].name(), "PAGE_DATA");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> String {
        match self.kind {
            Some(k) => k.name().to_owned(),
            None => format!("unknown({:#010x})", self.raw_kind),
        }
    }

    /// File range as `usize` (checked against the file length on open).
    pub(crate) fn range(&self) -> Range<usize> {
        self.offset as usize..(self.offset + self.length) as usize
    }
}

/// Checks the trailer at the end of `bytes`.
pub(crate) fn parse_trailer(bytes: &[u8]) -> Result<(TableLoc, [u8; 32])> {
    let incomplete = |reason: String| Error::new(ErrorKind::Incomplete { reason });
    let len = bytes.len();
    if len < HEADER_SIZE + TRAILER_SIZE {
        return Err(incomplete(format!("the file is {len} bytes, too short to hold a header and a trailer")));
    }
    let at = len - TRAILER_SIZE;
    let Ok(t) = Trailer::read_from_bytes(&bytes[at..]) else {
        return Err(incomplete("the trailer cannot be read".into()));
    };
    if t.magic != TRAILER_MAGIC {
        return Err(incomplete(format!("no trailer magic in the last {TRAILER_SIZE} bytes")));
    }
    let crc = crc32fast::hash(&bytes[at..at + 24]);
    if crc != t.trailer_crc32.get() {
        return Err(Error::new(ErrorKind::ChecksumMismatch {
            what: "trailer".into(),
            stored: t.trailer_crc32.get(),
            computed: crc,
        })
        .at("trailer", at as u64 + 24));
    }
    let loc = TableLoc {
        offset: t.section_table_offset.get(),
        count: t.section_count.get(),
        crc32: t.section_table_crc32.get(),
    };
    if loc.count > MAX_SECTIONS {
        return Err(Error::malformed(
            "trailer",
            at as u64 + 16,
            format!("section_count {} exceeds {MAX_SECTIONS}", loc.count),
        ));
    }
    let table_end = loc.offset.checked_add(u64::from(loc.count) * SECTION_ENTRY_SIZE as u64);
    if !loc.offset.is_multiple_of(8) || loc.offset < HEADER_SIZE as u64 || table_end.is_none_or(|e| e > at as u64) {
        return Err(Error::malformed(
            "trailer",
            at as u64 + 8,
            format!("section table at {:#x} with {} entries does not fit before the trailer", loc.offset, loc.count),
        ));
    }
    Ok((loc, t.image_blake3))
}

/// Checks the section table and the crc32 of every section but `PAGE_DATA`.
pub(crate) fn parse_table(bytes: &[u8], loc: &TableLoc, page_size: u32) -> Result<Vec<SectionInfo>> {
    let start = loc.offset as usize;
    let table = &bytes[start..start + loc.count as usize * SECTION_ENTRY_SIZE];
    let crc = crc32fast::hash(table);
    if crc != loc.crc32 {
        return Err(Error::new(ErrorKind::ChecksumMismatch {
            what: "section table".into(),
            stored: loc.crc32,
            computed: crc,
        })
        .at("section table", loc.offset));
    }
    let header_size = u64::from(u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]));
    let mut out: Vec<SectionInfo> = Vec::with_capacity(loc.count as usize);
    for (i, chunk) in table.chunks_exact(SECTION_ENTRY_SIZE).enumerate() {
        let at = loc.offset + (i * SECTION_ENTRY_SIZE) as u64;
        let e =
            SectionEntry::read_from_bytes(chunk).map_err(|_| Error::malformed("section table", at, "short entry"))?;
        let raw_kind = e.kind.get();
        let kind = SectionKind::from_id(raw_kind & !MUST_UNDERSTAND);
        let must = raw_kind & MUST_UNDERSTAND != 0;
        match kind {
            None if must => {
                return Err(Error::new(ErrorKind::UnknownRequiredSection { kind: raw_kind }).at("section table", at));
            }
            Some(k) if k.must_understand() != must => {
                return Err(Error::malformed(
                    "section table",
                    at,
                    format!("section {} has the must-understand bit {}", k.name(), if must { "set" } else { "clear" }),
                ));
            }
            _ => {}
        }
        let (offset, length) = (e.offset.get(), e.length.get());
        let align = if kind == Some(SectionKind::PageData) { u64::from(page_size) } else { 8 };
        let name = kind.map_or("unknown", SectionKind::name);
        if offset % align != 0 {
            return Err(Error::malformed(
                "section table",
                at,
                format!("section {name} offset {offset:#x} is not {align}-aligned"),
            ));
        }
        if offset < header_size || offset.checked_add(length).is_none_or(|end| end > loc.offset) {
            return Err(Error::malformed(
                "section table",
                at,
                format!(
                    "section {name} at {offset:#x}+{length:#x} is outside the space between header and section table"
                ),
            ));
        }
        if let Some(k) = kind
            && out.iter().any(|s| s.kind == Some(k))
        {
            return Err(Error::malformed("section table", at, format!("section {name} appears twice")));
        }
        let info = SectionInfo { kind, raw_kind, offset, length, crc32: e.crc32.get() };
        // PAGE_DATA and PROCESSES may be gigabytes: their bytes are checked
        // piece by piece as they are read, and whole by verification.
        if kind.is_some_and(|k| !matches!(k, SectionKind::PageData | SectionKind::Processes)) {
            check_crc(bytes, &info)?;
        }
        out.push(info);
    }
    let mut sorted: Vec<&SectionInfo> = out.iter().collect();
    sorted.sort_by_key(|s| s.offset);
    for w in sorted.windows(2) {
        if w[0].offset + w[0].length > w[1].offset {
            return Err(Error::malformed(
                "section table",
                loc.offset,
                format!("sections {} and {} overlap", w[0].name(), w[1].name()),
            ));
        }
    }
    Ok(out)
}

/// Checks the crc32 of one section.
pub(crate) fn check_crc(bytes: &[u8], s: &SectionInfo) -> Result<()> {
    let computed = crc32fast::hash(&bytes[s.range()]);
    if computed != s.crc32 {
        let name = s.name();
        return Err(Error::new(ErrorKind::ChecksumMismatch {
            what: format!("section {name}"),
            stored: s.crc32,
            computed,
        })
        .at(s.kind.map_or("unknown section", SectionKind::name), s.offset));
    }
    Ok(())
}
