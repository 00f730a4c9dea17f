//! Wall-clock times as people read them.

/// Nanoseconds since the Unix epoch as RFC 3339 UTC
/// (`2026-12-02T14:30:45Z`), with milliseconds when `millis`
/// (`2026-12-02T14:30:45.123Z`).
pub fn rfc3339(ns: u64, millis: bool) -> String {
    let secs = ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if millis { format!(".{:03}", ns / 1_000_000 % 1000) } else { String::new() };
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(0, true), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_000_000_000, false), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_000_000_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_221_845_123_000_000, true), "2026-12-02T14:30:45.123Z");
        assert_eq!(rfc3339(1_709_251_199_000_000_000, true), "2024-02-29T23:59:59.000Z");
    }
}
