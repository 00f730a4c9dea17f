//! Guest RAM served from outside the image: a file that something else
//! fills as QEMU reads it (a fleet store's mount, `pbr-store`), mapped
//! into the restored guest in place of the image's own `pc.ram` pages.

use std::path::Path;

/// A file holding an image's `pc.ram` block from its offset 0, whose
/// server checks every page before it hands it out.
pub trait ServedRam: Send + Sync + std::fmt::Debug {
    /// The file QEMU maps the block from.
    fn path(&self) -> &Path;

    /// The block's size in bytes.
    fn size(&self) -> u64;

    /// Runs while QEMU starts and loads the device state; the guest runs
    /// only once it returned `Ok`. A server that serves the whole block
    /// before the guest runs does that here; one that serves pages as
    /// the guest touches them returns at once.
    ///
    /// # Errors
    /// Why the guest must not run on this RAM (a damaged or missing
    /// page): the candidate is refused.
    fn settle(&self) -> Result<(), String>;

    /// The restore failed: whatever [`ServedRam::settle`] still fetches
    /// is of no use.
    fn cancel(&self);
}

/// QEMU arguments that back the `pc.ram` block with `ram`: a private
/// (copy on write) mapping of the file opened read-only, which the guest
/// may write.
pub fn served_ram_args(ram: &dyn ServedRam) -> Vec<String> {
    super::args::ram_backend_args(ram.path(), 0, ram.size())
}
