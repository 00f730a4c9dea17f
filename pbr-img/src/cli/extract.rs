//! `pbr-img extract`: a device blob or a range of guest pages, to a file or
//! to standard output.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::json;

use pbr_tools::extract::{find_device, parse_range, write_pages};
use pbr_tools::output::write_stream;
use pbr_tools::{Error, Result};

/// What to extract.
pub enum What<'a> {
    /// A device blob: `NAME`, `NAME.INSTANCE` or `#K`.
    Device(&'a str),
    /// Guest pages: `FIRST-LAST` or `FIRST+COUNT`.
    Pages(&'a str),
}

pub fn run(image: &Path, what: What<'_>, output: &Path, as_json: bool) -> Result<ExitCode> {
    let img = Image::open(image)?;
    let piped = super::files::is_dash(output);
    if piped && matches!(what, What::Pages(_)) {
        // Nothing half-written can be taken back from a pipe.
        img.check_page_crcs()?;
    }
    let write = |f: &mut dyn FnMut(&mut dyn Write) -> Result<u64>| -> Result<u64> {
        if piped {
            f(&mut std::io::BufWriter::new(super::out::Stdout::lock()))
        } else {
            write_stream(&img, output, |file| f(&mut std::io::BufWriter::new(file)))
        }
    };
    let (n, label) = match what {
        What::Device(spec) => {
            let blob = find_device(&img, spec)?;
            let n = write(&mut |w| {
                w.write_all(&blob.data).and_then(|()| w.flush()).map_err(|e| Error::io("cannot write the blob", e))?;
                Ok(blob.data.len() as u64)
            })?;
            (n, format!("device blob {} {}.{}", blob.origin, blob.name, blob.instance))
        }
        What::Pages(spec) => {
            let range = parse_range(spec)?;
            let n = write(&mut |w| write_pages(&img, range.clone(), w))?;
            (n, format!("pages {:#x}-{:#x}", range.start, range.end - 1))
        }
    };
    let to = if piped { "standard output".to_owned() } else { output.display().to_string() };
    if as_json {
        let line = json!({"output": to, "what": label, "bytes": n});
        if piped { eprintln!("{line}") } else { outln!("{line}") }
    } else if piped {
        eprintln!("{label}: {n} bytes to {to}");
    } else {
        outln!("{label}: {n} bytes to {to}");
    }
    Ok(ExitCode::SUCCESS)
}
