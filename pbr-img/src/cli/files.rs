//! The files a command names, checked before it runs: an input that is a
//! directory, a QEMU stream or xl file where an image is wanted, `-` where
//! standard input or output cannot serve, and an output that is one of the
//! inputs (also through a link) are refused in one line. The output is
//! registered so that an interrupt removes this process's temporary files
//! beside it, and does not fail a run whose output was already written.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use pbr_tools::cleanup::{self, Registration};

/// An input path and what the command reads from it.
pub enum Input<'a> {
    /// A `.pbr` image.
    Image(&'a Path),
    /// A stream to convert: a file, or `-` for standard input.
    Stream(&'a Path),
    /// Any other file the command reads.
    Other(&'a Path),
}

/// An output path and whether `-` (standard output) may stand for it.
pub struct Output<'a> {
    /// The path.
    pub path: &'a Path,
    /// `None` when the output is written front to back, so a pipe can take
    /// it; else why it needs a file.
    pub needs_file: Option<&'static str>,
}

/// Why a `.pbr` image cannot go to standard output.
pub const IMAGE_NEEDS_FILE: &str =
    "a .pbr image cannot go to standard output (it is finished by writing back into the file)";
/// Why a raw export cannot go to standard output.
pub const RAW_NEEDS_FILE: &str = "a raw export is a sparse file written page by page at each page's guest address, which needs a seekable regular file, not standard output";

/// Whether `path` names standard input or output.
pub fn is_dash(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Checks the files; returns what keeps the output registered for the
/// interrupt handling ([`pbr_tools::cleanup::output`]).
pub fn check(inputs: &[Input<'_>], output: Option<Output<'_>>) -> Result<Option<Registration>> {
    let mut ids = Vec::new();
    for input in inputs {
        let (path, what) = match input {
            Input::Image(p) => (*p, "an image"),
            Input::Stream(p) => (*p, "a stream"),
            Input::Other(p) => (*p, "an input"),
        };
        if is_dash(path) {
            if !matches!(input, Input::Stream(_)) {
                return Err(Error::Usage(format!("`-` cannot stand for {what} here: name a file")));
            }
            ids.extend(identity(Path::new("/dev/stdin")).map(|id| (id, PathBuf::from("standard input"))));
            continue;
        }
        let Ok(meta) = std::fs::metadata(path) else { continue };
        if meta.is_dir() {
            return Err(Error::Usage(format!("{} is a directory, not {what}", path.display())));
        }
        if let Input::Image(p) = input {
            let kind = meta.file_type();
            if !kind.is_file() && !kind.is_block_device() {
                // Image::open says what it is; a device or pipe may never end.
                pbr_format::Image::open(p)?;
            }
            not_a_stream(p)?;
        }
        if meta.is_file() {
            ids.push(((meta.dev(), meta.ino()), path.to_path_buf()));
        }
    }
    let Some(out) = output else { return Ok(None) };
    if is_dash(out.path) {
        return match out.needs_file {
            None => Ok(None),
            Some(why) => Err(Error::Usage(format!("`-o -`: {why}: name a file"))),
        };
    }
    if std::fs::metadata(out.path).is_ok_and(|m| m.is_dir()) {
        return Err(Error::Usage(format!("the output {} is a directory: name a file", out.path.display())));
    }
    // A stream may go to a device or named pipe already there; nothing is
    // ever renamed over one.
    if out.needs_file.is_some() || !pbr_tools::output::is_device_or_pipe(out.path) {
        pbr_format::write::destination(out.path)?;
    }
    if let Some(id) = identity(out.path)
        && let Some((_, input)) = ids.iter().find(|(i, _)| *i == id)
    {
        return Err(Error::Usage(format!(
            "the output {} is the input {}: inputs are never modified; name another file",
            out.path.display(),
            input.display()
        )));
    }
    Ok(Some(cleanup::output(out.path)))
}

/// The device and inode of an existing regular file.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| (m.dev(), m.ino()))
}

/// Refuses a QEMU migration stream, a libvirt save file or an xl save file
/// given as an image (the library's format detection says which).
fn not_a_stream(path: &Path) -> Result<()> {
    use pbr_tools::convert::{HEAD_LEN, InputFormat, detect};
    use std::io::Read;
    let mut head = Vec::new();
    let _ = std::fs::File::open(path).and_then(|f| f.take(HEAD_LEN).read_to_end(&mut head));
    let kind = match detect(&head) {
        Some(InputFormat::Qemu) => "a QEMU migration stream",
        Some(InputFormat::Libvirt) => "a libvirt save file",
        Some(InputFormat::Xl) => "an xl save file",
        Some(InputFormat::Pbr) | None => return Ok(()),
    };
    Err(Error::Usage(format!(
        "{} is {kind}, not a .pbr image: convert it with `pbr-img convert {} -o IMAGE.pbr`",
        path.display(),
        path.display()
    )))
}
