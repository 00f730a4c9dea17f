//! The error type of replay: the image's own errors, and what QEMU or KVM
//! said when they refused it.

use std::process::ExitStatus;

/// What went wrong in a replay or restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the image, exporting its stream, or the host's I/O.
    #[error(transparent)]
    Tools(#[from] pbr_tools::Error),
    /// QEMU exited before it was ready or while it loaded the image.
    #[error("{qemu} exited ({status}) {when}: {said}")]
    QemuExited {
        /// The QEMU binary.
        qemu: String,
        /// How it exited.
        status: ExitStatus,
        /// When (`before it was ready`, `while loading the image`).
        when: String,
        /// QEMU's own message (`QEMU said: ...`, with the likely cause), or
        /// where to find it.
        said: String,
    },
    /// QEMU answered a QMP command with an error.
    #[error("QMP {command}: {message}")]
    Qmp {
        /// The command (`cont`, `migrate-incoming` ...).
        command: String,
        /// QEMU's error, as it gave it.
        message: String,
    },
    /// QEMU's QMP connection broke or sent what is not QMP.
    #[error("{0}")]
    QmpProtocol(String),
    /// QEMU's migration of the image failed or did not finish.
    #[error("migration {0}")]
    Migration(String),
    /// A KVM ioctl failed.
    #[error("KVM {what}: {source}")]
    Kvm {
        /// What was being done (`create a VM`, `set sregs` ...).
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// The guest stopped in a way the adapter does not handle (a KVM exit
    /// it does not serve, a halt where a port write was awaited).
    #[error("{0}")]
    Guest(String),
    /// The image cannot be replayed by this adapter as it is (a diff
    /// image, a raw run outside the file, no vCPU, RAM that is another
    /// image's).
    #[error("{0}")]
    Image(String),
    /// The RAM a server outside the image serves
    /// ([`crate::qemu::ServedRam`]) cannot be restored: a page it must
    /// serve is missing or damaged, or this QEMU cannot map it. The
    /// candidate is refused.
    #[error("its RAM from the store: {0}")]
    Served(String),
    /// A thread of the restore (the stream writer, the page check)
    /// panicked or could not start.
    #[error("{0}")]
    Thread(String),
}

impl Error {
    /// Whether this is damage found in the image: a page or section whose
    /// crc32 or hash does not match ([`pbr_tools::Error::is_damage`]).
    pub fn is_damage(&self) -> bool {
        matches!(self, Error::Tools(e) if e.is_damage())
    }

    /// Whether this error is the image's own, so that a recovery refuses
    /// that image and tries the next: damage, page-cache pages that cannot
    /// be read back ([`pbr_tools::Error::refuses_candidate`]), or RAM its
    /// server cannot serve ([`Error::Served`]).
    pub fn refuses_candidate(&self) -> bool {
        matches!(self, Error::Tools(e) if e.refuses_candidate()) || matches!(self, Error::Served(_))
    }

    /// An I/O error while doing `context`.
    #[cold]
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Tools(pbr_tools::Error::io(context, source))
    }
}

impl From<pbr_format::Error> for Error {
    fn from(e: pbr_format::Error) -> Self {
        Error::Tools(e.into())
    }
}

/// Replay's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
