//! Framing shared by both directions: the tagged-message header, bounded reads of
//! fields, and building frames whose length is filled in once the body is written.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::PgProtocolError;

/// Splits one whole tagged frame (`tag`, `i32` length, body) off `buf`, or returns
/// `None` until it has arrived. Lengths are checked before anything is allocated.
pub(crate) fn split_tagged(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(u8, Bytes)>, PgProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len_usize = usize::try_from(len).map_err(|_| PgProtocolError::BadLength(i64::from(len)))?;
    if len_usize < 4 {
        return Err(PgProtocolError::BadLength(i64::from(len)));
    }
    if len_usize > max {
        return Err(PgProtocolError::TooLarge {
            len: len_usize,
            limit: max,
        });
    }
    let total = len_usize + 1;
    if buf.len() < total {
        // Reserve now so a large message is read without repeated reallocation.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    Ok(Some((tag, buf.split_to(total).freeze())))
}

fn malformed(message: &'static str, detail: &'static str) -> PgProtocolError {
    PgProtocolError::Malformed { message, detail }
}

/// The bytes of a `\0`-terminated field, advancing past the terminator.
pub(crate) fn cbytes(buf: &mut Bytes, message: &'static str) -> Result<Bytes, PgProtocolError> {
    let end = buf
        .iter()
        .position(|b| *b == 0)
        .ok_or(malformed(message, "unterminated string"))?;
    let field = buf.slice(..end);
    buf.advance(end + 1);
    Ok(field)
}

/// A `\0`-terminated string that must be UTF-8 (what clients send).
pub(crate) fn cstr(buf: &mut Bytes, message: &'static str) -> Result<String, PgProtocolError> {
    let field = cbytes(buf, message)?;
    String::from_utf8(field.to_vec()).map_err(|_| malformed(message, "string is not UTF-8"))
}

/// Longest statement and portal name the server keeps apart (NAMEDATALEN - 1):
/// longer names are the same name as their first 63 bytes.
const NAME_BYTES: usize = 63;

/// A statement or portal name, as the server keys it: its first 63 bytes. A cut
/// through a UTF-8 sequence keeps the cut bytes after a NUL (which no name can
/// hold), as hex, so names the server tells apart stay apart (see [`name_bytes`]).
pub(crate) fn object_name(
    buf: &mut Bytes,
    message: &'static str,
) -> Result<String, PgProtocolError> {
    let field = cbytes(buf, message)?;
    let key = &field[..field.len().min(NAME_BYTES)];
    match std::str::from_utf8(key) {
        Ok(name) => Ok(name.to_string()),
        // Cut inside a sequence at the end: the cut bytes are kept apart.
        Err(e) if e.error_len().is_none() => {
            let (valid, cut) = key.split_at(e.valid_up_to());
            let mut name = std::str::from_utf8(valid)
                .map_err(|_| malformed(message, "string is not UTF-8"))?
                .to_string();
            name.push('\0');
            push_hex(&mut name, cut);
            Ok(name)
        }
        Err(_) => Err(malformed(message, "string is not UTF-8")),
    }
}

/// The bytes of a name [`object_name`] read, as they go back to the server.
pub(crate) fn name_bytes(name: &str) -> Vec<u8> {
    let Some((valid, hex)) = name.split_once('\0') else {
        return name.as_bytes().to_vec();
    };
    let mut bytes = valid.as_bytes().to_vec();
    let digits = hex.as_bytes();
    for pair in digits.chunks(2) {
        let text = std::str::from_utf8(pair).unwrap_or("");
        if let Ok(b) = u8::from_str_radix(text, 16) {
            bytes.push(b);
        }
    }
    bytes
}

/// A `\0`-terminated string from a server, where any encoding may appear.
pub(crate) fn cstr_lossy(
    buf: &mut Bytes,
    message: &'static str,
) -> Result<String, PgProtocolError> {
    Ok(String::from_utf8_lossy(&cbytes(buf, message)?).into_owned())
}

pub(crate) fn need(buf: &Bytes, n: usize, message: &'static str) -> Result<(), PgProtocolError> {
    if buf.remaining() < n {
        Err(malformed(message, "truncated"))
    } else {
        Ok(())
    }
}

pub(crate) fn done(buf: &Bytes, message: &'static str) -> Result<(), PgProtocolError> {
    if buf.has_remaining() {
        Err(malformed(message, "trailing bytes"))
    } else {
        Ok(())
    }
}

/// Appends a tagged frame whose body `write` produces, filling in its length.
pub(crate) fn put_frame(out: &mut BytesMut, tag: u8, write: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    write(out);
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `s` and a terminator; a NUL inside would end the field early, so it is dropped.
pub(crate) fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.extend(s.iter().copied().filter(|b| *b != 0));
    out.put_u8(0);
}

/// Lowercase hex of `bytes`, appended to `out`.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}
