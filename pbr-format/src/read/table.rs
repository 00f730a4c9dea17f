//! Table sections: `count`, `record_size`, records, heap (`spec/format.md`
//! §4.1).

use std::ops::Range;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::error::{Error, Result};
use crate::pod::{TABLE_PREFIX_SIZE, TablePrefix};

/// A checked table section inside the file bytes.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// Section name for errors.
    pub name: &'static str,
    /// File offset of record 0.
    pub records: usize,
    /// Number of records.
    pub count: usize,
    /// Bytes per record.
    pub stride: usize,
    /// File range of the heap.
    pub heap: Range<usize>,
}

impl Table {
    /// Checks the prefix of the table section at `range` of `bytes`: the
    /// record size is at least `min_record` and the records fit.
    pub fn parse(
        bytes: &[u8],
        range: Range<usize>,
        name: &'static str,
        min_record: usize,
        max_count: Option<u32>,
    ) -> Result<Table> {
        let at = range.start as u64;
        let section =
            bytes.get(range.clone()).ok_or_else(|| Error::malformed(name, at, "section lies outside the file"))?;
        let (prefix, _) = TablePrefix::read_from_prefix(section).map_err(|_| {
            Error::malformed(
                name,
                at,
                format!("section is {} bytes, shorter than its 8-byte table prefix", section.len()),
            )
        })?;
        let count = prefix.count.get();
        let stride = prefix.record_size.get() as usize;
        if stride < min_record {
            return Err(Error::malformed(
                name,
                at + 4,
                format!("record_size {stride} is smaller than the {min_record} bytes of a record"),
            ));
        }
        if let Some(max) = max_count
            && count > max
        {
            return Err(Error::malformed(name, at, format!("count {count} exceeds the limit of {max}")));
        }
        let records_len = (count as usize)
            .checked_mul(stride)
            .filter(|n| *n <= section.len() - TABLE_PREFIX_SIZE)
            .ok_or_else(|| {
                Error::malformed(
                    name,
                    at,
                    format!("{count} records of {stride} bytes do not fit in the {}-byte section", section.len()),
                )
            })?;
        let records = range.start + TABLE_PREFIX_SIZE;
        Ok(Table { name, records, count: count as usize, stride, heap: records + records_len..range.end })
    }

    /// File offset of record `i`.
    pub fn offset_of(&self, i: usize) -> u64 {
        (self.records + i * self.stride) as u64
    }

    /// A copy of record `i` (the known prefix of a possibly longer record).
    pub fn record<T: FromBytes + KnownLayout + Immutable>(&self, bytes: &[u8], i: usize) -> Result<T> {
        let start = self.records + i * self.stride;
        bytes
            .get(start..start + size_of::<T>())
            .and_then(|b| T::read_from_bytes(b).ok())
            .ok_or_else(|| Error::malformed(self.name, start as u64, format!("record {i} is out of bounds")))
    }

    /// The records as a borrowed slice, when the record size is exactly
    /// `T`'s (always so for files written by format 1.0).
    pub fn slice<'a, T: FromBytes + KnownLayout + Immutable>(&self, bytes: &'a [u8]) -> Option<&'a [T]> {
        if self.stride != size_of::<T>() {
            return None;
        }
        let b = bytes.get(self.records..self.records + self.count * self.stride)?;
        <[T]>::ref_from_bytes(b).ok()
    }

    /// Heap bytes `off..off+len`, checked.
    pub fn heap_bytes<'a>(&self, bytes: &'a [u8], record: usize, off: u64, len: u64) -> Result<&'a [u8]> {
        let heap_len = (self.heap.end - self.heap.start) as u64;
        match off.checked_add(len) {
            Some(end) if end <= heap_len => Ok(&bytes[self.heap.start + off as usize..self.heap.start + end as usize]),
            _ => Err(Error::malformed(
                self.name,
                self.offset_of(record),
                format!("record {record} refers to heap bytes {off}+{len} beyond the {heap_len}-byte heap"),
            )),
        }
    }

    /// A heap string checked against `spec`.
    pub fn heap_str<'a>(&self, bytes: &'a [u8], record: usize, off: u32, len: u32, spec: &StrSpec) -> Result<&'a str> {
        let min = u32::from(!spec.allow_empty);
        if len > spec.max || len < min {
            return Err(Error::malformed(
                self.name,
                self.offset_of(record),
                format!("record {record}: {} length {len} is not in {min}..={}", spec.field, spec.max),
            ));
        }
        let b = self.heap_bytes(bytes, record, u64::from(off), u64::from(len))?;
        std::str::from_utf8(b).map_err(|e| {
            Error::malformed(
                self.name,
                self.offset_of(record),
                format!("record {record}: {} is not UTF-8 ({e})", spec.field),
            )
        })
    }
}

/// What a heap string field may hold.
pub(crate) struct StrSpec {
    /// Field name for errors.
    pub field: &'static str,
    /// Longest allowed length.
    pub max: u32,
    /// Whether the empty string is allowed.
    pub allow_empty: bool,
}
