//! How a guest says it is ready: a phase guest's service answers a client
//! on the host while its control port is served; an agent's guest says
//! ready on the agent's port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pbr_agent::FrameError;
use pbr_agent::message::{Message, Resumed};
use pbr_replay::qemu::process::QemuProcess;

use crate::agent::AgentPort;
use crate::error::{Error, Result};
use crate::guest::Control;
use crate::service;

/// How long a restored or booting agent's guest may take to say ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a boot or a recovery may take to serve.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(300);

/// What a timed boot or recovery saw when the guest's service came up.
pub(crate) struct Served {
    /// From the start of the timing until the service answered.
    pub(crate) at: Duration,
    /// The service's status line.
    pub(crate) status: String,
    /// The guest's own `PBR-READY` uptime, which follows.
    pub(crate) uptime: f64,
}

/// Waits, from `t`, until the guest's service answers on `port` (a client
/// outside the guest, [`service::wait_ready`]) while the control port
/// answers every phase marker at once (the first one, already seen, when
/// `pending` is set); then waits for the guest's own `PBR-READY`, which is
/// not timed. When the service never answers, QEMU is told to quit.
pub(crate) fn serve(
    control: &mut Control,
    qemu: &mut QemuProcess,
    port: u16,
    pending: bool,
    t: Instant,
) -> Result<Served> {
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let guest = s.spawn(|| {
            let r = if pending { control.go() } else { Ok(()) }.and_then(|()| control.until_ready());
            failed.store(r.is_err(), Ordering::Relaxed);
            r
        });
        let ready = service::wait_ready(port, SERVICE_TIMEOUT, &failed).map(|status| (t.elapsed(), status));
        if ready.is_err() {
            let _ = qemu.qmp().cmd("quit", serde_json::json!({}));
        }
        let uptime = guest.join().map_err(|_| Error::Guest("the control port reader panicked".into()))?;
        // What the guest's side says comes first: it is why the wait ended.
        match (ready, uptime) {
            (Ok((at, status)), Ok(uptime)) => Ok(Served { at, status, uptime }),
            (_, Err(e)) | (Err(e), _) => Err(e),
        }
    })
}

/// How often a machine is looked at while its agent is silent.
pub(crate) const LOOK: Duration = Duration::from_millis(250);

/// Why the guest in `qemu` stopped, if it did: its kernel panicked, it
/// asked for a reboot or a power-off (QEMU paused on it), or QEMU exited.
/// (Its events stay for whoever watches it next.)
pub(crate) fn stopped(qemu: &mut QemuProcess, when: &str) -> Option<String> {
    if let Ok(Some(status)) = qemu.child().try_wait() {
        return Some(format!("QEMU exited {when} ({status})"));
    }
    let status = qemu.qmp().cmd("query-status", serde_json::json!({})).ok()?;
    match status["status"].as_str() {
        Some(s @ ("guest-panicked" | "shutdown" | "internal-error")) => {
            Some(format!("the guest stopped {when} (QEMU says {s})"))
        }
        _ => None,
    }
}

/// Answers every point with "carry on" (nothing is captured during a
/// recovery) until the agent says ready; returns what a restored guest's
/// agent reported doing. A bad frame or message is skipped: the port is
/// read on from the next frame. The machine in `qemu` is looked at
/// whenever the agent is silent.
///
/// # Errors
/// The agent went silent or did not say ready in time, its port closed,
/// it sent what has no place in a boot, or the guest stopped first.
pub(crate) fn until_ready(agent: &mut AgentPort, qemu: &mut QemuProcess) -> Result<Option<Resumed>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut resumed = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Guest(format!("the guest did not say ready within {} s", READY_TIMEOUT.as_secs())));
        }
        let message = match agent.next(left.min(LOOK)) {
            Ok(m) => m,
            Err(Error::AgentSilent(_)) => match stopped(qemu, "before it was ready") {
                Some(why) => return Err(Error::Guest(why)),
                None => continue,
            },
            Err(e @ Error::AgentFrame(FrameError::Closed | FrameError::Io(_))) => return Err(e),
            Err(Error::AgentFrame(_) | Error::AgentMessage { .. }) => {
                agent.resync();
                continue;
            }
            Err(e) => return Err(e),
        };
        match message {
            Message::Resumed(r) => resumed = Some(r),
            Message::Point(_) => agent.carry_on()?,
            Message::Ready(_) => return Ok(resumed),
            Message::Kpageflags(_)
            | Message::Kpagecount(_)
            | Message::Files(_)
            | Message::Cache(_)
            | Message::Restored(_)
            | Message::Alive => {}
            other => return Err(Error::AgentUnexpected(format!("{:?}", other.encode().kind))),
        }
    }
}
