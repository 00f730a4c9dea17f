//! Number, time and vCPU event formatting for human output.

use serde_json::Value;

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

/// `n` and the noun, plural unless `n` is 1: `count(1, "vCPU")` is
/// `1 vCPU`, `count(2, "vCPU")` `2 vCPUs`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    count_of(n, noun, &format!("{noun}s"))
}

/// As [`count`] with the plural given: `count_of(2, "entry", "entries")`.
pub fn count_of(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Nanoseconds since the epoch as RFC 3339 UTC.
pub fn unix_ns(ns: u64) -> String {
    pbr_tools::time::rfc3339(ns, false)
}

/// What a standby QEMU held before the decision, for a recovery's line:
/// empty without one.
pub fn held(h: Option<pbr_reboot::resident::Resident>) -> String {
    h.map_or(String::new(), |h| {
        format!(
            "; before the decision its QEMU held {} (PSS; {} of its own)",
            bytes(h.pss_kib * 1024),
            bytes(h.anon_kib * 1024)
        )
    })
}

/// The same as JSON: `null` without one.
pub fn held_json(h: Option<pbr_reboot::resident::Resident>) -> serde_json::Value {
    h.map_or(
        serde_json::Value::Null,
        |h| serde_json::json!({"rss_kib": h.rss_kib, "pss_kib": h.pss_kib, "anon_kib": h.anon_kib}),
    )
}

/// Where a recovery's QEMU and RAM came from and where its downtime went:
/// `qemu spawn, RAM streamed` + `extra`, then `): ready 0.812 s after the
/// decision (select ..., restore ..., guest ...)`.
pub fn recovery(r: &pbr_reboot::Recovery, extra: &str) -> String {
    let s = |d: std::time::Duration| d.as_secs_f64();
    format!(
        "{} {}, RAM {}{extra}): ready {:.3} s after the decision (select {:.3} s, restore {:.3} s, guest {:.3} s)",
        r.adapter,
        r.vmm.name(),
        r.ram(),
        s(r.downtime),
        s(r.select),
        s(r.restore),
        s(r.guest)
    )
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The pending events of `inspect --json` as text: what is injected or
/// pending, `none` when nothing is.
pub fn events_text(e: &Value) -> String {
    let on = |v: &Value| v.as_u64().is_some_and(|n| n != 0);
    let mut parts = Vec::new();
    let x = &e["exception"];
    if on(&x["injected"]) || on(&x["pending"]) {
        let state = if on(&x["injected"]) { "injected" } else { "pending" };
        let code = if on(&x["has_error_code"]) {
            format!(" error code {}", x["error_code"].as_str().unwrap_or("?"))
        } else {
            String::new()
        };
        parts.push(format!("exception {} {state}{code}", x["nr"]));
    }
    let i = &e["interrupt"];
    if on(&i["injected"]) {
        parts.push(format!("{}interrupt {} injected", if on(&i["soft"]) { "soft " } else { "" }, i["nr"]));
    }
    if on(&i["shadow"]) {
        parts.push("interrupt shadow".into());
    }
    let nmi = &e["nmi"];
    for (k, what) in [("injected", "NMI injected"), ("pending", "NMI pending"), ("masked", "NMIs masked")] {
        if on(&nmi[k]) {
            parts.push(what.into());
        }
    }
    let smi = &e["smi"];
    for (k, what) in [
        ("smm", "in SMM"),
        ("pending", "SMI pending"),
        ("smm_inside_nmi", "SMM inside NMI"),
        ("latched_init", "INIT latched"),
    ] {
        if on(&smi[k]) {
            parts.push(what.into());
        }
    }
    if on(&e["sipi_vector"]) {
        parts.push(format!("SIPI vector {:#x}", e["sipi_vector"].as_u64().unwrap_or(0)));
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(unix_ns(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(hex(&[0, 255]), "00ff");
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(count(1u32, "vCPU"), "1 vCPU");
        assert_eq!(count(0u32, "vCPU"), "0 vCPUs");
        assert_eq!(count(4u64, "page record"), "4 page records");
        assert_eq!(count_of(1u64, "entry", "entries"), "1 entry");
        assert_eq!(count_of(3u64, "entry", "entries"), "3 entries");
    }

    #[test]
    fn events_read_as_text() {
        let quiet = json!({
            "exception": {"injected": 0, "nr": 0, "has_error_code": 0, "pending": 0, "error_code": "0x0"},
            "interrupt": {"injected": 0, "nr": 0, "soft": 0, "shadow": 0},
            "nmi": {"injected": 0, "pending": 0, "masked": 0},
            "sipi_vector": 0, "flags": "0x3",
            "smi": {"smm": 0, "pending": 0, "smm_inside_nmi": 0, "latched_init": 0},
        });
        assert_eq!(events_text(&quiet), "none");
        let mut busy = quiet.clone();
        busy["exception"] = json!({"injected": 1, "nr": 14, "has_error_code": 1, "pending": 0, "error_code": "0x2"});
        busy["interrupt"] = json!({"injected": 1, "nr": 32, "soft": 0, "shadow": 1});
        busy["nmi"]["masked"] = json!(1);
        busy["sipi_vector"] = json!(0x9a);
        assert_eq!(
            events_text(&busy),
            "exception 14 injected error code 0x2, interrupt 32 injected, interrupt shadow, NMIs masked, SIPI vector 0x9a"
        );
    }
}
