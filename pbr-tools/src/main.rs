//! `pbr-img`: convert, inspect, verify, trim, diff, select and replay
//! restartable VM images.
//!
//! Exit status: see the table in the README and `pbr-img --help`.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    if let Err(e) = cli::out::check_open() {
        eprintln!("pbr-img: error: cannot write to standard output: {e}");
        return ExitCode::from(cli::USAGE_OR_INPUT);
    }
    let args = cli::Cli::parse();
    if let Err(e) = pbr_tools::cleanup::install() {
        eprintln!("pbr-img: error: {}", one_line(&e.to_string()));
        return ExitCode::from(cli::USAGE_OR_INPUT);
    }
    let (result, output) = match cli::check_files(&args) {
        Ok(output) => (cli::run(args), output),
        Err(e) => (Err(e), None),
    };
    // The output stays registered until the process exits: an interrupt
    // from here on still finds it written.
    std::mem::forget(output);
    let interrupted = pbr_tools::cleanup::after_run();
    if cli::out::closed() {
        cli::out::exit_closed();
    }
    if let Some(i) = &interrupted {
        eprintln!("note: interrupted after {} was written", i.output.display());
    }
    match result {
        Ok(code) => code,
        // The interrupt's clean-up (children stopped, files removed) is
        // what made the work fail.
        Err(_) if interrupted.is_some() => ExitCode::from(interrupted.map_or(cli::USAGE_OR_INPUT, |i| i.status)),
        Err(e) => {
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
