//! What the proxy knows about result columns: their origin (schema, table, real
//! column name), looked up in the catalog on a second backend connection (the
//! session's own is busy streaming results), and how each column's values are masked.

use bytes::BytesMut;
use std::collections::HashMap;
use tokio::io::AsyncReadExt;
use warden_core::{ColumnRef, Masker, ValueKind};

use crate::login::login;
use crate::proxy::ProxySession;
use crate::results::{BackendDecoder, ColumnMasking, FieldDescription, PgBackendMessage};
use crate::tls::{BoxedStream, connect_backend};

/// One column of a described result: how it is masked and how it is named and sent.
#[derive(Debug, Clone)]
pub(crate) struct DescribedColumn {
    pub(crate) plan: warden_core::ColumnPlan,
    pub(crate) type_oid: u32,
    pub(crate) format: i16,
    pub(crate) name: String,
    /// A table's row type: each field's plan and type, as that table's columns.
    pub(crate) fields: Option<std::sync::Arc<[(warden_core::ColumnPlan, u32)]>>,
}

/// `text`, what string-like user types are masked as.
const TEXT_OID: u32 = 25;

/// The first OID of objects users create: types below it are built in.
const FIRST_USER_OID: u32 = 16384;

/// A table's row type: (table OID, attribute number, attribute type) per field.
type RowType = Vec<(u32, i16, u32)>;

/// What a user-defined type in a result is, for masking.
#[derive(Debug, Clone)]
enum UserType {
    /// A table's row type.
    Row(RowType),
    /// Its values are strings, in both formats (enums, `citext`, string-like types).
    Text,
    /// A domain over this (built-in) type.
    Domain(u32),
    /// Anything else: read as nothing Warden can decode.
    Other,
}

/// Columns of a result.
pub(crate) type Described = Vec<DescribedColumn>;

/// Schema and table names of result columns, looked up on a second backend
/// connection (the session's own is busy streaming results) and cached per session.
#[derive(Default)]
pub(crate) struct Catalog {
    conn: Option<BoxedStream>,
    names: HashMap<u32, (String, String)>,
    /// (table OID, attribute number) → the column's real name, so `ssn AS x` is
    /// still the `ssn` column to masking rules.
    columns: HashMap<(u32, i16), String>,
    /// User-defined types seen in results.
    types: HashMap<u32, UserType>,
}

impl Catalog {
    /// Masking plans and names of a result's columns, from what has been resolved.
    pub(crate) fn describe_columns(
        &self,
        fields: &[FieldDescription],
        masker: &dyn Masker,
    ) -> Described {
        fields
            .iter()
            .map(|f| {
                let names = self.names.get(&f.table_oid);
                let column = self
                    .columns
                    .get(&(f.table_oid, f.column_attr))
                    .map_or(f.name.as_str(), String::as_str);
                // A user type is masked as what it is made of.
                let type_oid = match self.types.get(&f.type_oid) {
                    Some(UserType::Text) => TEXT_OID,
                    Some(UserType::Domain(base)) => *base,
                    _ => f.type_oid,
                };
                let plan = masker.plan(&ColumnRef {
                    schema: names.map(|n| n.0.as_str()),
                    table: names.map(|n| n.1.as_str()),
                    column,
                    kind: value_kind(type_oid),
                });
                let fields = match self.types.get(&f.type_oid) {
                    Some(UserType::Row(row)) => Some(
                        row.iter()
                            .map(|(table, attnum, oid)| {
                                let names = self.names.get(table);
                                let column = self.columns.get(&(*table, *attnum));
                                let plan = masker.plan(&ColumnRef {
                                    schema: names.map(|n| n.0.as_str()),
                                    table: names.map(|n| n.1.as_str()),
                                    column: column.map_or("", String::as_str),
                                    kind: value_kind(*oid),
                                });
                                (plan, *oid)
                            })
                            .collect(),
                    ),
                    _ => None,
                };
                DescribedColumn {
                    plan,
                    type_oid,
                    format: f.format,
                    name: f.name.clone(),
                    fields,
                }
            })
            .collect()
    }

    /// The result columns of `sql`, described (not run) on the catalog connection,
    /// with their tables resolved.
    pub(crate) async fn describe(
        &mut self,
        sql: &str,
        session: &ProxySession,
    ) -> Result<Vec<FieldDescription>, String> {
        use crate::wire::{put_cstr, put_frame};
        let conn = self.connection(session).await?;
        let mut q = BytesMut::new();
        put_frame(&mut q, b'P', |b| {
            put_cstr(b, b"");
            put_cstr(b, sql.as_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        });
        put_frame(&mut q, b'D', |b| {
            b.extend_from_slice(b"S");
            put_cstr(b, b"");
        });
        put_frame(&mut q, b'S', |_| {});
        let mut fields = None;
        let mut error = None;
        for frame in timed(session, exchange(conn, &q)).await? {
            match frame.message {
                PgBackendMessage::RowDescription { fields: f } => fields = Some(f),
                PgBackendMessage::ErrorResponse { message, .. } => error = Some(message),
                _ => {}
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        let fields = fields.ok_or("the statement returns no columns")?;
        let oids: Vec<u32> = fields.iter().map(|f| f.table_oid).collect();
        self.resolve(&oids, session).await?;
        Ok(fields)
    }

    /// Checks that every relation a COPY's `select` names without a schema names
    /// one relation in the whole database: the catalog connection describes it under
    /// its own `search_path`, which may not be the session's (nor see its temporary
    /// tables), so a name that could mean two tables fails closed.
    pub(crate) async fn check_unambiguous(
        &mut self,
        select: &str,
        session: &ProxySession,
    ) -> Result<(), String> {
        use crate::wire::{put_cstr, put_frame};
        let names = crate::copy::unqualified_relations(select)
            .ok_or("the statement cannot be read to check its table names")?;
        if names.is_empty() {
            return Ok(());
        }
        let conn = self.connection(session).await?;
        let mut q = BytesMut::new();
        put_frame(&mut q, b'P', |b| {
            put_cstr(b, b"");
            put_cstr(
                b,
                b"SELECT count(*)::text FROM pg_catalog.pg_class \
                  WHERE relname = $1 AND relkind IN ('r', 'v', 'm', 'f', 'p', 'S')",
            );
            b.extend_from_slice(&0u16.to_be_bytes());
        });
        for name in &names {
            put_frame(&mut q, b'B', |b| {
                put_cstr(b, b"");
                put_cstr(b, b"");
                b.extend_from_slice(&0u16.to_be_bytes());
                b.extend_from_slice(&1u16.to_be_bytes());
                b.extend_from_slice(&(name.len() as i32).to_be_bytes());
                b.extend_from_slice(name.as_bytes());
                b.extend_from_slice(&0u16.to_be_bytes());
            });
            put_frame(&mut q, b'E', |b| {
                put_cstr(b, b"");
                b.extend_from_slice(&0i32.to_be_bytes());
            });
        }
        put_frame(&mut q, b'S', |_| {});
        let mut counts = Vec::new();
        for frame in timed(session, exchange(conn, &q)).await? {
            match frame.message {
                PgBackendMessage::DataRow => {
                    let v =
                        crate::results::data_row_values(&frame.raw).map_err(|e| e.to_string())?;
                    let n = v
                        .first()
                        .cloned()
                        .flatten()
                        .and_then(|b| String::from_utf8_lossy(&b).parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    counts.push(n);
                }
                PgBackendMessage::ErrorResponse { message, .. } => return Err(message),
                _ => {}
            }
        }
        for (name, count) in names.iter().zip(counts) {
            if count > 1 {
                return Err(format!(
                    "`{name}` names {count} tables or views in different schemas (or a temporary table), and the gateway cannot tell which one the session's search_path picks; qualify it with its schema"
                ));
            }
        }
        Ok(())
    }

    /// The catalog connection, logged in on first use.
    async fn connection(&mut self, session: &ProxySession) -> Result<&mut BoxedStream, String> {
        if self.conn.is_none() {
            let mut c = connect_backend(&session.handle, session.backend_tls.as_ref()).await?;
            let target = &session.handle.target;
            let logged_in = login(
                &mut c,
                &target.user,
                &target.database,
                target.secret.as_ref(),
                &[],
            );
            timed(session, async {
                logged_in.await.map_err(|e| e.to_string())
            })
            .await?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no catalog connection".to_string())
    }

    /// Resolves what masking needs to know of a result's columns: their tables, and
    /// for columns of a table's row type (`SELECT u FROM users u`), that table.
    pub(crate) async fn resolve_fields(
        &mut self,
        fields: &[FieldDescription],
        session: &ProxySession,
    ) -> Result<(), String> {
        let mut unknown: Vec<u32> = fields
            .iter()
            .map(|f| f.type_oid)
            .filter(|o| *o >= FIRST_USER_OID && !self.types.contains_key(o))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            self.resolve_types(&unknown, session).await?;
        }
        let mut oids: Vec<u32> = fields.iter().map(|f| f.table_oid).collect();
        for f in fields {
            if let Some(UserType::Row(row)) = self.types.get(&f.type_oid) {
                oids.extend(row.iter().map(|(table, _, _)| *table));
            }
        }
        self.resolve(&oids, session).await
    }

    /// Which of `types` are tables' row types, and their fields.
    async fn resolve_types(&mut self, types: &[u32], session: &ProxySession) -> Result<(), String> {
        let conn = self.connection(session).await?;
        // Only numbers are interpolated.
        let list = types
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT t.oid::text, a.attrelid::text, a.attnum::text, a.atttypid::text, \
             t.typtype::text, t.typcategory::text, t.typbasetype::text \
             FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_attribute a \
             ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE t.oid IN ({list}) ORDER BY t.oid, a.attnum"
        );
        let mut q = BytesMut::new();
        crate::wire::put_frame(&mut q, b'Q', |b| crate::wire::put_cstr(b, sql.as_bytes()));
        let mut found: HashMap<u32, UserType> = HashMap::new();
        for frame in timed(session, exchange(conn, &q)).await? {
            match frame.message {
                PgBackendMessage::DataRow => {
                    let v =
                        crate::results::data_row_values(&frame.raw).map_err(|e| e.to_string())?;
                    let number = |i: usize| {
                        v.get(i)
                            .cloned()
                            .flatten()
                            .and_then(|b| String::from_utf8_lossy(&b).parse::<i64>().ok())
                    };
                    let text = |i: usize| {
                        v.get(i)
                            .cloned()
                            .flatten()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    };
                    let Some(ty) = number(0).and_then(|t| u32::try_from(t).ok()) else {
                        continue;
                    };
                    let kind = match (text(4).as_deref(), text(5).as_deref()) {
                        (Some("c"), _) => UserType::Row(Vec::new()),
                        (Some("e"), _) | (_, Some("S")) => UserType::Text,
                        (Some("d"), _) => number(6)
                            .and_then(|b| u32::try_from(b).ok())
                            .map_or(UserType::Other, UserType::Domain),
                        _ => UserType::Other,
                    };
                    let entry = found.entry(ty).or_insert(kind);
                    if let (UserType::Row(row), Some(table), Some(num), Some(attr_type)) =
                        (entry, number(1), number(2), number(3))
                        && let (Ok(table), Ok(num), Ok(attr_type)) = (
                            u32::try_from(table),
                            i16::try_from(num),
                            u32::try_from(attr_type),
                        )
                    {
                        row.push((table, num, attr_type));
                    }
                }
                PgBackendMessage::ErrorResponse { message, .. } => return Err(message),
                _ => {}
            }
        }
        for ty in types {
            self.types
                .insert(*ty, found.remove(ty).unwrap_or(UserType::Other));
        }
        Ok(())
    }

    /// Resolves table OIDs not seen before. An error ends the session: column rules
    /// that name tables must not silently stop applying.
    pub(crate) async fn resolve(
        &mut self,
        oids: &[u32],
        session: &ProxySession,
    ) -> Result<(), String> {
        let missing: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| *o != 0 && !self.names.contains_key(o))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let conn = self.connection(session).await?;
        let mut found = Vec::new();
        // Only numbers are interpolated.
        let list = missing
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT c.oid::text, n.nspname::text, c.relname::text, a.attnum::text, a.attname::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
             WHERE c.oid IN ({list})"
        );
        let mut q = BytesMut::new();
        crate::wire::put_frame(&mut q, b'Q', |b| crate::wire::put_cstr(b, sql.as_bytes()));
        for frame in timed(session, exchange(conn, &q)).await? {
            match frame.message {
                PgBackendMessage::DataRow => {
                    let v =
                        crate::results::data_row_values(&frame.raw).map_err(|e| e.to_string())?;
                    let text = |i: usize| {
                        v.get(i)
                            .cloned()
                            .flatten()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    };
                    if let (Some(oid), Some(schema), Some(table), Some(num), Some(col)) =
                        (text(0), text(1), text(2), text(3), text(4))
                        && let (Ok(oid), Ok(num)) = (oid.parse::<u32>(), num.parse::<i16>())
                    {
                        found.push((oid, schema, table, num, col));
                    }
                }
                PgBackendMessage::ErrorResponse { message, .. } => return Err(message),
                _ => {}
            }
        }
        for (oid, schema, table, num, col) in found {
            self.names.insert(oid, (schema, table));
            self.columns.insert((oid, num), col);
        }
        Ok(())
    }
}

/// Sends `request` on the catalog connection and reads the answer up to
/// `ReadyForQuery` (catalog answers are small).
async fn exchange(
    conn: &mut BoxedStream,
    request: &[u8],
) -> Result<Vec<crate::frontend::Frame<PgBackendMessage>>, String> {
    warden_net::write_flushed(conn, request)
        .await
        .map_err(|e| e.to_string())?;
    let decoder = BackendDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Some(f) => {
                let done = matches!(f.message, PgBackendMessage::ReadyForQuery { .. });
                frames.push(f);
                if done {
                    return Ok(frames);
                }
            }
            None => {
                if conn.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("catalog connection closed".into());
                }
            }
        }
    }
}

/// How each column's values are masked, given its plan, type and wire format (the
/// Bind's result formats override the described ones: a described statement says 0).
pub(crate) fn column_masking(
    described: &[DescribedColumn],
    formats: Option<&[i16]>,
) -> Vec<ColumnMasking> {
    described
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let format = match formats {
                Some([]) => 0,
                Some([one]) => *one,
                Some(many) => many.get(i).copied().unwrap_or(0),
                None => c.format,
            };
            if let Some(fields) = &c.fields {
                ColumnMasking::Composite {
                    fields: fields.clone(),
                    binary: format == 1,
                }
            } else if format == 1 && !is_text_type(c.type_oid) {
                ColumnMasking::Binary {
                    plan: c.plan,
                    oid: c.type_oid,
                }
            } else {
                ColumnMasking::Mask(c.plan)
            }
        })
        .collect()
}

/// PostgreSQL type OIDs as masking classes.
fn value_kind(oid: u32) -> ValueKind {
    match oid {
        16 => ValueKind::Boolean,
        20 | 21 | 23 | 26 | 700 | 701 | 790 | 1700 => ValueKind::Number,
        17 => ValueKind::Binary,
        1082 | 1083 | 1114 | 1184 | 1186 | 1266 => ValueKind::Temporal,
        2950 => ValueKind::Uuid,
        _ => ValueKind::Text,
    }
}

/// Types whose binary format is their text (so binary values can be masked as text).
pub(crate) fn is_text_type(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 19 | 114 | 142)
}

/// Bounds one exchange on the catalog connection by the session's login timeout: a
/// database that stops answering ends the session instead of holding it.
async fn timed<T>(
    session: &ProxySession,
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(session.timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the database did not answer the catalog query within {} s",
                session.timeout.as_secs()
            ))
        })
}
