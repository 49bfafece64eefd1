//! One clock for the lab: Unix seconds now, and the RFC 3339 times Envoy prints.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-22T06:11:08Z` (Envoy's `/certs` format) as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Unix seconds as `2026-11-22T06:11:08Z` (before the epoch: the epoch).
pub fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds from now until `unix` (negative once it has passed).
pub fn seconds_until(unix: i64) -> i64 {
    unix - unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-22T06:11:08Z"), Some(1_795_327_868));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Some(951_825_600));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(rfc3339(1_795_327_868), "2026-11-22T06:11:08Z");
    }
}
