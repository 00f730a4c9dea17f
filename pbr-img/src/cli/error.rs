//! The CLI's error: what the libraries report, or a command line that
//! cannot be carried out; each says its exit status and its one line.

use std::fmt;

/// Exit status when a check failed: `verify` found damage.
pub const CHECK_FAILED: u8 = 1;
/// Exit status of `diff` when the images differ (as diff(1) and cmp(1)).
pub const DIFFERENT: u8 = 1;
/// Exit status of a usage or input error.
pub const USAGE_OR_INPUT: u8 = 2;
/// Exit status of `select` and `recover` when no candidate is valid.
pub const NO_CANDIDATE: u8 = 3;

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// The command line asks for what cannot be done: options missing or
    /// in conflict, files that cannot serve where they are named.
    Usage(String),
    /// The tools failed on the input or the system.
    Tools(pbr_tools::Error),
    /// Replaying an image into QEMU or KVM failed.
    Replay(pbr_replay::Error),
    /// A capture, a boot or a recovery failed, or found no candidate.
    Reboot(pbr_reboot::Error),
    /// The fleet store failed, or what it holds is damaged.
    Store(pbr_store::Error),
}

/// The CLI's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The process's exit status for this error (the README's table): 3
    /// when no candidate can be restored, else 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Reboot(pbr_reboot::Error::NoCandidate(_)) => NO_CANDIDATE,
            Error::Usage(_) | Error::Tools(_) | Error::Replay(_) | Error::Reboot(_) | Error::Store(_) => USAGE_OR_INPUT,
        }
    }

    /// The message on one line, whatever it holds.
    pub fn line(&self) -> String {
        one_line(&self.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => f.write_str(msg),
            Error::Tools(e) => e.fmt(f),
            Error::Replay(e) => e.fmt(f),
            Error::Reboot(e) => e.fmt(f),
            Error::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(_) => None,
            Error::Tools(e) => Some(e),
            Error::Replay(e) => Some(e),
            Error::Reboot(e) => Some(e),
            Error::Store(e) => Some(e),
        }
    }
}

impl From<pbr_tools::Error> for Error {
    fn from(e: pbr_tools::Error) -> Error {
        Error::Tools(e)
    }
}

impl From<pbr_replay::Error> for Error {
    fn from(e: pbr_replay::Error) -> Error {
        Error::Replay(e)
    }
}

impl From<pbr_reboot::Error> for Error {
    fn from(e: pbr_reboot::Error) -> Error {
        Error::Reboot(e)
    }
}

impl From<pbr_store::Error> for Error {
    fn from(e: pbr_store::Error) -> Error {
        Error::Store(e)
    }
}

impl From<pbr_format::Error> for Error {
    fn from(e: pbr_format::Error) -> Error {
        Error::Tools(e.into())
    }
}

/// `s` on one line: its words joined by single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_candidate_exits_3_the_rest_2() {
        assert_eq!(Error::from(pbr_reboot::Error::NoCandidate("none".into())).exit_code(), NO_CANDIDATE);
        assert_eq!(Error::from(pbr_reboot::Error::Usage("x".into())).exit_code(), USAGE_OR_INPUT);
        assert_eq!(Error::from(pbr_replay::Error::Guest("halted".into())).exit_code(), USAGE_OR_INPUT);
        assert_eq!(Error::Usage("give --device or --pages".into()).exit_code(), USAGE_OR_INPUT);
    }

    #[test]
    fn the_message_is_one_line() {
        let e = Error::Usage("two\n  lines\tand tabs".into());
        assert_eq!(e.line(), "two lines and tabs");
        let e = Error::from(pbr_reboot::Error::NoCandidate("all\nrefused".into()));
        assert_eq!(e.line(), "no valid candidate: all refused");
    }
}
