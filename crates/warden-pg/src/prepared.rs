//! Which SQL each prepared statement name runs, as far as the proxy can attribute it.
//!
//! Every execution must be audited with the SQL the server will run. A `Bind` names a
//! prepared statement; the proxy knows a name's SQL from the `Parse` it allowed, and
//! knows that it *cannot* know it once something outside its view may have changed
//! the name: SQL-level `PREPARE`/`DEALLOCATE`/`DISCARD` or a `DO` block (simple or
//! extended), a second `Parse` of a name whose first is not confirmed, a `Parse` of a
//! name being closed. Such names become unattributed, and a `Bind` of them, or of a
//! name never seen, is refused.
//!
//! The server's answers decide, never the messages sent: each `Parse` carries a
//! generation, and only the `ParseComplete` of that generation confirms it (a cycle
//! that ends without one means it failed, and the server holds nothing from it); a
//! `Close` takes effect at its `CloseComplete` (a skipped one leaves the name as it
//! was). A second `Parse` of a confirmed name fails at the server and changes nothing.
//! Names are the server's keys: the decoder cuts them to 63 bytes as the server does.

use std::collections::HashMap;

/// What the proxy knows about one statement name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prepared {
    /// The server holds this SQL under the name if the `Parse` of `generation`
    /// (sent in `cycle`) succeeded; `confirmed` once its `ParseComplete` came back.
    Sql {
        sql: String,
        generation: u64,
        cycle: u64,
        confirmed: bool,
    },
    /// A `Close` of the name was sent in `cycle` and is not answered yet: the server
    /// holds what `prior` says until it is, then what `next` says.
    Closing {
        prior: Box<Prepared>,
        next: Next,
        cycle: u64,
    },
    /// The server may hold SQL the proxy never decided.
    Unattributed,
}

/// The `Parse` sent after a `Close` of the same name, before its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    None,
    Parse {
        sql: String,
        generation: u64,
        cycle: u64,
    },
    /// More than one, or a denied one after an allowed one: not attributable.
    Unknown,
}

/// What a `Bind` of a name runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bound {
    Sql(String),
    /// Nothing Warden decided.
    Unattributed,
    /// It depends on answers to earlier cycles: wait for them, then ask again.
    Unanswered,
}

/// The session's statement names, shared by the client side (which sends) and the
/// server side (which reads the answers).
#[derive(Debug, Default)]
pub(crate) struct PreparedStatements {
    names: HashMap<String, Prepared>,
    /// The generation of the last `Parse`.
    generation: u64,
    /// Cycles sent (`Sync`s and simple queries): a `Bind` in the same cycle as its
    /// `Parse` runs only if the `Parse` succeeded (the server skips the rest of a
    /// cycle after an error).
    cycle: u64,
}

impl PreparedStatements {
    /// The generation of the next `Parse`, for its answer.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// A `Sync` or a simple query was sent: a new cycle begins.
    pub(crate) fn cycle_sent(&mut self) {
        self.cycle += 1;
    }

    /// The `Parse` of `generation` is being forwarded: `Some(sql)` when allowed,
    /// `None` when a failing stand-in replaces it.
    pub(crate) fn parsed(&mut self, name: &str, sql: Option<&str>, generation: u64) {
        let cycle = self.cycle;
        let fresh = |sql: &str| Prepared::Sql {
            sql: sql.to_string(),
            generation,
            cycle,
            confirmed: false,
        };
        if name.is_empty() {
            // The unnamed statement is replaced by every Parse, even one that fails.
            match sql {
                Some(sql) => {
                    self.names.insert(String::new(), fresh(sql));
                }
                None => {
                    self.names.remove(name);
                }
            }
            return;
        }
        let entry = self.names.get_mut(name);
        match (entry, sql) {
            (None, Some(sql)) => {
                self.names.insert(name.to_string(), fresh(sql));
            }
            // A denied Parse fails at the server and leaves the name as it was.
            (None | Some(Prepared::Sql { .. } | Prepared::Unattributed), None) => {}
            // The server holds it: this Parse fails as a duplicate.
            (
                Some(Prepared::Sql {
                    confirmed: true, ..
                }),
                Some(_),
            ) => {}
            // Once the Close is through, this Parse decides what the name holds.
            (Some(Prepared::Closing { next, .. }), sql) => {
                *next = match (&*next, sql) {
                    (Next::None, Some(sql)) => Next::Parse {
                        sql: sql.to_string(),
                        generation,
                        cycle,
                    },
                    (Next::None, None) => Next::None,
                    _ => Next::Unknown,
                };
            }
            // Which the server will hold depends on answers not seen yet.
            (Some(p), Some(_)) => *p = Prepared::Unattributed,
        }
    }

    /// The `ParseComplete` of `generation` came back: the server holds its SQL.
    pub(crate) fn confirmed(&mut self, name: &str, generation: u64) {
        if let Some(Prepared::Sql {
            generation: g,
            confirmed,
            ..
        }) = self.names.get_mut(name)
            && *g == generation
        {
            *confirmed = true;
        }
    }

    /// The `Parse` of `generation` was not taken (its cycle ended without a
    /// `ParseComplete`): the server holds nothing from it.
    pub(crate) fn failed(&mut self, name: &str, generation: u64) {
        match self.names.get_mut(name) {
            Some(Prepared::Sql {
                generation: g,
                confirmed: false,
                ..
            }) if *g == generation => {
                self.names.remove(name);
            }
            Some(Prepared::Closing { next, .. }) => {
                if matches!(&*next, Next::Parse { generation: g, .. } if *g == generation) {
                    *next = Next::None;
                }
            }
            _ => {}
        }
    }

    /// A `Close` of statement `name` is being forwarded.
    pub(crate) fn closing(&mut self, name: &str) {
        let cycle = self.cycle;
        let prior = self.names.remove(name).unwrap_or(Prepared::Unattributed);
        let prior = match prior {
            // Closed twice before an answer: what it held stays as unsure as it was.
            Prepared::Closing { .. } => Prepared::Unattributed,
            other => other,
        };
        self.names.insert(
            name.to_string(),
            Prepared::Closing {
                prior: Box::new(prior),
                next: Next::None,
                cycle,
            },
        );
    }

    /// A `CloseComplete` for statement `name`: the server holds nothing under it,
    /// or what the `Parse` after the `Close` prepared.
    pub(crate) fn closed(&mut self, name: &str) {
        let Some(Prepared::Closing { next, .. }) = self.names.get(name) else {
            return;
        };
        match next.clone() {
            Next::None => {
                self.names.remove(name);
            }
            Next::Parse {
                sql,
                generation,
                cycle,
            } => {
                self.names.insert(
                    name.to_string(),
                    Prepared::Sql {
                        sql,
                        generation,
                        cycle,
                        confirmed: false,
                    },
                );
            }
            Next::Unknown => {
                self.names.insert(name.to_string(), Prepared::Unattributed);
            }
        }
    }

    /// A `Close` of `name` was skipped (its cycle ended unanswered): the name holds
    /// what it held, unless a `Parse` after it may have changed that.
    pub(crate) fn not_closed(&mut self, name: &str) {
        let Some(Prepared::Closing { prior, next, .. }) = self.names.get(name) else {
            return;
        };
        let now = match next {
            Next::None => (**prior).clone(),
            _ => Prepared::Unattributed,
        };
        self.names.insert(name.to_string(), now);
    }

    /// An allowed statement text is on its way: if it may prepare or deallocate
    /// statements at the SQL level, no name can be attributed any more.
    pub(crate) fn statement(&mut self, sql: &str) {
        if touches_prepared_statements(sql) {
            for p in self.names.values_mut() {
                *p = Prepared::Unattributed;
            }
        }
    }

    /// What a `Bind` of `name` runs.
    pub(crate) fn bound(&self, name: &str) -> Bound {
        match self.names.get(name) {
            None | Some(Prepared::Unattributed) => Bound::Unattributed,
            Some(Prepared::Sql {
                sql,
                confirmed,
                cycle,
                ..
            }) => {
                if *confirmed || *cycle == self.cycle {
                    Bound::Sql(sql.clone())
                } else {
                    Bound::Unanswered
                }
            }
            Some(Prepared::Closing { next, cycle, .. }) if *cycle == self.cycle => match next {
                // In one cycle the server runs Close, Parse and Bind in order.
                Next::Parse { sql, .. } => Bound::Sql(sql.clone()),
                // Closed and not prepared again: the Bind fails at the server.
                Next::None | Next::Unknown => Bound::Unattributed,
            },
            Some(Prepared::Closing { .. }) => Bound::Unanswered,
        }
    }

    /// The SQL a `Bind` of `name` runs, when it can be told without waiting.
    #[cfg(test)]
    fn sql_of(&self, name: &str) -> Option<String> {
        match self.bound(name) {
            Bound::Sql(sql) => Some(sql),
            _ => None,
        }
    }
}

/// Whether a statement of `sql` starts with `PREPARE`, `DEALLOCATE`, `DISCARD` or
/// `DO` (server-side code may do either). Read as the server's lexer reads it:
/// comments (nested), strings (with and without backslash escapes: both readings
/// are tried, whatever `standard_conforming_strings` is), `E''` strings,
/// dollar-quoted strings and quoted identifiers are skipped; statements start after
/// `;`, whatever separates the words.
fn touches_prepared_statements(sql: &str) -> bool {
    let b = sql.as_bytes();
    // Without a backslash both readings are the same one: read it once (every
    // simple query passes here).
    if !b.contains(&b'\\') {
        return starts_a_statement_with(b, false);
    }
    starts_a_statement_with(b, false) || starts_a_statement_with(b, true)
}

fn starts_a_statement_with(b: &[u8], backslash_escapes: bool) -> bool {
    const WORDS: [&[u8]; 4] = [b"prepare", b"deallocate", b"discard", b"do"];
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut i = 0;
    let mut at_start = true;
    while i < b.len() {
        match b[i] {
            b';' => {
                at_start = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'\'' => {
                i = skip_string(b, i, backslash_escapes);
                at_start = false;
            }
            b'E' | b'e' if b.get(i + 1) == Some(&b'\'') => {
                i = skip_string(b, i + 1, true);
                at_start = false;
            }
            b'"' => {
                i = skip_string(b, i, false);
                at_start = false;
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag) => {
                    i = skip_dollar_string(b, i, tag);
                    at_start = false;
                }
                None => {
                    i += 1;
                    at_start = false;
                }
            },
            c if ident(c) => {
                let end = b[i..]
                    .iter()
                    .position(|c| !(ident(*c) || *c == b'$'))
                    .map_or(b.len(), |n| i + n);
                let word = &b[i..end];
                if at_start && WORDS.iter().any(|w| word.eq_ignore_ascii_case(w)) {
                    return true;
                }
                at_start = false;
                i = end;
            }
            // White space of any kind, operators, parentheses.
            _ => i += 1,
        }
    }
    false
}

/// The end of a (nested) block comment starting at `i`.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// The end of a string or quoted identifier opened by the quote at `i`: the quote
/// doubled is the quote itself; with `backslash_escapes`, a backslash escapes too.
fn skip_string(b: &[u8], i: usize, backslash_escapes: bool) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if backslash_escapes => j += 2,
            c if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return j + 1;
                }
            }
            _ => j += 1,
        }
    }
    b.len()
}

/// The tag of a dollar quote opening at `i` (`$$` or `$tag$`), if one does.
fn dollar_tag(b: &[u8], i: usize) -> Option<&[u8]> {
    let rest = &b[i + 1..];
    let end = rest.iter().position(|c| *c == b'$')?;
    let tag = &rest[..end];
    let valid = tag.iter().enumerate().all(|(n, c)| {
        c.is_ascii_alphabetic() || *c == b'_' || *c >= 0x80 || (n > 0 && c.is_ascii_digit())
    });
    valid.then_some(tag)
}

/// The end of the dollar-quoted string opening at `i` with `tag`.
fn skip_dollar_string(b: &[u8], i: usize, tag: &[u8]) -> usize {
    let open = tag.len() + 2;
    let body = i + open;
    let mut j = body;
    while j + open <= b.len() {
        if b[j] == b'$' && &b[j + 1..j + 1 + tag.len()] == tag && b[j + 1 + tag.len()] == b'$' {
            return j + open;
        }
        j += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_level_statement_management_is_recognized() {
        for sql in [
            "PREPARE p AS DELETE FROM t",
            "deallocate p",
            "DEALLOCATE ALL",
            "SELECT 1; DISCARD ALL",
            "/* c */ /* nested /* */ */ prepare p as select 1",
            "-- x\nDO $$ BEGIN EXECUTE 'DEALLOCATE p'; END $$",
            // Strings that hide a comment start from a naive reader.
            "SELECT '--'; DEALLOCATE a; PREPARE a AS SELECT 1",
            "SELECT $$/*$$; DEALLOCATE a; SELECT $$*/$$",
            "SELECT $x$ ' $x$; DEALLOCATE a",
            // A backslash that escapes the quote only without standard strings.
            "SELECT 'a\\'; DEALLOCATE a; -- '",
            "SELECT E'\\''; DEALLOCATE a",
            // Separators the server takes for white space.
            "SELECT 1;\x0bPREPARE a AS SELECT 2",
            "SELECT 1;(DEALLOCATE a)",
        ] {
            assert!(touches_prepared_statements(sql), "{sql}");
        }
        for sql in [
            "SELECT prepared_at FROM t",
            "SELECT 'prepare' AS x",
            "SELECT 'x; prepare'",
            "SELECT \"prepare\" FROM t",
            "SELECT $$; DEALLOCATE a$$",
            "UPDATE t SET done = true",
            "select doc from t",
            "SELECT 'é'; SELECT ü",
            "SELECT $1, $2",
            "",
        ] {
            assert!(!touches_prepared_statements(sql), "{sql}");
        }
    }

    #[test]
    fn names_are_attributed_only_while_certain() {
        let mut p = PreparedStatements::default();
        let sql = |p: &PreparedStatements, n: &str| p.sql_of(n);
        let parse = |p: &mut PreparedStatements, n: &str, s: Option<&str>| {
            let g = p.next_generation();
            p.parsed(n, s, g);
            g
        };
        let g = parse(&mut p, "a", Some("SELECT 1"));
        assert_eq!(sql(&p, "a").as_deref(), Some("SELECT 1"));
        // A second Parse before the first is confirmed: the server will hold one
        // of the two.
        parse(&mut p, "a", Some("DELETE FROM t"));
        assert_eq!(sql(&p, "a"), None);
        // Confirming the first's generation does not attribute the name again.
        p.confirmed("a", g);
        assert_eq!(sql(&p, "a"), None);
        p.closing("a");
        p.closed("a");
        assert_eq!(sql(&p, "a"), None);

        // Confirmed, a second Parse of the name fails at the server.
        let mut p = PreparedStatements::default();
        let g = parse(&mut p, "a", Some("SELECT 1"));
        p.confirmed("a", g);
        let g2 = parse(&mut p, "a", Some("DELETE FROM t"));
        p.failed("a", g2);
        assert_eq!(sql(&p, "a").as_deref(), Some("SELECT 1"));

        // Not confirmed yet: a Bind in the same cycle runs it (or is skipped with
        // it); in a later cycle it waits for the answers.
        let mut p = PreparedStatements::default();
        let g = parse(&mut p, "a", Some("SELECT nothing FROM missing"));
        assert_eq!(
            p.bound("a"),
            Bound::Sql("SELECT nothing FROM missing".into())
        );
        p.cycle_sent();
        assert_eq!(p.bound("a"), Bound::Unanswered);
        // It failed: the name is free for the next, and a late answer for the old
        // generation changes nothing.
        p.failed("a", g);
        assert_eq!(p.bound("a"), Bound::Unattributed);
        let g2 = parse(&mut p, "a", Some("DELETE FROM t"));
        p.failed("a", g);
        assert_eq!(sql(&p, "a").as_deref(), Some("DELETE FROM t"));
        p.confirmed("a", g2);
        p.cycle_sent();
        assert_eq!(sql(&p, "a").as_deref(), Some("DELETE FROM t"));

        // A Close counts when answered; in its own cycle, a Parse after it is what
        // a Bind runs; a skipped Close leaves the name as it was.
        p.closing("a");
        assert_eq!(p.bound("a"), Bound::Unattributed);
        p.cycle_sent();
        assert_eq!(p.bound("a"), Bound::Unanswered);
        p.not_closed("a");
        assert_eq!(sql(&p, "a").as_deref(), Some("DELETE FROM t"));
        p.closing("a");
        let g3 = parse(&mut p, "a", Some("SELECT 5"));
        assert_eq!(sql(&p, "a").as_deref(), Some("SELECT 5"));
        p.cycle_sent();
        assert_eq!(p.bound("a"), Bound::Unanswered);
        p.closed("a");
        p.confirmed("a", g3);
        assert_eq!(sql(&p, "a").as_deref(), Some("SELECT 5"));
        // A name Warden never saw may hold a SQL-level PREPARE: closing it frees it.
        p.closing("x");
        p.closed("x");
        assert_eq!(p.bound("x"), Bound::Unattributed);
        parse(&mut p, "x", Some("SELECT 7"));
        assert_eq!(sql(&p, "x").as_deref(), Some("SELECT 7"));

        // A denied Parse leaves a named statement as it was.
        let mut p = PreparedStatements::default();
        let g = parse(&mut p, "b", Some("SELECT 6"));
        p.confirmed("b", g);
        parse(&mut p, "b", None);
        assert_eq!(sql(&p, "b").as_deref(), Some("SELECT 6"));
        // The unnamed statement follows every Parse.
        parse(&mut p, "", Some("SELECT 2"));
        parse(&mut p, "", Some("SELECT 3"));
        assert_eq!(sql(&p, "").as_deref(), Some("SELECT 3"));
        parse(&mut p, "", None);
        assert_eq!(sql(&p, ""), None);
        // SQL-level DEALLOCATE: nothing is attributable until closed and re-prepared.
        p.statement("DEALLOCATE b");
        assert_eq!(sql(&p, "b"), None);
        parse(&mut p, "b", Some("SELECT 4"));
        assert_eq!(sql(&p, "b"), None);
        assert_eq!(sql(&p, "never"), None);
    }
}
