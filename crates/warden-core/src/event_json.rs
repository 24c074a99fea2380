//! Events and recording lines as JSON text, written by hand: byte for byte what
//! `serde_json` writes for them, for a fraction of the instructions. Every audited
//! statement's events are written at least twice (the journal line, the chain's
//! canonical text) and its recording lines once, and `serde_json` escapes strings a
//! byte at a time through its generic serializer (and a flattened enum through a map);
//! here a string with nothing to escape (nearly all of them) is one scan and one copy,
//! and the rare one that needs escaping goes through `serde_json` itself, so the escapes
//! are its own. Tests compare both writers on generated values.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Decision, Event, EventIdentity, TimelineEntry, TimelineEvent};

/// Why an event cannot be written: the one thing serde_json refuses too.
#[derive(Debug, thiserror::Error)]
#[error("the time {0} has no RFC 3339 form")]
pub struct UnwritableTime(pub OffsetDateTime);

impl Event {
    /// The event as `serde_json::to_vec` writes it (which fails where this does).
    pub fn to_json(&self) -> Result<Vec<u8>, UnwritableTime> {
        let mut out = Vec::with_capacity(256 + self.payload_hint());
        self.write_json(&mut out)?;
        Ok(out)
    }

    /// [`Self::to_json`], appended to `out` (unchanged on an error).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), UnwritableTime> {
        let start = out.len();
        out.extend_from_slice(b"{\"id\":");
        write_uuid(out, &self.id);
        out.extend_from_slice(b",\"time\":");
        if let Err(e) = write_time(out, self.time) {
            out.truncate(start);
            return Err(e);
        }
        out.extend_from_slice(b",\"session_id\":");
        write_opt_uuid(out, self.session_id.as_ref());
        out.extend_from_slice(b",\"identity\":");
        match &self.identity {
            Some(EventIdentity { subject, groups }) => {
                out.extend_from_slice(b"{\"subject\":");
                write_str(out, subject);
                out.extend_from_slice(b",\"groups\":");
                write_strs(out, groups);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"connection\":");
        write_opt_str(out, self.connection.as_deref());
        out.extend_from_slice(b",\"kind\":");
        write_str(out, &self.kind);
        out.extend_from_slice(b",\"decision\":");
        match &self.decision {
            Some(decision) => write_decision(out, decision),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"payload\":");
        write_value(out, &self.payload);
        out.push(b'}');
        Ok(())
    }

    /// A guess at the payload's size, for the buffer.
    fn payload_hint(&self) -> usize {
        match &self.payload {
            Value::Object(map) => map.len() * 48,
            _ => 16,
        }
    }
}

impl TimelineEntry {
    /// The entry as `serde_json::to_vec` writes it: statements, results and errors (a
    /// statement's lines) by hand, the rest through serde.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"t\":");
        write_int(&mut out, self.t);
        match &self.event {
            TimelineEvent::Statement { via, sql, decision } => {
                out.extend_from_slice(b",\"kind\":\"statement\",\"via\":");
                write_str(&mut out, via);
                out.extend_from_slice(b",\"sql\":");
                write_str(&mut out, sql);
                out.extend_from_slice(b",\"decision\":");
                write_decision(&mut out, decision);
            }
            TimelineEvent::Result {
                tag,
                columns,
                rows,
                rows_total,
                rows_affected,
                duration_us,
            } => {
                out.extend_from_slice(b",\"kind\":\"result\",\"tag\":");
                write_str(&mut out, tag);
                out.extend_from_slice(b",\"columns\":");
                write_strs(&mut out, columns);
                out.extend_from_slice(b",\"rows\":[");
                for (i, row) in rows.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    for (j, cell) in row.iter().enumerate() {
                        if j > 0 {
                            out.push(b',');
                        }
                        write_opt_str(&mut out, cell.as_deref());
                    }
                    out.push(b']');
                }
                out.extend_from_slice(b"],\"rows_total\":");
                write_int(&mut out, *rows_total);
                write_opt_u64(&mut out, b",\"rows_affected\":", *rows_affected);
                write_opt_u64(&mut out, b",\"duration_us\":", *duration_us);
            }
            TimelineEvent::Error {
                code,
                message,
                duration_us,
            } => {
                out.extend_from_slice(b",\"kind\":\"error\",\"code\":");
                write_str(&mut out, code);
                out.extend_from_slice(b",\"message\":");
                write_str(&mut out, message);
                write_opt_u64(&mut out, b",\"duration_us\":", *duration_us);
            }
            _ => return serde_json::to_vec(self),
        }
        out.push(b'}');
        Ok(out)
    }
}

/// A field serde skips when it is `None`.
fn write_opt_u64(out: &mut Vec<u8>, key: &[u8], value: Option<u64>) {
    if let Some(v) = value {
        out.extend_from_slice(key);
        write_int(out, v);
    }
}

/// A decision as `Decision` serializes it (internally tagged by `outcome`).
fn write_decision(out: &mut Vec<u8>, decision: &Decision) {
    match decision {
        Decision::Allow => out.extend_from_slice(b"{\"outcome\":\"allow\"}"),
        Decision::Deny { rule, reason } => {
            out.extend_from_slice(b"{\"outcome\":\"deny\",\"rule\":");
            write_str(out, rule);
            out.extend_from_slice(b",\"reason\":");
            write_str(out, reason);
            out.push(b'}');
        }
        Decision::Review { rule } => {
            out.extend_from_slice(b"{\"outcome\":\"review\",\"rule\":");
            write_str(out, rule);
            out.push(b'}');
        }
    }
}

/// Whether `serde_json` escapes any byte of `s`: `"`, `\` and the control characters
/// below 0x20 (not DEL, not non-ASCII). Written as a fold so that it vectorizes.
fn needs_escape(s: &str) -> bool {
    s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// An integer as JSON (plain decimal digits, as serde_json writes it), without the
/// `String` that `to_string` would allocate on every statement's lines.
pub fn write_int(out: &mut Vec<u8>, value: impl Into<i128>) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{}", value.into());
}

/// `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        // serde_json's own escapes; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// An optional string, `null` when absent.
pub fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A list of strings.
pub fn write_strs(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, item);
    }
    out.push(b']');
}

/// A UUID as its hyphenated lower-case string.
pub fn write_uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buf);
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// An optional UUID, `null` when absent.
pub fn write_opt_uuid(out: &mut Vec<u8>, id: Option<&uuid::Uuid>) {
    match id {
        Some(id) => write_uuid(out, id),
        None => out.extend_from_slice(b"null"),
    }
}

/// A time as the RFC 3339 string `time::serde::rfc3339` writes: UTC as `Z`, the
/// fraction of a second without trailing zeros, none when it is zero. A time that has
/// no RFC 3339 form (a year before 0, an offset with seconds) is an error, as it is
/// for serde, and nothing is written.
pub fn write_time(out: &mut Vec<u8>, t: OffsetDateTime) -> Result<(), UnwritableTime> {
    out.push(b'"');
    if write_rfc3339_utc(out, t) {
        out.push(b'"');
        return Ok(());
    }
    out.pop();
    // Not the common case (Warden's times are UTC): `time`'s own formatting.
    let text = t.format(&Rfc3339).map_err(|_| UnwritableTime(t))?;
    write_str(out, &text);
    Ok(())
}

/// The RFC 3339 text of a UTC time of the years 0 to 9999 (every time Warden makes),
/// unquoted; `false`, with nothing written, for any other.
pub(crate) fn write_rfc3339_utc(out: &mut Vec<u8>, t: OffsetDateTime) -> bool {
    let year = t.year();
    if !t.offset().is_utc() || !(0..=9999).contains(&year) {
        return false;
    }
    let two = |out: &mut Vec<u8>, n: u8| {
        out.push(b'0' + n / 10);
        out.push(b'0' + n % 10);
    };
    let y = year.unsigned_abs(); // 0..=9999, checked above
    for d in [y / 1000, y / 100 % 10, y / 10 % 10, y % 10] {
        out.push(b'0' + d as u8);
    }
    out.push(b'-');
    two(out, u8::from(t.month()));
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let mut nanos = t.nanosecond();
    if nanos != 0 {
        out.push(b'.');
        let mut digits = 9;
        while nanos.is_multiple_of(10) {
            nanos /= 10;
            digits -= 1;
        }
        let start = out.len();
        out.resize(start + digits, b'0');
        for slot in out[start..].iter_mut().rev() {
            *slot = b'0' + (nanos % 10) as u8;
            nanos /= 10;
        }
    }
    out.push(b'Z');
    true
}

/// A JSON value, keys in the map's own order (as serde_json writes it).
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Integers and floats exactly as serde_json writes them.
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests;
