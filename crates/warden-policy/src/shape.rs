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
//! - Only digit runs outside quotes, with no letter, digit, `_`, `.` or non-ASCII
//!   character on either side, of at most [`MAX_DIGITS`] digits, are blanked: such a
//!   value can never overflow a parser field, so the parse takes the same path
//!   whatever the digits. A hand-written scan finds them: the parser's own tokenizer
//!   cost more than the rest of a cached decision.
//! - The decision is only cached when the parse of the first text made every blanked
//!   number a literal value in the syntax tree (not part of a name, a placeholder or
//!   a type) — checked by [`crate::sql::analyze_shaped`] — and the guardrails read no
//!   literal number's value.

use sqlparser::tokenizer::Location;
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
    let mut key = String::with_capacity(text.len() + 2);
    key.push(match d {
        SqlDialect::Postgres => 'p',
        SqlDialect::Mysql => 'm',
        SqlDialect::Mariadb => 'a',
    });
    let mut literals = Vec::new();
    let bytes = text.as_bytes();
    // One pass over the bytes, counting lines and columns as the SQL tokenizer does
    // (lines from `\n`, columns in characters, both from 1). The text has no comment,
    // escape or dollar quote (above), so quoting is just pairs of one quote character.
    // A digit run outside quotes, with no letter, digit, `_`, `.` or non-ASCII byte on
    // either side, is blanked. This scan need not agree with the parser's tokenizer:
    // the first text of a shape is parsed, and its decision is cached only when every
    // blanked run is a number literal of that parse; texts of that shape differ from it
    // only in those digits, which no reading can tell apart (see the module docs).
    let joined = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | 0x80..);
    let (mut line, mut column) = (1u64, 1u64);
    let mut quote: Option<u8> = None;
    let mut copied = 0usize;
    let mut at = 0usize;
    while at < bytes.len() {
        let b = bytes[at];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if matches!(b, b'\'' | b'"' | b'`') => quote = Some(b),
            None if b.is_ascii_digit() && (at == 0 || !joined(bytes[at - 1])) => {
                let end = at
                    + bytes[at..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                if end - at <= MAX_DIGITS && bytes.get(end).is_none_or(|&b| !joined(b)) {
                    key.push_str(&text[copied..at]);
                    key.push(BLANK);
                    copied = end;
                    literals.push(Location::new(line, column));
                }
                // Digits are one column each, and none is a line break.
                column += (end - at) as u64;
                at = end;
                continue;
            }
            None => {}
        }
        if b == b'\n' {
            line += 1;
            column = 1;
        } else if b & 0xC0 != 0x80 {
            // A character's first byte (continuation bytes add no column).
            column += 1;
        }
        at += 1;
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
    fn quoted_digits_stay_and_positions_match_the_tokenizer() {
        use sqlparser::tokenizer::{Token, Tokenizer};
        let pg = SqlDialect::Postgres;
        assert_ne!(key(pg, "SELECT '7', 1"), key(pg, "SELECT '8', 1"));
        assert_ne!(
            key(pg, "SELECT \"c7\" FROM t"),
            key(pg, "SELECT \"c8\" FROM t")
        );
        assert_ne!(
            key(SqlDialect::Mysql, "SELECT `7` FROM t"),
            key(SqlDialect::Mysql, "SELECT `8` FROM t")
        );
        assert_eq!(key(pg, "SELECT 'it''s', 1"), key(pg, "SELECT 'it''s', 2"));
        // Where the scan blanks a number, the tokenizer starts that number token.
        for (d, text) in [
            (pg, "SELECT 'é\n', 5,\n\t 66 FROM t WHERE \"ü\" = 7"),
            (pg, "SELECT a1, 2::int, x-3, (4) FROM t LIMIT 10 OFFSET 20"),
            (
                SqlDialect::Mysql,
                "SELECT `a\n1`, 'x''1', 9 FROM t WHERE b IN (1,2 ,3)",
            ),
        ] {
            let dialect = crate::sql::dialect(d);
            let numbers: Vec<Location> = Tokenizer::new(dialect.as_ref(), text)
                .tokenize_with_location()
                .expect("tokenizes")
                .into_iter()
                .filter(|t| matches!(t.token, Token::Number(..)))
                .map(|t| t.span.start)
                .collect();
            let shape = shape(d, text).expect("has a shape");
            assert_eq!(shape.literals, numbers, "{text:?}");
        }
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
