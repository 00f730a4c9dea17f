//! The error type of capture and recovery: what replay, the guest or its
//! agent did wrong, a command line that cannot be run, and no candidate.

use std::time::Duration;

/// What went wrong in a capture, a boot or a recovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Restoring a candidate (QEMU, KVM), reading or converting an image,
    /// or the host's I/O.
    #[error(transparent)]
    Replay(#[from] pbr_replay::Error),
    /// The guest agent said nothing for this long.
    #[error("the guest agent said nothing for {} s", .0.as_secs())]
    AgentSilent(Duration),
    /// The agent's port broke or sent a frame that breaks the protocol.
    #[error("guest agent: {0}")]
    AgentFrame(#[source] pbr_agent::FrameError),
    /// The agent sent a frame whose message does not decode.
    #[error("guest agent, frame at byte {at}: {source}")]
    AgentMessage {
        /// The frame's offset in what the port carried.
        at: u64,
        /// What is wrong with the message.
        source: pbr_agent::MessageError,
    },
    /// The guest agent sent a message that has no place here.
    #[error("the guest agent sent {0}")]
    AgentUnexpected(String),
    /// The guest (its control port, its service, its save) failed.
    #[error("{0}")]
    Guest(String),
    /// The command line or the candidate cannot be run this way.
    #[error("{0}")]
    Usage(String),
    /// No candidate image can be restored safely: the caller reboots from
    /// scratch.
    #[error("no valid candidate: {0}")]
    NoCandidate(String),
}

impl Error {
    /// Whether this error is the candidate's own, so that a recovery
    /// refuses that candidate and tries the next one: damage found in it,
    /// or page-cache pages that cannot be read back
    /// ([`pbr_replay::Error::refuses_candidate`]). Other errors (QEMU, the
    /// host) end the recovery.
    pub fn refuses_candidate(&self) -> bool {
        matches!(self, Error::Replay(e) if e.refuses_candidate())
    }

    /// The one-line reason a recovery gives for refusing a candidate
    /// because of this error.
    pub fn refusal(&self) -> String {
        match self {
            Error::Replay(e) if e.is_damage() => format!("damaged: {self}"),
            _ => self.to_string(),
        }
    }

    /// Whether the guest's agent caused this error: silence, a bad frame or
    /// message, or one out of place (a host that keeps its VM reads on).
    pub fn is_agents(&self) -> bool {
        matches!(
            self,
            Error::AgentSilent(_) | Error::AgentFrame(_) | Error::AgentMessage { .. } | Error::AgentUnexpected(_)
        )
    }

    /// An I/O error while doing `context`.
    #[cold]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Replay(pbr_replay::Error::io(context, source))
    }
}

impl From<pbr_tools::Error> for Error {
    fn from(e: pbr_tools::Error) -> Self {
        Error::Replay(e.into())
    }
}

impl From<pbr_format::Error> for Error {
    fn from(e: pbr_format::Error) -> Self {
        Error::Replay(e.into())
    }
}

/// Capture's and recovery's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use pbr_format::ErrorKind;

    fn damage() -> pbr_format::Error {
        let kind = ErrorKind::ChecksumMismatch { what: "raw page gfn 0x10".into(), stored: 1, computed: 2 };
        pbr_format::Error::new(kind).at("PAGE_DATA", 0x2000)
    }

    /// Damage and a cache that cannot be refilled refuse the candidate
    /// (the next one is tried); QEMU, the agent and the host end the
    /// recovery.
    #[test]
    fn only_the_candidates_own_errors_refuse_it() {
        let damaged = Error::from(damage());
        assert!(damaged.refuses_candidate());
        assert!(damaged.refusal().starts_with("damaged: "), "{}", damaged.refusal());
        let refill = Error::from(pbr_tools::Error::Refill("the disk changed".into()));
        assert!(refill.refuses_candidate());
        assert_eq!(refill.refusal(), "cannot refill the page cache: the disk changed");
        let qmp = pbr_replay::Error::Qmp { command: "cont".into(), message: "no".into() };
        for e in [
            Error::from(qmp),
            Error::AgentSilent(Duration::from_secs(600)),
            Error::Usage("no QEMU command line".into()),
            Error::NoCandidate("do a full reboot".into()),
            Error::io("agent port", std::io::Error::other("reset")),
        ] {
            assert!(!e.refuses_candidate(), "{e}");
        }
    }

    /// Each layer's message reaches the one line the CLI prints.
    #[test]
    fn messages_name_the_layer() {
        assert_eq!(Error::AgentSilent(Duration::from_secs(600)).to_string(), "the guest agent said nothing for 600 s");
        let qmp = Error::from(pbr_replay::Error::Qmp { command: "cont".into(), message: "{\"desc\":\"x\"}".into() });
        assert_eq!(qmp.to_string(), "QMP cont: {\"desc\":\"x\"}");
        assert_eq!(Error::NoCandidate("do a full reboot".into()).to_string(), "no valid candidate: do a full reboot");
    }
}
