//! How the server reads a query text where the parser could read it otherwise:
//! versioned MySQL executable comments (every reading), the forms refused because
//! the two readings differ, and the session settings that change how the server
//! reads quotes (`sql_mode`, client character sets), which are decided as opaque.

use sqlparser::ast::{Expr, ObjectName, Set, Statement};

use crate::sql::{SqlDialect, SqlParseError, mariadb_executable_comments, name_of, parse};

/// Most versioned executable comments in one text (each is read both ways: 2^n
/// readings).
const MAX_VERSIONED_COMMENTS: usize = 4;

/// Every way the server may read `sql`'s versioned executable comments, parsed. A
/// `/*!NNNNN ... */` (MariaDB also `/*M!NNNNNN ... */`) is code only on some server
/// versions — MySQL compares five digits with its version, MariaDB compares `/*!`
/// with a MySQL-compatible version and `/*M!` with its own — and the gateway does not
/// know the server's exact version, so each such comment is read both as code and as
/// a comment, in every combination, and the text is decided on all readings
/// together. Markers inside strings or quoted names, and versions of other than five
/// or six digits (which the server and the parser split differently), are refused.
pub(crate) fn parse_readings(
    d: SqlDialect,
    sql: &str,
) -> Result<Vec<Vec<Statement>>, SqlParseError> {
    if !d.is_mysql_family() || !sql.contains("/*") {
        return Ok(vec![parse(d, sql)?]);
    }
    let text = match d {
        SqlDialect::Mariadb => mariadb_executable_comments(sql),
        _ => sql.to_string(),
    };
    let refuse = |why: &str| Err(SqlParseError(why.to_string()));
    // Which bytes are code, as the server reads them by default (backslashes escape).
    let Some(code) = crate::forms::code_bytes(d, text.as_bytes()) else {
        return refuse("an unterminated string");
    };
    // (start, end) of each versioned comment.
    let mut versioned = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("/*!").map(|i| from + i) {
        if !code[at] {
            return refuse("an executable comment marker inside a string or quoted name");
        }
        let digits = text[at + 3..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let Some(end) = text[at + 3..].find("*/").map(|i| at + 3 + i + 2) else {
            break;
        };
        match digits {
            0 => {}
            5 | 6 => versioned.push((at, end)),
            _ => return refuse("an executable comment version of other than five or six digits"),
        }
        from = end;
    }
    if versioned.len() > MAX_VERSIONED_COMMENTS {
        return refuse("more than four versioned executable comments");
    }
    let mut readings = Vec::with_capacity(1 << versioned.len());
    for on in 0..(1u32 << versioned.len()) {
        let mut reading = text.clone().into_bytes();
        for (n, (start, end)) in versioned.iter().enumerate() {
            if on & (1 << n) == 0 {
                reading[*start..*end].fill(b' ');
            }
        }
        let reading = String::from_utf8(reading)
            .map_err(|_| SqlParseError("an executable comment splits a character".into()))?;
        readings.push(parse(d, &reading)?);
    }
    Ok(readings)
}

/// Why the server could read `sql` otherwise than the parser does, for the forms
/// where the two are known to differ; such texts are refused, not guessed.
pub(crate) fn read_differently(d: SqlDialect, sql: &str) -> Option<&'static str> {
    // Runs on every statement the parser reads: searched in place, no copy.
    let has = |needle: &[u8]| {
        sql.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if d == SqlDialect::Postgres {
        // PostgreSQL ends a `--` comment at a carriage return as well as a line feed.
        let lone_cr = sql
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\r' && w[1] != b'\n')
            || sql.ends_with('\r');
        if lone_cr && sql.contains("--") {
            return Some("a carriage return in a `--` comment");
        }
        if has(b"u&\"") {
            return Some("a `U&\"...\"` name with escapes");
        }
        if crate::forms::non_ascii_dollar_tag(sql) {
            return Some("a dollar quote whose tag is not ASCII");
        }
    } else {
        // MySQL's `-- ` needs an ASCII space or control character after it; the
        // parser also takes other white space.
        let odd_comment = sql.match_indices("--").any(|(at, _)| {
            sql[at + 2..]
                .chars()
                .next()
                .is_some_and(|c| c.is_whitespace() && !c.is_ascii())
        });
        if odd_comment {
            return Some("`--` followed by non-ASCII white space");
        }
        // Inside an executable comment, `#` and `--` run to the line's end past its
        // `*/` for the server.
        let executable = has(b"/*!") || has(b"/*m!");
        if executable && (sql.contains('#') || sql.contains("--")) {
            return Some("a comment inside an executable comment");
        }
    }
    None
}

/// Client character sets and encodings in which no multi-byte character contains an
/// ASCII byte: in the others (SJIS, BIG5, GBK, GB18030, UHC, JOHAB, cp932, ...) a
/// character can end in `\` or `'`, so the server reads quotes where the gateway,
/// reading UTF-8, does not.
const QUOTE_SAFE_ENCODINGS: &[&str] = &[
    "utf8",
    "utf8mb3",
    "utf8mb4",
    "unicode",
    "sqlascii",
    "ascii",
    "binary",
    "latin1",
    "latin2",
    "latin3",
    "latin4",
    "latin5",
    "latin6",
    "latin7",
    "latin8",
    "latin9",
    "latin10",
    "win866",
    "win874",
    "win1250",
    "win1251",
    "win1252",
    "win1253",
    "win1254",
    "win1255",
    "win1256",
    "win1257",
    "win1258",
    "cp1250",
    "cp1251",
    "cp1252",
    "cp1256",
    "cp1257",
    "cp850",
    "cp852",
    "cp866",
    "koi8r",
    "koi8u",
    "iso88595",
    "iso88596",
    "iso88597",
    "iso88598",
    "eucjp",
    "euccn",
    "euckr",
    "euctw",
    "eucjis2004",
    "ujis",
    "eucjpms",
    "gb2312",
    "euckr",
    "greek",
    "hebrew",
    "armscii8",
    "geostd8",
    "keybcs2",
    "macce",
    "macroman",
    "swe7",
    "dec8",
    "hp8",
    "tis620",
];

/// Whether a statement sets the client's character set or encoding (PostgreSQL
/// `SET client_encoding`, `SET NAMES`; MySQL `SET NAMES`, `character_set_client`) to
/// anything but a plain name from [`QUOTE_SAFE_ENCODINGS`].
pub(crate) fn sets_client_encoding(s: &Statement) -> bool {
    let safe = |name: &str| {
        let plain: String = name
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .collect::<String>()
            .to_ascii_lowercase();
        QUOTE_SAFE_ENCODINGS.contains(&plain.as_str())
    };
    let is_encoding = |n: &ObjectName| {
        let name = name_of(n);
        let last = name
            .rsplit('.')
            .next()
            .unwrap_or(&name)
            .trim_start_matches('@');
        matches!(
            last,
            "client_encoding"
                | "names"
                | "character_set_client"
                | "character_set_connection"
                | "charset"
        )
    };
    let unsafe_value = |value: &Expr| match value {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(m)
            | sqlparser::ast::Value::DoubleQuotedString(m) => !safe(m),
            _ => true,
        },
        Expr::Identifier(i) => !safe(&i.value),
        _ => true,
    };
    match s {
        Statement::Set(Set::SetNames { charset_name, .. }) => !safe(&charset_name.value),
        _ => assigns(s, is_encoding, unsafe_value),
    }
}

/// Whether `s` is a SET that gives a setting `is_setting` names a value `flagged`
/// flags (a parenthesized assignment's values are not told apart: any counts).
fn assigns(
    s: &Statement,
    is_setting: impl Fn(&ObjectName) -> bool,
    flagged: impl Fn(&Expr) -> bool,
) -> bool {
    match s {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => is_setting(variable) && values.iter().any(flagged),
        Statement::Set(Set::MultipleAssignments { assignments }) => assignments
            .iter()
            .any(|a| is_setting(&a.name) && flagged(&a.value)),
        Statement::Set(Set::ParenthesizedAssignments { variables, .. }) => {
            variables.iter().any(is_setting)
        }
        _ => false,
    }
}

/// Whether a statement sets MySQL's `sql_mode` to something that changes how the
/// server reads quotes (`NO_BACKSLASH_ESCAPES`) or identifiers (`ANSI_QUOTES`), or
/// to anything but a plain string (which could compute either). Frameworks that
/// set a strict mode with a literal list are not affected.
pub(crate) fn sets_sql_mode(s: &Statement) -> bool {
    let is_mode = |n: &ObjectName| {
        name_of(n)
            .rsplit('.')
            .next()
            .map(|v| v.trim_start_matches('@'))
            == Some("sql_mode")
    };
    let changes_reading = |value: &Expr| match value {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(m)
            | sqlparser::ast::Value::DoubleQuotedString(m) => {
                let m = m.to_ascii_lowercase();
                // The combined modes that include ANSI_QUOTES too (MariaDB).
                [
                    "no_backslash_escapes",
                    "ansi",
                    "db2",
                    "maxdb",
                    "mssql",
                    "oracle",
                    "postgresql",
                ]
                .iter()
                .any(|mode| m.contains(mode))
                    || !m.is_ascii()
            }
            _ => true,
        },
        _ => true,
    };
    assigns(s, is_mode, changes_reading)
}
