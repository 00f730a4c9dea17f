//! Number and time formatting for human output.

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Nanoseconds since the epoch as RFC 3339 UTC.
pub fn unix_ns(ns: u64) -> String {
    pbr_tools::time::rfc3339(ns, false)
}

/// What a standby QEMU held before the decision, for a recovery's line:
/// empty without one.
pub fn held(h: Option<pbr_tools::phase::resident::Resident>) -> String {
    h.map_or(String::new(), |h| {
        format!(
            "; before the decision its QEMU held {} (PSS; {} of its own)",
            bytes(h.pss_kib * 1024),
            bytes(h.anon_kib * 1024)
        )
    })
}

/// The same as JSON: `null` without one.
pub fn held_json(h: Option<pbr_tools::phase::resident::Resident>) -> serde_json::Value {
    h.map_or(
        serde_json::Value::Null,
        |h| serde_json::json!({"rss_kib": h.rss_kib, "pss_kib": h.pss_kib, "anon_kib": h.anon_kib}),
    )
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(unix_ns(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(hex(&[0, 255]), "00ff");
    }
}
