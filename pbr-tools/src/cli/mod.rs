//! The `pbr-img` subcommands.

mod export;
mod fmt;
mod inspect;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pbr_tools::Result;

/// Restartable VM images: inspect, verify and export `.pbr` files.
#[derive(Parser, Debug)]
#[command(name = "pbr-img", version, about, long_about = None)]
pub struct Cli {
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise an image: phase, regions, page classes and encodings, vCPUs,
    /// devices, manifest.
    Inspect {
        /// The image.
        image: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// List every extent of the page index.
        #[arg(long)]
        pages: bool,
    },
    /// Check every checksum and hash; exit 0 only when all pass.
    Verify {
        /// The image.
        image: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write an image out in another format.
    Export {
        /// Target format.
        #[arg(long, value_enum)]
        to: export::Target,
        /// The image.
        image: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one subcommand.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Inspect { image, json, pages } => inspect::run(&image, json, pages),
        Command::Verify { image, json } => verify::run(&image, json, cli.quiet),
        Command::Export { to, image, output, json } => export::run(to, &image, &output, json, cli.quiet),
    }
}
