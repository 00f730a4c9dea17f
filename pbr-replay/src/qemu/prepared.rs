//! What a QEMU restore needs besides QEMU itself, made ready before the
//! stream is asked for: the page-cache pages read back from the disks and,
//! when QEMU maps the RAM from a flat image, the whole migration stream.
//!
//! With the RAM mapped the stream is small (the device state, the RAM
//! block list, the small blocks' pages and the refilled pages), but
//! building it walks every RAM block's page list, which grows with the
//! guest. Building it while QEMU starts, or before the failure for a
//! standby QEMU, leaves only a write of those bytes at the restore.

use std::io::Write;
use std::time::{Duration, Instant};

use pbr_format::Image;

use crate::error::{Error, Result};
use pbr_tools::qemu::export::{ExportOptions, QemuExport, export_qemu_refilled};
use pbr_tools::refill::Refill;

/// A restore's stream, or what it is built from, for one image.
pub(crate) struct Prepared {
    /// The image's trailer hash ([`Image::image_blake3`]).
    pub(crate) hash: [u8; 32],
    /// Built for QEMU mapping the RAM from the image.
    pub(crate) mapped: bool,
    /// How long reading the page-cache pages took.
    pub(crate) refill_time: Duration,
    form: Form,
}

enum Form {
    /// The whole stream and what exporting it reported (RAM mapped).
    Stream(Vec<u8>, QemuExport),
    /// The pages to refill; the stream is exported at the restore
    /// (RAM streamed: the stream holds every page, too much to hold).
    Refill(Option<Refill>),
}

impl Prepared {
    /// Reads `image`'s page-cache pages back and, when `mapped`, builds its
    /// stream with no `pc.ram` pages (those QEMU maps are checked by
    /// [`check_mapped`]; streamed, each page is checked as it is written).
    ///
    /// # Errors
    /// As [`Refill::load`], or the image does not export.
    pub(crate) fn load(image: &Image, mapped: bool) -> Result<Prepared> {
        let t = Instant::now();
        let refill = Refill::load(image)?;
        let refill_time = t.elapsed();
        let form = if mapped {
            let mut bytes = Vec::new();
            let opts = ExportOptions { omit_zero_pages: true, mapped_ram: true };
            let report = export_qemu_refilled(image, &mut bytes, opts, refill.as_ref())?;
            Form::Stream(bytes, report)
        } else {
            Form::Refill(refill)
        };
        Ok(Prepared { hash: image.image_blake3(), mapped, refill_time, form })
    }

    /// This, made ready before the restore was asked for: none of its
    /// time is the restore's.
    pub(crate) fn beforehand(self) -> Prepared {
        Prepared { refill_time: Duration::ZERO, ..self }
    }

    /// Writes the stream of `image` (the image this was prepared for) to
    /// `out`.
    ///
    /// # Errors
    /// Writing failed, or the image does not export.
    pub(crate) fn write_to<W: Write>(self, image: &Image, mut out: W) -> Result<QemuExport> {
        match self.form {
            Form::Stream(bytes, report) => {
                out.write_all(&bytes).map_err(|e| Error::io("cannot write the stream", e))?;
                Ok(report)
            }
            Form::Refill(refill) => {
                // Only prepared so when QEMU loads the RAM from the stream.
                let opts = ExportOptions { omit_zero_pages: true, mapped_ram: false };
                Ok(export_qemu_refilled(image, out, opts, refill.as_ref())?)
            }
        }
    }
}

/// Checks every stored page of `image` (at `path`) against its crc32 before
/// QEMU's guest runs on them mapped from the file; its holes are known zero.
/// Runs on one thread: a QEMU started for the restore starts and loads on
/// the other core meanwhile. Returns how long it took.
///
/// # Errors
/// A damaged page.
pub(crate) fn check_mapped(image: &Image, path: &std::path::Path) -> Result<Duration> {
    let t = Instant::now();
    let holes = std::fs::File::open(path).map(|f| pbr_tools::holes::holes(&f)).unwrap_or_default();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Error::Thread(format!("cannot start the page check's thread: {e}")))?;
    one.install(|| image.check_page_crcs_outside(&holes))?;
    Ok(t.elapsed())
}
