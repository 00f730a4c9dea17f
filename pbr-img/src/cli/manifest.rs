//! `pbr-img manifest add`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use pbr_format::Image;
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::report::{Report, print};
use pbr_tools::manifest::{accessed_since, add, read_list};

/// The arguments of `manifest`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What `manifest` does.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// Add files (path, size, mtime, inode, blake3) read under a root.
    Add(AddArgs),
}

/// The arguments of `manifest add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The image.
    pub image: PathBuf,
    /// The guest root directory.
    #[arg(long)]
    root: PathBuf,
    /// A file listing the paths, one per line.
    #[arg(long, conflicts_with = "accessed_since")]
    pub list: Option<PathBuf>,
    /// Every regular file accessed after this time (seconds since the
    /// epoch, e.g. the boot start).
    #[arg(long)]
    accessed_since: Option<f64>,
    /// The image to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The files `manifest add` recorded.
struct Added<'a> {
    a: &'a AddArgs,
    added: usize,
    paths: usize,
}

impl Report for Added<'_> {
    fn json(&self) -> Value {
        json!({"output": self.a.output.display().to_string(), "files_added": self.added, "paths": self.paths})
    }

    fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let (output, root) = (self.a.output.display(), self.a.root.display());
        writeln!(w, "{output}: {} files added to the manifest from {root}", self.added)
    }
}

/// Runs `manifest`.
pub fn run(a: &Args) -> Result<ExitCode> {
    match &a.action {
        Action::Add(a) => add_run(a),
    }
}

fn add_run(a: &AddArgs) -> Result<ExitCode> {
    let paths = match (&a.list, a.accessed_since) {
        (Some(l), None) => read_list(l)?,
        (None, Some(t)) => accessed_since(&a.root, (t * 1e9) as i128)?,
        _ => return Err(Error::Usage("give exactly one of --list or --accessed-since".into())),
    };
    let img = Image::open(&a.image)?;
    let added = add(&img, &a.root, &paths, &a.output)?;
    print(&Added { a, added, paths: paths.len() }, a.json)
}
