//! Which SQL each prepared statement name runs, as far as the proxy can attribute it.
//!
//! Every execution must be audited with the SQL the server will run. A `Bind` names a
//! prepared statement; the proxy knows a name's SQL from the `Parse` it allowed, and
//! knows that it *cannot* know it once something outside that view may have changed
//! the name: SQL-level `PREPARE`/`DEALLOCATE`/`DISCARD` (simple or extended), a second
//! `Parse` of a name it already holds (which fails at the server if the name exists,
//! and succeeds if the first `Parse` failed), or server-side code (`DO`). Such names
//! become [`Prepared::Unattributed`], and a `Bind` of them, or of a name never seen,
//! is refused. `Close` of a statement makes the name free again, as at the server.
//!
//! The answering side tells which `Parse`s the server took: a `ParseComplete`
//! confirms the name's SQL ([`PreparedStatements::confirmed`]); a `Parse` the cycle
//! ended without confirming failed ([`PreparedStatements::failed`]), so the server
//! holds nothing under that name from it. A second `Parse` of a confirmed name fails
//! at the server and changes nothing.

use std::collections::HashMap;

/// What the proxy knows about one statement name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prepared {
    /// The server holds this SQL under the name, if it holds anything; `confirmed`
    /// once its ParseComplete came back (then it certainly does).
    Sql { sql: String, confirmed: bool },
    /// The server may hold SQL the proxy never decided.
    Unattributed,
}

/// The session's statement names.
#[derive(Debug, Default)]
pub(crate) struct PreparedStatements {
    names: HashMap<String, Prepared>,
}

impl PreparedStatements {
    /// A `Parse` of `name` was forwarded: `Some(sql)` when allowed, `None` when a
    /// failing stand-in replaced it.
    pub(crate) fn parsed(&mut self, name: &str, sql: Option<&str>) {
        if name.is_empty() {
            // The unnamed statement is replaced by every Parse, even one that fails.
            match sql {
                Some(sql) => {
                    self.names.insert(
                        String::new(),
                        Prepared::Sql {
                            sql: sql.to_string(),
                            confirmed: false,
                        },
                    );
                }
                None => {
                    self.names.remove(name);
                }
            }
            return;
        }
        // A denied Parse fails at the server and leaves the name as it was.
        let Some(sql) = sql else {
            return;
        };
        match self.names.get_mut(name) {
            None => {
                self.names.insert(
                    name.to_string(),
                    Prepared::Sql {
                        sql: sql.to_string(),
                        confirmed: false,
                    },
                );
            }
            // The server holds it: this Parse fails as a duplicate.
            Some(Prepared::Sql {
                confirmed: true, ..
            }) => {}
            // Which of the two the server will hold depends on whether the first
            // Parse succeeds, which is not known yet.
            Some(p) => *p = Prepared::Unattributed,
        }
    }

    /// A `ParseComplete` for `name` came back: the server holds its SQL.
    pub(crate) fn confirmed(&mut self, name: &str) {
        if let Some(Prepared::Sql { confirmed, .. }) = self.names.get_mut(name) {
            *confirmed = true;
        }
    }

    /// A `Parse` of `name` was not taken (its cycle ended without a
    /// `ParseComplete`): an unconfirmed name holds nothing at the server.
    pub(crate) fn failed(&mut self, name: &str) {
        if let Some(Prepared::Sql {
            confirmed: false, ..
        }) = self.names.get(name)
        {
            self.names.remove(name);
        }
    }

    /// A `Close` of statement `name` was forwarded: the server forgets it.
    pub(crate) fn closed(&mut self, name: &str) {
        self.names.remove(name);
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

    /// The SQL a `Bind` of `name` runs, when the proxy can attribute it.
    pub(crate) fn sql_of(&self, name: &str) -> Option<&str> {
        match self.names.get(name) {
            Some(Prepared::Sql { sql, .. }) => Some(sql),
            _ => None,
        }
    }
}

/// Whether a statement of `sql` starts with `PREPARE`, `DEALLOCATE`, `DISCARD` or
/// `DO` (server-side code may do either). Statement starts are found after `;`,
/// skipping white space and comments; a `;` inside a string can only add a false
/// match, which errs on the safe side.
fn touches_prepared_statements(sql: &str) -> bool {
    const WORDS: [&str; 4] = ["prepare", "deallocate", "discard", "do"];
    let b = sql.as_bytes();
    let mut i = 0;
    let mut at_start = true;
    while i < b.len() {
        match b[i] {
            b';' => {
                at_start = true;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // PostgreSQL's block comments nest.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => {
                let end = b[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map_or(b.len(), |n| i + n);
                let word = &b[i..end];
                if at_start
                    && WORDS
                        .iter()
                        .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
                {
                    return true;
                }
                at_start = false;
                i = end.max(i + 1);
            }
        }
    }
    false
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
        ] {
            assert!(touches_prepared_statements(sql), "{sql}");
        }
        for sql in [
            "SELECT prepared_at FROM t",
            "SELECT 'prepare' AS x",
            "UPDATE t SET done = true",
            "select doc from t",
            "SELECT 'é'; SELECT ü",
            "",
        ] {
            assert!(!touches_prepared_statements(sql), "{sql}");
        }
    }

    #[test]
    fn names_are_attributed_only_while_certain() {
        let mut p = PreparedStatements::default();
        p.parsed("a", Some("SELECT 1"));
        assert_eq!(p.sql_of("a"), Some("SELECT 1"));
        // A second Parse before the first is confirmed: the server will hold one
        // of the two.
        p.parsed("a", Some("DELETE FROM t"));
        assert_eq!(p.sql_of("a"), None);
        p.closed("a");
        // Confirmed, a second Parse of the name fails at the server.
        p.parsed("a", Some("SELECT 1"));
        p.confirmed("a");
        p.parsed("a", Some("DELETE FROM t"));
        p.failed("a");
        assert_eq!(p.sql_of("a"), Some("SELECT 1"));
        // The first Parse failed at the server: the name is free for the next.
        p.closed("a");
        p.parsed("a", Some("SELECT nothing FROM missing"));
        p.failed("a");
        assert_eq!(p.sql_of("a"), None);
        p.parsed("a", Some("DELETE FROM t"));
        assert_eq!(p.sql_of("a"), Some("DELETE FROM t"));
        // A denied Parse leaves a named statement as it was.
        p.parsed("a", None);
        assert_eq!(p.sql_of("a"), Some("DELETE FROM t"));
        // The unnamed statement follows every Parse.
        p.parsed("", Some("SELECT 2"));
        p.parsed("", Some("SELECT 3"));
        assert_eq!(p.sql_of(""), Some("SELECT 3"));
        p.parsed("", None);
        assert_eq!(p.sql_of(""), None);
        // SQL-level DEALLOCATE: nothing is attributable until re-prepared.
        p.statement("DEALLOCATE a");
        assert_eq!(p.sql_of("a"), None);
        p.parsed("a", Some("SELECT 4"));
        assert_eq!(p.sql_of("a"), None);
        assert_eq!(p.sql_of("never"), None);
    }
}
