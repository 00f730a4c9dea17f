//! `pbr-img run`: a QEMU command line kept as a VM by phase-based reboot
//! ([`pbr_reboot::run`]): one line per event on standard error, and with
//! `--log` one JSON object per line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pbr_reboot::Vmm;
use pbr_reboot::fleet::Fetch;
use pbr_reboot::machine::UserCommand;
use pbr_reboot::run::{Event, Failure, Reboot as Policy, RunOptions};

use super::error::Result;

/// How a failure is met.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Reboot {
    /// Phase-based: recover from the latest valid candidate.
    Phase,
    /// A normal reboot: reset the machine.
    Full,
}

impl Reboot {
    fn policy(self) -> Policy {
        match self {
            Reboot::Phase => Policy::Phase,
            Reboot::Full => Policy::Full,
        }
    }
}

/// The arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where candidates are written and recovered from: a directory, or a
    /// VM's place in an S3-compatible store, s3://BUCKET[/PREFIX]/VM: its
    /// candidates are then kept on this host too (beside the chunk
    /// cache), pushed to the store as images VM-POINT as they are
    /// captured, and a host that holds none of them recovers the VM from
    /// the store's at start.
    #[arg(long, value_name = "DIR|S3_URL")]
    candidates: PathBuf,
    /// (store candidates) Where this host keeps the chunk cache (in its
    /// `chunks`), what it pulls, and the VM's candidates (default:
    /// $PBR_CACHE/.., else ~/.cache/pbr).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// (store candidates) How a recovery from the store takes them:
    /// `pull`, `stream` or `lazy`, as `recover --fetch` says.
    #[arg(long, value_name = "HOW", default_value = "pull", value_parser = ["pull", "stream", "lazy"])]
    fetch: String,
    /// A QEMU for the next recovery waits beside the running VM (what the
    /// VM binds on the host, it takes over once the VM is gone).
    #[arg(long)]
    standby: bool,
    /// As --standby, the waiting QEMU having loaded the latest candidate.
    #[arg(long, conflicts_with = "standby")]
    prestaged: bool,
    /// A panic or a hang.
    #[arg(long, value_enum, default_value = "phase")]
    on_failure: Reboot,
    /// A reboot the guest asks for.
    #[arg(long, value_enum, default_value = "phase")]
    on_reboot: Reboot,
    /// The guest runs no pbr-agent: nothing is captured, and a failure is a
    /// normal reboot.
    #[arg(long)]
    no_agent: bool,
    /// A recovered VM that fails again within this many seconds is booted
    /// from scratch next.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    retry_after: f64,
    /// How long the guest may take to power off when asked to stop.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    power_off: f64,
    /// A guest whose agent sent its heartbeat and then none for this many
    /// seconds is hung, and recovered.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    hang_after: f64,
    /// A booting guest whose agent says nothing for this many seconds is
    /// taken for one without pbr-agent: that boot gives no candidates.
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    agent_wait: f64,
    /// Append every event to this file as a JSON line.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The QEMU binary and its arguments.
    #[arg(last = true, required = true, value_name = "QEMU")]
    command: Vec<String>,
}

/// Runs the VM until it is asked to stop or powers itself off.
pub fn run(a: &Args) -> Result<ExitCode> {
    let cmd = UserCommand::parse(&a.command)?;
    let (candidates, store) = super::store::run_candidates(&a.candidates, a.cache.as_ref(), Fetch::parse(&a.fetch))?;
    std::fs::create_dir_all(&candidates)
        .map_err(|e| pbr_tools::Error::io(format!("cannot create {}", candidates.display()), e))?;
    let mut log = match &a.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| pbr_tools::Error::io(format!("cannot open {}", p.display()), e))?,
        ),
        None => None,
    };
    let seconds =
        |s: f64| Duration::try_from_secs_f64(s).map_err(|e| super::error::Error::Usage(format!("{s} s: {e}")));
    let opts = RunOptions {
        candidates: &candidates,
        store: store.as_ref(),
        vmm: match (a.standby, a.prestaged) {
            (_, true) => Vmm::Prestaged,
            (true, _) => Vmm::Standby,
            _ => Vmm::Spawn,
        },
        on_failure: a.on_failure.policy(),
        on_reboot: a.on_reboot.policy(),
        agent: !a.no_agent,
        retry_after: seconds(a.retry_after)?,
        power_off: seconds(a.power_off)?,
        hang_after: seconds(a.hang_after)?,
        agent_wait: seconds(a.agent_wait)?,
    };
    let stop = crate::signals::graceful();
    let mut on_event = |e: Event<'_>| {
        eprintln!("run: {}", line(&e));
        if let Some(f) = log.as_mut() {
            let mut v = e.json();
            v["time_unix_s"] = serde_json::json!(unix_now());
            let _ = writeln!(f, "{v}").and_then(|()| f.flush());
        }
    };
    pbr_reboot::run::run(&cmd, &opts, stop, &mut on_event)?;
    Ok(ExitCode::SUCCESS)
}

/// The event as one line for people.
fn line(e: &Event<'_>) -> String {
    let s = |d: Duration| d.as_secs_f64();
    match e {
        Event::Booting(why) => format!("booting from scratch ({why}), a candidate at each point"),
        Event::Captured(c) => format!("captured {}: {}", c.phase, c.path.display()),
        Event::Skipped(k) => format!("point {}: no candidate: {}", k.point, k.reason),
        Event::Ready(d) => format!("ready {:.2} s after QEMU started", s(*d)),
        Event::NoCapture(why) => format!("no more candidates from this boot: {why}"),
        Event::Hostile(what) => format!("the guest broke its agent's protocol: {what}"),
        Event::Failed(d) => match &d.failure {
            Failure::Exited(status) => format!("failure: QEMU exited ({status})"),
            f => format!("failure: {} (seen {:.2} s after it)", f.kind(), s(d.late)),
        },
        Event::Refused(r) => format!("refused {}: {}", r.path.display(), r.reason),
        Event::Recovered(r, outage) => format!(
            "recovered {:.2} s after the failure, from {} ({}",
            s(*outage),
            r.chosen.as_ref().map_or_else(|| "nothing".into(), |p| p.display().to_string()),
            super::fmt::recovery(r, "")
        ),
        Event::Standby(c) => format!("a QEMU waits for the next recovery, from {}", c.display()),
        Event::NoStandby(why) => format!("no QEMU waits for the next recovery: {why}"),
        Event::Reset => "reset: a normal reboot".into(),
        Event::BackingOff(d) => format!("the VM failed too often: waiting {:.0} s before the next try", s(*d)),
        Event::PoweredOff => "the guest powered itself off".into(),
        Event::Stopping => "stopping: the guest is asked to power off".into(),
        Event::Stopped(true) => "stopped: the guest powered off".into(),
        Event::Stopped(false) => "stopped: the guest did not power off in time; QEMU quit with it running".into(),
        Event::Updating(u) => format!("kernel update to {}, keeping {}", u.kernel.display(), u.keep.join(", ")),
        Event::Checkpointed(Ok(k)) => {
            let dumped: Vec<&str> = k.outcome.units.iter().filter(|u| u.dumped).map(|u| u.unit.as_str()).collect();
            format!("checkpointed {} in {:.2} s; the guest powers off", dumped.join(", "), s(k.elapsed))
        }
        Event::Checkpointed(Err(e)) => format!("no checkpoint ({e}): every unit starts cold; the guest powers off"),
        Event::Updated(r) => {
            let back: Vec<&str> = r.units.iter().filter(|u| u.restored).map(|u| u.unit.as_str()).collect();
            let back = if back.is_empty() { "none".to_owned() } else { back.join(", ") };
            match &r.reverted {
                Some(why) => format!("the new kernel was given up ({why}): the old one runs; restored: {back}"),
                None => format!(
                    "updated to {}, ready {:.2} s after the request; restored: {back}",
                    r.kernel_after.as_deref().unwrap_or("?"),
                    r.total_s
                ),
            }
        }
        Event::NoControl(why) => format!("no control socket ({why}): the VM runs, and cannot be updated"),
        Event::Pushed(url, r) => format!(
            "pushed {url}: {} chunks, {} new ({} bytes) in {:.2} s",
            r.chunks, r.uploaded, r.uploaded_bytes, r.seconds
        ),
        Event::StoreFailed(why) => format!("the store failed: {why}"),
    }
}

/// Seconds since the epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
