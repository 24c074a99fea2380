//! What servers answer: OK / ERR / EOF packets, result-set metadata (column
//! definitions) and rows in the text and the binary protocol, plus the rewriting of
//! masked values in both row formats with lengths, NULL markers and bitmaps redone.

use bytes::{BufMut, BytesMut};
use warden_core::{ColumnPlan, ColumnRef, Masked, Masker, ValueKind};

use crate::MysqlProtocolError;
use crate::wire::{NULL_VALUE, Reader, put_lenenc, put_lenenc_bytes};

/// Column types (`enum_field_types`).
pub mod types {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// Column flag: the integer is unsigned.
const UNSIGNED_FLAG: u16 = 0x20;
/// Collation id of binary strings (BLOB, BINARY, VARBINARY).
const BINARY_COLLATION: u16 = 63;

/// A decoded `OK` packet (or the `OK` that ends a result set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OkInfo {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
}

impl OkInfo {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "OK packet");
        r.u8()?;
        let affected_rows = r.lenenc_int()?;
        let last_insert_id = r.lenenc_int()?;
        let status = r.u16()?;
        let warnings = r.u16()?;
        Ok(Self {
            affected_rows,
            last_insert_id,
            status,
            warnings,
        })
    }
}

/// How a server's first answer to a command starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseHead {
    Ok(OkInfo),
    Err,
    /// An old-style `EOF` (e.g. after `COM_SET_OPTION` without DEPRECATE_EOF).
    Eof {
        status: u16,
    },
    /// The server asks the client to send a local file (`LOAD DATA LOCAL`).
    LocalInfile,
    /// A result set of this many columns follows.
    ResultSet {
        columns: u64,
    },
}

impl ResponseHead {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        match payload.first() {
            None => Err(MysqlProtocolError::Malformed {
                what: "response",
                detail: "empty packet",
            }),
            Some(0x00) => OkInfo::decode(payload).map(Self::Ok),
            Some(0xFF) => Ok(Self::Err),
            Some(0xFE) if payload.len() < 9 => Ok(Self::Eof {
                status: eof_status(payload)?,
            }),
            Some(&NULL_VALUE) => Ok(Self::LocalInfile),
            Some(_) => {
                let mut r = Reader::new(payload, "result set header");
                let columns = r.lenenc_int()?;
                if columns == 0 {
                    return Err(r.err("zero columns"));
                }
                Ok(Self::ResultSet { columns })
            }
        }
    }
}

fn eof_status(payload: &[u8]) -> Result<u16, MysqlProtocolError> {
    let mut r = Reader::new(payload, "EOF packet");
    r.u8()?;
    if r.is_empty() {
        return Ok(0);
    }
    r.u16()?;
    r.u16()
}

/// Whether a packet in the rows phase ends the result set (an `EOF`, or the `OK`
/// with an 0xFE header that replaces it under DEPRECATE_EOF). A row can begin with
/// 0xFE only as the prefix of an 8-byte length, i.e. in a packet far larger.
pub fn is_terminator(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < crate::packet::MAX_FRAGMENT
}

/// The status flags of a result set's terminator.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Result<u16, MysqlProtocolError> {
    if deprecate_eof && payload.len() >= 7 {
        OkInfo::decode(payload).map(|o| o.status)
    } else {
        eof_status(payload)
    }
}

/// The `OK` (0xFE header) that ends a result set under DEPRECATE_EOF, built from an
/// old-style `EOF`, for clients that asked for it from servers that do not send it.
pub fn eof_to_ok(payload: &[u8]) -> Result<BytesMut, MysqlProtocolError> {
    let mut r = Reader::new(payload, "EOF packet");
    r.u8()?;
    let (warnings, status) = if r.is_empty() {
        (0, 0)
    } else {
        (r.u16()?, r.u16()?)
    };
    let mut b = BytesMut::with_capacity(7);
    b.put_u8(0xFE);
    put_lenenc(&mut b, 0);
    put_lenenc(&mut b, 0);
    b.put_u16_le(status);
    b.put_u16_le(warnings);
    Ok(b)
}

/// A `ColumnDefinition41`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnDef {
    pub schema: String,
    pub table: String,
    /// The table the column is read from (empty for computed values).
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub collation: u16,
    pub column_type: u8,
    pub flags: u16,
}

impl ColumnDef {
    pub fn decode(payload: &[u8]) -> Result<Self, MysqlProtocolError> {
        let mut r = Reader::new(payload, "column definition");
        let mut s = || -> Result<String, MysqlProtocolError> {
            Ok(String::from_utf8_lossy(r.lenenc_str()?).into_owned())
        };
        let _catalog = s()?;
        let schema = s()?;
        let table = s()?;
        let org_table = s()?;
        let name = s()?;
        let org_name = s()?;
        let _fixed_len = r.lenenc_int()?;
        let collation = r.u16()?;
        let _length = r.u32()?;
        let column_type = r.u8()?;
        let flags = r.u16()?;
        Ok(Self {
            schema,
            table,
            org_table,
            name,
            org_name,
            collation,
            column_type,
            flags,
        })
    }

    pub fn value_kind(&self) -> ValueKind {
        use types::*;
        match self.column_type {
            DECIMAL | NEWDECIMAL | TINY | SHORT | LONG | FLOAT | DOUBLE | LONGLONG | INT24
            | YEAR => ValueKind::Number,
            TIMESTAMP | DATE | TIME | DATETIME | NEWDATE | TIMESTAMP2 | DATETIME2 | TIME2 => {
                ValueKind::Temporal
            }
            BIT | GEOMETRY => ValueKind::Binary,
            TINY_BLOB | MEDIUM_BLOB | LONG_BLOB | BLOB | VAR_STRING | STRING | VARCHAR
                if self.collation == BINARY_COLLATION =>
            {
                ValueKind::Binary
            }
            _ => ValueKind::Text,
        }
    }

    /// The column as masking rules name it: its origin when it has one.
    pub fn column_ref(&self) -> ColumnRef<'_> {
        let origin = !self.org_table.is_empty();
        ColumnRef {
            schema: (origin && !self.schema.is_empty()).then_some(self.schema.as_str()),
            table: origin.then_some(self.org_table.as_str()),
            column: if self.org_name.is_empty() {
                &self.name
            } else {
                &self.org_name
            },
            kind: self.value_kind(),
        }
    }

    fn unsigned(&self) -> bool {
        self.flags & UNSIGNED_FLAG != 0
    }
}

/// The length of one binary-protocol value of `column_type` starting at `r` (its
/// length prefix, if any, is consumed). Unknown types are errors: guessing would
/// misread every following value.
pub(crate) fn binary_value_len(
    column_type: u8,
    r: &mut Reader<'_>,
) -> Result<usize, MysqlProtocolError> {
    use types::*;
    Ok(match column_type {
        NULL => 0,
        TINY => 1,
        SHORT | YEAR => 2,
        LONG | INT24 | FLOAT => 4,
        LONGLONG | DOUBLE => 8,
        DATE | DATETIME | TIMESTAMP | TIME | NEWDATE | TIMESTAMP2 | DATETIME2 | TIME2 => {
            usize::from(r.u8()?)
        }
        DECIMAL | NEWDECIMAL | VARCHAR | BIT | JSON | ENUM | SET | TINY_BLOB | MEDIUM_BLOB
        | LONG_BLOB | BLOB | VAR_STRING | STRING | GEOMETRY => {
            usize::try_from(r.lenenc_int()?).map_err(|_| r.err("length out of range"))?
        }
        _ => return Err(r.err("unknown column type")),
    })
}

/// Whether a binary-protocol value of this type is a length-encoded string (and can
/// be replaced by masked text of another length).
fn binary_is_string(column_type: u8) -> bool {
    use types::*;
    matches!(
        column_type,
        DECIMAL
            | NEWDECIMAL
            | VARCHAR
            | BIT
            | JSON
            | ENUM
            | SET
            | TINY_BLOB
            | MEDIUM_BLOB
            | LONG_BLOB
            | BLOB
            | VAR_STRING
            | STRING
            | GEOMETRY
    )
}

/// Masks a text-protocol row. Returns `None` when nothing changed, so the packet is
/// forwarded as it came.
pub fn mask_text_row(
    payload: &[u8],
    plans: &[ColumnPlan],
    masker: &dyn Masker,
) -> Result<Option<BytesMut>, MysqlProtocolError> {
    let mut r = Reader::new(payload, "text row");
    let mut out: Option<BytesMut> = None;
    for plan in plans {
        let start = r.pos();
        let value = r.lenenc_bytes()?;
        let masked = match (value, plan) {
            (None, _) | (_, ColumnPlan::Skip) => Masked::Unchanged,
            (Some(v), plan) => masker.mask(*plan, v),
        };
        if masked != Masked::Unchanged && out.is_none() {
            let mut o = BytesMut::with_capacity(payload.len() + 32);
            o.extend_from_slice(&payload[..start]);
            out = Some(o);
        }
        if let Some(o) = out.as_mut() {
            match masked {
                Masked::Null => o.put_u8(NULL_VALUE),
                Masked::Replaced(v) => put_lenenc_bytes(o, &v),
                Masked::Unchanged => o.extend_from_slice(&payload[start..r.pos()]),
            }
        }
    }
    if !r.is_empty() {
        return Err(r.err("more values than columns"));
    }
    Ok(out)
}

/// Text-protocol values, for the recording.
pub fn text_row_values(payload: &[u8]) -> Result<Vec<Option<String>>, MysqlProtocolError> {
    let mut r = Reader::new(payload, "text row");
    let mut values = Vec::new();
    while !r.is_empty() {
        values.push(
            r.lenenc_bytes()?
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        );
    }
    Ok(values)
}

/// The values of a binary-protocol row, each as its raw bytes (length prefix
/// excluded), `None` for NULL.
fn binary_row_fields<'a>(
    payload: &'a [u8],
    columns: &[ColumnDef],
) -> Result<Vec<Option<&'a [u8]>>, MysqlProtocolError> {
    let mut r = Reader::new(payload, "binary row");
    if r.u8()? != 0 {
        return Err(r.err("bad header"));
    }
    let bitmap = r.take((columns.len() + 7 + 2) / 8)?;
    let mut fields = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            fields.push(None);
            continue;
        }
        let n = binary_value_len(c.column_type, &mut r)?;
        fields.push(Some(r.take(n)?));
    }
    if !r.is_empty() {
        return Err(r.err("more values than columns"));
    }
    Ok(fields)
}

/// Masks a binary-protocol row (from `COM_STMT_EXECUTE`). String-typed values are
/// masked as text; a fixed-size value (number, date) cannot hold masked text, so it
/// becomes NULL when a rule covers its column or a detector matches its text form
/// (fail closed). Returns `None` when nothing changed.
pub fn mask_binary_row(
    payload: &[u8],
    columns: &[ColumnDef],
    plans: &[ColumnPlan],
    masker: &dyn Masker,
) -> Result<Option<BytesMut>, MysqlProtocolError> {
    let fields = binary_row_fields(payload, columns)?;
    let mut changed = false;
    let mut masked: Vec<Masked> = Vec::with_capacity(fields.len());
    for ((field, column), plan) in fields.iter().zip(columns).zip(plans) {
        let m = match (field, plan) {
            (None, _) | (_, ColumnPlan::Skip) => Masked::Unchanged,
            (Some(v), plan) if binary_is_string(column.column_type) => masker.mask(*plan, v),
            (Some(_), ColumnPlan::Rule(_)) => Masked::Null,
            (Some(v), ColumnPlan::Detect) => match render_binary(column, v) {
                Some(text)
                    if masker.mask(ColumnPlan::Detect, text.as_bytes()) != Masked::Unchanged =>
                {
                    Masked::Null
                }
                _ => Masked::Unchanged,
            },
        };
        changed |= m != Masked::Unchanged;
        masked.push(m);
    }
    if !changed {
        return Ok(None);
    }
    let bitmap_len = (columns.len() + 7 + 2) / 8;
    let mut out = BytesMut::with_capacity(payload.len() + 32);
    out.put_u8(0);
    let bitmap_at = out.len();
    out.extend_from_slice(&vec![0u8; bitmap_len]);
    for (i, ((field, column), m)) in fields.iter().zip(columns).zip(masked).enumerate() {
        let bit = i + 2;
        let value: Option<std::borrow::Cow<'_, [u8]>> = match (field, m) {
            (None, _) | (_, Masked::Null) => None,
            (Some(_), Masked::Replaced(v)) => Some(v.into()),
            (Some(v), Masked::Unchanged) => Some((*v).into()),
        };
        match value {
            None => out[bitmap_at + bit / 8] |= 1 << (bit % 8),
            Some(v) => {
                use types::*;
                match column.column_type {
                    DATE | DATETIME | TIMESTAMP | TIME | NEWDATE | TIMESTAMP2 | DATETIME2
                    | TIME2 => {
                        out.put_u8(v.len() as u8);
                        out.extend_from_slice(&v);
                    }
                    t if binary_is_string(t) => put_lenenc_bytes(&mut out, &v),
                    _ => out.extend_from_slice(&v),
                }
            }
        }
    }
    Ok(Some(out))
}

/// A binary-protocol row's values as text, for the recording.
pub fn binary_row_values(
    payload: &[u8],
    columns: &[ColumnDef],
) -> Result<Vec<Option<String>>, MysqlProtocolError> {
    Ok(binary_row_fields(payload, columns)?
        .into_iter()
        .zip(columns)
        .map(|(f, c)| f.map(|v| render_binary(c, v).unwrap_or_else(|| "?".into())))
        .collect())
}

/// A binary-protocol value in the text form the text protocol would have sent.
fn render_binary(column: &ColumnDef, v: &[u8]) -> Option<String> {
    use types::*;
    let le = |n: usize| -> Option<u64> {
        (v.len() == n).then(|| v.iter().rev().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    };
    let int = |n: usize| -> Option<String> {
        let raw = le(n)?;
        Some(if column.unsigned() {
            raw.to_string()
        } else {
            let shift = 64 - 8 * n as u32;
            (((raw << shift) as i64) >> shift).to_string()
        })
    };
    match column.column_type {
        TINY => int(1),
        SHORT | YEAR => int(2),
        LONG | INT24 => int(4),
        LONGLONG => int(8),
        FLOAT => le(4).map(|b| f32::from_bits(b as u32).to_string()),
        DOUBLE => le(8).map(|b| f64::from_bits(b).to_string()),
        DATE | DATETIME | TIMESTAMP | NEWDATE | DATETIME2 | TIMESTAMP2 => {
            let mut s = String::new();
            if v.len() >= 4 {
                s = format!(
                    "{:04}-{:02}-{:02}",
                    u16::from_le_bytes([v[0], v[1]]),
                    v[2],
                    v[3]
                );
            } else if v.is_empty() {
                s = "0000-00-00".into();
            }
            if column.column_type != DATE && column.column_type != NEWDATE {
                let (h, m, sec) = if v.len() >= 7 {
                    (v[4], v[5], v[6])
                } else {
                    (0, 0, 0)
                };
                s.push_str(&format!(" {h:02}:{m:02}:{sec:02}"));
                if v.len() >= 11 {
                    s.push_str(&format!(
                        ".{:06}",
                        u32::from_le_bytes([v[7], v[8], v[9], v[10]])
                    ));
                }
            }
            Some(s)
        }
        TIME | TIME2 => {
            if v.len() < 8 {
                return Some("00:00:00".into());
            }
            let sign = if v[0] == 1 { "-" } else { "" };
            let days = u32::from_le_bytes([v[1], v[2], v[3], v[4]]);
            let hours = days * 24 + u32::from(v[5]);
            let mut s = format!("{sign}{hours:02}:{:02}:{:02}", v[6], v[7]);
            if v.len() >= 12 {
                s.push_str(&format!(
                    ".{:06}",
                    u32::from_le_bytes([v[8], v[9], v[10], v[11]])
                ));
            }
            Some(s)
        }
        t if binary_is_string(t) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    }
}

/// Masks the message of a server's `ERR` packet (it can quote values, e.g. a
/// duplicate key). Returns `None` when nothing changed.
pub fn mask_error(
    payload: &[u8],
    masker: &dyn Masker,
) -> Result<Option<BytesMut>, MysqlProtocolError> {
    let e = crate::handshake::ServerError::decode(payload)?;
    match masker.mask(ColumnPlan::Detect, e.message.as_bytes()) {
        Masked::Unchanged => Ok(None),
        Masked::Replaced(m) => Ok(Some(crate::handshake::err_packet(
            e.code,
            &e.sqlstate,
            &String::from_utf8_lossy(&m),
        ))),
        Masked::Null => Ok(Some(crate::handshake::err_packet(
            e.code,
            &e.sqlstate,
            "[redacted]",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::ColumnRuleId;

    /// Masks values containing `secret`, and everything under a rule.
    struct Stub;
    impl Masker for Stub {
        fn plan(&self, c: &ColumnRef<'_>) -> ColumnPlan {
            if c.column == "ssn" {
                ColumnPlan::Rule(ColumnRuleId(0))
            } else {
                ColumnPlan::Detect
            }
        }
        fn mask(&self, plan: ColumnPlan, v: &[u8]) -> Masked {
            match plan {
                ColumnPlan::Rule(_) => Masked::Replaced(b"***".to_vec()),
                _ if v.windows(6).any(|w| w == b"secret") || v == b"4111111111111111" => {
                    Masked::Replaced(b"[masked]".to_vec())
                }
                _ => Masked::Unchanged,
            }
        }
        fn is_active(&self) -> bool {
            true
        }
    }

    fn col(name: &str, column_type: u8) -> ColumnDef {
        ColumnDef {
            schema: "app".into(),
            table: "t".into(),
            org_table: "t".into(),
            name: name.into(),
            org_name: name.into(),
            collation: 45,
            column_type,
            flags: 0,
        }
    }

    fn text_row(values: &[Option<&[u8]>]) -> BytesMut {
        let mut b = BytesMut::new();
        for v in values {
            match v {
                None => b.put_u8(NULL_VALUE),
                Some(v) => put_lenenc_bytes(&mut b, v),
            }
        }
        b
    }

    #[test]
    fn column_definitions_decode_with_their_origin() {
        let mut b = BytesMut::new();
        for s in ["def", "app", "u", "users", "e", "email"] {
            put_lenenc_bytes(&mut b, s.as_bytes());
        }
        b.put_u8(0x0c);
        b.put_u16_le(45);
        b.put_u32_le(255);
        b.put_u8(types::VAR_STRING);
        b.put_u16_le(0);
        b.put_u8(0);
        b.put_u16_le(0);
        let c = ColumnDef::decode(&b).unwrap();
        let r = c.column_ref();
        assert_eq!(
            (r.schema, r.table, r.column),
            (Some("app"), Some("users"), "email")
        );
        assert_eq!(r.kind, ValueKind::Text);
        let computed = ColumnDef {
            org_table: String::new(),
            org_name: String::new(),
            ..c
        };
        assert_eq!(computed.column_ref().table, None);
        assert_eq!(computed.column_ref().column, "e");
        assert!(ColumnDef::decode(&b[..10]).is_err());
    }

    #[test]
    fn text_rows_are_rewritten_only_when_something_changes() {
        let plans = [
            ColumnPlan::Detect,
            ColumnPlan::Rule(ColumnRuleId(0)),
            ColumnPlan::Skip,
        ];
        let clean = text_row(&[Some(b"hello"), None, Some(b"secret")]);
        assert_eq!(mask_text_row(&clean, &plans, &Stub).unwrap(), None);
        let dirty = text_row(&[Some(b"my secret"), Some(b"123-45"), Some(b"x")]);
        let out = mask_text_row(&dirty, &plans, &Stub).unwrap().unwrap();
        assert_eq!(
            text_row_values(&out).unwrap(),
            vec![
                Some("[masked]".into()),
                Some("***".into()),
                Some("x".into())
            ]
        );
        // Large values keep a correct 3-byte length prefix.
        let big = vec![b'a'; 70_000];
        let row = text_row(&[Some(&big), Some(b"secret!")]);
        let out = mask_text_row(&row, &plans[..2], &Stub).unwrap().unwrap();
        assert_eq!(
            text_row_values(&out).unwrap()[0].as_ref().unwrap().len(),
            70_000
        );
        assert!(mask_text_row(&row, &plans[..1], &Stub).is_err());
        assert!(mask_text_row(&[0xFC, 1], &plans[..1], &Stub).is_err());
    }

    fn binary_row(columns: &[ColumnDef], values: &[Option<&[u8]>]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(0);
        let mut bitmap = vec![0u8; (columns.len() + 9) / 8];
        for (i, v) in values.iter().enumerate() {
            if v.is_none() {
                bitmap[(i + 2) / 8] |= 1 << ((i + 2) % 8);
            }
        }
        b.extend_from_slice(&bitmap);
        for (v, c) in values.iter().zip(columns) {
            if let Some(v) = v {
                if binary_is_string(c.column_type) {
                    put_lenenc_bytes(&mut b, v);
                } else if c.column_type == types::DATE {
                    b.put_u8(v.len() as u8);
                    b.extend_from_slice(v);
                } else {
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn binary_rows_mask_strings_and_null_fixed_values() {
        let columns = [
            col("note", types::VAR_STRING),
            col("ssn", types::LONGLONG),
            col("card", types::LONGLONG),
            col("n", types::LONG),
            col("d", types::DATE),
            col("gone", types::VAR_STRING),
        ];
        let plans: Vec<ColumnPlan> = columns.iter().map(|c| Stub.plan(&c.column_ref())).collect();
        let card = 4_111_111_111_111_111i64.to_le_bytes();
        let row = binary_row(
            &columns,
            &[
                Some(b"a secret"),
                Some(&123_456_789i64.to_le_bytes()),
                Some(&card),
                Some(&(-5i32).to_le_bytes()),
                Some(&[0xE8, 0x07, 2, 29]),
                None,
            ],
        );
        assert_eq!(
            binary_row_values(&row, &columns).unwrap(),
            vec![
                Some("a secret".into()),
                Some("123456789".into()),
                Some("4111111111111111".into()),
                Some("-5".into()),
                Some("2024-02-29".into()),
                None
            ]
        );
        let out = mask_binary_row(&row, &columns, &plans, &Stub)
            .unwrap()
            .unwrap();
        assert_eq!(
            binary_row_values(&out, &columns).unwrap(),
            vec![
                Some("[masked]".into()),
                None,
                None,
                Some("-5".into()),
                Some("2024-02-29".into()),
                None
            ]
        );
        let clean = binary_row(&columns[3..], &[Some(&1i32.to_le_bytes()), None, None]);
        assert_eq!(
            mask_binary_row(&clean, &columns[3..], &plans[3..], &Stub).unwrap(),
            None
        );
        assert!(binary_row_values(&row[..row.len() - 1], &columns).is_err());
    }

    #[test]
    fn heads_and_terminators() {
        assert!(
            matches!(ResponseHead::decode(&[0, 1, 0, 2, 0, 0, 0]).unwrap(), ResponseHead::Ok(o) if o.affected_rows == 1 && o.status == 2)
        );
        assert_eq!(
            ResponseHead::decode(&[3]).unwrap(),
            ResponseHead::ResultSet { columns: 3 }
        );
        assert_eq!(
            ResponseHead::decode(&[0xFB, b'f']).unwrap(),
            ResponseHead::LocalInfile
        );
        assert!(ResponseHead::decode(&[]).is_err());
        let eof = [0xFE, 0, 0, 0x0A, 0];
        assert!(is_terminator(&eof));
        assert_eq!(terminator_status(&eof, false).unwrap(), 0x0A);
        let ok = eof_to_ok(&eof).unwrap();
        assert_eq!(terminator_status(&ok, true).unwrap(), 0x0A);
    }
}
