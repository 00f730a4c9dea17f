//! What the agent does inside the guest.

mod cache;
mod mounts;
mod pages;
mod port;
mod resume;
mod watch;

pub use watch::watch;

use std::time::Duration;

use pbr_agent::message::{Message, Point, Ready};

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
    match port.receive(timeout)? {
        None => Ok(format!("point {name}: no answer from the host in {} s; carrying on", timeout.as_secs())),
        Some(Message::Continue) => Ok(format!("point {name} ({held} block mounts, {cache_note}): the host carries on")),
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

/// Tells the host the guest's service is ready.
pub fn ready() -> Result<String, String> {
    let Some(mut port) = port::Port::open()? else {
        return Ok(format!("no host port {}: ready not announced", pbr_agent::PORT_NAME));
    };
    port.send(&Message::Ready(Ready { uptime_ns: resume::uptime_ns() }))?;
    Ok("ready announced".into())
}

/// Sends the heartbeat (`spec/agent.md` §6): an ALIVE every `every`, for
/// as long as the guest runs. A write that fails (the host reconnecting)
/// is retried on a port opened again.
pub fn alive(every: Duration) -> Result<String, String> {
    loop {
        let Some(mut port) = port::Port::open()? else {
            return Ok(format!("no host port {}: no heartbeat", pbr_agent::PORT_NAME));
        };
        while port.send(&Message::Alive).is_ok() {
            std::thread::sleep(every);
        }
        std::thread::sleep(every);
    }
}
