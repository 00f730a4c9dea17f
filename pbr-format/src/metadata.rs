//! Key/value metadata (`spec/format.md` §7.4).

use crate::limits::MAX_NAME;

/// Checks that `key` is a metadata key: 1..=255 bytes of `[a-z0-9._-]`.
///
/// # Errors
/// Returns a message naming what is wrong with the key.
///
/// # Example
/// ```
/// use pbr_format::check_key;
/// assert!(check_key("guest.kernel").is_ok());
/// assert!(check_key("Guest Kernel").is_err());
/// ```
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_NAME as usize {
        return Err(format!("metadata key length {} is not in 1..={MAX_NAME}", key.len()));
    }
    if let Some(c) =
        key.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("metadata key '{key}' has character {c:?} outside [a-z0-9._-]"));
    }
    Ok(())
}

/// The well-known metadata keys of `spec/format.md` §7.4, one constant per
/// row of its table; [`keys::ALL`] lists them in the table's order.
pub mod keys {
    /// `source.format`: which format the image was converted from: `qemu`, `xl`,
    /// `vmm`.
    ///
    /// # Example
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/v1.0/sample.pbr");
    /// let image = pbr_format::Image::open(path)?;
    /// assert_eq!(image.metadata_value(pbr_format::keys::SOURCE_FORMAT), Some("vmm"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub const SOURCE_FORMAT: &str = "source.format";

    /// `qemu.machine`: the resolved machine type, e.g. `pc-q35-7.2`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::QEMU_MACHINE, "qemu.machine");
    /// ```
    pub const QEMU_MACHINE: &str = "qemu.machine";

    /// `qemu.capabilities`: the migration capabilities of the QEMU stream's
    /// configuration section, a comma list, when any (`spec/qemu.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::QEMU_CAPABILITIES, "qemu.capabilities");
    /// ```
    pub const QEMU_CAPABILITIES: &str = "qemu.capabilities";

    /// `qemu.version`: the version of the QEMU that wrote the stream, when known.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::QEMU_VERSION, "qemu.version");
    /// ```
    pub const QEMU_VERSION: &str = "qemu.version";

    /// `qemu.version_at_least`: the oldest QEMU that can have written the stream,
    /// inferred from it.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::QEMU_VERSION_AT_LEAST, "qemu.version_at_least");
    /// ```
    pub const QEMU_VERSION_AT_LEAST: &str = "qemu.version_at_least";

    /// `guest.ram_size`: the guest's RAM in bytes, decimal.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::GUEST_RAM_SIZE, "guest.ram_size");
    /// ```
    pub const GUEST_RAM_SIZE: &str = "guest.ram_size";

    /// `restore.cmdline`: the command line a restore must repeat: a JSON array of
    /// argument strings (or, from older producers, one line split on white space).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::RESTORE_CMDLINE, "restore.cmdline");
    /// ```
    pub const RESTORE_CMDLINE: &str = "restore.cmdline";

    /// `classes.source`: how page classes were obtained: `kpageflags` (the guest's
    /// `/proc/kpageflags`), `bitmap` (a class map from the VMM), `converter` (only
    /// zero pages known).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::CLASSES_SOURCE, "classes.source");
    /// ```
    pub const CLASSES_SOURCE: &str = "classes.source";

    /// `classes.kernel_pages`: from a capture that classified with kpageflags: the
    /// stored `kernel` pages by kind, JSON `{"reserved", "slab", "page_tables",
    /// "other"}`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::CLASSES_KERNEL_PAGES, "classes.kernel_pages");
    /// ```
    pub const CLASSES_KERNEL_PAGES: &str = "classes.kernel_pages";

    /// `guest.kernel`: the guest kernel version, when known.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::GUEST_KERNEL, "guest.kernel");
    /// ```
    pub const GUEST_KERNEL: &str = "guest.kernel";

    /// `xl.config`: the JSON domain configuration of an `xl save` file.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::XL_CONFIG, "xl.config");
    /// ```
    pub const XL_CONFIG: &str = "xl.config";

    /// `xen.guest_type`: from an `xl save` file: the guest type, `hvm` or `pv`
    /// (`spec/xen.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::XEN_GUEST_TYPE, "xen.guest_type");
    /// ```
    pub const XEN_GUEST_TYPE: &str = "xen.guest_type";

    /// `xen.libxc_version`: from an `xl save` file: the libxc stream version
    /// (`spec/xen.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::XEN_LIBXC_VERSION, "xen.libxc_version");
    /// ```
    pub const XEN_LIBXC_VERSION: &str = "xen.libxc_version";

    /// `xen.version`: from an `xl save` file: the saver's Xen version,
    /// `major.minor` (`spec/xen.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::XEN_VERSION, "xen.version");
    /// ```
    pub const XEN_VERSION: &str = "xen.version";

    /// `xen.checkpoint`: from an `xl save` file: the checkpoint number of a
    /// per-checkpoint image (`spec/xen.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::XEN_CHECKPOINT, "xen.checkpoint");
    /// ```
    pub const XEN_CHECKPOINT: &str = "xen.checkpoint";

    /// `trim.dropped`: what `trim` dropped: a comma list of `free`, `zero`,
    /// `cache`.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::TRIM_DROPPED, "trim.dropped");
    /// ```
    pub const TRIM_DROPPED: &str = "trim.dropped";

    /// `trim.free_pages`: the free pages `trim` made `TRIMMED`, decimal.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::TRIM_FREE_PAGES, "trim.free_pages");
    /// ```
    pub const TRIM_FREE_PAGES: &str = "trim.free_pages";

    /// `trim.cache_pages`: the page-cache pages `trim` made `TRIMMED`, decimal.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::TRIM_CACHE_PAGES, "trim.cache_pages");
    /// ```
    pub const TRIM_CACHE_PAGES: &str = "trim.cache_pages";

    /// `trim.cache_pages_kept`: the cache pages `trim --drop cache` kept: no
    /// `DISK_REFS` entry, or one whose crc32 differs from the page.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::TRIM_CACHE_PAGES_KEPT, "trim.cache_pages_kept");
    /// ```
    pub const TRIM_CACHE_PAGES_KEPT: &str = "trim.cache_pages_kept";

    /// `pbr.seals`: an agent candidate's seals: its disks, which `DISK_REFS` names
    /// by index (`spec/agent.md` §3.1, §5).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::PBR_SEALS, "pbr.seals");
    /// ```
    pub const PBR_SEALS: &str = "pbr.seals";

    /// `pbr.cache_refs`: how an agent candidate's page-cache references fared at
    /// capture (`spec/agent.md` §3.1, §5).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::PBR_CACHE_REFS, "pbr.cache_refs");
    /// ```
    pub const PBR_CACHE_REFS: &str = "pbr.cache_refs";

    /// `pbr.agent`: `1` when the candidate was captured at a pbr-agent point
    /// (`spec/agent.md` §3).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::PBR_AGENT, "pbr.agent");
    /// ```
    pub const PBR_AGENT: &str = "pbr.agent";

    /// `pbr.qemu`: the QEMU binary an agent candidate's capture ran
    /// (`spec/agent.md` §3).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::PBR_QEMU, "pbr.qemu");
    /// ```
    pub const PBR_QEMU: &str = "pbr.qemu";

    /// `pbr.files_read`: the files the guest had read by an agent's point, a
    /// JSON list of paths as the guest named them (`spec/agent.md` §3).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::PBR_FILES_READ, "pbr.files_read");
    /// ```
    pub const PBR_FILES_READ: &str = "pbr.files_read";

    /// `layout`: `flat`: the image is in the flat layout of `spec/format.md` §11.
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LAYOUT, "layout");
    /// ```
    pub const LAYOUT: &str = "layout";

    /// `store.ram`: `served` in the shell of an image restored from a
    /// fleet store lazily (`spec/store.md` §5): its `pc.ram` pages are not
    /// in the file but served, page by page, by a mount of the store. Such
    /// a file must never be restored on its own.
    ///
    /// ```
    /// assert_eq!(pbr_format::keys::STORE_RAM, "store.ram");
    /// ```
    pub const STORE_RAM: &str = "store.ram";

    /// `libvirt.save_version`: from a libvirt save file: the header's save version
    /// (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_SAVE_VERSION, "libvirt.save_version");
    /// ```
    pub const LIBVIRT_SAVE_VERSION: &str = "libvirt.save_version";

    /// `libvirt.was_running`: from a libvirt save file: whether the domain was
    /// running when saved (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_WAS_RUNNING, "libvirt.was_running");
    /// ```
    pub const LIBVIRT_WAS_RUNNING: &str = "libvirt.was_running";

    /// `libvirt.compressed`: from a libvirt save file: the compression of the
    /// stream after the header (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_COMPRESSED, "libvirt.compressed");
    /// ```
    pub const LIBVIRT_COMPRESSED: &str = "libvirt.compressed";

    /// `libvirt.domain.name`: from a libvirt save file: the domain's name in its
    /// XML (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_DOMAIN_NAME, "libvirt.domain.name");
    /// ```
    pub const LIBVIRT_DOMAIN_NAME: &str = "libvirt.domain.name";

    /// `libvirt.domain.uuid`: from a libvirt save file: the domain's UUID in its
    /// XML (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_DOMAIN_UUID, "libvirt.domain.uuid");
    /// ```
    pub const LIBVIRT_DOMAIN_UUID: &str = "libvirt.domain.uuid";

    /// `libvirt.domain.memory`: from a libvirt save file: the domain's memory in
    /// its XML (`spec/libvirt.md`).
    ///
    /// # Example
    /// ```
    /// assert_eq!(pbr_format::keys::LIBVIRT_DOMAIN_MEMORY, "libvirt.domain.memory");
    /// ```
    pub const LIBVIRT_DOMAIN_MEMORY: &str = "libvirt.domain.memory";

    /// Every key above, in the order of the spec's table.
    ///
    /// # Example
    /// ```
    /// use pbr_format::{check_key, keys};
    /// assert!(keys::ALL.iter().all(|k| check_key(k).is_ok()));
    /// assert!(keys::ALL.contains(&keys::QEMU_MACHINE));
    /// ```
    pub const ALL: &[&str] = &[
        SOURCE_FORMAT,
        QEMU_MACHINE,
        QEMU_CAPABILITIES,
        QEMU_VERSION,
        QEMU_VERSION_AT_LEAST,
        GUEST_RAM_SIZE,
        RESTORE_CMDLINE,
        CLASSES_SOURCE,
        CLASSES_KERNEL_PAGES,
        GUEST_KERNEL,
        XL_CONFIG,
        XEN_GUEST_TYPE,
        XEN_LIBXC_VERSION,
        XEN_VERSION,
        XEN_CHECKPOINT,
        TRIM_DROPPED,
        TRIM_FREE_PAGES,
        TRIM_CACHE_PAGES,
        TRIM_CACHE_PAGES_KEPT,
        PBR_SEALS,
        PBR_CACHE_REFS,
        PBR_AGENT,
        PBR_QEMU,
        PBR_FILES_READ,
        LAYOUT,
        STORE_RAM,
        LIBVIRT_SAVE_VERSION,
        LIBVIRT_WAS_RUNNING,
        LIBVIRT_COMPRESSED,
        LIBVIRT_DOMAIN_NAME,
        LIBVIRT_DOMAIN_UUID,
        LIBVIRT_DOMAIN_MEMORY,
    ];
}

#[cfg(test)]
mod tests {
    use super::{check_key, keys};

    #[test]
    fn checks_keys() {
        assert!(check_key("qemu.machine").is_ok());
        assert!(check_key("a-b_c.9").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("Qemu").is_err());
        assert!(check_key("a b").is_err());
        assert!(check_key(&"a".repeat(256)).is_err());
    }

    /// The constants mirror the table of `spec/format.md` §7.4: the same
    /// keys, in the same order, each a valid key.
    #[test]
    fn keys_mirror_the_spec_table() {
        let spec = include_str!("../../spec/format.md");
        let table = spec.split("### 7.4").nth(1).and_then(|s| s.split("### 7.5").next()).unwrap_or_default();
        let in_spec: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split(", "))
            .map(|k| k.trim().trim_matches('`'))
            .collect();
        assert_eq!(in_spec, keys::ALL);
        assert!(keys::ALL.iter().all(|k| check_key(k).is_ok()));
    }
}
