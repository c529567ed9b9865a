//! How values read in the UI: sizes, times, digests. Pure.

/// `1.5 MiB`, in binary units as registries and `du -h` count them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `2026-12-02 18:24 UTC` for seconds since the epoch; empty for 0 (never).
pub fn time(seconds: i64) -> String {
    if seconds <= 0 {
        return String::new();
    }
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        (rest % 3600) / 60
    )
}

/// `12-02` for a day number (days since the epoch), for chart labels.
pub fn day(days: i64) -> String {
    let (_, m, d) = civil_from_days(days);
    format!("{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `sha256:0123456789ab` — enough of a digest to tell images apart at a glance.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_owned(),
    }
}

/// A media type without its vendor prefix, for tables (`image.manifest.v1+json`).
pub fn media_type(media_type: &str) -> String {
    media_type
        .strip_prefix("application/vnd.oci.")
        .or_else(|| media_type.strip_prefix("application/vnd.docker."))
        .unwrap_or(media_type)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_du() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(50 * 1024 * 1024), "50 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "");
        assert_eq!(time(1), "1970-01-01 00:00 UTC");
        assert_eq!(time(1_796_235_840), "2026-12-02 18:24 UTC");
        assert_eq!(time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(day(20_789), "12-02");
    }

    #[test]
    fn digests_and_media_types_are_shortened() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123"),
            "sha256:0123456789ab"
        );
        assert_eq!(short_digest("odd"), "odd");
        assert_eq!(
            media_type("application/vnd.oci.image.manifest.v1+json"),
            "image.manifest.v1+json"
        );
        assert_eq!(media_type("text/plain"), "text/plain");
    }
}
