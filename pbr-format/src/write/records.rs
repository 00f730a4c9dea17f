//! The records beside the pages: phase, vCPUs, device blobs, metadata,
//! manifest, page-cache references, disk references and the base image,
//! each checked as it is added and held until [`ImageWriter::finish`].

use crate::base::BaseRef;
use crate::device::DeviceBlob;
use crate::error::{Error, Result};
use crate::limits::{MAX_MSRS, MAX_PATH, MAX_VCPUS, MAX_XSAVE};
use crate::manifest::{CacheRef, FileEntry, check_path};
use crate::metadata::check_key;
use crate::phase::Phase;
use crate::refill::DiskRefs;
use crate::vcpu::Vcpu;

use super::ImageWriter;
use super::check::check_name;

impl ImageWriter {
    /// Sets the phase tag.
    ///
    /// # Errors
    /// A name that is empty or longer than 255 bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.set_phase(pbr_format::Phase::named("kernel", 1))?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_phase(&mut self, phase: Phase<'_>) -> Result<()> {
        check_name(&phase.name, "phase name")?;
        self.phase = Some(phase.into_owned());
        Ok(())
    }

    /// Adds a vCPU record; records are written sorted by id.
    ///
    /// # Errors
    /// A duplicate id, too many vCPUs, MSRs or XSAVE bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// let mut v = pbr_format::X86Vcpu::new(0);
    /// v.regs.rip.set(0x7c00);
    /// w.add_vcpu(pbr_format::Vcpu::X86_64(Box::new(v)))?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_vcpu(&mut self, vcpu: Vcpu) -> Result<()> {
        if self.vcpus.len() >= MAX_VCPUS as usize {
            return Err(Error::invalid(format!("more than {MAX_VCPUS} vCPUs")));
        }
        if self.vcpus.iter().any(|v| v.id() == vcpu.id()) {
            return Err(Error::invalid(format!("vCPU {} added twice", vcpu.id())));
        }
        if let Vcpu::X86_64(x) = &vcpu
            && (x.msrs.len() > MAX_MSRS as usize || x.xsave.len() > MAX_XSAVE as usize || x.xsave.len() % 4 != 0)
        {
            return Err(Error::invalid(format!(
                "vCPU {}: {} MSRs / {} XSAVE bytes exceed the limits ({MAX_MSRS}, {MAX_XSAVE}, multiple of 4)",
                x.id,
                x.msrs.len(),
                x.xsave.len()
            )));
        }
        self.vcpus.push(vcpu);
        self.vcpus.sort_by_key(Vcpu::id);
        Ok(())
    }

    /// Adds a device-state blob; blobs keep the order they are added in.
    ///
    /// # Errors
    /// A name longer than 4096 bytes.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::{DeviceBlob, DeviceOrigin};
    /// w.add_device(DeviceBlob {
    ///     origin: DeviceOrigin::VMM,
    ///     name: "serial0".into(),
    ///     instance: 0,
    ///     version: 1,
    ///     flags: 0,
    ///     data: (&[0x60u8, 0x00][..]).into(),
    /// })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_device(&mut self, blob: DeviceBlob<'_>) -> Result<()> {
        if blob.name.len() > MAX_PATH as usize {
            return Err(Error::invalid(format!("device name of {} bytes exceeds {MAX_PATH}", blob.name.len())));
        }
        self.devices.push(DeviceBlob {
            name: blob.name.into_owned().into(),
            data: blob.data.into_owned().into(),
            ..blob
        });
        Ok(())
    }

    /// Sets metadata `key` to `value`, replacing an earlier value.
    ///
    /// # Errors
    /// A key outside `[a-z0-9._-]{1,255}`.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.set_metadata("guest.kernel", "6.1.0-28-cloud-amd64")?;
    /// assert!(w.set_metadata("Not A Key", "x").is_err());
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        check_key(key).map_err(Error::invalid)?;
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.metadata.push((key.to_owned(), value.to_owned())),
        }
        Ok(())
    }

    /// Adds a file to the manifest and returns its index.
    ///
    /// # Errors
    /// A path that is absolute or has an empty, `.` or `..` component.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::FileEntry;
    /// let i = w.add_file(FileEntry { path: "etc/hostname".into(), size: 4, mtime_ns: 0, inode: 42, blake3: *blake3::hash(b"lab\n").as_bytes(), cache_only: false })?;
    /// assert_eq!(i, 0);
    /// assert!(w.add_file(FileEntry { path: "../etc/passwd".into(), size: 0, mtime_ns: 0, inode: 0, blake3: [0; 32], cache_only: false }).is_err());
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_file(&mut self, file: FileEntry<'_>) -> Result<u32> {
        check_path(&file.path).map_err(Error::invalid)?;
        self.manifest.push(FileEntry { path: file.path.into_owned().into(), ..file });
        Ok((self.manifest.len() - 1) as u32)
    }

    /// Adds a page-cache back reference.
    ///
    /// # Errors
    /// A file index not in the manifest, a page outside every region, or a
    /// page that already has one.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{ImageWriter, PageClass, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// use pbr_format::{CacheRef, FileEntry};
    /// let file = w.add_file(FileEntry { path: "usr/bin/app".into(), size: 8192, mtime_ns: 0, inode: 7, blake3: [0; 32], cache_only: false })?;
    /// w.write_page(3, &[1; 4096], PageClass::Cache)?;
    /// // Page 3 caches the second page of usr/bin/app.
    /// w.add_cache_ref(CacheRef { gfn: 3, file_index: file, offset: 4096 })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_cache_ref(&mut self, r: CacheRef) -> Result<()> {
        if r.file_index as usize >= self.manifest.len() {
            return Err(Error::invalid(format!("cache ref names file {} of {}", r.file_index, self.manifest.len())));
        }
        self.pages.dense(r.gfn)?;
        match self.cache_refs.binary_search_by_key(&r.gfn, |c| c.gfn) {
            Ok(_) => Err(Error::invalid(format!("page {:#x} has two cache refs", r.gfn))),
            Err(i) => {
                self.cache_refs.insert(i, r);
                Ok(())
            }
        }
    }

    /// Sets the image's disk references (`spec/format.md` §7.8), replacing
    /// any set before. An image with them is written as format 1.1.
    ///
    /// # Errors
    /// References that break §7.8's rules, or name a page outside every
    /// region.
    ///
    /// # Example
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use pbr_format::{DiskRef, DiskRefs, ImageWriter, PageClass, PageEncoding, Region, WriterOptions};
    /// let mut w = ImageWriter::create(dir.path().join("g.pbr"), &[Region::ram("ram", 0, 16 * 4096)], WriterOptions::default())?;
    /// w.mark_pages(3, 1, PageEncoding::Trimmed, PageClass::Cache)?;
    /// let page = DiskRef { gfn: 3, disk: 0, disk_offset: 8192, length: 4096, crc32: 0, file: 0, file_offset: 0 };
    /// w.set_disk_refs(DiskRefs { files: vec!["usr/bin/app".into()], pages: vec![page] })?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_disk_refs(&mut self, refs: DiskRefs) -> Result<()> {
        refs.check(self.opts.page_size).map_err(|(i, m)| {
            Error::invalid(format!("disk reference {}: {m}", i.map_or("files".into(), |i| i.to_string())))
        })?;
        for r in &refs.pages {
            self.pages.dense(r.gfn)?;
        }
        self.disk_refs = refs;
        Ok(())
    }

    /// Names the base image of a diff.
    ///
    /// # Errors
    /// A base page size that differs from this image's.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// use pbr_format::{BaseRef, Image, ImageWriter, PageClass, PageEncoding, WriterOptions};
    /// let base = Image::open(path)?;
    /// # let dir = tempfile::tempdir()?;
    /// let opts = WriterOptions { unwritten: PageEncoding::Base, ..WriterOptions::default() };
    /// let mut w = ImageWriter::create(dir.path().join("d.pbr"), base.regions(), opts)?;
    /// w.set_base(BaseRef { blake3: base.image_blake3(), result_blake3: None, page_size: base.page_size(), name: "sample.pbr".into() })?;
    /// w.write_page(5, &[0xee; 4096], PageClass::Kernel)?; // the one page that changed
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_base(&mut self, base: BaseRef<'_>) -> Result<()> {
        if base.page_size != self.opts.page_size {
            return Err(Error::invalid("the base image has another page size"));
        }
        self.base = Some(BaseRef { name: base.name.into_owned().into(), ..base });
        Ok(())
    }
}
