//! Time conventions: microsecond precision everywhere, stored as Unix microseconds.

use time::OffsetDateTime;

/// Now, truncated to microseconds so a stored and reloaded time compares equal.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    from_micros(to_micros(t)).unwrap_or(t)
}

pub fn to_micros(t: OffsetDateTime) -> i64 {
    let micros = t.unix_timestamp_nanos() / 1_000;
    i64::try_from(micros).unwrap_or(i64::MAX)
}

pub fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
}

/// RFC 3339 text, as the API and the audit log show times.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(32);
    if crate::event_json::write_rfc3339_utc(&mut out, t) {
        // ASCII digits and separators only.
        return String::from_utf8(out).unwrap_or_default();
    }
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_times_own() {
        let well_known = time::format_description::well_known::Rfc3339;
        for us in [
            0,
            1,
            10,
            1_733_000_000_123_456,
            1_733_000_000_100_000,
            -86_400_000_000,
        ] {
            let t = from_micros(us).unwrap_or_else(|| unreachable!());
            assert_eq!(rfc3339(t), t.format(&well_known).unwrap_or_default());
        }
        let t = OffsetDateTime::UNIX_EPOCH.to_offset(time::macros::offset!(+2));
        assert_eq!(rfc3339(t), "1970-01-01T02:00:00+02:00");
    }

    #[test]
    fn micros_round_trip() {
        let t = now();
        assert_eq!(from_micros(to_micros(t)), Some(t));
    }
}

/// Seconds in a duration written as `90`, `90s`, `15m`, `1h`, `2h30m` or `1d`;
/// `None` when it is not one (or overflows).
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = std::mem::take(&mut number).parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    number.is_empty().then_some(total)
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_secs;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Some(90));
        assert_eq!(parse_duration_secs("1h"), Some(3600));
        assert_eq!(parse_duration_secs("2h30m"), Some(9000));
        assert_eq!(parse_duration_secs("1d"), Some(86_400));
        for bad in ["", "h", "1x", "1h30", "-1m", "99999999999999999999d"] {
            assert_eq!(parse_duration_secs(bad), None, "{bad}");
        }
    }
}
