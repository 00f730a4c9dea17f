//! `pbr-img classify`: page classes from kpageflags or a class map.

use std::path::Path;
use std::process::ExitCode;

use pbr_format::{Image, PageClass};
use serde_json::json;

use pbr_tools::classify::{apply, classes, read_class_map, read_words};
use pbr_tools::{Error, Result};

pub struct Args<'a> {
    pub kpageflags: Option<&'a Path>,
    pub kpagecount: Option<&'a Path>,
    pub class_map: Option<&'a Path>,
    pub kernel: Option<&'a str>,
    pub json: bool,
}

pub fn run(image: &Path, output: &Path, a: &Args<'_>) -> Result<ExitCode> {
    let img = Image::open(image)?;
    let max = img.page_count().max(1 << 20) * 4;
    let (cls, source) = match (a.kpageflags, a.class_map) {
        (Some(f), None) => {
            let flags = read_words(f, max)?;
            let counts = a.kpagecount.map(|c| read_words(c, max)).transpose()?;
            if let Some(c) = &counts
                && c.len() != flags.len()
            {
                return Err(Error::Unsupported(format!(
                    "kpagecount has {} entries, kpageflags {}: they must come from the same moment",
                    c.len(),
                    flags.len()
                )));
            }
            (classes(&flags, counts.as_deref()), "kpageflags")
        }
        (None, Some(m)) => (read_class_map(m, max)?, "bitmap"),
        _ => return Err(Error::Unsupported("give exactly one of --kpageflags or --class-map".into())),
    };
    let r = apply(&img, output, &cls, source, a.kernel)?;
    if a.json {
        let by: serde_json::Map<String, serde_json::Value> =
            PageClass::ALL.iter().map(|c| (c.name().to_owned(), json!(r.pages[*c as usize]))).collect();
        outln!(
            "{}",
            json!({"output": output.display().to_string(), "source": source, "input_pages": r.input_pages, "classes": by})
        );
    } else {
        let parts: Vec<String> =
            PageClass::ALL.iter().map(|c| format!("{} {}", r.pages[*c as usize], c.name())).collect();
        outln!("{}: {} page frames classified from {source}: {}", output.display(), r.input_pages, parts.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
