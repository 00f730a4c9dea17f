//! Writing a new image from an existing one: the same regions and machine
//! state, pages decided by the caller.

use std::path::Path;

use pbr_format::{Extent, Image, ImageWriter, PageClass, PageEncoding, WriterOptions};

use crate::error::Result;

/// Writer options for an image derived from `src` by `pbr-img`.
pub fn options(src: &Image, unwritten: PageEncoding) -> WriterOptions {
    WriterOptions {
        page_size: src.page_size(),
        producer_name: "pbr-img".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        page_hashes: src.has_page_hashes(),
        unwritten,
        sync: true,
    }
}

/// A writer for `dest` over `src`'s regions, with `src`'s phase, vCPUs,
/// devices, metadata, processes, manifest and cache references already
/// copied.
///
/// # Errors
/// As [`ImageWriter::create`] and [`copy_state`]; a store image's shell
/// (its RAM is not in the file: nothing is derived from it).
pub fn derived(src: &Image, dest: &Path, opts: WriterOptions) -> Result<ImageWriter> {
    if src.metadata_value(pbr_format::keys::STORE_RAM) == Some("served") {
        return Err(crate::Error::Usage(
            "a store image's shell holds no guest RAM: pull the image from the store".into(),
        ));
    }
    let mut w = ImageWriter::create(dest, src.regions(), opts)?;
    copy_state(src, &mut w)?;
    Ok(w)
}

/// Copies everything but pages from `src` into `w`.
///
/// # Errors
/// As [`copy_machine_state`].
pub fn copy_state(src: &Image, w: &mut ImageWriter) -> Result<()> {
    copy_machine_state(src, w)?;
    for f in src.manifest() {
        w.add_file(f.clone())?;
    }
    for c in src.cache_refs() {
        w.add_cache_ref(*c)?;
    }
    if !src.disk_refs().is_empty() {
        w.set_disk_refs(src.disk_refs().clone())?;
    }
    Ok(())
}

/// Copies the phase, vCPUs, devices, metadata and checkpointed processes
/// of `src` into `w`.
///
/// # Errors
/// A damaged `PROCESSES` section (index or blob): its bytes are not copied
/// unchecked.
pub fn copy_machine_state(src: &Image, w: &mut ImageWriter) -> Result<()> {
    if let Some(p) = src.phase() {
        w.set_phase(p.clone())?;
    }
    for v in src.vcpus() {
        w.add_vcpu(v.clone())?;
    }
    for d in src.devices() {
        w.add_device(d)?;
    }
    for (k, v) in src.metadata() {
        w.set_metadata(k, v)?;
    }
    if let Some(p) = src.processes()? {
        w.set_processes(p.to_builder()?)?;
    }
    Ok(())
}

/// Copies page `gfn` of extent `e` of `src` into `w` with `class`, keeping
/// its encoding where the writer can (zero, trimmed, base, lz4), storing a
/// duplicate as lz4 and raw content raw.
///
/// # Errors
/// A corrupt page, I/O.
pub fn copy_page(
    src: &Image,
    e: &Extent,
    gfn: u64,
    w: &mut ImageWriter,
    class: PageClass,
    buf: &mut [u8],
) -> Result<()> {
    match e.encoding {
        PageEncoding::Zero | PageEncoding::Trimmed | PageEncoding::Base => w.mark_pages(gfn, 1, e.encoding, class)?,
        PageEncoding::Raw => {
            let page = src.read_in_extent(e, gfn, buf)?;
            w.write_page(gfn, page, class)?;
        }
        // Packed pages stay packed (a duplicate is stored compressed).
        PageEncoding::Lz4 | PageEncoding::Dup => {
            let page = src.read_in_extent(e, gfn, buf)?;
            w.write_page_lz4(gfn, page, class)?;
        }
    }
    Ok(())
}
