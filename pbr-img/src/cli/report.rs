//! One printer for every command's report: `--json` prints the report's
//! JSON, else its text; then the lines it says on standard error, and the
//! exit status it gives.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use super::error::Result;

/// What a command found or did, printed by [`print()`].
pub trait Report {
    /// The report as JSON (`--json`).
    fn json(&self) -> Value;

    /// The report as text.
    ///
    /// # Errors
    /// Writing to `w` failed.
    fn text(&self, w: &mut dyn Write) -> std::io::Result<()>;

    /// Whether the JSON is printed indented (a document of many lines)
    /// rather than on one line.
    fn pretty(&self) -> bool {
        false
    }

    /// Whether the report goes to standard error: the command's output
    /// itself went to standard output (`-o -`).
    fn on_stderr(&self) -> bool {
        false
    }

    /// The lines said on standard error after the report (`note:` lines, a
    /// verdict that sets the exit status).
    fn after(&self, _json: bool) -> Vec<String> {
        Vec::new()
    }

    /// The exit status the report gives.
    fn status(&self) -> ExitCode {
        ExitCode::SUCCESS
    }
}

/// The bytes [`print()`] writes for `report`: its JSON and a newline, or its
/// text.
///
/// # Errors
/// The report's text failed to render.
pub fn render(report: &dyn Report, json: bool) -> std::io::Result<Vec<u8>> {
    if json {
        let v = report.json();
        let s = if report.pretty() { serde_json::to_string_pretty(&v).unwrap_or_default() } else { v.to_string() };
        return Ok(format!("{s}\n").into_bytes());
    }
    let mut text = Vec::new();
    report.text(&mut text)?;
    Ok(text)
}

/// Prints `report` as JSON (`json`) or as text, on standard output (or
/// standard error, [`Report::on_stderr`]), then [`Report::after`]'s lines;
/// returns [`Report::status`].
///
/// # Errors
/// Standard output failed (a closed pipe is also remembered).
pub fn print(report: &dyn Report, json: bool) -> Result<ExitCode> {
    let bytes = render(report, json).map_err(|e| pbr_tools::Error::io("cannot write the report", e))?;
    if report.on_stderr() {
        eprint!("{}", String::from_utf8_lossy(&bytes));
    } else {
        super::out::write_bytes(&bytes)?;
    }
    for line in report.after(json) {
        eprintln!("{line}");
    }
    Ok(report.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sample(u64);

    impl Report for Sample {
        fn json(&self) -> Value {
            serde_json::json!({"n": self.0, "list": [1, 2]})
        }
        fn text(&self, w: &mut dyn Write) -> std::io::Result<()> {
            writeln!(w, "n is {}", self.0)
        }
    }

    struct Pretty;

    impl Report for Pretty {
        fn json(&self) -> Value {
            serde_json::json!({"a": 1})
        }
        fn text(&self, _: &mut dyn Write) -> std::io::Result<()> {
            Ok(())
        }
        fn pretty(&self) -> bool {
            true
        }
    }

    #[test]
    fn json_on_one_line_or_indented_text_as_written() {
        assert_eq!(render(&Sample(7), true).unwrap(), b"{\"list\":[1,2],\"n\":7}\n");
        assert_eq!(render(&Sample(7), false).unwrap(), b"n is 7\n");
        assert_eq!(render(&Pretty, true).unwrap(), b"{\n  \"a\": 1\n}\n");
        assert_eq!(render(&Pretty, false).unwrap(), b"");
    }
}
