//! A process's resident memory, from `/proc/PID/smaps_rollup`: what a
//! standby QEMU holds before the failure.

/// Resident memory in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    /// Resident set size: every page mapped, shared or not.
    pub rss_kib: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss_kib: u64,
    /// Anonymous pages: the process's own copies (heap, loaded guest RAM,
    /// pages written in a private file mapping).
    pub anon_kib: u64,
}

impl Resident {
    /// Process `pid`'s resident memory now; `None` when it cannot be read
    /// (no such process, no `smaps_rollup`).
    pub fn of(pid: u32) -> Option<Resident> {
        Resident::parse(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
    }

    /// Reads `smaps_rollup` text; `None` without an `Rss` and a `Pss` line.
    pub fn parse(text: &str) -> Option<Resident> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(':')?.trim().strip_suffix("kB")?;
                v.trim().parse::<u64>().ok()
            })
        };
        Some(Resident { rss_kib: field("Rss")?, pss_kib: field("Pss")?, anon_kib: field("Anonymous").unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_rollup() {
        let text = "55a9cc376000-7ffd8a1f0000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:              114712 kB\nPss:              113202 kB\nPss_Dirty:  55844 kB\n\
                    Pss_Anon:  55844 kB\nAnonymous:          55844 kB\nAnonHugePages:      22528 kB\n";
        assert_eq!(Resident::parse(text), Some(Resident { rss_kib: 114712, pss_kib: 113202, anon_kib: 55844 }));
        assert_eq!(Resident::parse("Rss: 12 kB\n"), None, "no Pss");
        assert_eq!(Resident::parse("Rss: x kB\nPss: 1 kB\n"), None, "not a number");
    }

    #[test]
    fn reads_this_process() {
        let me = Resident::of(std::process::id()).expect("this process's rollup");
        assert!(me.rss_kib > 0 && me.pss_kib > 0 && me.pss_kib <= me.rss_kib, "{me:?}");
        assert_eq!(Resident::of(u32::MAX), None);
    }
}
