//! A VM that keeps failing is given time between its recoveries: a
//! failure count over a window, and the wait it asks for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a wait looks for a stop.
const POLL: Duration = Duration::from_millis(100);

/// Failures this close together (at least [`BURST`] within [`WINDOW`])
/// make the VM wait before its next recovery or boot.
const BURST: usize = 5;
/// See [`BURST`].
const WINDOW: Duration = Duration::from_secs(600);
/// The first wait; each further failure doubles it, up to [`MAX_BACK_OFF`].
const BACK_OFF: Duration = Duration::from_secs(5);
/// See [`BACK_OFF`].
const MAX_BACK_OFF: Duration = Duration::from_secs(300);

/// The VM's recent failures: one that keeps failing (a guest that fails
/// during every boot, a candidate and a cold boot that both fail) is given
/// time between its recoveries instead of being restarted in a tight loop.
#[derive(Default)]
pub(crate) struct Failures(std::collections::VecDeque<Instant>);

impl Failures {
    /// Counts a failure now; how long to wait before meeting it.
    pub(crate) fn count(&mut self) -> Duration {
        let now = Instant::now();
        self.0.retain(|t| now.duration_since(*t) < WINDOW);
        if self.0.len() > 64 {
            self.0.pop_front();
        }
        self.0.push_back(now);
        match self.0.len().saturating_sub(BURST) {
            0 => Duration::ZERO,
            over => BACK_OFF.saturating_mul(1 << (over - 1).min(16)).min(MAX_BACK_OFF),
        }
    }
}

/// Waits `wait` unless a stop comes first; whether one did.
pub(crate) fn wait_unless_stopped(wait: Duration, stop: &AtomicBool) -> bool {
    let t = Instant::now();
    while t.elapsed() < wait {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five failures close together are met at once; then the waits
    /// double from 5 s, up to 5 min.
    #[test]
    fn failures_close_together_back_off() {
        let mut f = Failures::default();
        let waits: Vec<u64> = (0..12).map(|_| f.count().as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 0, 0, 5, 10, 20, 40, 80, 160, 300]);
        assert!(wait_unless_stopped(Duration::from_secs(60), &AtomicBool::new(true)));
        assert!(!wait_unless_stopped(Duration::from_millis(10), &AtomicBool::new(false)));
    }
}
