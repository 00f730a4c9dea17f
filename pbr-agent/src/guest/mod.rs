//! What the agent does inside the guest.

mod cache;
mod checkpoint;
mod criu;
mod mounts;
mod pages;
mod port;
mod restore;
mod resume;
mod systemd;
mod watch;

pub use restore::{cold_start, restore_unit};
pub use watch::watch;

use std::time::Duration;

use pbr_agent::message::{Message, Point, Ready};

/// Where the agent keeps its files in the guest (a tmpfs: the initramfs's
/// `/run` becomes the system's).
const RUN_DIR: &str = "/run/pbr";

/// How long `ready` waits for this boot's restores to end.
const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// `reason` cut to what a message's string may hold (at most 4000 bytes,
/// on a character boundary).
fn bounded(reason: &str) -> String {
    let mut end = reason.len().min(4000);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// The running kernel's release (`uname -r`).
fn release() -> String {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let r = r.trim();
    if pbr_agent::checkpoint::valid_release(r) { r.to_owned() } else { "unknown".to_owned() }
}

/// Announces point `name` and waits for the host's answer.
pub fn point(name: &str, timeout: Duration) -> Result<String, String> {
    let Some(mut port) = port::Port::open()? else {
        return Ok(format!("no host port {}: point {name} not announced", pbr_agent::PORT_NAME));
    };
    let mounts = mounts::block_mounts()?;
    let held = mounts.len();
    let files = watch::list(pbr_agent::Kind::Files.max_len() as usize);
    let t = std::time::Instant::now();
    let cached = cache::cached_files(&mounts, &files);
    let cache_note = format!(
        "{} cached pages of {} files in {} ms",
        cached.iter().map(|f| f.pages.len()).sum::<usize>(),
        cached.len(),
        t.elapsed().as_millis()
    );
    if !cached.is_empty() {
        port.send(&Message::Cache(cached))?;
    }
    port.send(&Message::Kpageflags(pages::gzip_file("/proc/kpageflags")?))?;
    port.send(&Message::Kpagecount(pages::gzip_file("/proc/kpagecount")?))?;
    if !files.is_empty() {
        port.send(&Message::Files(files))?;
    }
    port.send(&Message::Point(Point { name: name.to_owned(), uptime_ns: resume::uptime_ns(), mounts }))?;
    // After a kernel update the host sends the units to restore first.
    // After a kernel update the host sends the units to restore first;
    // only an agent that runs before systemd can still make their starts
    // restores.
    let mut answer = port.receive(timeout)?;
    let mut restoring = String::new();
    let early = restore::before_systemd();
    loop {
        match &answer {
            Some(Message::RestoreFile(f)) if early => restore::keep_file(f),
            Some(Message::Restore(r)) if early => {
                restoring = format!("; {} units to restore", restore::prepare(r)?);
            }
            Some(Message::RestoreFile(_) | Message::Restore(_)) => restoring = "; units to restore, too late".into(),
            _ => break,
        }
        answer = port.receive(timeout)?;
    }
    match answer {
        None => Ok(format!("point {name}: no answer from the host in {} s; carrying on", timeout.as_secs())),
        Some(Message::Continue) => {
            Ok(format!("point {name} ({held} block mounts, {cache_note}): the host carries on{restoring}"))
        }
        Some(Message::Resume(r)) => {
            let done = resume::resume(&r)?;
            let said = format!(
                "point {name}: restored; clock stepped {:.3} s, {} entropy bytes, random generator {}",
                done.clock_step_ns as f64 / 1e9,
                done.entropy_bytes,
                if done.reseeded { "reseeded" } else { "NOT reseeded" }
            );
            port.send(&Message::Resumed(done))?;
            Ok(said)
        }
        Some(other) => Err(format!("unexpected answer from the host: {:?}", other.encode().kind)),
    }
}

/// Tells the host the guest's service is ready; first, after a kernel
/// update, how its units came back (`RESTORED`).
pub fn ready() -> Result<String, String> {
    let Some(mut port) = port::Port::open()? else {
        return Ok(format!("no host port {}: ready not announced", pbr_agent::PORT_NAME));
    };
    let mut said = String::new();
    let restored = restore::outcome(RESTORE_WAIT);
    if let Some(restored) = &restored {
        let back = restored.units.iter().filter(|u| u.restored).count();
        said = format!("; {back} of {} units restored", restored.units.len());
        port.send(&Message::Restored(restored.clone()))?;
    }
    port.send(&Message::Ready(Ready { uptime_ns: resume::uptime_ns() }))?;
    if let Some(restored) = restored {
        restore::forget(&restored.units.into_iter().map(|u| u.unit).collect::<Vec<_>>());
    }
    Ok(format!("ready announced{said}"))
}

/// Sends the heartbeat (`spec/agent.md` §6): an ALIVE every `every`, for
/// as long as the guest runs, and meets the host's `CHECKPOINT` (its
/// heartbeat pauses while the units are dumped). A port that fails (the
/// host reconnecting) is opened again.
pub fn alive(every: Duration) -> Result<String, String> {
    loop {
        let Some(mut port) = port::Port::open()? else {
            return Ok(format!("no host port {}: no heartbeat", pbr_agent::PORT_NAME));
        };
        while port.send(&Message::Alive).is_ok() {
            match port.receive(every) {
                Ok(Some(Message::Checkpoint(c))) => match checkpoint::checkpoint(&mut port, &c) {
                    Ok(said) => eprintln!("pbr-agent: {said}"),
                    Err(e) => {
                        eprintln!("pbr-agent: checkpoint: {e}");
                        break;
                    }
                },
                Ok(_) => {}
                // A bad frame: read on from the next one.
                Err(e) => {
                    eprintln!("pbr-agent: {e}");
                    port.resync();
                }
            }
        }
        std::thread::sleep(every);
    }
}
