//! The checked, zero-copy view of a `PROCESSES` section (`spec/format.md`
//! §7.9): the index is checked whole when the section is read, each blob's
//! bytes when they are asked for.

use std::collections::HashSet;
use std::fmt;

use zerocopy::FromBytes;

use crate::error::{Error, ErrorKind, Result};
use crate::limits::{MAX_PROCESS_BLOBS, MAX_PROCESS_BYTES, MAX_PROCESS_UNITS};
use crate::read::Image;
use crate::section::SectionKind;
use crate::write::ProcessesBuilder;

use super::names::{check_blob_name, check_release, check_unit_name};
use super::pod::{ProcessBlobRecord, ProcessUnitRecord, ProcessesHeader};

/// The section's name in errors.
const SECTION: &str = "PROCESSES";
/// Bytes of the section's head.
const HEAD: usize = size_of::<ProcessesHeader>();

/// The processes checkpointed from a guest for a kernel update: a checked
/// view borrowed from the image, built by [`Image::processes`] or
/// [`Processes::parse`].
///
/// # Example
/// ```
/// use pbr_format::{Image, ImageWriter, ProcessesBuilder, Region, WriterOptions};
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("g.pbr");
/// let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
/// let mut p = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// let nginx = p.add_unit("nginx.service")?;
/// p.add_blob(nginx, "inventory.img", vec![1, 2, 3])?;
/// w.set_processes(p)?;
/// w.finish()?;
///
/// let image = Image::open(&path)?;
/// let p = image.processes()?.expect("a PROCESSES section");
/// assert_eq!((p.kernel(), p.criu_version()), ("6.1.0-28-cloud-amd64", "3.19"));
/// for unit in p.units() {
///     for blob in unit.blobs {
///         println!("{} {} {} bytes", unit.name, blob.name, blob.bytes()?.len());
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Processes<'a> {
    kernel: &'a str,
    criu_version: &'a str,
    /// Each unit's name and the range of its blobs in `blobs`.
    units: Vec<(&'a str, std::ops::Range<usize>)>,
    blobs: Vec<ProcessBlob<'a>>,
}

/// One checkpointed systemd unit and its blobs.
///
/// # Example
/// ```
/// use pbr_format::{Processes, ProcessesBuilder};
/// let mut b = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// let u = b.add_unit("nginx.service")?;
/// b.add_blob(u, "pstree.img", vec![0; 12])?;
/// let bytes = b.to_bytes()?;
/// let p = Processes::parse(&bytes, 0)?;
/// let unit = p.unit("nginx.service").unwrap();
/// assert_eq!((unit.index, unit.blobs.len(), unit.bytes()), (0, 1, 12));
/// assert!(unit.blob("pstree.img").is_some());
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUnit<'a> {
    /// Index of the unit record.
    pub index: u32,
    /// The unit's name (`nginx.service`).
    pub name: &'a str,
    /// The unit's blobs, in file order.
    pub blobs: &'a [ProcessBlob<'a>],
}

impl<'a> ProcessUnit<'a> {
    /// The blob named `name`, if the unit has one.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = b.add_unit("a.service")?;
    /// b.add_blob(u, "core-1.img", vec![7])?;
    /// let bytes = b.to_bytes()?;
    /// let p = Processes::parse(&bytes, 0)?;
    /// let unit = p.units().next().unwrap();
    /// assert_eq!(unit.blob("core-1.img").map(|b| b.len()), Some(1));
    /// assert!(unit.blob("core-2.img").is_none());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn blob(&self, name: &str) -> Option<&'a ProcessBlob<'a>> {
        self.blobs.iter().find(|b| b.name == name)
    }

    /// Bytes of all the unit's blobs.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = b.add_unit("a.service")?;
    /// b.add_blob(u, "core-1.img", vec![7; 10])?;
    /// b.add_blob(u, "mm-1.img", vec![7; 5])?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(Processes::parse(&bytes, 0)?.units().next().unwrap().bytes(), 15);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(ProcessBlob::len).sum()
    }
}

/// One blob: a CRIU image file of one unit. Its bytes are handed out only
/// after they match their crc32.
///
/// # Example
/// ```
/// use pbr_format::{Processes, ProcessesBuilder};
/// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
/// let u = b.add_unit("a.service")?;
/// b.add_blob(u, "pstree.img", b"tree".to_vec())?;
/// let mut bytes = b.to_bytes()?;
/// let p = Processes::parse(&bytes, 0)?;
/// let blob = p.blobs()[0];
/// assert_eq!((blob.unit, blob.name, blob.bytes()?), ("a.service", "pstree.img", &b"tree"[..]));
/// // A damaged blob is refused, with where its bytes are.
/// let at = blob.offset as usize;
/// bytes[at] ^= 1;
/// let p = Processes::parse(&bytes, 0)?;
/// let err = p.blobs()[0].bytes().unwrap_err();
/// assert!(err.is_damage());
/// assert_eq!(err.offset(), Some(at as u64));
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProcessBlob<'a> {
    /// The name of the unit it belongs to.
    pub unit: &'a str,
    /// The file name (`pstree.img`).
    pub name: &'a str,
    /// crc32 of the bytes, as recorded.
    pub crc32: u32,
    /// File offset of the bytes.
    pub offset: u64,
    data: &'a [u8],
}

impl fmt::Debug for ProcessBlob<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessBlob")
            .field("unit", &self.unit)
            .field("name", &self.name)
            .field("crc32", &self.crc32)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

impl<'a> ProcessBlob<'a> {
    /// Length of the bytes.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = b.add_unit("a.service")?;
    /// b.add_blob(u, "fs-1.img", vec![1; 3])?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(Processes::parse(&bytes, 0)?.blobs()[0].len(), 3);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Whether the blob holds no byte.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = b.add_unit("a.service")?;
    /// b.add_blob(u, "empty.img", Vec::new())?;
    /// let bytes = b.to_bytes()?;
    /// assert!(Processes::parse(&bytes, 0)?.blobs()[0].is_empty());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes, once they match their crc32.
    ///
    /// # Errors
    /// [`ErrorKind::ChecksumMismatch`] naming the unit and the blob, at the
    /// file offset of the bytes.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = b.add_unit("a.service")?;
    /// b.add_blob(u, "fs-1.img", b"abc".to_vec())?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(Processes::parse(&bytes, 0)?.blobs()[0].bytes()?, b"abc");
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn bytes(&self) -> Result<&'a [u8]> {
        let computed = crc32fast::hash(self.data);
        if computed != self.crc32 {
            return Err(Error::new(ErrorKind::ChecksumMismatch {
                what: format!("blob {} of unit {}", self.name, self.unit),
                stored: self.crc32,
                computed,
            })
            .at(SECTION, self.offset));
        }
        Ok(self.data)
    }
}

impl<'a> Processes<'a> {
    /// Checks the bytes of a `PROCESSES` section found at file offset
    /// `offset` (which errors name) and views them: the index's crc32, the
    /// strings, the names and every reference. Blob bytes are checked only
    /// when read ([`ProcessBlob::bytes`]).
    ///
    /// # Errors
    /// [`ErrorKind::ChecksumMismatch`] for a damaged index;
    /// [`ErrorKind::Malformed`] naming the record and its offset for
    /// anything that breaks `spec/format.md` §7.9.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{ErrorKind, Processes, ProcessesBuilder};
    /// let mut b = ProcessesBuilder::new("6.1.0", "3.19")?;
    /// b.add_unit("a.service")?;
    /// let mut bytes = b.to_bytes()?;
    /// assert_eq!(Processes::parse(&bytes, 0)?.units().len(), 1);
    /// bytes[50] ^= 1;
    /// let err = Processes::parse(&bytes, 0x1000).unwrap_err();
    /// assert!(matches!(err.kind(), ErrorKind::ChecksumMismatch { .. }));
    /// assert_eq!((err.section(), err.offset()), (Some("PROCESSES"), Some(0x1000)));
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn parse(section: &'a [u8], offset: u64) -> Result<Processes<'a>> {
        let at = |rel: usize| offset + rel as u64;
        let bad = |rel: usize, msg: String| Error::malformed(SECTION, at(rel), msg);
        let (h, _) = ProcessesHeader::read_from_prefix(section)
            .map_err(|_| bad(0, format!("section is {} bytes, shorter than its {HEAD}-byte head", section.len())))?;
        let (unit_count, unit_size) = (h.unit_count.get() as usize, h.unit_record_size.get() as usize);
        let (blob_count, blob_size) = (h.blob_count.get() as usize, h.blob_record_size.get() as usize);
        // Two u32 × u32 products and more do not fit a u64; they fit a u128.
        let blobs_at = HEAD as u128 + unit_count as u128 * unit_size as u128;
        let strings_at = blobs_at + blob_count as u128 * blob_size as u128;
        let index_end = strings_at + u128::from(h.strings_len.get());
        if index_end > section.len() as u128 {
            return Err(bad(
                4,
                format!(
                    "{unit_count} unit records, {blob_count} blob records and {} string bytes do not fit in the \
                     {}-byte section",
                    h.strings_len.get(),
                    section.len()
                ),
            ));
        }
        let (blobs_at, strings_at, index_end) = (blobs_at as usize, strings_at as usize, index_end as usize);
        let computed = crc32fast::hash(&section[4..index_end]);
        if computed != h.index_crc32.get() {
            return Err(Error::new(ErrorKind::ChecksumMismatch {
                what: "PROCESSES index".into(),
                stored: h.index_crc32.get(),
                computed,
            })
            .at(SECTION, offset));
        }
        if unit_size < size_of::<ProcessUnitRecord>() || blob_size < size_of::<ProcessBlobRecord>() {
            return Err(bad(8, format!("record sizes {unit_size} and {blob_size} are under 16 and 32 bytes")));
        }
        if unit_count == 0 || unit_count > MAX_PROCESS_UNITS as usize {
            return Err(bad(4, format!("unit_count {unit_count} is not in 1..={MAX_PROCESS_UNITS}")));
        }
        if blob_count > MAX_PROCESS_BLOBS as usize {
            return Err(bad(12, format!("blob_count {blob_count} exceeds {MAX_PROCESS_BLOBS}")));
        }
        let strings = &section[strings_at..index_end];
        let string = |rel: usize, off: u32, len: u32, what: &str| -> Result<&'a str> {
            let b = (off as usize).checked_add(len as usize).and_then(|end| strings.get(off as usize..end));
            let b = b.ok_or_else(|| {
                bad(rel, format!("{what} at {off}+{len} lies beyond the {}-byte string area", strings.len()))
            })?;
            std::str::from_utf8(b).map_err(|e| bad(rel, format!("{what} is not UTF-8 ({e})")))
        };
        let kernel = string(24, h.kernel_off.get(), h.kernel_len.get(), "kernel release")?;
        check_release("kernel release", kernel).map_err(|m| bad(24, m))?;
        let criu_version = string(32, h.criu_off.get(), h.criu_len.get(), "CRIU version")?;
        check_release("CRIU version", criu_version).map_err(|m| bad(32, m))?;

        let mut names: Vec<&'a str> = Vec::with_capacity(unit_count);
        for i in 0..unit_count {
            let rel = HEAD + i * unit_size;
            let (r, _) = ProcessUnitRecord::read_from_prefix(&section[rel..])
                .map_err(|_| bad(rel, format!("unit record {i} is out of bounds")))?;
            let name = string(rel, r.name_off.get(), r.name_len.get(), &format!("unit {i}'s name"))?;
            check_unit_name(name).map_err(|m| bad(rel, format!("unit {i}: {m}")))?;
            if names.contains(&name) {
                return Err(bad(rel, format!("unit {i}: {name} appears twice")));
            }
            names.push(name);
        }

        let data = &section[index_end..];
        let mut blobs: Vec<ProcessBlob<'a>> = Vec::with_capacity(blob_count);
        let mut per_unit = vec![0usize; unit_count];
        let mut in_unit: HashSet<&'a str> = HashSet::new();
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(blob_count);
        let (mut total, mut last_unit) = (0u64, 0usize);
        for j in 0..blob_count {
            let rel = blobs_at + j * blob_size;
            let (r, _) = ProcessBlobRecord::read_from_prefix(&section[rel..])
                .map_err(|_| bad(rel, format!("blob record {j} is out of bounds")))?;
            let unit = r.unit.get() as usize;
            let Some(&unit_name) = names.get(unit) else {
                return Err(bad(rel, format!("blob {j} names unit {unit} of {unit_count}")));
            };
            if unit < last_unit {
                return Err(bad(rel, format!("blob {j} of unit {unit} follows a blob of unit {last_unit}")));
            }
            if unit != last_unit {
                in_unit.clear();
                last_unit = unit;
            }
            let name = string(rel, r.name_off.get(), r.name_len.get(), &format!("blob {j}'s name"))?;
            check_blob_name(name).map_err(|m| bad(rel, format!("blob {j} of {unit_name}: {m}")))?;
            if !in_unit.insert(name) {
                return Err(bad(rel, format!("blob {j}: {unit_name} has two blobs named {name}")));
            }
            let (off, len) = (r.data_off.get(), r.data_len.get());
            let end = off.checked_add(len).filter(|&e| e <= data.len() as u64).ok_or_else(|| {
                bad(
                    rel,
                    format!(
                        "blob {j} ({name} of {unit_name}) at {off}+{len} lies beyond the {}-byte data area",
                        data.len()
                    ),
                )
            })?;
            total += len;
            if total > MAX_PROCESS_BYTES {
                return Err(bad(rel, format!("blob {j}: the blobs hold more than {MAX_PROCESS_BYTES} bytes")));
            }
            if len > 0 {
                spans.push((off, end, j));
            }
            per_unit[unit] += 1;
            blobs.push(ProcessBlob {
                unit: unit_name,
                name,
                crc32: r.crc32.get(),
                offset: at(index_end) + off,
                data: &data[off as usize..end as usize],
            });
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[0].1 > w[1].0) {
            let (a, b) = (w[0].2.min(w[1].2), w[0].2.max(w[1].2));
            return Err(bad(blobs_at + b * blob_size, format!("the bytes of blobs {a} and {b} overlap")));
        }
        let mut start = 0;
        let units = names
            .into_iter()
            .zip(per_unit)
            .map(|(name, n)| {
                start += n;
                (name, start - n..start)
            })
            .collect();
        Ok(Processes { kernel, criu_version, units, blobs })
    }

    /// The release of the kernel the processes were dumped from (`uname -r`
    /// in the guest).
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
    /// b.add_unit("a.service")?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(pbr_format::Processes::parse(&bytes, 0)?.kernel(), "6.1.0-28-cloud-amd64");
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn kernel(&self) -> &'a str {
        self.kernel
    }

    /// The version of the CRIU that dumped them.
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// b.add_unit("a.service")?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(pbr_format::Processes::parse(&bytes, 0)?.criu_version(), "3.19");
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn criu_version(&self) -> &'a str {
        self.criu_version
    }

    /// The units, in file order, each with its blobs.
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// b.add_unit("a.service")?;
    /// b.add_unit("b.service")?;
    /// let bytes = b.to_bytes()?;
    /// let p = pbr_format::Processes::parse(&bytes, 0)?;
    /// let names: Vec<&str> = p.units().map(|u| u.name).collect();
    /// assert_eq!(names, ["a.service", "b.service"]);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn units(&self) -> impl ExactSizeIterator<Item = ProcessUnit<'_>> {
        self.units.iter().enumerate().map(|(i, (name, blobs))| ProcessUnit {
            index: i as u32,
            name,
            blobs: &self.blobs[blobs.clone()],
        })
    }

    /// The unit named `name`, if there is one.
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// b.add_unit("a.service")?;
    /// let bytes = b.to_bytes()?;
    /// let p = pbr_format::Processes::parse(&bytes, 0)?;
    /// assert_eq!(p.unit("a.service").map(|u| u.index), Some(0));
    /// assert!(p.unit("b.service").is_none());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn unit(&self, name: &str) -> Option<ProcessUnit<'_>> {
        self.units().find(|u| u.name == name)
    }

    /// Every blob, in file order (sorted by unit).
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let a = b.add_unit("a.service")?;
    /// let c = b.add_unit("c.service")?;
    /// b.add_blob(c, "x.img", vec![1])?;
    /// b.add_blob(a, "y.img", vec![2])?;
    /// let bytes = b.to_bytes()?;
    /// let p = pbr_format::Processes::parse(&bytes, 0)?;
    /// let all: Vec<(&str, &str)> = p.blobs().iter().map(|b| (b.unit, b.name)).collect();
    /// assert_eq!(all, [("a.service", "y.img"), ("c.service", "x.img")]);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn blobs(&self) -> &[ProcessBlob<'a>] {
        &self.blobs
    }

    /// Bytes of all the blobs together.
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let a = b.add_unit("a.service")?;
    /// b.add_blob(a, "x.img", vec![1; 100])?;
    /// let bytes = b.to_bytes()?;
    /// assert_eq!(pbr_format::Processes::parse(&bytes, 0)?.total_bytes(), 100);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(ProcessBlob::len).sum()
    }

    /// A builder holding the same units and blobs, to write them into
    /// another image. Every blob's bytes are checked on the way.
    ///
    /// # Errors
    /// A blob whose bytes do not match their crc32.
    ///
    /// # Example
    /// ```
    /// let mut b = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let a = b.add_unit("a.service")?;
    /// b.add_blob(a, "x.img", vec![1; 100])?;
    /// let bytes = b.to_bytes()?;
    /// let copy = pbr_format::Processes::parse(&bytes, 0)?.to_builder()?;
    /// assert_eq!(copy.to_bytes()?, bytes);
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn to_builder(&self) -> Result<ProcessesBuilder> {
        let mut b = ProcessesBuilder::new(self.kernel, self.criu_version)?;
        for unit in self.units() {
            let u = b.add_unit(unit.name)?;
            for blob in unit.blobs {
                b.add_blob(u, blob.name, blob.bytes()?.to_vec())?;
            }
        }
        Ok(b)
    }
}

impl Image {
    /// The processes checkpointed from the guest for a kernel update
    /// (`spec/format.md` §7.9), when the image has them. The section is
    /// checked when this is called, not when the image is opened: a
    /// damaged one does not keep the machine's image from being read.
    ///
    /// # Errors
    /// As [`Processes::parse`].
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert!(image.processes()?.is_none());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn processes(&self) -> Result<Option<Processes<'_>>> {
        let Some(s) = self.sections().iter().find(|s| s.kind == Some(SectionKind::Processes)) else {
            return Ok(None);
        };
        Processes::parse(&self.as_bytes()[s.range()], s.offset).map(Some)
    }
}
