//! Statement shapes: the key of the guardrails' decision cache.
//!
//! Applications send the same statements again and again with other numbers in them
//! (`... WHERE aid = 48213`). A shape is the query text with each plain integer
//! literal blanked out, so those repeats can reuse one decision instead of parsing
//! each text again. It is only sound when the blanked digits cannot change what the
//! guardrails conclude, so a text gets a shape only when all of this holds:
//!
//! - It has none of the characters whose reading varies between the server, the
//!   parser and the gateway's own lexers (`$` quoting, `\` escapes, comments `/*`,
//!   `--`, `#`; carriage returns; control characters), and is at most
//!   [`MAX_SHAPED_BYTES`] long. Everything outside the blanked digits must match
//!   byte for byte, so two texts of one shape tokenize alike except those numbers.
//! - Only tokens the SQL tokenizer itself reads as integers of at most
//!   [`MAX_DIGITS`] digits are blanked: such a value can never overflow a parser
//!   field, so the parse takes the same path whatever the digits.
//! - The decision is only cached when the parse of the first text made every blanked
//!   number a literal value in the syntax tree (not part of a name, a placeholder or
//!   a type) — checked by [`crate::sql::analyze_shaped`] — and the guardrails read no
//!   literal number's value.

use sqlparser::tokenizer::{Location, Token, Tokenizer};
use warden_core::SqlDialect;

/// Longest text given a shape; longer ones are parsed every time.
pub const MAX_SHAPED_BYTES: usize = 4096;

/// Most digits a blanked integer has (any value fits a 32-bit field).
const MAX_DIGITS: usize = 9;

/// What stands for a blanked integer in a shape; a text containing it has no shape.
const BLANK: char = '\u{1}';

/// A text's shape and where its blanked integers start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) key: String,
    /// Each blanked integer's start, as the parser's spans give it.
    pub(crate) literals: Vec<Location>,
}

/// The shape of `text`, when it can have one (see the module documentation).
pub(crate) fn shape(d: SqlDialect, text: &str) -> Option<Shape> {
    if text.len() > MAX_SHAPED_BYTES
        || text
            .chars()
            .any(|c| matches!(c, '$' | '\\' | '#') || (c.is_control() && c != '\n' && c != '\t'))
        || text.contains("/*")
        || text.contains("--")
    {
        return None;
    }
    let dialect = crate::sql::dialect(d);
    let tokens = Tokenizer::new(dialect.as_ref(), text)
        .tokenize_with_location()
        .ok()?;
    let mut key = String::with_capacity(text.len() + 2);
    key.push(match d {
        SqlDialect::Postgres => 'p',
        SqlDialect::Mysql => 'm',
        SqlDialect::Mariadb => 'a',
    });
    let mut literals = Vec::new();
    // A cursor walking the text as the tokenizer counts: lines from `\n`, columns in
    // characters, both from 1.
    let (mut at, mut line, mut column) = (0usize, 1u64, 1u64);
    let mut copied = 0usize;
    for token in &tokens {
        let Token::Number(digits, false) = &token.token else {
            continue;
        };
        if digits.is_empty()
            || digits.len() > MAX_DIGITS
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let start = token.span.start;
        while (line, column) < (start.line, start.column) {
            let c = text[at..].chars().next()?;
            at += c.len_utf8();
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        // The token must be exactly these digits at this place, with no digit
        // around it; anything else means the positions were misread: no shape.
        let end = at + digits.len();
        let bytes = text.as_bytes();
        let joined = |i: Option<usize>| {
            i.and_then(|i| bytes.get(i))
                .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | 0x80..))
        };
        if at < copied
            || (line, column) != (start.line, start.column)
            || text.get(at..end) != Some(digits.as_str())
            || joined(Some(end))
            || joined(at.checked_sub(1))
        {
            return None;
        }
        key.push_str(&text[copied..at]);
        key.push(BLANK);
        copied = end;
        literals.push(start);
    }
    key.push_str(&text[copied..]);
    Some(Shape { key, literals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: SqlDialect, text: &str) -> Option<String> {
        shape(d, text).map(|s| s.key)
    }

    #[test]
    fn integers_are_blanked_and_everything_else_kept() {
        let pg = SqlDialect::Postgres;
        let a = key(
            pg,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        );
        let b = key(pg, "SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
        assert!(a.is_some());
        assert_eq!(a, b);
        // Other text, other spacing, other case, strings, decimals: other shapes.
        for other in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            "SELECT abalance FROM pgbench_accounts  WHERE aid = 7;",
            "select abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '7';",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7.0;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1234567890;",
        ] {
            assert_ne!(key(pg, other), a, "{other}");
        }
        // Numbers inside names are not literals.
        assert_ne!(key(pg, "SELECT * FROM t1"), key(pg, "SELECT * FROM t2"));
        assert_ne!(key(pg, "SELECT * FROM s.1"), key(pg, "SELECT * FROM s.2"));
        assert_eq!(
            shape(pg, "SELECT 1,\n  22").map(|s| s.literals),
            Some(vec![Location::new(1, 8), Location::new(2, 3)])
        );
    }

    #[test]
    fn texts_read_differently_elsewhere_have_no_shape() {
        for text in [
            "SELECT 1 /* c */",
            "SELECT 1 -- c",
            "SELECT 1 # c",
            "SELECT $a$1$a$",
            "SELECT $1",
            "SELECT 'a\\'', 1",
            "SELECT 1\r\n",
            "SELECT 1\u{1}",
        ] {
            assert_eq!(key(SqlDialect::Mysql, text), None, "{text:?}");
        }
        assert_eq!(
            key(SqlDialect::Postgres, &"x".repeat(MAX_SHAPED_BYTES + 1)),
            None
        );
    }

    #[test]
    fn dialects_have_their_own_shapes() {
        let text = "SELECT 1";
        assert_ne!(key(SqlDialect::Mysql, text), key(SqlDialect::Mariadb, text));
    }
}
