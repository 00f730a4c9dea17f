//! `pbr-img extract`: a device blob or a range of guest pages, to a file or
//! to standard output.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use pbr_format::Image;
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::report::{Report, print};
use pbr_tools::extract::{find_device, parse_range, write_pages};
use pbr_tools::output::write_stream;

/// The arguments of `extract`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// The blob: NAME, NAME.INSTANCE, or #K for the K-th blob `inspect`
    /// lists (from 0).
    #[arg(long, required_unless_present = "pages", conflicts_with = "pages")]
    device: Option<String>,
    /// Guest frames FIRST-LAST (inclusive) or FIRST+COUNT, decimal or
    /// 0x hex; written page after page, zero and trimmed pages as zeros.
    #[arg(long)]
    pages: Option<String>,
    /// Output file, or `-` for standard output.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What `extract` wrote: `bytes` bytes of `what` to `to`.
struct Extracted {
    what: String,
    bytes: u64,
    to: String,
    /// The bytes went to standard output: the report goes to standard
    /// error.
    piped: bool,
}

impl Report for Extracted {
    fn json(&self) -> Value {
        json!({"output": self.to, "what": self.what, "bytes": self.bytes})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(w, "{}: {} bytes to {}", self.what, self.bytes, self.to)
    }

    fn on_stderr(&self) -> bool {
        self.piped
    }
}

/// Runs `extract`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let img = Image::open(&a.image)?;
    let piped = super::files::is_dash(&a.output);
    if piped && a.device.is_none() {
        // Nothing half-written can be taken back from a pipe.
        img.check_page_crcs()?;
    }
    let write = |f: &mut dyn FnMut(&mut dyn Write) -> pbr_tools::Result<u64>| -> pbr_tools::Result<u64> {
        if piped {
            f(&mut std::io::BufWriter::new(super::out::Stdout::lock()))
        } else {
            write_stream(&img, &a.output, |file| f(&mut std::io::BufWriter::new(file)))
        }
    };
    let (bytes, what) = match (&a.device, &a.pages) {
        (Some(spec), _) => {
            let blob = find_device(&img, spec)?;
            let n = write(&mut |w| {
                w.write_all(&blob.data)
                    .and_then(|()| w.flush())
                    .map_err(|e| pbr_tools::Error::io("cannot write the blob", e))?;
                Ok(blob.data.len() as u64)
            })?;
            (n, format!("device blob {} {}.{}", blob.origin, blob.name, blob.instance))
        }
        (None, Some(spec)) => {
            let range = parse_range(spec)?;
            let n = write(&mut |w| write_pages(&img, range.clone(), w))?;
            (n, format!("pages {:#x}-{:#x}", range.start, range.end - 1))
        }
        (None, None) => return Err(Error::Usage("give --device or --pages".into())),
    };
    let to = if piped { "standard output".to_owned() } else { a.output.display().to_string() };
    print(&Extracted { what, bytes, to, piped }, a.json)
}
