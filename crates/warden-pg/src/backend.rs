//! Messages the gateway itself sends to clients: errors, notices, readiness and the
//! authentication exchange it runs before any backend is involved.

use bytes::{BufMut, BytesMut};

use crate::wire::put_frame as frame;

fn cstr(out: &mut BytesMut, s: &str) {
    crate::wire::put_cstr(out, s.as_bytes());
}

/// `ErrorResponse` (`E`) or `NoticeResponse` (`N`) fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgNotice<'a> {
    /// `ERROR`, `FATAL`, `NOTICE`, ...
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

fn notice(out: &mut BytesMut, tag: u8, n: &PgNotice<'_>) {
    frame(out, tag, |b| {
        b.put_u8(b'S');
        cstr(b, n.severity);
        b.put_u8(b'V');
        cstr(b, n.severity);
        b.put_u8(b'C');
        cstr(b, n.code);
        b.put_u8(b'M');
        cstr(b, n.message);
        if let Some(d) = n.detail {
            b.put_u8(b'D');
            cstr(b, d);
        }
        if let Some(h) = n.hint {
            b.put_u8(b'H');
            cstr(b, h);
        }
        b.put_u8(0);
    });
}

pub fn error_response(out: &mut BytesMut, n: &PgNotice<'_>) {
    notice(out, b'E', n);
}

pub fn notice_response(out: &mut BytesMut, n: &PgNotice<'_>) {
    notice(out, b'N', n);
}

/// `ReadyForQuery` with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    frame(out, b'Z', |b| b.put_u8(status));
}

pub fn authentication_ok(out: &mut BytesMut) {
    frame(out, b'R', |b| b.put_i32(0));
}

/// Asks the client for its password in clear text (the token; only over TLS or loopback).
pub fn authentication_cleartext(out: &mut BytesMut) {
    frame(out, b'R', |b| b.put_i32(3));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    frame(out, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    frame(out, b'K', |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let mut out = BytesMut::new();
        error_response(
            &mut out,
            &PgNotice {
                severity: "ERROR",
                code: "42501",
                message: "denied\0by rule",
                detail: None,
                hint: Some("ask"),
            },
        );
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let body = &out[5..];
        assert!(body.windows(6).any(|w| w == b"C42501"));
        assert!(body.windows(14).any(|w| w == b"Mdeniedby rule"));
        assert_eq!(*body.last().unwrap_or(&1), 0);
    }

    #[test]
    fn small_frames() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], &[b'Z', 0, 0, 0, 5, b'I']);
        out.clear();
        authentication_ok(&mut out);
        assert_eq!(&out[..], &[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    }
}
