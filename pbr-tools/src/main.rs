//! `pbr-img`: convert, inspect, verify, trim, diff, select and replay
//! restartable VM images.
//!
//! Exit status: 0 ok; 1 the check failed (`verify` found damage, `select`
//! found no valid candidate); 2 a usage or input error (one line on stderr).

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
        Ok(code) => code,
        Err(e) => {
            eprintln!("pbr-img: error: {}", one_line(&e.to_string()));
            ExitCode::from(cli::USAGE_OR_INPUT)
        }
    }
}

/// Errors are printed as one line, whatever they hold.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
