//! `pbr-img`: convert, inspect, verify, trim, diff, select and replay
//! restartable VM images.
//!
//! Exit status: see the table in the README and `pbr-img --help`.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use cli::error::one_line;

mod cli;
mod progress;
mod signals;

fn main() -> ExitCode {
    if let Err(e) = cli::out::check_open() {
        eprintln!("pbr-img: error: cannot write to standard output: {e}");
        return ExitCode::from(cli::USAGE_OR_INPUT);
    }
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = signals::install() {
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
    let interrupted = signals::after_run();
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
            eprintln!("pbr-img: error: {}", e.line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// `--help` and `--version` print as clap prints them; a usage error is one
/// line `pbr-img: error: ...` and at most one `hint:` line, exit status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit()
    }
    let (mut msg, hint) = usage_lines(&e.render().to_string());
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap would print the whole help: say what is missing instead.
        msg = "no command given".into();
    }
    eprintln!("pbr-img: error: {}", one_line(&msg));
    if let Some(h) = hint {
        eprintln!("hint: {}", one_line(&h));
    }
    ExitCode::from(cli::USAGE_OR_INPUT)
}

/// clap's error text (`error: MESSAGE`, indented detail lines, `Usage: ...`,
/// `For more information ...`) as a message and a hint. A message ending
/// in `:` takes the detail lines that follow it (the missing arguments);
/// the hint is the first other detail line (clap's tip, the possible
/// values), else where to read the command's help.
fn usage_lines(text: &str) -> (String, Option<String>) {
    let mut lines = text.lines();
    let mut msg = lines.next().unwrap_or_default().trim_start_matches("error:").trim().to_owned();
    let rest: Vec<&str> = lines.collect();
    let detail = |l: &&&str| l.starts_with(char::is_whitespace) && !l.trim().is_empty();
    let mut details = rest.iter().take_while(detail).map(|l| l.trim()).peekable();
    if msg.ends_with(':') {
        let items: Vec<&str> = std::iter::from_fn(|| details.next_if(|l| !l.starts_with('['))).collect();
        msg = format!("{msg} {}", items.join(", "));
    }
    let hint = details.next().filter(|l| !l.starts_with("Usage:")).map(|l| {
        let l = l.trim_start_matches('[').trim_end_matches(']');
        l.strip_prefix("tip:").unwrap_or(l).trim().to_owned()
    });
    let help = || {
        let usage = rest.iter().find_map(|l| l.strip_prefix("Usage:"))?;
        let words: Vec<&str> = usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
        Some(format!("see `{} --help`", words.join(" ")))
    };
    (msg, hint.or_else(help))
}
