//! `pbr-img completions`: a shell completion script.

use std::process::ExitCode;

use super::error::Result;

/// The arguments of `completions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the script for the shell `a` names.
pub fn run(a: &Args) -> Result<ExitCode> {
    let mut text = Vec::new();
    clap_complete::generate(a.shell, &mut <super::Cli as clap::CommandFactory>::command(), "pbr-img", &mut text);
    super::out::write_bytes(&text)?;
    Ok(ExitCode::SUCCESS)
}
