//! Building a `PROCESSES` section (`spec/format.md` §7.9): units and their
//! blobs, checked as they are added, laid out as the index (head, records,
//! strings, under its crc32) then the blobs' bytes.

use zerocopy::IntoBytes;
use zerocopy::little_endian::{U32, U64};

use crate::error::{Error, Result};
use crate::limits::{MAX_PROCESS_BLOBS, MAX_PROCESS_BYTES, MAX_PROCESS_UNITS};
use crate::processes::names::{check_blob_name, check_release, check_unit_name};
use crate::processes::pod::{ProcessBlobRecord, ProcessUnitRecord, ProcessesHeader};

use super::ImageWriter;

/// One unit being built: its name and its blobs' names and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UnitBuf {
    name: String,
    blobs: Vec<(String, Vec<u8>)>,
}

/// The processes of a guest checkpointed with CRIU, to be written as a
/// `PROCESSES` section ([`ImageWriter::set_processes`]): the kernel release
/// they were dumped from, the CRIU version, and per systemd unit, CRIU's
/// image files (*blobs*). Everything is checked as it is added, against
/// the rules and limits a reader checks.
///
/// # Example
/// ```
/// use pbr_format::ProcessesBuilder;
/// let mut p = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
/// let nginx = p.add_unit("nginx.service")?;
/// p.add_blob(nginx, "pstree.img", vec![0x19, 0x43, 0x56, 0x54])?;
/// assert!(p.add_blob(nginx, "../../etc/passwd", Vec::new()).is_err());
/// assert!(p.add_blob(nginx, "pstree.img", Vec::new()).is_err(), "a second pstree.img");
/// # Ok::<(), pbr_format::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessesBuilder {
    kernel: String,
    criu_version: String,
    units: Vec<UnitBuf>,
    blobs: usize,
    bytes: u64,
}

impl ProcessesBuilder {
    /// Processes dumped from kernel release `kernel` (`uname -r`) by CRIU
    /// version `criu_version`, with no unit yet.
    ///
    /// # Errors
    /// A string that is empty, over 64 bytes or holds a control character.
    ///
    /// # Example
    /// ```
    /// use pbr_format::ProcessesBuilder;
    /// assert!(ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19").is_ok());
    /// assert!(ProcessesBuilder::new("6.1.0\x1b[2J", "3.19").is_err());
    /// ```
    pub fn new(kernel: &str, criu_version: &str) -> Result<ProcessesBuilder> {
        check_release("kernel release", kernel).map_err(Error::invalid)?;
        check_release("CRIU version", criu_version).map_err(Error::invalid)?;
        Ok(ProcessesBuilder {
            kernel: kernel.to_owned(),
            criu_version: criu_version.to_owned(),
            units: Vec::new(),
            blobs: 0,
            bytes: 0,
        })
    }

    /// Adds the systemd unit `name` and returns its index, for
    /// [`ProcessesBuilder::add_blob`].
    ///
    /// # Errors
    /// A name that is not a service's ([`crate::check_unit_name`]), one
    /// added before, or more than 64 units.
    ///
    /// # Example
    /// ```
    /// let mut p = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// assert_eq!(p.add_unit("nginx.service")?, 0);
    /// assert_eq!(p.add_unit("postgresql@15-main.service")?, 1);
    /// assert!(p.add_unit("nginx.service").is_err());
    /// assert!(p.add_unit("sshd.socket").is_err());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn add_unit(&mut self, name: &str) -> Result<u32> {
        check_unit_name(name).map_err(Error::invalid)?;
        if self.units.iter().any(|u| u.name == name) {
            return Err(Error::invalid(format!("unit {name} added twice")));
        }
        if self.units.len() >= MAX_PROCESS_UNITS as usize {
            return Err(Error::invalid(format!("more than {MAX_PROCESS_UNITS} units")));
        }
        self.units.push(UnitBuf { name: name.to_owned(), blobs: Vec::new() });
        Ok(self.units.len() as u32 - 1)
    }

    /// Adds the blob `name` (a CRIU image file) holding `data` to unit
    /// `unit`.
    ///
    /// # Errors
    /// No such unit, a name CRIU would not give a file
    /// ([`crate::check_blob_name`]) or one the unit already has, more than
    /// 4096 blobs, or more than 1 GiB of blobs.
    ///
    /// # Example
    /// ```
    /// let mut p = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// let u = p.add_unit("nginx.service")?;
    /// p.add_blob(u, "core-812.img", vec![0; 64])?;
    /// assert!(p.add_blob(u, "a/b", vec![]).is_err());
    /// assert!(p.add_blob(7, "core-813.img", vec![]).is_err());
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn add_blob(&mut self, unit: u32, name: &str, data: Vec<u8>) -> Result<()> {
        check_blob_name(name).map_err(Error::invalid)?;
        let count = self.units.len();
        let u = self
            .units
            .get_mut(unit as usize)
            .ok_or_else(|| Error::invalid(format!("blob {name} names unit {unit} of {count}")))?;
        if u.blobs.iter().any(|(n, _)| n == name) {
            return Err(Error::invalid(format!("unit {} has two blobs named {name}", u.name)));
        }
        if self.blobs >= MAX_PROCESS_BLOBS as usize {
            return Err(Error::invalid(format!("more than {MAX_PROCESS_BLOBS} blobs")));
        }
        let bytes = self.bytes + data.len() as u64;
        if bytes > MAX_PROCESS_BYTES {
            return Err(Error::invalid(format!("the blobs hold more than {MAX_PROCESS_BYTES} bytes")));
        }
        u.blobs.push((name.to_owned(), data));
        self.blobs += 1;
        self.bytes = bytes;
        Ok(())
    }

    /// The section's bytes.
    ///
    /// # Errors
    /// No unit was added: a section holds at least one.
    ///
    /// # Example
    /// ```
    /// let mut p = pbr_format::ProcessesBuilder::new("6.1.0", "3.19")?;
    /// assert!(p.to_bytes().is_err(), "no unit yet");
    /// let u = p.add_unit("a.service")?;
    /// p.add_blob(u, "x.img", b"xyz".to_vec())?;
    /// let bytes = p.to_bytes()?;
    /// assert!(bytes.ends_with(b"xyz"));
    /// # Ok::<(), pbr_format::Error>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_into(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    /// Hands the section's bytes to `out`, in order: the index, then each
    /// blob's bytes.
    pub(super) fn write_into(&self, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if self.units.is_empty() {
            return Err(Error::invalid("a PROCESSES section needs at least one unit"));
        }
        let mut strings: Vec<u8> = Vec::new();
        // Each string's (offset, length) in the string area; every one is
        // short and there are few, so u32 holds them.
        let mut string = |s: &str| {
            let at = (U32::new(strings.len() as u32), U32::new(s.len() as u32));
            strings.extend_from_slice(s.as_bytes());
            at
        };
        let (kernel_off, kernel_len) = string(&self.kernel);
        let (criu_off, criu_len) = string(&self.criu_version);
        let mut units = Vec::with_capacity(self.units.len());
        let mut blobs = Vec::with_capacity(self.blobs);
        let mut data_off = 0u64;
        for (i, u) in self.units.iter().enumerate() {
            let (name_off, name_len) = string(&u.name);
            units.push(ProcessUnitRecord { name_off, name_len, reserved: [0; 8] });
            for (name, data) in &u.blobs {
                let (name_off, name_len) = string(name);
                blobs.push(ProcessBlobRecord {
                    unit: U32::new(i as u32),
                    name_off,
                    name_len,
                    crc32: U32::new(crc32fast::hash(data)),
                    data_off: U64::new(data_off),
                    data_len: U64::new(data.len() as u64),
                });
                data_off += data.len() as u64;
            }
        }
        let head = ProcessesHeader {
            index_crc32: U32::new(0),
            unit_count: U32::new(units.len() as u32),
            unit_record_size: U32::new(size_of::<ProcessUnitRecord>() as u32),
            blob_count: U32::new(blobs.len() as u32),
            blob_record_size: U32::new(size_of::<ProcessBlobRecord>() as u32),
            strings_len: U32::new(strings.len() as u32),
            kernel_off,
            kernel_len,
            criu_off,
            criu_len,
            reserved: [0; 8],
        };
        let mut index = head.as_bytes().to_vec();
        index.extend_from_slice(units.as_bytes());
        index.extend_from_slice(blobs.as_bytes());
        index.extend_from_slice(&strings);
        let crc = crc32fast::hash(&index[4..]);
        index[..4].copy_from_slice(&crc.to_le_bytes());
        out(&index)?;
        for (_, data) in self.units.iter().flat_map(|u| &u.blobs) {
            out(data)?;
        }
        Ok(())
    }
}

impl ImageWriter {
    /// Sets the processes checkpointed from the guest (`spec/format.md`
    /// §7.9), replacing any set before. An image with them is written as
    /// format 1.2.
    ///
    /// # Errors
    /// A builder with no unit.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{Image, ImageWriter, ProcessesBuilder, Region, WriterOptions};
    /// let path = dir.path().join("g.pbr");
    /// let mut w = ImageWriter::create(&path, &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// let mut p = ProcessesBuilder::new("6.1.0-28-cloud-amd64", "3.19")?;
    /// assert!(w.set_processes(p.clone()).is_err(), "no unit");
    /// p.add_unit("nginx.service")?;
    /// w.set_processes(p)?;
    /// w.finish()?;
    /// let image = Image::open(&path)?;
    /// assert_eq!(image.header().version_minor, 2);
    /// assert_eq!(image.processes()?.unwrap().units().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_processes(&mut self, processes: ProcessesBuilder) -> Result<()> {
        if processes.units.is_empty() {
            return Err(Error::invalid("a PROCESSES section needs at least one unit"));
        }
        self.processes = Some(processes);
        Ok(())
    }
}
