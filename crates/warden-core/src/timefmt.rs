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
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip() {
        let t = now();
        assert_eq!(from_micros(to_micros(t)), Some(t));
    }
}
