//! Timing helpers shared by the benchmarks: medians of repeated runs.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The median of `v`.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median of `n` runs of `f`, each returning its own duration.
pub fn runs(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    median((0..n).map(|_| f()).collect())
}

/// How long `f` takes.
pub fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}
