//! `pbr-img`: convert, inspect, verify, trim, diff, select and replay
//! restartable VM images.
//!
//! Exit status: see the table in the README and `pbr-img --help`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if let Err(e) = pbr_tools::cleanup::install() {
        eprintln!("pbr-img: error: {}", one_line(&e.to_string()));
        return ExitCode::from(cli::USAGE_OR_INPUT);
    }
    match cli::run(args) {
        Ok(code) => {
            pbr_tools::cleanup::exit_if_interrupted();
            code
        }
        Err(e) => {
            pbr_tools::cleanup::exit_if_interrupted();
            eprintln!("pbr-img: error: {}", one_line(&e.to_string()));
            match e {
                pbr_tools::Error::NoCandidate(_) => ExitCode::from(cli::NO_CANDIDATE),
                _ => ExitCode::from(cli::USAGE_OR_INPUT),
            }
        }
    }
}

/// Errors are printed as one line, whatever they hold.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
