//! `pbr-img`: inspect, verify and export restartable VM images.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbr-img: error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Errors are printed as one line, whatever they hold.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
