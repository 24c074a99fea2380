//! Statement forms the SQL parser does not know, recognized whole: PostgreSQL
//! `ALTER SYSTEM`, `DO`, and the cursor forms `FETCH`/`MOVE` it cannot parse; MySQL
//! `SET PASSWORD [FOR ...]` and `SET PERSIST[_ONLY]`. A form is recognized only when
//! the text holds that one statement, as the server's lexer reads it (strings,
//! quoted names, comments; plain strings read both with and without backslash
//! escapes, since a session setting decides which). Anything else goes to the
//! parser, and what it cannot parse is refused by the fail-closed default.

use warden_core::SqlDialect;

use crate::sql::SqlKind;

/// A statement the parser does not know: its kind, and whether its effect is
/// opaque (code or server settings Warden cannot check further), in which case
/// only a rule that names its kind, or a relaxed `unparsable_sql`, lets it run.
pub(crate) struct Form {
    pub(crate) kind: SqlKind,
    pub(crate) opaque: bool,
}

/// The form `sql` is, when it is one statement of a known form.
pub(crate) fn recognize(d: SqlDialect, sql: &str) -> Option<Form> {
    let words = leading_words(d, sql, 2);
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let form = match (d, w.as_slice()) {
        (SqlDialect::Postgres, ["alter", "system", ..]) => Form {
            kind: SqlKind::AlterSystem,
            opaque: true,
        },
        (SqlDialect::Postgres, ["do", ..]) => Form {
            kind: SqlKind::Do,
            opaque: true,
        },
        (SqlDialect::Postgres, ["fetch" | "move", ..]) => Form {
            kind: SqlKind::Session,
            opaque: false,
        },
        (_, ["set", "password", ..]) if d.is_mysql_family() => Form {
            kind: SqlKind::AlterRole,
            opaque: true,
        },
        (_, ["set", "persist" | "persist_only", ..]) if d.is_mysql_family() => Form {
            kind: SqlKind::SetGlobal,
            opaque: true,
        },
        _ => return None,
    };
    single_statement(d, sql).then_some(form)
}

/// The first `n` words of `sql`, lowercased, comments and white space skipped.
fn leading_words(d: SqlDialect, sql: &str, n: usize) -> Vec<String> {
    let b = sql.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    while i < b.len() && words.len() < n {
        if let Some(end) = comment_end(d, b, i) {
            i = end;
        } else if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let end = b[i..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map_or(b.len(), |n| i + n);
            words.push(String::from_utf8_lossy(&b[i..end]).to_ascii_lowercase());
            i = end;
        } else if b[i].is_ascii_whitespace() || b[i] == 0x0b {
            i += 1;
        } else {
            break;
        }
    }
    words
}

/// Where a comment starting at `i` ends, if one starts there. MySQL's executable
/// comments (`/*!`, `/*M!`) are code, not comments: `None`.
fn comment_end(d: SqlDialect, b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i..];
    let line = rest.starts_with(b"--")
        && (d == SqlDialect::Postgres || rest.get(2).is_none_or(|c| c.is_ascii_whitespace()));
    if line || (d.is_mysql_family() && rest.starts_with(b"#")) {
        return Some(
            rest.iter()
                .position(|c| *c == b'\n')
                .map_or(b.len(), |n| i + n),
        );
    }
    if !rest.starts_with(b"/*") {
        return None;
    }
    if d.is_mysql_family() && (rest.starts_with(b"/*!") || rest[2..].starts_with(b"M!")) {
        return None;
    }
    let nested = d == SqlDialect::Postgres;
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        if b[j..].starts_with(b"/*") && (nested || depth == 0) {
            depth += 1;
            j += 2;
        } else if b[j..].starts_with(b"*/") {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return Some(j);
            }
        } else {
            j += 1;
        }
    }
    Some(b.len())
}

/// Whether `sql` holds one statement: nothing but white space, comments and `;`
/// after its first top-level `;`, under both readings of backslashes. Executable
/// MySQL comments and unterminated quotes make it not one statement.
fn single_statement(d: SqlDialect, sql: &str) -> bool {
    let b = sql.as_bytes();
    [false, true]
        .into_iter()
        .all(|backslash| match first_end(d, b, backslash) {
            Reading::Whole => true,
            Reading::EndsAt(end) => rest_is_empty(d, &b[end..]),
            Reading::Unreadable => false,
        })
}

/// How the text reads up to its first top-level `;`.
enum Reading {
    /// No `;` outside quotes and comments.
    Whole,
    /// The first statement ends before this offset.
    EndsAt(usize),
    /// An executable comment or an unterminated quote.
    Unreadable,
}

fn first_end(d: SqlDialect, b: &[u8], backslash: bool) -> Reading {
    let mysql = d.is_mysql_family();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = comment_end(d, b, i) {
            i = end;
            continue;
        }
        let next = match b[i] {
            b';' => return Reading::EndsAt(i + 1),
            b'/' if mysql && b[i..].starts_with(b"/*") => return Reading::Unreadable,
            b'\'' => quoted_end(b, i, backslash),
            b'"' => quoted_end(b, i, mysql && backslash),
            b'`' if mysql => quoted_end(b, i, false),
            b'E' | b'e' if !mysql && !ident_before(b, i) && b.get(i + 1) == Some(&b'\'') => {
                quoted_end(b, i + 1, true)
            }
            b'$' if !mysql && !ident_before(b, i) => Some(dollar_end(b, i)),
            _ => Some(i + 1),
        };
        match next {
            Some(n) => i = n,
            None => return Reading::Unreadable,
        }
    }
    Reading::Whole
}

/// Whether `sql` reads the same whether or not backslashes escape quotes in plain
/// strings: which bytes are code (outside strings and comments) must not depend on
/// it. The server's reading follows a session setting (PostgreSQL
/// `standard_conforming_strings`, MySQL `NO_BACKSLASH_ESCAPES`) Warden does not
/// track, so a text that depends on it is refused rather than guessed.
pub(crate) fn reads_the_same(d: SqlDialect, sql: &str) -> bool {
    let b = sql.as_bytes();
    if !b.contains(&b'\\') {
        return true;
    }
    code_map(d, b, false) == code_map(d, b, true)
}

/// For each byte, whether it is code (outside strings, quoted names and comments;
/// executable comments are code) as the server reads it by default; `None` when a
/// quote is never closed.
pub(crate) fn code_bytes(d: SqlDialect, b: &[u8]) -> Option<Vec<bool>> {
    code_map(d, b, d.is_mysql_family())
}

/// For each byte, whether it is code; `None` when a quote is never closed.
fn code_map(d: SqlDialect, b: &[u8], backslash: bool) -> Option<Vec<bool>> {
    let mysql = d.is_mysql_family();
    let mut code = vec![true; b.len()];
    let mut i = 0;
    while i < b.len() {
        let end = if let Some(end) = comment_end(d, b, i) {
            end
        } else {
            match b[i] {
                b'\'' => quoted_end(b, i, backslash)?,
                b'"' => quoted_end(b, i, mysql && backslash)?,
                b'`' if mysql => quoted_end(b, i, false)?,
                b'E' | b'e' if !mysql && !ident_before(b, i) && b.get(i + 1) == Some(&b'\'') => {
                    quoted_end(b, i + 1, true)?
                }
                b'$' if !mysql && !ident_before(b, i) => dollar_end(b, i),
                _ => {
                    i += 1;
                    continue;
                }
            }
        };
        for c in &mut code[i..end.min(b.len())] {
            *c = false;
        }
        i = end.max(i + 1);
    }
    Some(code)
}

/// Whether only white space, comments and `;` remain.
fn rest_is_empty(d: SqlDialect, b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = comment_end(d, b, i) {
            i = end;
        } else if b[i].is_ascii_whitespace() || b[i] == 0x0b || b[i] == b';' {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Whether the byte before `i` continues a name: then an `E` there is part of the
/// name, not an escape string's prefix (`name'x'` is a typed literal), and a `$` does
/// not open a dollar quote (`a$b$`).
fn ident_before(b: &[u8], i: usize) -> bool {
    i.checked_sub(1)
        .and_then(|p| b.get(p))
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || *c >= 0x80)
}

/// Whether a PostgreSQL dollar quote's tag has a non-ASCII byte: the server takes
/// any such byte in a tag, the parser does not, so the two would disagree on where
/// the string ends.
pub(crate) fn non_ascii_dollar_tag(sql: &str) -> bool {
    let b = sql.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'$'
            && !ident_before(b, i)
            && dollar_tag(b, i).is_some_and(|tag| tag.iter().any(|c| *c >= 0x80))
    })
}

/// Past the quote closing the one at `i` (the quote doubled is the quote itself);
/// `None` when it is never closed.
fn quoted_end(b: &[u8], i: usize, backslash: bool) -> Option<usize> {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if backslash => j += 2,
            c if c == quote && b.get(j + 1) == Some(&quote) => j += 2,
            c if c == quote => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Past a dollar-quoted string opening at `i` (or just past the `$` when none
/// opens there: a parameter like `$1`).
fn dollar_end(b: &[u8], i: usize) -> usize {
    let Some(tag) = dollar_tag(b, i) else {
        return i + 1;
    };
    let open = tag.len() + 2;
    let mut j = i + open;
    while j + open <= b.len() {
        if b[j] == b'$' && &b[j + 1..j + 1 + tag.len()] == tag && b[j + 1 + tag.len()] == b'$' {
            return j + open;
        }
        j += 1;
    }
    b.len()
}

/// The tag of the dollar quote whose opening `$` is at `i` (what lies between its two
/// `$`, possibly nothing), when one opens there as PostgreSQL reads tags: letters,
/// `_`, any non-ASCII byte, and digits after the first.
fn dollar_tag(b: &[u8], i: usize) -> Option<&[u8]> {
    let rest = &b[i + 1..];
    let tag = &rest[..rest.iter().position(|c| *c == b'$')?];
    tag.iter()
        .enumerate()
        .all(|(n, c)| {
            c.is_ascii_alphabetic() || *c == b'_' || *c >= 0x80 || (n > 0 && c.is_ascii_digit())
        })
        .then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(d: SqlDialect, sql: &str) -> Option<SqlKind> {
        recognize(d, sql).map(|f| f.kind)
    }

    #[test]
    fn forms_are_recognized_only_whole() {
        let pg = SqlDialect::Postgres;
        let my = SqlDialect::Mysql;
        assert_eq!(
            kind(pg, "ALTER SYSTEM SET work_mem = '1GB'"),
            Some(SqlKind::AlterSystem)
        );
        assert_eq!(
            kind(pg, "/* x */ alter  system reset all;"),
            Some(SqlKind::AlterSystem)
        );
        assert_eq!(kind(pg, "DO $$ BEGIN PERFORM 1; END $$"), Some(SqlKind::Do));
        assert_eq!(
            kind(pg, "DO LANGUAGE plpgsql 'BEGIN NULL; END'"),
            Some(SqlKind::Do)
        );
        assert_eq!(kind(pg, "FETCH ALL c"), Some(SqlKind::Session));
        assert_eq!(kind(pg, "fetch 10 c;"), Some(SqlKind::Session));
        assert_eq!(kind(pg, "MOVE NEXT c"), Some(SqlKind::Session));
        assert_eq!(
            kind(my, "SET PASSWORD FOR 'bob'@'%' = 'x'"),
            Some(SqlKind::AlterRole)
        );
        assert_eq!(
            kind(my, "set password = password('x')"),
            Some(SqlKind::AlterRole)
        );
        assert_eq!(
            kind(my, "SET PERSIST max_connections = 10"),
            Some(SqlKind::SetGlobal)
        );
        assert_eq!(
            kind(SqlDialect::Mariadb, "SET PERSIST_ONLY x = 1"),
            Some(SqlKind::SetGlobal)
        );
        // Another statement after it: not this form (the parser decides, and fails).
        for sql in [
            "FETCH ALL c; DROP TABLE t",
            "DO $$ BEGIN END $$; DROP TABLE t",
            "DO 'x'; DROP TABLE t",
            // A backslash that ends the string only with backslash escapes.
            "DO 'a\\'; DROP TABLE t; --'",
            "ALTER SYSTEM SET x = 'y'; DROP TABLE t",
            "FETCH ALL c /* */ ; SELECT 1",
        ] {
            assert_eq!(kind(pg, sql), None, "{sql}");
        }
        for sql in [
            "SET PASSWORD FOR 'a' = 'x'; DROP TABLE t",
            "SET PASSWORD = 'a\\'; DROP TABLE t; #'",
            "SET PERSIST x = 1 /*! ; DROP TABLE t */",
            "SET PASSWORD = 'x' # ; DROP\n; DROP TABLE t",
        ] {
            assert_eq!(kind(my, sql), None, "{sql}");
        }
        // Text that reads differently with and without backslash escapes.
        assert!(!reads_the_same(
            pg,
            "SELECT 'a\\', $$' ; DROP TABLE t; -- $$"
        ));
        assert!(!reads_the_same(pg, "SELECT 'a\\' -- ', (SELECT 1)"));
        assert!(reads_the_same(pg, "SELECT 'a\\b', E'\\n'"));
        assert!(reads_the_same(my, "SELECT 'no backslash'"));
        // Only PostgreSQL's forms in PostgreSQL, MySQL's in MySQL.
        assert_eq!(kind(my, "DO 1"), None);
        assert_eq!(kind(pg, "SET PASSWORD = 'x'"), None);
    }
}
