//! Matching the server's answers to the client's requests.
//!
//! The proxy must know, for each `RowDescription`, `BindComplete` or `CopyOutResponse`
//! the server sends, which request it answers: that decides the columns, formats and
//! masking of the rows that follow. The client side records each request that will
//! get such an answer ([`RequestLog::sent`]); the server side takes them in order.
//! A `ReadyForQuery` ends a cycle: requests the server skipped after an error are
//! dropped with it.
//!
//! One server rule needs care: `Sync` messages that arrive while the server is in
//! COPY-in mode are ignored (no `ReadyForQuery`). Whether a `Sync` sent after a
//! `COPY ... FROM STDIN` Execute falls inside that mode depends on whether the COPY
//! started, which only the server's answer tells; so such a `Sync` is recorded as
//! conditional and dropped when the COPY is seen to start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;
use uuid::Uuid;

use crate::copy::{CopyOutPlan, CopyStatement, copy_statements};
use crate::frontend::PgFrontendMessage;

/// A request whose answer the server side must recognise.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// A `Parse` of this statement name, of this generation (see
    /// `crate::prepared`): when it completes, what was known of the name's columns
    /// no longer holds.
    Parse(String, u64),
    /// A `Close` of a statement (`Some(name)`) or of a portal.
    Close(Option<String>),
    /// A `Describe` of a statement; `true` when the proxy sent it itself, so the
    /// client must not see its answer.
    DescribeStatement(String, bool),
    /// A `Bind` of a statement to a portal, with the result formats it asked for.
    Bind {
        statement: String,
        portal: String,
        formats: Vec<i16>,
    },
    /// A `Describe` of a portal.
    DescribePortal(String),
    /// An `Execute` of a portal, or (`None`) the statements of a simple `Query`:
    /// sent at this instant, running the statement audited as this event (the
    /// portal's last `Bind`, or the `Query`), when known.
    Execute(Instant, Option<String>, Option<Uuid>),
    /// A `COPY ... TO STDOUT` about to run.
    CopyOut(CopyOutPlan),
    /// The `Execute` of `COPY ... FROM STDIN` number n.
    CopyIn(u64),
    /// A `Sync` or simple `Query`: its cycle ends with `ReadyForQuery`. `Some(n)`: a
    /// `Sync` the server ignores if COPY-in n started.
    ReadyForQuery(Option<u64>),
}

/// Requests awaiting answers, shared by the two directions of a session.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    queue: VecDeque<Expect>,
    copies_started: HashSet<u64>,
}

impl Requests {
    /// Takes the first request of the current cycle that `want` accepts, leaving the
    /// others (an error answers a request without the answer `want` looks for).
    pub(crate) fn take<T>(&mut self, want: impl Fn(&Expect) -> Option<T>) -> Option<T> {
        let mut found = None;
        for (i, e) in self.queue.iter().enumerate() {
            if matches!(e, Expect::ReadyForQuery(_)) {
                break;
            }
            if let Some(t) = want(e) {
                found = Some((i, t));
                break;
            }
        }
        let (i, t) = found?;
        self.queue.remove(i);
        Some(t)
    }

    /// Takes the first request of the current cycle not yet answered if `want`
    /// accepts it (an error answers that request, whatever it is). Answers that only
    /// some requests get and that may never come (a COPY starting) are passed over.
    pub(crate) fn take_first_if<T>(&mut self, want: impl Fn(&Expect) -> Option<T>) -> Option<T> {
        let i = self
            .queue
            .iter()
            .position(|e| !matches!(e, Expect::CopyOut(_) | Expect::CopyIn(_)))?;
        let found = want(self.queue.get(i)?)?;
        self.queue.remove(i);
        Some(found)
    }

    /// Whether the next statement description to arrive answers the proxy's own
    /// `Describe` (so the client must not see it).
    pub(crate) fn next_describe_is_ours(&self) -> bool {
        self.queue
            .iter()
            .take_while(|e| !matches!(e, Expect::ReadyForQuery(_)))
            .find_map(|e| match e {
                Expect::DescribeStatement(_, ours) => Some(*ours),
                _ => None,
            })
            .unwrap_or(false)
    }

    /// The portal whose `Execute` the server is answering (`Some(None)`: a simple
    /// query), if any request is waiting for rows.
    pub(crate) fn executing(&self) -> Option<Option<String>> {
        self.queue
            .iter()
            .take_while(|e| !matches!(e, Expect::ReadyForQuery(_)))
            .find_map(|e| match e {
                Expect::Execute(_, portal, _) => Some(portal.clone()),
                _ => None,
            })
    }

    /// `ReadyForQuery` arrived: the current cycle is over, whatever it left
    /// unanswered. Returns the Parses (name, generation) and statement Closes it
    /// left unanswered: they failed, or were skipped after an error.
    pub(crate) fn end_cycle(&mut self) -> Unanswered {
        let mut unanswered = Unanswered::default();
        while let Some(e) = self.queue.pop_front() {
            match e {
                Expect::ReadyForQuery(_) => break,
                Expect::Parse(name, generation) => unanswered.parses.push((name, generation)),
                Expect::Close(Some(name)) => unanswered.closes.push(name),
                _ => {}
            }
        }
        unanswered
    }

    /// Whether earlier cycles still wait for their `ReadyForQuery`.
    pub(crate) fn awaits_cycle_end(&self) -> bool {
        self.queue
            .iter()
            .any(|e| matches!(e, Expect::ReadyForQuery(_)))
    }

    /// `CopyInResponse` arrived: the COPY-in being executed started, so the `Sync`s
    /// sent during it are ignored by the server.
    pub(crate) fn copy_in_started(&mut self) {
        let Some(n) = self.take(|e| match e {
            Expect::CopyIn(n) => Some(*n),
            _ => None,
        }) else {
            return;
        };
        self.copies_started.insert(n);
        self.queue
            .retain(|e| !matches!(e, Expect::ReadyForQuery(Some(m)) if *m == n));
    }
}

/// What a cycle left unanswered.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    pub(crate) parses: Vec<(String, u64)>,
    pub(crate) closes: Vec<String>,
}

/// What the client side remembers about statements and portals to classify requests.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    /// Statements described since their last Parse (by the client or the proxy).
    described: HashSet<String>,
    portals: HashMap<String, CopyStatement>,
    /// The audit event of each portal's last `Bind` since the last `Sync`: its
    /// executions' outcomes name it.
    portal_statements: HashMap<String, Uuid>,
    /// Extended-protocol messages were sent since the last `Sync`.
    extended_open: bool,
    copies: u64,
    /// The COPY-in executed last, until the client ends it with CopyDone or CopyFail.
    copying_in: Option<u64>,
}

impl RequestLog {
    /// Whether extended-protocol messages wait for their `Sync`. A simple `Query`
    /// then is refused: after an error among them the server ignores everything up to
    /// the `Sync`, that `Query` included, so whether it runs — and so which answers
    /// follow — cannot be known when it is sent. Drivers always send the `Sync`.
    pub(crate) fn extended_open(&self) -> bool {
        self.extended_open
    }

    /// Records the answers `message` will get; call before it is forwarded, with the
    /// generation of a `Parse`, the SQL a `Bind` runs (as attributed), and the audit
    /// event a `Query` or `Bind` is recorded as (`None`: not audited). Returns
    /// the name of a statement the proxy must describe (send `Describe`) before this
    /// message: a `Bind` of a statement whose columns are not known, so its rows can
    /// still be masked column by column.
    pub(crate) fn sent(
        &mut self,
        message: &PgFrontendMessage,
        shared: &Mutex<Requests>,
        generation: u64,
        bound_sql: Option<&str>,
        statement: Option<Uuid>,
    ) -> Option<String> {
        let mut r = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut describe = None;
        match message {
            // A transaction may end here, and its portals with it: an Execute after
            // this names no earlier Bind (it may be answered as a portal that does
            // not exist, which is no outcome of that Bind).
            PgFrontendMessage::Sync | PgFrontendMessage::Query { .. } => {
                self.portal_statements.clear();
                self.extended_open = false;
            }
            PgFrontendMessage::Parse { .. }
            | PgFrontendMessage::Bind { .. }
            | PgFrontendMessage::Describe { .. }
            | PgFrontendMessage::Execute { .. }
            | PgFrontendMessage::Close { .. } => self.extended_open = true,
            _ => {}
        }
        match message {
            PgFrontendMessage::Query { sql } => {
                r.queue
                    .push_back(Expect::Execute(Instant::now(), None, statement));
                for c in copy_statements(sql) {
                    if let CopyStatement::Out(plan) = c {
                        r.queue.push_back(Expect::CopyOut(plan));
                    }
                }
                r.queue.push_back(Expect::ReadyForQuery(None));
            }
            PgFrontendMessage::Parse { statement, .. } => {
                self.described.remove(statement);
                r.queue
                    .push_back(Expect::Parse(statement.clone(), generation));
            }
            PgFrontendMessage::Describe { target: b'S', name } => {
                self.described.insert(name.clone());
                r.queue
                    .push_back(Expect::DescribeStatement(name.clone(), false));
            }
            PgFrontendMessage::Close { target, name } => {
                let statement = *target == b'S';
                if statement {
                    self.described.remove(name);
                } else {
                    self.portal_statements.remove(name);
                }
                r.queue
                    .push_back(Expect::Close(statement.then(|| name.clone())));
            }
            PgFrontendMessage::Bind {
                portal,
                statement: name,
                result_formats,
                ..
            } => {
                match statement {
                    Some(id) => self.portal_statements.insert(portal.clone(), id),
                    None => self.portal_statements.remove(portal),
                };
                let statement = name;
                // What the portal copies follows from the SQL the Bind runs, not
                // from any Parse the server may not have taken.
                match bound_sql.and_then(|sql| copy_statements(sql).into_iter().next()) {
                    Some(c) => self.portals.insert(portal.clone(), c),
                    None => self.portals.remove(portal),
                };
                if self.described.insert(statement.clone()) {
                    r.queue
                        .push_back(Expect::DescribeStatement(statement.clone(), true));
                    describe = Some(statement.clone());
                }
                r.queue.push_back(Expect::Bind {
                    statement: statement.clone(),
                    portal: portal.clone(),
                    formats: result_formats.clone(),
                });
            }
            PgFrontendMessage::Describe { target: b'P', name } => {
                r.queue.push_back(Expect::DescribePortal(name.clone()));
            }
            PgFrontendMessage::Execute { portal, .. } => {
                r.queue.push_back(Expect::Execute(
                    Instant::now(),
                    Some(portal.clone()),
                    self.portal_statements.get(portal).copied(),
                ));
                match self.portals.get(portal) {
                    Some(CopyStatement::Out(plan)) => {
                        r.queue.push_back(Expect::CopyOut(plan.clone()))
                    }
                    Some(CopyStatement::In) => {
                        self.copies += 1;
                        self.copying_in = Some(self.copies);
                        r.queue.push_back(Expect::CopyIn(self.copies));
                    }
                    None => {}
                }
            }
            PgFrontendMessage::Sync => match self.copying_in {
                Some(n) if r.copies_started.contains(&n) => {}
                Some(n) => r.queue.push_back(Expect::ReadyForQuery(Some(n))),
                None => r.queue.push_back(Expect::ReadyForQuery(None)),
            },
            PgFrontendMessage::CopyDone | PgFrontendMessage::CopyFail { .. } => {
                self.copying_in = None;
            }
            _ => {}
        }
        describe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(stmt: &str) -> PgFrontendMessage {
        PgFrontendMessage::Bind {
            portal: String::new(),
            statement: stmt.into(),
            param_lengths: vec![],
            result_formats: vec![],
        }
    }

    fn execute() -> PgFrontendMessage {
        PgFrontendMessage::Execute {
            portal: String::new(),
            max_rows: 0,
        }
    }

    fn bound(r: &Mutex<Requests>) -> Option<String> {
        r.lock().unwrap().take(|e| match e {
            Expect::Bind { statement, .. } => Some(statement.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_sync_during_copy_in_does_not_shift_later_answers() {
        let shared = Mutex::new(Requests::default());
        let mut log = RequestLog::default();
        // tokio-postgres: Parse/Describe/Sync, then Bind/Execute/Sync, data,
        // CopyDone/Sync; then a query on another statement.
        for m in [
            PgFrontendMessage::Parse {
                statement: "s1".into(),
                sql: "COPY t FROM STDIN".into(),
                param_types: vec![],
            },
            PgFrontendMessage::Sync,
            bind("s1"),
            execute(),
            PgFrontendMessage::Sync,
        ] {
            log.sent(&m, &shared, 1, Some("COPY t FROM STDIN"), None);
        }
        // The server: ParseComplete.. ReadyForQuery; BindComplete; CopyInResponse.
        shared.lock().unwrap().end_cycle();
        assert_eq!(bound(&shared).as_deref(), Some("s1"));
        shared.lock().unwrap().copy_in_started();
        for m in [
            PgFrontendMessage::CopyDone,
            PgFrontendMessage::Sync,
            bind("s2"),
        ] {
            log.sent(&m, &shared, 0, None, None);
        }
        // CommandComplete, then the one ReadyForQuery for both Syncs.
        shared.lock().unwrap().end_cycle();
        assert_eq!(bound(&shared).as_deref(), Some("s2"));
    }

    #[test]
    fn a_copy_that_fails_to_start_keeps_its_sync() {
        let shared = Mutex::new(Requests::default());
        let mut log = RequestLog::default();
        for m in [
            PgFrontendMessage::Parse {
                statement: String::new(),
                sql: "COPY nope FROM STDIN".into(),
                param_types: vec![],
            },
            bind(""),
            execute(),
            PgFrontendMessage::Sync,
            PgFrontendMessage::CopyFail {
                message: String::new(),
            },
            PgFrontendMessage::Sync,
            bind("after"),
        ] {
            let copying =
                !matches!(&m, PgFrontendMessage::Bind { statement, .. } if statement == "after");
            log.sent(
                &m,
                &shared,
                1,
                copying.then_some("COPY nope FROM STDIN"),
                None,
            );
        }
        // BindComplete, ErrorResponse, ReadyForQuery (first Sync), ReadyForQuery.
        assert_eq!(bound(&shared).as_deref(), Some(""));
        shared.lock().unwrap().end_cycle();
        shared.lock().unwrap().end_cycle();
        assert_eq!(bound(&shared).as_deref(), Some("after"));
    }
}
