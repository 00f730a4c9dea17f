//! `pbr-img classify`: page classes from kpageflags or a class map.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pbr_format::{Image, PageClass};
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::report::{Report, print};
use pbr_tools::classify::{ClassifyReport, apply, classes, read_class_map, read_words};

/// The arguments of `classify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The image.
    pub image: PathBuf,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A dump of /proc/kpageflags (raw or gzip).
    #[arg(long, conflicts_with = "class_map")]
    pub kpageflags: Option<PathBuf>,
    /// A dump of /proc/kpagecount taken at the same moment.
    #[arg(long, requires = "kpageflags")]
    pub kpagecount: Option<PathBuf>,
    /// One byte per page frame: 0 unknown, 1 free, 2 cache, 3 kernel, 4 user.
    #[arg(long)]
    pub class_map: Option<PathBuf>,
    /// The guest kernel version, recorded in the image.
    #[arg(long)]
    kernel: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The classes `classify` set, from `source`.
struct Classified<'a> {
    output: &'a Path,
    source: &'static str,
    r: ClassifyReport,
}

impl Report for Classified<'_> {
    fn json(&self) -> Value {
        let by: serde_json::Map<String, Value> =
            PageClass::ALL.iter().map(|c| (c.name().to_owned(), json!(self.r.pages[*c as usize]))).collect();
        json!({"output": self.output.display().to_string(), "source": self.source, "input_pages": self.r.input_pages, "classes": by})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let parts: Vec<String> =
            PageClass::ALL.iter().map(|c| format!("{} {}", self.r.pages[*c as usize], c.name())).collect();
        let (output, n, source) = (self.output.display(), self.r.input_pages, self.source);
        writeln!(w, "{output}: {n} page frames classified from {source}: {}", parts.join(", "))
    }
}

/// Runs `classify`.
pub fn run(a: &Args) -> Result<ExitCode> {
    let img = Image::open(&a.image)?;
    let max = img.page_count().max(1 << 20) * 4;
    let (cls, source) = match (&a.kpageflags, &a.class_map) {
        (Some(f), None) => {
            let flags = read_words(f, max)?;
            let counts = a.kpagecount.as_deref().map(|c| read_words(c, max)).transpose()?;
            if let Some(c) = &counts
                && c.len() != flags.len()
            {
                return Err(Error::Usage(format!(
                    "kpagecount has {} entries, kpageflags {}: they must come from the same moment",
                    c.len(),
                    flags.len()
                )));
            }
            (classes(&flags, counts.as_deref()), "kpageflags")
        }
        (None, Some(m)) => (read_class_map(m, max)?, "bitmap"),
        _ => return Err(Error::Usage("give exactly one of --kpageflags or --class-map".into())),
    };
    let r = apply(&img, &a.output, &cls, source, a.kernel.as_deref())?;
    print(&Classified { output: &a.output, source, r }, a.json)
}
