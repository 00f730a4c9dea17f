//! The `pbr-img` subcommands.

mod convert;
mod export;
mod fmt;
mod inspect;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pbr_tools::Result;

/// Restartable VM images: convert, inspect, verify and export `.pbr` files.
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
    /// Convert a QEMU migration stream (file or `-` for stdin) into a `.pbr`
    /// image; the input format is found by its magic.
    Convert {
        /// The input stream or save file, or `-` for standard input.
        input: PathBuf,
        /// The image to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Phase tag: firmware, kernel, daemons, service or any name.
        #[arg(long)]
        phase: Option<String>,
        /// Position of the phase in its boot (default: the well-known order).
        #[arg(long)]
        phase_seq: Option<u32>,
        /// Milliseconds from boot start to the capture.
        #[arg(long)]
        since_boot_ms: Option<u64>,
        /// Store a blake3 hash per page (for diff and dedup).
        #[arg(long)]
        hashes: bool,
        /// Version of the QEMU that wrote the stream.
        #[arg(long)]
        qemu_version: Option<String>,
        /// The command line a restore must repeat.
        #[arg(long)]
        restore_cmdline: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
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
        Command::Convert {
            input,
            output,
            phase,
            phase_seq,
            since_boot_ms,
            hashes,
            qemu_version,
            restore_cmdline,
            json,
        } => convert::run(
            &input,
            &output,
            &convert::Args {
                phase: phase.as_deref(),
                sequence: phase_seq,
                since_boot_ms,
                hashes,
                qemu_version,
                restore_cmdline,
                json,
                quiet: cli.quiet,
            },
        ),
        Command::Export { to, image, output, json } => export::run(to, &image, &output, json, cli.quiet),
    }
}
