//! Messages from the server, as far as the proxy needs them: result shapes
//! (`RowDescription`), rows (`DataRow`, rewritten when masking changes a value),
//! completion, errors, and the authentication requests of the backend login.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use warden_core::{ColumnPlan, Masked, Masker};

use crate::PgProtocolError;
use crate::frontend::Frame;
use crate::wire::{cbytes, cstr_lossy as cstr, need, put_cstr, put_frame, split_tagged};

/// One column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// The table's OID, 0 when the column is computed.
    pub table_oid: u32,
    pub column_attr: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A decoded server message; frames the proxy only forwards are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgBackendMessage {
    /// `R`: 0 ok, 3 cleartext, 5 md5 (with salt), 10 SASL, 11 SASL continue, 12 final.
    Authentication {
        code: i32,
        data: Bytes,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    ReadyForQuery {
        status: u8,
    },
    RowDescription {
        fields: Vec<FieldDescription>,
    },
    /// Values stay in the frame; see [`mask_data_row`].
    DataRow,
    CommandComplete {
        tag: String,
    },
    ErrorResponse {
        code: String,
        message: String,
    },
    NoticeResponse,
    /// `H` (copy out) or `G` (copy in) or `W` (copy both), with per-column formats.
    CopyResponse {
        kind: u8,
        column_formats: Vec<i16>,
    },
    CopyData,
    CopyDone,
    EmptyQueryResponse,
    Other {
        tag: u8,
    },
}

/// Frames and decodes a server's byte stream.
#[derive(Debug, Clone)]
pub struct BackendDecoder {
    max_message: usize,
}

impl BackendDecoder {
    pub fn new(max_message: usize) -> Self {
        Self { max_message }
    }

    pub fn decode(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame<PgBackendMessage>>, PgProtocolError> {
        let Some((tag, raw)) = split_tagged(buf, self.max_message)? else {
            return Ok(None);
        };
        let mut body = raw.slice(5..);
        let message = match tag {
            b'R' => {
                need(&body, 4, "Authentication")?;
                let code = body.get_i32();
                PgBackendMessage::Authentication { code, data: body }
            }
            b'S' => {
                let name = cstr(&mut body, "ParameterStatus")?;
                let value = cstr(&mut body, "ParameterStatus")?;
                PgBackendMessage::ParameterStatus { name, value }
            }
            b'K' => {
                need(&body, 8, "BackendKeyData")?;
                PgBackendMessage::BackendKeyData {
                    process_id: body.get_i32(),
                    secret_key: body.get_i32(),
                }
            }
            b'Z' => {
                need(&body, 1, "ReadyForQuery")?;
                PgBackendMessage::ReadyForQuery {
                    status: body.get_u8(),
                }
            }
            b'T' => {
                need(&body, 2, "RowDescription")?;
                let n =
                    usize::try_from(body.get_i16()).map_err(|_| PgProtocolError::Malformed {
                        message: "RowDescription",
                        detail: "negative field count",
                    })?;
                let mut fields = Vec::with_capacity(n.min(1600));
                for _ in 0..n {
                    let name = cstr(&mut body, "RowDescription")?;
                    need(&body, 18, "RowDescription")?;
                    fields.push(FieldDescription {
                        name,
                        table_oid: body.get_u32(),
                        column_attr: body.get_i16(),
                        type_oid: body.get_u32(),
                        type_size: body.get_i16(),
                        type_modifier: body.get_i32(),
                        format: body.get_i16(),
                    });
                }
                PgBackendMessage::RowDescription { fields }
            }
            b'D' => PgBackendMessage::DataRow,
            b'C' => PgBackendMessage::CommandComplete {
                tag: cstr(&mut body, "CommandComplete")?,
            },
            b'E' => {
                let (mut code, mut message) = (String::new(), String::new());
                while body.has_remaining() {
                    let field = body.get_u8();
                    if field == 0 {
                        break;
                    }
                    let value = cstr(&mut body, "ErrorResponse")?;
                    match field {
                        b'C' => code = value,
                        b'M' => message = value,
                        _ => {}
                    }
                }
                PgBackendMessage::ErrorResponse { code, message }
            }
            b'N' => PgBackendMessage::NoticeResponse,
            b'H' | b'G' | b'W' => {
                need(&body, 3, "CopyResponse")?;
                let _overall = body.get_u8();
                let n = usize::try_from(body.get_i16()).unwrap_or(0);
                need(&body, n * 2, "CopyResponse")?;
                let column_formats = (0..n).map(|_| body.get_i16()).collect();
                PgBackendMessage::CopyResponse {
                    kind: tag,
                    column_formats,
                }
            }
            b'd' => PgBackendMessage::CopyData,
            b'c' => PgBackendMessage::CopyDone,
            b'I' => PgBackendMessage::EmptyQueryResponse,
            other => PgBackendMessage::Other { tag: other },
        };
        Ok(Some(Frame { message, raw }))
    }
}

/// The values of a `DataRow` frame (`None` for NULL).
pub fn data_row_values(raw: &Bytes) -> Result<Vec<Option<Bytes>>, PgProtocolError> {
    DataRowFields::new(raw)?
        .map(|f| f.map(|(_, v)| v))
        .collect()
}

/// Walks the values of a `DataRow` frame, each with the offset of its length word in
/// the frame; bytes after the last value are an error.
struct DataRowFields {
    frame_len: usize,
    body: Bytes,
    left: usize,
    done: bool,
}

const DATA_ROW: &str = "DataRow";

/// Offset of the first value's length word: tag, length, column count.
const DATA_ROW_VALUES_AT: usize = 7;

impl DataRowFields {
    fn new(raw: &Bytes) -> Result<Self, PgProtocolError> {
        need(raw, DATA_ROW_VALUES_AT, DATA_ROW)?;
        let mut body = raw.slice(5..);
        let left = usize::try_from(body.get_i16()).map_err(|_| PgProtocolError::Malformed {
            message: DATA_ROW,
            detail: "negative column count",
        })?;
        Ok(Self {
            frame_len: raw.len(),
            body,
            left,
            done: false,
        })
    }

    fn field(&mut self) -> Result<(usize, Option<Bytes>), PgProtocolError> {
        let at = self.frame_len - self.body.remaining();
        need(&self.body, 4, DATA_ROW)?;
        let len = self.body.get_i32();
        if len < 0 {
            return Ok((at, None));
        }
        let l = usize::try_from(len).map_err(|_| PgProtocolError::Malformed {
            message: DATA_ROW,
            detail: "bad length",
        })?;
        need(&self.body, l, DATA_ROW)?;
        let v = self.body.slice(..l);
        self.body.advance(l);
        Ok((at, Some(v)))
    }
}

impl Iterator for DataRowFields {
    type Item = Result<(usize, Option<Bytes>), PgProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            return self
                .body
                .has_remaining()
                .then_some(Err(PgProtocolError::Malformed {
                    message: DATA_ROW,
                    detail: "trailing bytes",
                }));
        }
        self.left -= 1;
        let field = self.field();
        self.done = field.is_err();
        Some(field)
    }
}

/// The message field (`M`) of an `ErrorResponse` or `NoticeResponse` frame.
pub fn notice_message(raw: &Bytes) -> Result<String, PgProtocolError> {
    const M: &str = "ErrorResponse";
    need(raw, 5, M)?;
    let mut body = raw.slice(5..);
    loop {
        need(&body, 1, M)?;
        let kind = body.get_u8();
        if kind == 0 {
            return Ok(String::new());
        }
        let value = cbytes(&mut body, M)?;
        if kind == b'M' {
            return Ok(String::from_utf8_lossy(&value).into_owned());
        }
    }
}

/// Masks the text fields of an `ErrorResponse` or `NoticeResponse` (message, detail,
/// hint, context): servers quote values in them, e.g. "Key (email)=(bob@example.com)
/// already exists". Returns `None` when nothing changed.
pub fn mask_notice(raw: &Bytes, masker: &dyn Masker) -> Result<Option<BytesMut>, PgProtocolError> {
    const M: &str = "ErrorResponse";
    let mut body = raw.slice(5..);
    let mut fields: Vec<(u8, Bytes)> = Vec::new();
    let mut changed = false;
    loop {
        need(&body, 1, M)?;
        let kind = body.get_u8();
        if kind == 0 {
            break;
        }
        let value = cbytes(&mut body, M)?;
        let value = if matches!(kind, b'M' | b'D' | b'H' | b'W' | b'q') {
            match masker.mask(ColumnPlan::Detect, &value) {
                Masked::Unchanged => value,
                Masked::Replaced(v) => {
                    changed = true;
                    Bytes::from(v)
                }
                Masked::Null => {
                    changed = true;
                    Bytes::from_static(b"[redacted]")
                }
            }
        } else {
            value
        };
        fields.push((kind, value));
    }
    if !changed {
        return Ok(None);
    }
    let mut out = BytesMut::with_capacity(raw.len() + 32);
    put_frame(&mut out, raw[0], |b| {
        for (kind, value) in &fields {
            b.put_u8(*kind);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
    Ok(Some(out))
}

/// Masks the payload of a `NotificationResponse` (`NOTIFY channel, 'payload'`).
pub fn mask_notification(
    raw: &Bytes,
    masker: &dyn Masker,
) -> Result<Option<BytesMut>, PgProtocolError> {
    const M: &str = "NotificationResponse";
    let mut body = raw.slice(5..);
    need(&body, 4, M)?;
    let pid = body.get_i32();
    let channel = cstr(&mut body, M)?;
    let payload = cbytes(&mut body, M)?;
    let masked = match masker.mask(ColumnPlan::Detect, &payload) {
        Masked::Unchanged => return Ok(None),
        Masked::Replaced(v) => v,
        Masked::Null => b"[redacted]".to_vec(),
    };
    let mut out = BytesMut::new();
    put_frame(&mut out, b'A', |b| {
        b.put_i32(pid);
        put_cstr(b, channel.as_bytes());
        put_cstr(b, &masked);
    });
    Ok(Some(out))
}

/// What to do with one column's values in a `DataRow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnMasking {
    /// Hand the value bytes (text format, or binary text-like types) to the masker.
    Mask(ColumnPlan),
    /// A binary-format value of type `oid` (not text-like): decoded where Warden
    /// can read it; what is sensitive, or cannot be read, becomes NULL (fail closed).
    Binary { plan: ColumnPlan, oid: u32 },
    /// A table's row type (`SELECT u FROM users u`): each field masked as that
    /// table's column is, in text or binary format.
    Composite {
        fields: std::sync::Arc<[(ColumnPlan, u32)]>,
        binary: bool,
    },
    /// Leave it.
    Keep,
}

/// Masks one binary-format value of a type whose binary form is not its text.
/// `bytea` is searched as its bytes and `jsonb` as its JSON text, both rewritten in
/// place; numbers (`int2/4/8`, `float4/8`, `numeric`) are searched as the digits
/// they spell and become NULL when something is found (a masked number is no
/// number); anything else (arrays, records, `tsvector`, types Warden cannot read)
/// becomes NULL whenever detectors would search it. A column rule makes it NULL.
pub fn mask_binary(masker: &dyn Masker, plan: ColumnPlan, oid: u32, value: &[u8]) -> Masked {
    match plan {
        ColumnPlan::Skip => Masked::Unchanged,
        ColumnPlan::Rule(_) => Masked::Null,
        ColumnPlan::Detect => match oid {
            // bytea
            17 => masker.mask(plan, value),
            // jsonb: a version byte, then the JSON text.
            3802 => match value.split_first() {
                Some((1, json)) => match masker.mask(plan, json) {
                    Masked::Replaced(r) => {
                        let mut out = Vec::with_capacity(r.len() + 1);
                        out.push(1);
                        out.extend_from_slice(&r);
                        Masked::Replaced(out)
                    }
                    other => other,
                },
                _ => Masked::Null,
            },
            // `"char"`: one byte, nothing a detector looks for (drivers read it in
            // their catalog queries).
            18 => Masked::Unchanged,
            20 | 21 | 23 | 700 | 701 | 1700 | 26 | 24 | 28 | 29 | 2202..=2206 | 4089 | 4096 => {
                match binary_number(oid, value) {
                    Some(text) => match masker.mask(plan, text.as_bytes()) {
                        Masked::Unchanged => Masked::Unchanged,
                        _ => Masked::Null,
                    },
                    None => Masked::Null,
                }
            }
            // Arrays of the types above and of text-like types.
            1000 | 1001 | 1002 | 1003 | 1005 | 1007 | 1009 | 1014 | 1015 | 1016 | 1021 | 1022
            | 1028 | 1231 | 199 | 3807 | 143 => {
                mask_container(masker, plan, value, Container::Array)
            }
            // Anonymous records (`row(...)`, a table's whole row in a function).
            2249 => mask_container(masker, plan, value, Container::Record),
            _ => Masked::Null,
        },
    }
}

/// A value inside an array or record: text-like types as text, the rest as binary.
fn mask_element(masker: &dyn Masker, plan: ColumnPlan, oid: u32, value: &[u8]) -> Masked {
    if crate::catalog::is_text_type(oid) {
        masker.mask(plan, value)
    } else {
        mask_binary(masker, plan, oid, value)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Array,
    Record,
}

/// Masks the elements of a binary array or the fields of a binary record, each by its
/// own type; one that must go becomes a NULL element. The whole value becomes NULL
/// when it cannot be read.
fn mask_container(masker: &dyn Masker, plan: ColumnPlan, v: &[u8], kind: Container) -> Masked {
    mask_container_checked(masker, plan, v, kind, None).unwrap_or(Masked::Null)
}

/// `fields`: a record's own plan per field (a table's row type), instead of `plan`.
fn mask_container_checked(
    masker: &dyn Masker,
    plan: ColumnPlan,
    v: &[u8],
    kind: Container,
    fields: Option<&[(ColumnPlan, u32)]>,
) -> Option<Masked> {
    let int = |at: usize| -> Option<i32> {
        Some(i32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?))
    };
    // The header is kept as it is, up to where the elements start; arrays get
    // their has-null flag set when an element becomes NULL.
    let (mut at, count, elem_oid) = match kind {
        Container::Array => {
            let ndim = usize::try_from(int(0)?).ok()?;
            if ndim > 6 {
                return None;
            }
            let elem_oid = u32::try_from(int(8)?).ok()?;
            let mut count = usize::from(ndim > 0);
            for d in 0..ndim {
                count = count.checked_mul(usize::try_from(int(12 + 8 * d)?).ok()?)?;
            }
            (12 + 8 * ndim, count, Some(elem_oid))
        }
        Container::Record => (4, usize::try_from(int(0)?).ok()?, None),
    };
    let header_end = at;
    if count > v.len() {
        return None;
    }
    let mut elements = Vec::with_capacity(count);
    let mut changed = false;
    if fields.is_some_and(|f| f.len() != count) {
        return None;
    }
    for n in 0..count {
        let plan = fields.and_then(|f| f.get(n)).map_or(plan, |(p, _)| *p);
        let oid = match elem_oid {
            Some(oid) => oid,
            None => {
                let oid = u32::try_from(int(at)?).ok()?;
                at += 4;
                oid
            }
        };
        let len = int(at)?;
        at += 4;
        let value = if len < 0 {
            None
        } else {
            let end = at.checked_add(usize::try_from(len).ok()?)?;
            let bytes = v.get(at..end)?;
            at = end;
            Some(bytes)
        };
        let masked = value.map_or(Masked::Unchanged, |b| match plan {
            // A column rule rewrites text-like fields; others cannot stay their type.
            ColumnPlan::Rule(_) if crate::catalog::is_text_type(oid) => masker.mask(plan, b),
            _ => mask_element(masker, plan, oid, b),
        });
        changed |= masked != Masked::Unchanged;
        elements.push((oid, value, masked));
    }
    if at != v.len() {
        return None;
    }
    if !changed {
        return Some(Masked::Unchanged);
    }
    let mut out = v[..header_end].to_vec();
    if kind == Container::Array && elements.iter().any(|(_, _, m)| *m == Masked::Null) {
        out[4..8].copy_from_slice(&1i32.to_be_bytes());
    }
    for (oid, value, masked) in elements {
        if kind == Container::Record {
            out.extend_from_slice(&oid.to_be_bytes());
        }
        let bytes: Option<Vec<u8>> = match masked {
            Masked::Unchanged => value.map(<[u8]>::to_vec),
            Masked::Replaced(r) => Some(r),
            Masked::Null => None,
        };
        match bytes {
            Some(b) => {
                out.extend_from_slice(&i32::try_from(b.len()).ok()?.to_be_bytes());
                out.extend_from_slice(&b);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    Some(Masked::Replaced(out))
}

/// A binary integer, float or numeric as decimal text.
fn binary_number(oid: u32, v: &[u8]) -> Option<String> {
    Some(match (oid, v.len()) {
        (21, 2) => i16::from_be_bytes(v.try_into().ok()?).to_string(),
        (23, 4) => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        (20, 8) => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        // oid, xid, cid and the reg* types: unsigned 32-bit.
        (26 | 24 | 28 | 29 | 2202..=2206 | 4089 | 4096, 4) => {
            u32::from_be_bytes(v.try_into().ok()?).to_string()
        }
        (700, 4) => format!("{}", f32::from_be_bytes(v.try_into().ok()?)),
        (701, 8) => format!("{}", f64::from_be_bytes(v.try_into().ok()?)),
        (1700, _) => binary_numeric(v)?,
        _ => return None,
    })
}

/// `numeric` in binary: digit count, weight (of the first base-10000 digit), sign,
/// display scale, then the base-10000 digits. Rendered as all its decimal digits.
fn binary_numeric(v: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> {
        Some(i16::from_be_bytes([*v.get(2 * i)?, *v.get(2 * i + 1)?]))
    };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = word(1)?;
    let sign = word(2)? as u16;
    if v.len() != 8 + 2 * ndigits || ndigits > 1000 {
        return None;
    }
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    for i in 0..ndigits {
        let d = word(4 + i)?;
        if !(0..10000).contains(&d) {
            return None;
        }
        if i == 0 {
            out.push_str(&d.to_string());
        } else {
            out.push_str(&format!("{d:04}"));
        }
    }
    // Whole base-10000 digits after the last one given are zeros.
    let trailing = i32::from(weight) + 1 - i32::try_from(ndigits).ok()?;
    for _ in 0..trailing.clamp(0, 256) {
        out.push_str("0000");
    }
    if ndigits == 0 {
        out.push('0');
    }
    Some(out)
}

/// Rewrites a `DataRow` frame with masked values and recomputed lengths. Returns
/// `None` when nothing changed, so the original frame is forwarded without copying.
pub fn mask_data_row(
    raw: &Bytes,
    columns: &[ColumnMasking],
    masker: &dyn Masker,
) -> Result<Option<BytesMut>, PgProtocolError> {
    const M: &str = DATA_ROW;
    let mut out: Option<BytesMut> = None;
    for (i, field) in DataRowFields::new(raw)?.enumerate() {
        let (at_value, value) = field?;
        let detect = ColumnMasking::Mask(ColumnPlan::Detect);
        let action = columns.get(i).unwrap_or(&detect);
        let masked = match (&value, action) {
            (None, _) | (_, ColumnMasking::Keep) => Masked::Unchanged,
            (Some(v), ColumnMasking::Mask(plan)) => masker.mask(*plan, v),
            (Some(v), ColumnMasking::Binary { plan, oid }) => mask_binary(masker, *plan, *oid, v),
            (
                Some(v),
                ColumnMasking::Composite {
                    fields,
                    binary: true,
                },
            ) => mask_container_checked(
                masker,
                ColumnPlan::Detect,
                v,
                Container::Record,
                Some(fields),
            )
            .unwrap_or(Masked::Null),
            (
                Some(v),
                ColumnMasking::Composite {
                    fields,
                    binary: false,
                },
            ) => crate::record::mask_record_text(masker, v, fields),
        };
        if masked != Masked::Unchanged && out.is_none() {
            // First change: copy the values before this one as they are.
            let mut o = BytesMut::with_capacity(raw.len() + 32);
            o.extend_from_slice(&raw[..at_value]);
            out = Some(o);
        }
        if let Some(o) = out.as_mut() {
            match (masked, &value) {
                (Masked::Null, _) | (Masked::Unchanged, None) => o.put_i32(-1),
                (Masked::Replaced(r), _) => {
                    o.put_i32(
                        i32::try_from(r.len()).map_err(|_| PgProtocolError::Malformed {
                            message: M,
                            detail: "value too large",
                        })?,
                    );
                    o.extend_from_slice(&r);
                }
                (Masked::Unchanged, Some(v)) => {
                    o.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    o.extend_from_slice(v);
                }
            }
        }
    }
    if let Some(o) = out.as_mut() {
        let len = i32::try_from(o.len() - 1).map_err(|_| PgProtocolError::Malformed {
            message: M,
            detail: "row too large",
        })?;
        o[1..5].copy_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::{ColumnRef, ColumnRuleId};

    /// Masks values containing `secret` and everything under a rule.
    struct Stub;
    impl Masker for Stub {
        fn plan(&self, _: &ColumnRef<'_>) -> ColumnPlan {
            ColumnPlan::Detect
        }
        fn mask(&self, plan: ColumnPlan, value: &[u8]) -> Masked {
            match plan {
                ColumnPlan::Rule(_) => Masked::Replaced(b"[redacted]".to_vec()),
                _ if value.windows(6).any(|w| w == b"secret") => Masked::Replaced(b"***".to_vec()),
                _ => Masked::Unchanged,
            }
        }
        fn is_active(&self) -> bool {
            true
        }
    }

    fn data_row(values: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_i32(0);
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.extend_from_slice(v);
                }
            }
        }
        let len = (b.len() - 1) as i32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        b.freeze()
    }

    #[test]
    fn rows_are_rewritten_only_when_something_changes() {
        let row = data_row(&[Some(b"1"), Some(b"a secret value"), None, Some(b"x")]);
        let detect = ColumnMasking::Mask(ColumnPlan::Detect);
        let cols = [
            detect.clone(),
            detect.clone(),
            detect.clone(),
            ColumnMasking::Mask(ColumnPlan::Rule(ColumnRuleId(0))),
        ];
        let out = mask_data_row(&row, &cols, &Stub)
            .ok()
            .flatten()
            .map(|b| b.freeze());
        assert_eq!(
            out,
            Some(data_row(&[
                Some(b"1"),
                Some(b"***"),
                None,
                Some(b"[redacted]")
            ]))
        );

        let clean = data_row(&[Some(b"1"), Some(b"plain")]);
        assert_eq!(
            mask_data_row(&clean, &[detect.clone(), detect], &Stub),
            Ok(None)
        );

        let binary = data_row(&[Some(&[0, 0, 0, 42])]);
        let nulled = mask_data_row(
            &binary,
            &[ColumnMasking::Binary {
                plan: ColumnPlan::Rule(ColumnRuleId(0)),
                oid: 23,
            }],
            &Stub,
        );
        assert_eq!(
            nulled.ok().flatten().map(|b| b.freeze()),
            Some(data_row(&[None]))
        );
    }

    #[test]
    fn malformed_rows_are_errors() {
        let detect = [ColumnMasking::Mask(ColumnPlan::Detect)];
        let mut bad = BytesMut::from(&data_row(&[Some(b"abc")])[..]);
        bad.truncate(bad.len() - 1);
        assert!(mask_data_row(&bad.freeze(), &detect, &Stub).is_err());
        let mut lying = BytesMut::from(&data_row(&[Some(b"abc")])[..]);
        lying[7..11].copy_from_slice(&1000i32.to_be_bytes());
        assert!(mask_data_row(&lying.freeze(), &detect, &Stub).is_err());
    }

    #[test]
    fn notices_and_errors_are_masked_field_by_field() {
        let mut b = BytesMut::new();
        b.put_u8(b'N');
        b.put_i32(0);
        for (k, v) in [
            (b'S', "NOTICE"),
            (b'C', "00000"),
            (b'M', "owner a secret here"),
            (b'D', "plain"),
        ] {
            b.put_u8(k);
            b.extend_from_slice(v.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
        let len = (b.len() - 1) as i32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        let out = mask_notice(&b.freeze(), &Stub)
            .ok()
            .flatten()
            .map(|o| o.freeze());
        let out = out.unwrap_or_default();
        assert_eq!(out[0], b'N');
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1,
            out.len()
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("M***\0") && text.contains("Dplain\0") && text.contains("C00000\0"),
            "{text:?}"
        );
        let clean = {
            let mut c = BytesMut::new();
            c.put_u8(b'E');
            c.put_i32(0);
            c.extend_from_slice(b"Mnothing\0\0");
            let len = (c.len() - 1) as i32;
            c[1..5].copy_from_slice(&len.to_be_bytes());
            c.freeze()
        };
        assert_eq!(mask_notice(&clean, &Stub), Ok(None));
    }

    #[test]
    fn notification_payloads_are_masked() {
        let mut b = BytesMut::new();
        b.put_u8(b'A');
        b.put_i32(0);
        b.put_i32(77);
        b.extend_from_slice(b"jobs\0the secret payload\0");
        let len = (b.len() - 1) as i32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        let out = mask_notification(&b.freeze(), &Stub)
            .ok()
            .flatten()
            .map(|o| o.freeze())
            .unwrap_or_default();
        assert_eq!(&out[5..9], &77i32.to_be_bytes());
        assert_eq!(&out[9..], b"jobs\0***\0");
        assert_eq!(
            i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize + 1,
            out.len()
        );
    }

    #[test]
    fn decodes_result_shapes() {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_i32(0);
        b.put_i16(1);
        b.extend_from_slice(b"email\0");
        b.put_u32(16384);
        b.put_i16(2);
        b.put_u32(25);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
        let len = (b.len() - 1) as i32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        let f = BackendDecoder::new(1 << 20)
            .decode(&mut b)
            .ok()
            .flatten()
            .map(|f| f.message);
        match f {
            Some(PgBackendMessage::RowDescription { fields }) => {
                assert_eq!(fields[0].name, "email");
                assert_eq!(
                    (fields[0].table_oid, fields[0].type_oid, fields[0].format),
                    (16384, 25, 0)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
