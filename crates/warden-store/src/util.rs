//! Small helpers shared by the store modules.

use aws_lc_rs::digest::{SHA256, digest};
use time::OffsetDateTime;
use warden_core::timefmt;

use crate::{Result, StoreError};

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest(&SHA256, data).as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

pub(crate) fn time_from_db(us: i64) -> Result<OffsetDateTime> {
    timefmt::from_micros(us).ok_or_else(|| StoreError::Corrupt(format!("time {us} out of range")))
}

pub(crate) fn opt_time_from_db(us: Option<i64>) -> Result<Option<OffsetDateTime>> {
    us.map(time_from_db).transpose()
}

/// `$1, $2, ... $n`: the placeholders of an `IN (...)` list.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hides the password in a database URL before it goes into an error or a log line.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://warden:pa55@db:5432/w"),
            "postgres://warden:<redacted>@db:5432/w"
        );
        assert_eq!(redact_url("postgres://db/w"), "postgres://db/w");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }

    #[test]
    fn hex_digest() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
