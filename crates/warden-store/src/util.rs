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
    // Bytes, not `String::push` (which encodes each char as UTF-8): three hashes a
    // statement pass here.
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The `VALUES` list of a multi-row INSERT: `rows` groups of `columns` parameters,
/// anonymous `?` on SQLite (sqlx looks each numbered one up by name there: a scan of
/// the statement's parameter list per parameter) and `$n` elsewhere.
pub(crate) fn values_placeholders(rows: usize, columns: usize, sqlite: bool) -> String {
    use std::fmt::Write;
    let mut values = String::with_capacity(rows * columns * if sqlite { 3 } else { 6 });
    for r in 0..rows {
        values.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=columns {
            if c > 1 {
                values.push_str(", ");
            }
            if sqlite {
                values.push('?');
            } else {
                // Writing to a String cannot fail.
                let _ = write!(values, "${}", r * columns + c);
            }
        }
        values.push(')');
    }
    values
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
/// A receiver's URL as Warden shows it outside the admin's own `show`/`--json`:
/// scheme, host and port, with `/…` when a path, query or user part was dropped —
/// receivers often carry their capability there (`/services/T/B/SECRET`, `?token=`,
/// `https://TOKEN@host`).
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let hidden = userinfo.is_some() || !(tail.is_empty() || tail == "/");
    format!(
        "{}://{}{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        if hidden { "/…" } else { "" }
    )
}

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
mod url_tests {
    use super::url_origin;

    #[test]
    fn origins_drop_paths_queries_and_credentials() {
        assert_eq!(
            url_origin("https://hooks.example/services/T/B/SECRET"),
            "https://hooks.example/…"
        );
        assert_eq!(
            url_origin("https://TOKEN@h.example:8443"),
            "https://h.example:8443/…"
        );
        assert_eq!(url_origin("http://h:9/?token=abc"), "http://h:9/…");
        assert_eq!(url_origin("https://siem.example/"), "https://siem.example");
        assert_eq!(url_origin("https://u:p@[::1]:80/x#f"), "https://[::1]:80/…");
        assert_eq!(url_origin("not a url"), "(unparsable URL)");
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
