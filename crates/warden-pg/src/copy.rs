//! `COPY ... TO STDOUT` under masking: which statements copy out, in which format,
//! and the rewriting of each copied row value by value.
//!
//! The server sends one row per `CopyData` message. A COPY's columns are found by
//! describing the equivalent `SELECT` on the catalog connection, so column rules
//! apply to copied data exactly as to query results. Text and CSV rows are masked;
//! binary COPY, or options this module does not understand, cannot be masked and the
//! proxy ends the session before any data leaves (fail closed).

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use warden_core::{ColumnPlan, Masked, Masker};

/// How a COPY's rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
    },
}

/// A `COPY ... TO STDOUT` statement as masking needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutPlan {
    /// Rows in `format`; `select` yields the same columns, to describe them.
    Maskable { select: String, format: CopyFormat },
    /// Binary format or options not understood: cannot be masked.
    Unmaskable(String),
}

/// A COPY statement between the client and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStatement {
    /// `COPY ... TO STDOUT`: rows flow to the client.
    Out(CopyOutPlan),
    /// `COPY ... FROM STDIN`: rows flow to the server.
    In,
}

/// The COPY statements in `sql` that move data over the connection, in order. SQL
/// that does not parse yields none; a COPY-out then finds no plan and the session
/// ends (fail closed).
pub fn copy_statements(sql: &str) -> Vec<CopyStatement> {
    // Most statements are not COPY: skip the parser for them.
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return Vec::new();
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Vec::new();
    };
    statements
        .iter()
        .filter_map(|s| match s {
            Statement::Copy {
                to: false,
                target: CopyTarget::Stdin,
                ..
            } => Some(CopyStatement::In),
            s => plan_for(s).map(CopyStatement::Out),
        })
        .collect()
}

/// The relations `select` names without a schema (lowercased as PostgreSQL folds
/// them). The catalog connection does not share the session's `search_path` or its
/// temporary tables, so each of these must name one relation only; `None` when the
/// statement does not parse.
pub fn unqualified_relations(select: &str) -> Option<Vec<String>> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, select).ok()?;
    // `TABLE name` names a relation the relation visitor does not see: such a
    // statement is not read (the COPY then fails closed).
    if statements.iter().any(has_table_form) {
        return None;
    }
    let mut names = Vec::new();
    let _ = sqlparser::ast::visit_relations(&statements, |name| {
        if let [part] = name.0.as_slice()
            && let Some(ident) = part.as_ident()
        {
            // PostgreSQL folds unquoted names to lower case in ASCII only, and
            // truncates names to 63 bytes.
            let mut value = if ident.quote_style.is_some() {
                ident.value.clone()
            } else {
                ident.value.to_ascii_lowercase()
            };
            while value.len() > 63 {
                value.pop();
            }
            if !names.contains(&value) {
                names.push(value);
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    Some(names)
}

/// Whether a statement holds a `TABLE name` query anywhere.
fn has_table_form(statement: &Statement) -> bool {
    use sqlparser::ast::{Query, SetExpr, Visit, Visitor};
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> std::ops::ControlFlow<()> {
            fn table(e: &SetExpr) -> bool {
                match e {
                    SetExpr::Table(_) => true,
                    SetExpr::SetOperation { left, right, .. } => table(left) || table(right),
                    SetExpr::Query(q) => table(&q.body),
                    _ => false,
                }
            }
            if table(&query.body) {
                self.0 = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(false);
    let _ = statement.visit(&mut finder);
    finder.0
}

/// The COPY-out statements in `sql`, in order.
pub fn copy_out_plans(sql: &str) -> Vec<CopyOutPlan> {
    copy_statements(sql)
        .into_iter()
        .filter_map(|c| match c {
            CopyStatement::Out(p) => Some(p),
            CopyStatement::In => None,
        })
        .collect()
}

fn ascii(c: char, what: &str) -> Result<u8, String> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| format!("a non-ASCII {what} character"))
}

fn plan_for(statement: &Statement) -> Option<CopyOutPlan> {
    let Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return None;
    };
    let select = match source {
        CopySource::Query(q) => q.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } if columns.is_empty() => format!("SELECT * FROM {table_name}"),
        CopySource::Table {
            table_name,
            columns,
        } => format!(
            "SELECT {} FROM {table_name}",
            columns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Some(match format(options, legacy_options) {
        Ok(format) => CopyOutPlan::Maskable { select, format },
        Err(why) => CopyOutPlan::Unmaskable(why),
    })
}

fn format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat, String> {
    let mut csv = false;
    let mut delimiter = None;
    let mut null = None;
    let mut quote = b'"';
    let mut escape = None;
    let mut header = false;
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "text" => csv = false,
                "csv" => csv = true,
                other => return Err(format!("COPY format {other}")),
            },
            CopyOption::Delimiter(c) => delimiter = Some(ascii(*c, "delimiter")?),
            CopyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = ascii(*c, "quote")?,
            CopyOption::Escape(c) => escape = Some(ascii(*c, "escape")?),
            // Quoting choices change how values are written, not which.
            CopyOption::ForceQuote(_)
            | CopyOption::ForceNotNull(_)
            | CopyOption::ForceNull(_)
            | CopyOption::Freeze(_) => {}
            other => return Err(format!("COPY option {other}")),
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                for c in csv_options {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = ascii(*q, "quote")?,
                        CopyLegacyCsvOption::Escape(e) => escape = Some(ascii(*e, "escape")?),
                        CopyLegacyCsvOption::ForceQuote(_)
                        | CopyLegacyCsvOption::ForceNotNull(_) => {}
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(ascii(*c, "delimiter")?),
            CopyLegacyOption::Null(s) => null = Some(s.as_bytes().to_vec()),
            CopyLegacyOption::Binary => return Err("binary COPY".into()),
            other => return Err(format!("COPY option {other}")),
        }
    }
    Ok(if csv {
        CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        }
    } else {
        CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
            null: null.unwrap_or_else(|| b"\\N".to_vec()),
        }
    })
}

/// Masks one copied row (the payload of one `CopyData`, ending in a newline) with one
/// plan per column. Returns `None` when nothing changed, an error when the row cannot
/// be read as `format` (the caller ends the session).
pub fn mask_copy_row(
    row: &[u8],
    format: &CopyFormat,
    plans: &[ColumnPlan],
    masker: &dyn Masker,
) -> Result<Option<Vec<u8>>, String> {
    let body = row
        .strip_suffix(b"\n")
        .ok_or("a copied row does not end with a newline")?;
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let fields = match format {
        CopyFormat::Text { delimiter, null } => split_text(body, *delimiter, null)?,
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            ..
        } => split_csv(body, *delimiter, *quote, *escape, null)?,
    };
    if fields.len() != plans.len() {
        return Err(format!(
            "a copied row has {} fields for {} columns",
            fields.len(),
            plans.len()
        ));
    }
    let mut changed = false;
    let mut masked: Vec<Option<Vec<u8>>> = Vec::with_capacity(fields.len());
    for (value, plan) in fields.into_iter().zip(plans) {
        masked.push(match value {
            None => None,
            Some(v) => match masker.mask(*plan, &v) {
                Masked::Unchanged => Some(v),
                Masked::Replaced(r) => {
                    changed = true;
                    Some(r)
                }
                Masked::Null => {
                    changed = true;
                    None
                }
            },
        });
    }
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(row.len() + 16);
    for (i, v) in masked.iter().enumerate() {
        match format {
            CopyFormat::Text { delimiter, null } => {
                if i > 0 {
                    out.push(*delimiter);
                }
                match v {
                    None => out.extend_from_slice(null),
                    Some(v) => escape_text(v, *delimiter, &mut out),
                }
            }
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => {
                if i > 0 {
                    out.push(*delimiter);
                }
                match v {
                    None => out.extend_from_slice(null),
                    // Quoted, so a value is never read back as the null string.
                    Some(v) => {
                        out.push(*quote);
                        for b in v {
                            if *b == *quote || *b == *escape {
                                out.push(*escape);
                            }
                            out.push(*b);
                        }
                        out.push(*quote);
                    }
                }
            }
        }
    }
    out.push(b'\n');
    Ok(Some(out))
}

/// Text format: fields split on the delimiter, backslash escapes decoded.
fn split_text(body: &[u8], delimiter: u8, null: &[u8]) -> Result<Vec<Option<Vec<u8>>>, String> {
    let mut fields = Vec::new();
    for raw in body.split(|b| *b == delimiter) {
        if raw == null {
            fields.push(None);
            continue;
        }
        let mut v = Vec::with_capacity(raw.len());
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            i += 1;
            if b != b'\\' {
                v.push(b);
                continue;
            }
            let Some(&e) = raw.get(i) else {
                return Err("a copied value ends in a lone backslash".into());
            };
            i += 1;
            match e {
                b'n' => v.push(b'\n'),
                b'r' => v.push(b'\r'),
                b't' => v.push(b'\t'),
                b'b' => v.push(8),
                b'f' => v.push(12),
                b'v' => v.push(11),
                b'0'..=b'7' => {
                    let mut n = u32::from(e - b'0');
                    for _ in 0..2 {
                        match raw.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                n = n * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    v.push(u8::try_from(n & 0xff).unwrap_or(0));
                }
                b'x' => {
                    let mut n = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                n = n * 16 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    if digits == 0 {
                        v.push(b'x');
                    } else {
                        v.push(u8::try_from(n).unwrap_or(0));
                    }
                }
                other => v.push(other),
            }
        }
        fields.push(Some(v));
    }
    Ok(fields)
}

fn escape_text(v: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' if delimiter == b'\t' => out.extend_from_slice(b"\\t"),
            b if b == delimiter => {
                out.push(b'\\');
                out.push(b);
            }
            b => out.push(b),
        }
    }
}

/// CSV: quoted or bare fields; an unquoted field equal to the null string is NULL.
fn split_csv(
    body: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if body.get(i) == Some(&quote) {
            i += 1;
            let mut v = Vec::new();
            loop {
                match body.get(i) {
                    None => return Err("a quoted CSV value is not closed".into()),
                    Some(&b)
                        if b == escape && body.get(i + 1) == Some(&quote) && escape != quote =>
                    {
                        v.push(quote);
                        i += 2;
                    }
                    Some(&b)
                        if b == escape && escape != quote && body.get(i + 1) == Some(&escape) =>
                    {
                        v.push(escape);
                        i += 2;
                    }
                    Some(&b) if b == quote => {
                        if escape == quote && body.get(i + 1) == Some(&quote) {
                            v.push(quote);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&b) => {
                        v.push(b);
                        i += 1;
                    }
                }
            }
            fields.push(Some(v));
        } else {
            let end = body[i..]
                .iter()
                .position(|b| *b == delimiter)
                .map_or(body.len(), |p| i + p);
            let raw = &body[i..end];
            fields.push(if raw == null {
                None
            } else {
                Some(raw.to_vec())
            });
            i = end;
        }
        match body.get(i) {
            None => return Ok(fields),
            Some(&b) if b == delimiter => i += 1,
            Some(_) => return Err("unexpected data after a quoted CSV value".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Emails;
    impl Masker for Emails {
        fn plan(&self, _c: &warden_core::ColumnRef<'_>) -> ColumnPlan {
            ColumnPlan::Detect
        }
        fn mask(&self, plan: ColumnPlan, v: &[u8]) -> Masked {
            if matches!(plan, ColumnPlan::Skip) {
                return Masked::Unchanged;
            }
            if v.contains(&b'@') {
                Masked::Replaced(b"[redacted:email]".to_vec())
            } else {
                Masked::Unchanged
            }
        }
        fn is_active(&self) -> bool {
            true
        }
    }

    const D: ColumnPlan = ColumnPlan::Detect;

    #[test]
    fn plans_name_the_columns_and_format() {
        let p = copy_out_plans(
            "COPY people (name, email) TO STDOUT WITH (FORMAT csv, HEADER); COPY x FROM STDIN",
        );
        assert_eq!(
            p,
            [CopyOutPlan::Maskable {
                select: "SELECT name, email FROM people".into(),
                format: CopyFormat::Csv {
                    delimiter: b',',
                    quote: b'"',
                    escape: b'"',
                    null: vec![],
                    header: true
                }
            }]
        );
        let p = copy_out_plans("copy (select email from people where id > 3) to stdout");
        assert!(
            matches!(&p[0], CopyOutPlan::Maskable { select, format: CopyFormat::Text { .. } }
                if select.contains("WHERE id > 3"))
        );
        assert!(matches!(
            copy_out_plans("COPY t TO STDOUT (FORMAT binary)")[0],
            CopyOutPlan::Unmaskable(_)
        ));
        assert!(matches!(
            copy_out_plans("COPY t TO STDOUT BINARY")[0],
            CopyOutPlan::Unmaskable(_)
        ));
        assert!(copy_out_plans("COPY t TO '/tmp/x'").is_empty());
        assert_eq!(
            copy_statements("copy t from stdin; select 1"),
            [CopyStatement::In]
        );
    }

    #[test]
    fn text_rows_are_masked_with_escapes_kept() {
        let f = CopyFormat::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
        };
        let row = b"1\ta\\tb@x.io\t\\N\tplain\\\\text\n";
        let out = mask_copy_row(row, &f, &[D, D, D, D], &Emails)
            .unwrap()
            .unwrap();
        assert_eq!(out, b"1\t[redacted:email]\t\\N\tplain\\\\text\n");
        assert_eq!(
            mask_copy_row(b"1\t2\n", &f, &[D, D], &Emails).unwrap(),
            None
        );
        assert!(mask_copy_row(b"1\t2", &f, &[D, D], &Emails).is_err());
        assert!(mask_copy_row(b"1\n", &f, &[D, D], &Emails).is_err());
    }

    #[test]
    fn csv_rows_are_masked_and_requoted() {
        let f = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: vec![],
            header: false,
        };
        let row = b"1,\"has \"\"quotes\"\", a@b.io\",,x\n";
        let out = mask_copy_row(row, &f, &[D, D, D, D], &Emails)
            .unwrap()
            .unwrap();
        assert_eq!(out, b"\"1\",\"[redacted:email]\",,\"x\"\n");
        assert!(mask_copy_row(b"\"open,1\n", &f, &[D, D], &Emails).is_err());
    }
}
