//! A restored guest catches up: the wall clock, and the kernel's random
//! generator, which would otherwise repeat the saved state.

use std::os::fd::AsRawFd;

use pbr_agent::message::{Resume, Resumed};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Nanoseconds on `clock`.
fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec the call writes.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The guest's boot time clock (suspend included), in nanoseconds.
pub fn uptime_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// Steps the wall clock to the host's and feeds the host's entropy to the
/// kernel, then reseeds its generator.
pub fn resume(r: &Resume) -> Result<Resumed, String> {
    let before = now_ns(libc::CLOCK_REALTIME);
    let host = i128::from(r.realtime_ns);
    let ts = libc::timespec {
        tv_sec: (host / 1_000_000_000) as libc::time_t,
        tv_nsec: (host % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec the call reads.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!("cannot step the clock: {}", std::io::Error::last_os_error()));
    }
    let clock_step_ns = i64::try_from(host - before).unwrap_or(i64::MAX);
    let random = std::fs::File::options().write(true).open("/dev/random").map_err(|e| format!("/dev/random: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + r.entropy.len());
    let bits = i32::try_from(r.entropy.len() * 8).map_err(|_| "too much entropy".to_string())?;
    let bytes = i32::try_from(r.entropy.len()).map_err(|_| "too much entropy".to_string())?;
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&bytes.to_ne_bytes());
    info.extend_from_slice(&r.entropy);
    // Whole u32 words for the kernel's buf[].
    info.resize(8 + r.entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: `info` is a rand_pool_info of `bytes` buffer bytes that lives
    // across the call; the kernel only reads it.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(format!("cannot add entropy: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let reseeded = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } == 0;
    Ok(Resumed { clock_step_ns, entropy_bytes: bytes as u32, reseeded })
}
