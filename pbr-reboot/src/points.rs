//! Capture of any QEMU machine whose guest runs `pbr-agent`: at each
//! restartable point the agent announces, the machine is stopped, its
//! disks sealed, saved, converted, classified and trimmed into a candidate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pbr_agent::message::{Message, Point};

use crate::agent::vmgenid_args;
use crate::capture::{Candidate, CaptureOptions, PhaseInput, candidate};
use crate::error::{Error, Result};
use crate::guest::save;
use crate::machine::{Drive, Machine, UserCommand};
use crate::ready::{LOOK, stopped};
use pbr_tools::seal::{DiskSeal, FileSeal, SEALS_KEY, Seals, wait_past};

/// Metadata keys an agent candidate carries beside its seals.
pub const AGENT_KEY: &str = pbr_format::keys::PBR_AGENT;
/// The QEMU binary the capture ran.
pub const QEMU_KEY: &str = pbr_format::keys::PBR_QEMU;
/// The files the guest's boot had read by the point (a JSON list of
/// paths, as the guest named them).
pub const FILES_KEY: &str = pbr_format::keys::PBR_FILES_READ;

/// What an agent candidate's trim drops: zero pages only. The agent reads
/// kpageflags before the machine stops, so a page free in the dump may be
/// in use by the time of the save; dropping it would lose that page. A
/// guest that zeroes the pages it frees (`init_on_free=1`) has its free
/// pages dropped as zero pages, exactly.
const SAFE_DROP: pbr_tools::trim::Drop = pbr_tools::trim::Drop { free: false, zero: true, cache: false };

/// The point at which units checkpointed for a kernel update are handed
/// back: the initramfs's, before systemd starts any unit.
pub const RESTORE_POINT: &str = "kernel";

/// How long the agent may stay silent during a boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The most points a kept machine's boot captures: a guest cannot fill
/// the host's disk with candidates.
const MAX_POINTS: usize = 16;

/// A point that gave no candidate, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The point.
    pub point: String,
    /// Why (one line).
    pub reason: String,
}

/// What [`capture_points`] did.
#[derive(Clone, Debug, Default)]
pub struct PointsCapture {
    /// The candidates, in boot order.
    pub candidates: Vec<Candidate>,
    /// The points that gave none.
    pub skipped: Vec<Skipped>,
    /// Seconds from QEMU's start until the agent said ready (saves
    /// included).
    pub ready_s: f64,
    /// Why the capture ended before the agent said ready, the machine
    /// running on ([`boot_keeping`] only).
    pub stopped: Option<String>,
    /// After a kernel update: how the guest's units came back, as its
    /// agent told before ready.
    pub restored: Option<pbr_agent::Restored>,
    /// After a kernel update: why the units' files could not be handed to
    /// the guest (they then start cold).
    pub restore_failed: Option<String>,
}

/// Boots `cmd` with the agent's port and writes one candidate per point
/// into `out`, until the agent says the guest is ready; then QEMU quits.
/// `progress` hears each point as it is handled.
///
/// # Errors
/// QEMU or the agent failed, the guest sent a bad message, a conversion
/// failed, I/O.
pub fn capture_points(
    cmd: &UserCommand,
    out: &Path,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<PointsCapture> {
    let booted = boot_capturing(cmd, out, opts, progress)?;
    booted.machine.quit();
    Ok(booted.capture)
}

/// A machine that booted through its points, captured, and runs on.
pub struct Booted {
    /// What the capture wrote.
    pub capture: PointsCapture,
    /// The machine, its guest ready.
    pub machine: Machine,
    /// Its sockets and the capture's work files (in the candidates'
    /// directory), removed when it is dropped.
    _work: tempfile::TempDir,
    /// Removes them if the tool is interrupted.
    _interrupt: pbr_tools::cleanup::Registration,
}

impl Booted {
    /// `cmd` started with the agent's port, for a guest without the agent:
    /// nothing is captured and nothing is waited for.
    ///
    /// # Errors
    /// QEMU did not start.
    pub fn without_agent(cmd: &UserCommand) -> Result<Booted> {
        let work = tempfile::tempdir().map_err(|e| Error::io("cannot create a work directory", e))?;
        let interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
        let machine = Machine::start(cmd, work.path(), &vmgenid_args()?)?;
        let capture = PointsCapture::default();
        Ok(Booted { capture, machine, _work: work, _interrupt: interrupt })
    }
}

/// As [`capture_points`], and the machine runs on once its guest is ready.
///
/// # Errors
/// As [`capture_points`].
pub fn boot_capturing(
    cmd: &UserCommand,
    out: &Path,
    opts: &CaptureOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Booted> {
    boot(cmd, out, opts, None, None, progress)
}

/// As [`boot_capturing`], for a machine that must run whatever its guest
/// does: a point that cannot be captured is skipped with its reason, and
/// an agent that says nothing within `first_word` of the start (a guest
/// without pbr-agent), goes silent, or breaks the protocol ends the
/// capture, not the machine ([`PointsCapture::stopped`] says why). After
/// a kernel update, `restore` is the image of the units checkpointed on
/// the old kernel: its files are handed to the guest at its
/// [`RESTORE_POINT`] (once it is captured), so that they are restored
/// before the units start.
///
/// # Errors
/// QEMU failed to start or its QMP failed.
pub fn boot_keeping(
    cmd: &UserCommand,
    out: &Path,
    opts: &CaptureOptions,
    first_word: Duration,
    restore: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Booted> {
    boot(cmd, out, opts, Some(first_word), restore, progress)
}

/// What the capture of a boot knows beside its machine.
struct Capturing<'a> {
    cmd: &'a UserCommand,
    out: &'a Path,
    work: &'a Path,
    opts: &'a CaptureOptions,
    /// The seals of the boot files.
    boot: Vec<FileSeal>,
    qemu_version: String,
    /// The page frames kpageflags covers.
    max_pages: u64,
}

/// What the agent sent for its coming point.
#[derive(Default)]
struct Sent {
    kpf: Option<Vec<u8>>,
    kpc: Option<Vec<u8>>,
    files: Option<Vec<String>>,
    cache: Option<Vec<pbr_agent::CachedFile>>,
}

/// Boots `cmd` and captures its points; `keep` (the first word's timeout)
/// makes the guest's failures end the capture instead of the boot;
/// `restore` is handed to the guest at its [`RESTORE_POINT`].
fn boot(
    cmd: &UserCommand,
    out: &Path,
    opts: &CaptureOptions,
    keep: Option<Duration>,
    mut restore: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Booted> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    if let Some(dir) = &opts.keep_streams {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let work = tempfile::tempdir_in(out).map_err(|e| Error::io("cannot create a work directory", e))?;
    let interrupt = pbr_tools::cleanup::remove_on_interrupt(work.path());
    let _temps = pbr_tools::cleanup::temp_files_in(out);
    let boot = cmd.boot_files().iter().map(|p| FileSeal::of(p, true)).collect::<pbr_tools::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let mut m = Machine::start(cmd, work.path(), &vmgenid_args()?)?;
    let qemu_version = m.version()?;
    // kpageflags covers every page frame up to the highest: RAM and the
    // hole below 4 GiB.
    let max_pages = (m.ram_bytes()? >> 12) + (4 << 30 >> 12);
    let c = Capturing { cmd, out, work: work.path(), opts, boot, qemu_version, max_pages };
    let mut sent = Sent::default();
    let mut result = PointsCapture::default();
    let mut heard = false;
    let mut since = Instant::now();
    loop {
        let timeout = keep.filter(|_| !heard).unwrap_or(BOOT_TIMEOUT);
        // A kept machine is looked at between reads: a guest that fails
        // during its boot ends the capture at once, not at the timeout.
        let slice = match keep {
            Some(_) => timeout.saturating_sub(since.elapsed()).min(LOOK).max(Duration::from_millis(1)),
            None => timeout,
        };
        let message = match m.agent.next(slice) {
            Ok(message) => message,
            Err(Error::AgentSilent(_)) if keep.is_some() && since.elapsed() < timeout => {
                match stopped(&mut m.qemu, "during its boot") {
                    Some(why) => {
                        result.stopped = Some(why);
                        break;
                    }
                    None => continue,
                }
            }
            Err(Error::AgentSilent(_)) if keep.is_some() => {
                result.stopped = Some(capture_ended(&Error::AgentSilent(timeout), heard));
                break;
            }
            Err(e) if keep.is_some() && e.is_agents() => {
                result.stopped = Some(capture_ended(&e, heard));
                break;
            }
            Err(e) => return Err(e),
        };
        heard = true;
        since = Instant::now();
        match message {
            Message::Kpageflags(gz) => sent.kpf = Some(gz),
            Message::Kpagecount(gz) => sent.kpc = Some(gz),
            Message::Files(f) => sent.files = Some(f),
            Message::Cache(cache) => sent.cache = Some(cache),
            Message::Point(p) => {
                let since_power_on = t0.elapsed().as_secs_f64();
                let sent = std::mem::take(&mut sent);
                let skipped = if keep.is_some() && result.candidates.len() + result.skipped.len() >= MAX_POINTS {
                    Some(format!("more than {MAX_POINTS} points in one boot: the rest give no candidate"))
                } else {
                    let sequence = result.candidates.len() as u32 + 1;
                    let got = m.qemu.qmp().cmd("stop", serde_json::json!({})).map_err(Error::from).and_then(|_| {
                        let got = c.point(&mut m, &p, &sent, sequence)?;
                        m.qemu.qmp().cmd("cont", serde_json::json!({}))?;
                        Ok(got)
                    });
                    match got {
                        Ok(Ok(candidate)) => {
                            progress(&format!("point {}: {}", p.name, candidate.path.display()));
                            result.candidates.push(Candidate { since_power_on, ..candidate });
                            None
                        }
                        Ok(Err(reason)) => Some(reason),
                        // The machine runs on if it can; a QEMU that failed
                        // is the watch's to meet.
                        Err(e) if keep.is_some() => match m.qemu.qmp().cmd("cont", serde_json::json!({})) {
                            Ok(_) => Some(format!("the capture failed: {e}")),
                            Err(_) => {
                                result.stopped = Some(format!("QEMU failed at point {}: {e}", p.name));
                                break;
                            }
                        },
                        Err(e) => return Err(e),
                    }
                };
                if let Some(reason) = skipped {
                    progress(&format!("point {}: no candidate: {reason}", p.name));
                    result.skipped.push(Skipped { point: p.name.clone(), reason });
                }
                // The initramfs's point: before any unit starts.
                if p.name == RESTORE_POINT
                    && let Some(image) = restore.take()
                {
                    match crate::update::send_restore(&mut m.agent, image) {
                        Ok(n) => progress(&format!("point {}: {n} units handed to the guest to restore", p.name)),
                        Err(e) => result.restore_failed = Some(e.to_string()),
                    }
                }
                match m.agent.carry_on() {
                    Err(e) if keep.is_some() => {
                        result.stopped = Some(format!("the guest does not read its agent's port: {e}"));
                        break;
                    }
                    done => done?,
                }
            }
            Message::Restored(r) => result.restored = Some(r),
            Message::Ready(_) => {
                result.ready_s = t0.elapsed().as_secs_f64();
                if restore.is_some() {
                    result.restore_failed = Some(format!(
                        "the boot had no {RESTORE_POINT:?} point (is pbr-agent in the new kernel's initramfs?)"
                    ));
                }
                break;
            }
            other => {
                let e = Error::AgentUnexpected(format!("{:?} during a boot", other.encode().kind));
                if keep.is_some() {
                    result.stopped = Some(capture_ended(&e, heard));
                    break;
                }
                m.quit();
                return Err(e);
            }
        }
    }
    Ok(Booted { capture: result, machine: m, _work: work, _interrupt: interrupt })
}

/// Why a kept boot's capture stopped, after error `e` of its agent.
fn capture_ended(e: &Error, heard: bool) -> String {
    match (e, heard) {
        (Error::AgentSilent(d), false) => format!(
            "the guest's agent said nothing within {} s of the start: the guest runs no pbr-agent (or its port \
             is not set up), so this boot gives no candidates",
            d.as_secs_f64()
        ),
        _ => format!("{e}: nothing more is captured in this boot"),
    }
}

impl Capturing<'_> {
    /// Captures point `p` of the stopped machine: a candidate, or why it
    /// gives none (a disk it cannot seal).
    ///
    /// # Errors
    /// The save, the conversion or the candidate's write failed.
    fn point(
        &self,
        m: &mut Machine,
        p: &Point,
        sent: &Sent,
        sequence: u32,
    ) -> Result<std::result::Result<Candidate, String>> {
        let drives = m.drives()?;
        let disks = match seal_disks(p, &drives) {
            Ok(disks) => disks,
            Err(reason) => return Ok(Err(reason)),
        };
        let seals = Seals { boot: self.boot.clone(), disks, qemu_version: self.qemu_version.clone() };
        let stream = self.work.join(format!("{}.qemu", p.name));
        let counters = save(m.qemu.qmp(), &stream)?;
        let mut metadata = vec![
            (SEALS_KEY.into(), seals.to_json()),
            (AGENT_KEY.into(), "1".into()),
            (QEMU_KEY.into(), self.cmd.qemu.clone()),
        ];
        if let Some(f) = &sent.files {
            metadata.push((FILES_KEY.into(), serde_json::to_string(f).unwrap_or_default()));
        }
        let input = PhaseInput {
            phase: &p.name,
            sequence,
            uptime: p.uptime_ns as f64 / 1e9,
            restore_cmdline: serde_json::to_string(&self.cmd.args).unwrap_or_default(),
            kpageflags: sent.kpf.as_deref(),
            kpagecount: sent.kpc.as_deref(),
            files: &[],
            metadata,
            max_pages: self.max_pages,
            drop: SAFE_DROP,
            cache: sent.cache.as_deref().map(|c| (c, &seals)),
            free_only_if_zero: true,
        };
        let c = candidate(self.out, self.work, &stream, &input, self.opts)?;
        keep_or_remove(&stream, self.opts.keep_streams.as_deref(), &p.name)?;
        // A write after `cont` must move the disks' ctimes.
        wait_past(seals.disks.iter().map(|d| d.file.ctime_ns).max().unwrap_or(0));
        Ok(Ok(Candidate { counters, ..c }))
    }
}

/// Moves the stream into `dir`, or removes it.
fn keep_or_remove(stream: &Path, dir: Option<&Path>, point: &str) -> Result<()> {
    match dir {
        Some(dir) => {
            let dest = pbr_format::write::destination(&dir.join(format!("{point}.qemu")))?;
            std::fs::rename(stream, &dest)
                .or_else(|_| std::fs::copy(stream, &dest).and_then(|_| std::fs::remove_file(stream)))
                .map_err(|e| Error::io(format!("cannot keep the stream as {}", dest.display()), e))
        }
        None => std::fs::remove_file(stream).map_err(|e| Error::io("cannot remove a stream", e)),
    }
}

/// Seals every disk the point holds mounted; or says why the point can
/// give no candidate that is safe to restore.
fn seal_disks(p: &Point, drives: &[Drive]) -> std::result::Result<Vec<DiskSeal>, String> {
    let mut out: Vec<DiskSeal> = Vec::new();
    for m in &p.mounts {
        let on = format!("{} on {} ({})", m.target, m.disk.name, m.source);
        if !m.read_only {
            return Err(format!(
                "{on} is mounted read-write: a disk the guest writes moves on at once, so only candidates \
                 taken before it is mounted are kept"
            ));
        }
        let d = drives
            .iter()
            .find(|d| d.is(&m.disk))
            .ok_or_else(|| format!("{on}: no drive of the machine has its serial or PCI address"))?;
        let mount = format!("{} ro", m.target);
        if let Some(s) = out.iter_mut().find(|s| s.drive == d.name) {
            s.mounts.push(mount);
            continue;
        }
        for f in &d.files {
            let path = PathBuf::from(f);
            if !path.is_file() {
                return Err(format!("{on}: drive {} is {f}, not a file the host can seal", d.name));
            }
            let file = FileSeal::of(&path, false).map_err(|e| format!("{on}: {e}"))?;
            out.push(DiskSeal { drive: d.name.clone(), guest: m.disk.name.clone(), mounts: vec![mount.clone()], file });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pbr_agent::message::{Disk, Mount};

    fn mount(target: &str, ro: bool, serial: &str) -> Mount {
        Mount {
            source: "/dev/vda".into(),
            target: target.into(),
            fstype: "ext4".into(),
            read_only: ro,
            disk: Disk { name: "vda".into(), serial: Some(serial.into()), pci: None },
        }
    }

    #[test]
    fn only_read_only_mounts_of_sealable_files_give_a_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.raw");
        std::fs::write(&disk, b"x").unwrap();
        let drives = vec![Drive {
            name: "root".into(),
            files: vec![disk.display().to_string()],
            serial: Some("pbr-root".into()),
            devfn: None,
        }];
        let p = |mounts| Point { name: "daemons".into(), uptime_ns: 1, mounts };
        let s = seal_disks(&p(vec![mount("/", true, "pbr-root"), mount("/usr", true, "pbr-root")]), &drives).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].mounts, vec!["/ ro", "/usr ro"]);
        assert!(seal_disks(&p(vec![]), &drives).unwrap().is_empty());
        let e = seal_disks(&p(vec![mount("/", false, "pbr-root")]), &drives).unwrap_err();
        assert!(e.starts_with("/ on vda (/dev/vda) is mounted read-write"), "{e}");
        let e = seal_disks(&p(vec![mount("/", true, "other")]), &drives).unwrap_err();
        assert!(e.contains("no drive of the machine"), "{e}");
        let nbd = vec![Drive { files: vec!["nbd://host/x".into()], ..drives[0].clone() }];
        assert!(seal_disks(&p(vec![mount("/", true, "pbr-root")]), &nbd).unwrap_err().contains("not a file"));
    }
}
