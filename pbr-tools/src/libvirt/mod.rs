//! libvirt QEMU save files (`virsh save`, managed save): the header and
//! domain XML around a QEMU migration stream, raw or compressed
//! (`spec/libvirt.md`). Import keeps the header and XML area as a device
//! blob of origin `libvirt` and its fields as metadata, then converts the
//! stream as any QEMU stream; export writes them back around the stream.

pub mod header;

use std::io::{Read, Write};
use std::path::Path;

use pbr_format::keys;
use pbr_format::{DeviceBlob, DeviceOrigin, Image};

use crate::error::{Error, Result};
use crate::qemu::export::{ExportOptions, QemuExport, export_qemu_to};
use crate::qemu::{ConvertOptions, ConvertReport, convert as convert_qemu};
pub use header::{Compression, HEADER_LEN, Header};

/// The device blob that holds the header and the XML area, verbatim.
pub const HEADER_BLOB: &str = "save-header";

/// What a libvirt import read.
#[derive(Clone, Debug)]
pub struct LibvirtReport {
    /// The save file's header.
    pub header: Header,
    /// The conversion of the QEMU stream inside.
    pub qemu: ConvertReport,
}

/// A reader of the stream after the header, decompressed.
fn decoder<'a, R: Read + 'a>(input: R, c: Compression) -> Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::Raw => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(|e| Error::io("cannot start zstd", e))?)
        }
        Compression::Lzop => {
            return Err(Error::Usage(
                "the save file's stream is lzop-compressed, which pbr cannot read (no well-kept Rust lzop decoder): \
                 save with another save_image_format"
                    .into(),
            ));
        }
    })
}

/// Converts a libvirt save file read from `input` into an image at `out`.
///
/// # Errors
/// A header that is not a complete libvirt save or has fields out of range,
/// a compression pbr cannot read, anything the QEMU conversion refuses, I/O.
pub fn convert<R: Read>(
    mut input: R,
    out: &Path,
    opts: &ConvertOptions,
    progress: &dyn Fn(u64),
) -> Result<LibvirtReport> {
    let mut fixed = [0u8; HEADER_LEN];
    read_exact(&mut input, &mut fixed, 0, "the header")?;
    let data_len = Header::check_fixed(&fixed)?;
    let mut area = vec![0u8; data_len as usize];
    read_exact(&mut input, &mut area, HEADER_LEN as u64, "the XML area")?;
    let header = Header::parse(&fixed, &area)?;
    let mut raw = fixed.to_vec();
    raw.extend_from_slice(&area);
    let mut opts = opts.clone();
    opts.container_blobs.push(DeviceBlob {
        origin: DeviceOrigin::LIBVIRT,
        name: HEADER_BLOB.into(),
        instance: 0,
        version: header.version,
        flags: header.compressed.code(),
        data: raw.into(),
    });
    let mut meta = vec![
        (keys::LIBVIRT_SAVE_VERSION.to_owned(), header.version.to_string()),
        (keys::LIBVIRT_WAS_RUNNING.to_owned(), header.was_running.to_string()),
        (keys::LIBVIRT_COMPRESSED.to_owned(), header.compressed.name().to_owned()),
    ];
    for (tag, key) in [("name", keys::LIBVIRT_DOMAIN_NAME), ("uuid", keys::LIBVIRT_DOMAIN_UUID)] {
        if let Some((v, _)) = header.element(tag) {
            meta.push((key.to_owned(), v));
        }
    }
    if let Some((v, unit)) = header.element("memory") {
        meta.push((keys::LIBVIRT_DOMAIN_MEMORY.to_owned(), format!("{v} {}", unit.as_deref().unwrap_or("KiB"))));
    }
    opts.container_metadata = meta;
    let start = (HEADER_LEN + area.len()) as u64;
    let stream = decoder(input, header.compressed)?;
    let qemu = convert_qemu(stream, None, out, &opts, &|n| progress(start + n))
        .map_err(|e| in_container(e, header.compressed, start))?;
    Ok(LibvirtReport { header, qemu })
}

/// Names where a stream error sits: the offset is in the (decompressed)
/// stream, which starts at `start` in the file.
fn in_container(e: Error, c: Compression, start: u64) -> Error {
    match e {
        Error::Parse { format: "qemu", offset, msg } if c == Compression::Raw => {
            Error::Parse { format: "qemu", offset: offset + start, msg }
        }
        Error::Parse { format: "qemu", offset, msg } => Error::Parse {
            format: "qemu",
            offset,
            msg: format!("{msg} (an offset in the {}-decompressed stream after byte {start:#x})", c.name()),
        },
        other => other,
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::Parse {
                    format: "libvirt",
                    offset: at + got as u64,
                    msg: format!("truncated in {what}"),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("cannot read the save file", e)),
        }
    }
    Ok(())
}

/// Writes `image` (converted from a libvirt save file) as a save file into
/// `out`, its stream compressed with `compress` (default: as the original).
/// An unmodified image of a raw save comes back byte for byte.
///
/// # Errors
/// An image without a libvirt header, a compression pbr cannot write
/// (lzop), anything the QEMU export refuses, I/O.
pub fn export_to<W: Write>(image: &Image, out: W, compress: Option<Compression>) -> Result<QemuExport> {
    let blob =
        image.devices().find(|b| b.origin == DeviceOrigin::LIBVIRT && b.name == HEADER_BLOB).ok_or_else(|| {
            Error::Usage(
            "the image was not converted from a libvirt save file: it has no libvirt header and domain XML to write"
                .into(),
        )
        })?;
    let mut head = blob.data.into_owned();
    let Some(fixed) = head.get(..HEADER_LEN).and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok()) else {
        return Err(Error::Inconsistent("the image's libvirt header blob is shorter than a header".into()));
    };
    let header = Header::parse(&fixed, &head[HEADER_LEN..])?;
    let c = compress.unwrap_or(header.compressed);
    if c != Compression::Raw && header.version < 2 {
        return Err(Error::Usage("a version 1 save file cannot hold a compressed stream".into()));
    }
    head[28..32].copy_from_slice(&c.code().to_le_bytes());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    out.write_all(&head).map_err(|e| Error::io("cannot write the save file", e))?;
    let opts = ExportOptions::default();
    let report = match c {
        Compression::Raw => export_qemu_to(image, &mut out, opts)?,
        Compression::Gzip => finish(export_in(
            image,
            flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast()),
            opts,
            |w| w.finish(),
        )?)?,
        Compression::Bzip2 => {
            finish(export_in(image, bzip2::write::BzEncoder::new(&mut out, bzip2::Compression::fast()), opts, |w| {
                w.finish()
            })?)?
        }
        Compression::Xz => {
            finish(export_in(image, liblzma::write::XzEncoder::new(&mut out, 1), opts, |w| w.finish())?)?
        }
        Compression::Zstd => {
            let w = zstd::stream::write::Encoder::new(&mut out, 1).map_err(|e| Error::io("cannot start zstd", e))?;
            finish(export_in(image, w, opts, |w| w.finish())?)?
        }
        Compression::Lzop => {
            return Err(Error::Usage("pbr cannot write lzop: choose raw, gzip, bzip2, xz or zstd".into()));
        }
    };
    out.flush().map_err(|e| Error::io("cannot write the save file", e))?;
    Ok(report)
}

/// Exports into the encoder `w`, then ends its stream with `end`.
fn export_in<W: Write, T>(
    image: &Image,
    mut w: W,
    opts: ExportOptions,
    end: impl FnOnce(W) -> std::io::Result<T>,
) -> Result<(QemuExport, std::io::Result<T>)> {
    let report = export_qemu_to(image, &mut w, opts)?;
    Ok((report, end(w)))
}

fn finish<T>((report, ended): (QemuExport, std::io::Result<T>)) -> Result<QemuExport> {
    ended.map_err(|e| Error::io("cannot finish the compressed stream", e))?;
    Ok(report)
}

/// Writes `image` as a libvirt save file at `dest`, atomically.
///
/// # Errors
/// As [`export_to`].
pub fn export(image: &Image, dest: &Path, compress: Option<Compression>) -> Result<QemuExport> {
    crate::output::write_stream(image, dest, |f| export_to(image, f, compress))
}
