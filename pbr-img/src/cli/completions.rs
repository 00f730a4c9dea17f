//! `pbr-img completions`: a shell completion script.

use std::process::ExitCode;

use super::error::Result;

/// The arguments of `completions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the script for the shell `a` names, for `cmd`, the program's
/// command line.
pub fn run(a: &Args, mut cmd: clap::Command) -> Result<ExitCode> {
    let mut text = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "pbr-img", &mut text);
    super::out::write_bytes(&text)?;
    Ok(ExitCode::SUCCESS)
}
