//! `pbr-img man`: one page, pbr-img(1), whose COMMANDS section holds every
//! command's synopsis, description and options. No page per command is
//! installed, so none is named.

use std::io::Write;

use clap_mangen::Man;

/// A section renderer of `clap_mangen`.
type Part = fn(&Man, &mut dyn Write) -> std::io::Result<()>;

/// Prints the page of `cmd`, the program's command line.
pub fn run(cmd: clap::Command) -> super::error::Result<std::process::ExitCode> {
    let mut text = Vec::new();
    render(cmd, &mut text).map_err(|e| pbr_tools::Error::io("cannot write the man page", e))?;
    super::out::write_bytes(&text)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Writes the page (roff) of `cmd` to `w`.
///
/// # Errors
/// I/O.
pub fn render(cmd: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone());
    man.render_title(w)?;
    let parts: [Part; 4] = [
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
        Man::render_options_section,
    ];
    sections(w, &man, &parts, true)?;
    writeln!(w, ".SH COMMANDS")?;
    writeln!(w, "Each command also takes \\fB\\-\\-help\\fR.")?;
    for sub in cmd.get_subcommands() {
        command(w, sub)?;
    }
    sections(w, &man, &[Man::render_version_section], true)
}

/// Writes the sections `parts` renders, without the string definitions
/// that `clap_mangen` repeats before each (the title wrote them), and with
/// their `.SH` headings only when `headings`.
fn sections(w: &mut dyn Write, man: &Man, parts: &[Part], headings: bool) -> std::io::Result<()> {
    for part in parts {
        let mut roff = Vec::new();
        part(man, &mut roff)?;
        if !headings {
            writeln!(w, ".PP")?;
        }
        for line in String::from_utf8_lossy(&roff).lines() {
            let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
            if !preamble && (headings || !line.starts_with(".SH ")) {
                writeln!(w, "{line}")?;
            }
        }
    }
    Ok(())
}

/// One command (the commands under it, for a group such as `manifest`) as
/// a subsection: its synopsis, description and options.
fn command(w: &mut dyn Write, cmd: &clap::Command) -> std::io::Result<()> {
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            command(w, sub)?;
        }
        return Ok(());
    }
    writeln!(w, ".SS \"{}\"", cmd.get_bin_name().unwrap_or_else(|| cmd.get_name()))?;
    let parts: [Part; 3] = [Man::render_synopsis_section, Man::render_description_section, Man::render_options_section];
    sections(w, &Man::new(cmd.clone()), &parts, false)
}
